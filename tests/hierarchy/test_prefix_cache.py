"""The radix tree of prefix KV states, alone and inside the transformers engine (tiny Llama and Gemma 3)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from longshap.hierarchy.models import load_model
from longshap.hierarchy.engines import CacheScope, ModelView
from longshap.hierarchy.prefix_cache import PrefixKVCache
from tiny_models import model_view


def states(tokens, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fake per-layer states whose entries encode (layer, token) so slicing errors show."""
    data = torch.tensor(tokens, dtype=torch.float32)
    return [((data + 1000 * layer).view(1, 1, -1, 1), -(data + 1000 * layer).view(1, 1, -1, 1)) for layer in range(layers)]


def test_lookup_returns_longest_stored_prefix_across_split_edges():
    cache = PrefixKVCache(max_bytes=10**6)
    cache.insert([1, 2, 3, 4, 5], 0, states([1, 2, 3, 4, 5]))
    cache.insert([1, 2, 3, 9], 0, states([1, 2, 3, 9]))  # splits the first edge after 3 tokens
    matched, got = cache.lookup([1, 2, 3, 4, 7])
    assert matched == 4
    assert got[1][0].flatten().tolist() == [1001, 1002, 1003, 1004] and got[0][1].flatten().tolist() == [-1, -2, -3, -4]
    assert cache.lookup([1, 2, 3, 9, 9])[0] == 4 and cache.lookup([5])[0] == 0
    assert cache.stored_tokens == 6 and cache.nbytes == 6 * 2 * 2 * 4


def test_insert_extends_a_stored_prefix_with_only_the_new_tokens():
    cache = PrefixKVCache(max_bytes=10**6)
    cache.insert([1, 2], 0, states([1, 2]))
    cache.insert([1, 2, 3, 4], 2, states([3, 4]))
    assert cache.lookup([1, 2, 3, 4])[1][0][0].flatten().tolist() == [1, 2, 3, 4]
    cache.insert([7, 7, 7], 1, states([7, 7]))  # its first token is not stored: nothing to hang it from
    assert cache.lookup([7, 7, 7])[0] == 0


def test_eviction_keeps_the_bound_and_drops_least_recently_used_leaves():
    per_token = 2 * 2 * 4
    cache = PrefixKVCache(max_bytes=10 * per_token)
    cache.insert([1, 2, 3, 4], 0, states([1, 2, 3, 4]))
    cache.insert([5, 6, 7, 8], 0, states([5, 6, 7, 8]))
    cache.lookup([1, 2])  # [1..4] is now more recent than [5..8]
    cache.insert([9, 9, 9, 9], 0, states([9, 9, 9, 9]))
    assert cache.nbytes <= cache.max_bytes
    assert cache.lookup([5, 6])[0] == 0 and cache.lookup([1, 2, 3, 4])[0] == 4 and cache.lookup([9, 9])[0] == 2
    cache.insert(list(range(20, 40)), 0, states(list(range(20, 40))))  # larger than the bound: stored, then evicted
    assert cache.nbytes <= cache.max_bytes


def test_a_zero_bound_stores_nothing():
    cache = PrefixKVCache(max_bytes=0)
    cache.insert([1, 2, 3], 0, states([1, 2, 3]))
    assert cache.lookup([1, 2, 3]) == (0, None) and cache.nbytes == 0
    with pytest.raises(ValueError, match="max_bytes"):
        PrefixKVCache(max_bytes=-1)


INSTRUCTION = "Answer the question using the documents. Answer with a short phrase.\n\n"
DOCS = [
    "Document (Title: Paris): Paris is the capital of France. It is on the Seine.",
    "Document (Title: Berlin): Berlin is the capital of Germany. Dr. Smith lives in the U.S. now.",
    "Document (Title: Paris): The quick brown fox jumps over the lazy dog 1998.",
]
QUESTION = "\n\nQuestion: What is the capital of France?\nAnswer:"


def coalition_prompts() -> list[str]:
    """Every subset of the documents, as an explanation's coalitions, longer than Gemma's window of 16."""
    prompts = []
    for mask in range(8):
        kept = [doc for i, doc in enumerate(DOCS) if mask >> i & 1]
        prompts.append(INSTRUCTION + "\n\n".join(kept) + QUESTION)
    return prompts


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def loaded(request):
    directory = request.getfixturevalue("tiny_llama_dir" if request.param == "llama" else "tiny_gemma_dir")
    return load_model(str(directory), device="cpu")


