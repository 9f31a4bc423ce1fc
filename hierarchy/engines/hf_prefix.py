"""Prefix KV states for the transformers engine: shared prefixes forwarded once, kept in the run's cache scope.

A batch's rows share a prefix whose states are computed once and repeated across
the batch. Computed prefixes go into the run's radix tree of states
(`hierarchy.prefix_cache`), so later batches of the same scope only forward the part
no earlier batch did.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from transformers import DynamicCache

from longshap.hierarchy.engines.planning import common_prefix
from longshap.hierarchy.prefix_cache import LayerStates, PrefixKVCache

if TYPE_CHECKING:
    from longshap.hierarchy.engines.base import RunContext
    from longshap.hierarchy.engines.hf_engine import TransformersEngine


class PrefixStates:
    """The engine's shared-prefix work; the states themselves live in each run's cache scope."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine

    def store(self, context: RunContext) -> PrefixKVCache:
        """This engine's prefix states in the run's scope (bounded; empty when prefixes are not kept)."""
        size = self.engine.prefix_cache_bytes if context.cache.enabled else 0
        return context.cache.store(self.engine, lambda: PrefixKVCache(size))

    def shared_length(self, rows: Sequence[Sequence[int]], keep: int, context: RunContext) -> int:
        """Length of the prefix all rows share, leaving every row at least `keep` tokens of its own.

        A row alone only reads stored states: storing every distinct prompt would churn
        the store for prefixes no other row asks for.
        """
        if not self.engine.reuse_prefix:
            return 0
        limit = min(len(row) for row in rows) - keep
        if len(rows) < 2:
            length = min(limit, self.store(context).match_length(rows[0]))
        else:
            length = min(limit, *(common_prefix(rows[0], row) for row in rows[1:]))
        return length if length >= self.engine.min_shared_prefix else 0

    def batch_cache(self, rows: Sequence[Sequence[int]], shared: int, context: RunContext, windowed: bool = True) -> DynamicCache:
        """KV cache of the rows' shared prefix, repeated across the batch.

        Only the part beyond the longest stored prefix is forwarded (once); the result
        is stored for later batches. A `windowed` cache, typed by the model's config,
        trims sliding-window layers to their window as a fresh pass would; passes with
        masks of their own need every key instead.
        """
        cached, states = self.states(list(rows[0][:shared]), context)
        config = self.engine.model.config
        cache = DynamicCache(config=config) if windowed else DynamicCache()
        for layer, (keys, values) in enumerate(states):
            cache.update(keys, values, layer)
        cache.batch_repeat_interleave(len(rows))
        stats = context.stats
        if cached < shared:
            stats.forward_passes += 1
        stats.forward_tokens += shared - cached
        stats.reused_tokens += shared * len(rows) - (shared - cached)
        stats.cached_tokens += cached
        return cache

    def states(self, prefix: list[int], context: RunContext) -> tuple[int, LayerStates]:
        """Tokens of `prefix` found stored, and the full states of `prefix` (computed and stored beyond those)."""
        store = self.store(context)
        cached, states = store.lookup(prefix)
        if cached < len(prefix):
            states = self._extend(prefix, cached, states)
            store.insert(prefix, cached, [(k[:, :, cached:], v[:, :, cached:]) for k, v in states])
        assert states is not None, "a fully stored prefix is non-empty, so the store returned its states"
        return cached, states

    def _extend(self, prefix: Sequence[int], cached: int, states: LayerStates | None) -> LayerStates:
        """Full per-layer states of `prefix`, forwarding only tokens[cached:] on top of the stored states.

        The pass runs on a config-typed cache (sliding layers attend over their window
        only, as in a fresh pass), while every layer's new states are recorded as they
        are written, so the stored states stay complete and can later be cut anywhere.
        """
        engine = self.engine
        cache = RecordingCache(config=engine.model.config)
        for layer, (keys, values) in enumerate(states or []):
            cache.update(keys, values, layer)
        cache.recorded.clear()
        ids = torch.tensor([list(prefix[cached:])], dtype=torch.long, device=engine.device)
        positions = torch.arange(cached, len(prefix), device=engine.device)[None, :]
        engine.run_backbone(cache, input_ids=ids, position_ids=positions)
        new = [cache.recorded[layer] for layer in range(len(cache.recorded))]
        if states is None:
            return new
        return [(torch.cat([k, nk], dim=2), torch.cat([v, nv], dim=2)) for (k, v), (nk, nv) in zip(states, new)]


class RecordingCache(DynamicCache):
    """A DynamicCache that also keeps each layer's newly written states, before any window trimming."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.recorded[layer_idx] = (key_states, value_states)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)
