"""GPU paths: half precision, flash attention and bitsandbytes on CUDA. Skipped where there is no GPU."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from longshap.hierarchy.engines import ANSWER_TREE
from longshap.hierarchy.models import load_model
from longshap.hierarchy.speculative import AnswerTree
from tiny_models import model_view

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PROMPTS = [f"Document: Paris is the capital of France ({i}).\nQuestion: What is the capital of France?\nAnswer:" for i in range(6)]


def reference_scores(model_dir) -> np.ndarray:
    return model_view(load_model(str(model_dir), device="cpu")).continuation_logprobs(PROMPTS, [[5, 6], [7]])


@cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_on_gpu_matches_float32(tiny_gemma_dir, dtype):
    view = model_view(load_model(str(tiny_gemma_dir), device="cuda", dtype=dtype))
    np.testing.assert_allclose(view.continuation_logprobs(PROMPTS, [[5, 6], [7]]), reference_scores(tiny_gemma_dir), atol=0.05)
    tree = AnswerTree()
    plain = view.greedy(PROMPTS, 4)
    tree.add(plain[0])
    assert view.greedy(PROMPTS, 4, tree=tree) == plain


@cuda
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn (pip install 'longshap[gpu]')")
def test_flash_attention_scores_and_decodes(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cuda", dtype="bfloat16", attn_implementation="flash_attention_2")
    assert loaded.model.config._attn_implementation == "flash_attention_2"
    view = model_view(loaded)
    assert not view.engine.tree_capable  # custom tree masks need sdpa/eager; answers are decoded instead
    assert ANSWER_TREE not in view.engine.capabilities
    np.testing.assert_allclose(view.continuation_logprobs(PROMPTS, [[5, 6], [7]]), reference_scores(tiny_llama_dir), atol=0.05)


@cuda
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_bitsandbytes_on_gpu(tiny_llama_dir, quantization):
    view = model_view(load_model(str(tiny_llama_dir), device="cuda", quantization=quantization))
    np.testing.assert_allclose(view.continuation_logprobs(PROMPTS, [[5, 6], [7]]), reference_scores(tiny_llama_dir), atol=0.5)