def score_in_small_batches(view: ModelView, conts) -> np.ndarray:
    """Two calls (as two levels would make) of batches of two rows, so prefixes recur across batches."""
    prompts = coalition_prompts()
    return np.vstack([view.continuation_logprobs(prompts[:5], conts), view.continuation_logprobs(prompts[3:], conts)])


@pytest.mark.parametrize("conts", [[[5]], [[5, 6, 7], [9]]], ids=["single", "multi"])
def test_values_equal_with_the_cache_on_and_off_and_fewer_tokens_forwarded(loaded, conts):
    on = model_view(loaded, max_batch_size=2)
    off = model_view(loaded, max_batch_size=2, prefix_cache_bytes=0)
    values_on, values_off = score_in_small_batches(on, conts), score_in_small_batches(off, conts)
    np.testing.assert_allclose(values_on, values_off, atol=1e-4, rtol=0)
    assert on.stats.cached_tokens > 0 and off.stats.cached_tokens == 0
    assert on.stats.forward_tokens < off.stats.forward_tokens
    # Every token is forwarded or reused, with or without the cache: nothing dropped or double counted.
    assert on.stats.forward_tokens + on.stats.reused_tokens == off.stats.forward_tokens + off.stats.reused_tokens
    assert on.stats.forward_tokens + on.stats.cached_tokens <= off.stats.forward_tokens


def test_values_stay_equal_when_a_tiny_bound_evicts(loaded):
    conts = [[5, 6]]
    reference = score_in_small_batches(model_view(loaded, max_batch_size=2, prefix_cache_bytes=0), conts)
    prompt_tokens = len(model_view(loaded).encode_prompt(coalition_prompts()[-1]))
    config = loaded.model.config
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    view = model_view(loaded, max_batch_size=2, prefix_cache_bytes=per_token * prompt_tokens // 2)
    np.testing.assert_allclose(score_in_small_batches(view, conts), reference, atol=1e-4, rtol=0)
    store = view.engine.prefix.store(view.context)
    assert 0 < store.nbytes <= store.max_bytes == per_token * prompt_tokens // 2


def test_single_rows_read_the_cache_that_batches_filled(loaded):
    view = model_view(loaded)
    prompts = coalition_prompts()
    view.continuation_logprobs(prompts, [[5]])
    before = view.stats.cached_tokens
    alone = view.continuation_logprobs([prompts[-1]], [[5]])
    assert view.stats.cached_tokens > before
    np.testing.assert_allclose(alone, model_view(loaded, prefix_cache_bytes=0).continuation_logprobs([prompts[-1]], [[5]]), atol=1e-4)


def test_greedy_is_unchanged_by_the_cache(loaded):
    prompts = coalition_prompts()
    on = model_view(loaded, max_batch_size=2)
    on.continuation_logprobs(prompts, [[5]])  # fill the cache first
    assert on.greedy(prompts, max_new_tokens=5) == model_view(loaded, max_batch_size=2, prefix_cache_bytes=0).greedy(prompts, max_new_tokens=5)


@pytest.mark.slow
def test_default_model_values_equal_with_the_cache_beyond_its_sliding_window(default_explainer):
    """Gemma 3 270M (window 512) on 6-passage NQ coalitions of ~900 tokens: cached prefixes change no value."""
    from longshap.client.data import load_nq, nq_prompt
    from longshap.hierarchy import Explainer

    prompt = nq_prompt(load_nq(), 5, 5, seed=0)
    engine = default_explainer.engine
    request = {"question": prompt.question, "documents": prompt.documents, "target": prompt.answers[0], "levels": ("document",), "budget": 14}
    on = default_explainer.explain(**request)
    # The same engine, with request scopes that keep no prefix states across batches.
    off = Explainer(engine, cache_scope=CacheScope(enabled=False)).explain(**request)
    assert engine.model.config.sliding_window < len(engine.encode(prompt.question + " ".join(d["text"] for d in prompt.documents)))
    np.testing.assert_allclose([f.value for f in on.levels[0].features], [f.value for f in off.levels[0].features], atol=1e-3)
    assert on.stats["cached_tokens"] > 0 and off.stats["cached_tokens"] == 0
    assert on.stats["forward_tokens"] < off.stats["forward_tokens"]
