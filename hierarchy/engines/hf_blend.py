"""Blended scoring on the transformers engine: each document's KV states computed once, re-encoded for every coalition.

In kv_mode blend a request's documents are encoded once each, attending to the exact
states of the prompt's head, at their own place in the full prompt (so the head is as far
away, and as visible through sliding windows, as it is there). A coalition's prompt then reads
its documents from those states: keys are rotated by RoPE to where the document sits
in this prompt (rotations compose, so turning a key by the position shift equals
encoding it there), and only the rest runs as queries in one pass: each document's
first tokens (the plan's recompute share; EPIC/LegoLink's rule: right after a cut, a
cached chunk's tokens have the least of their real context, so they differ most from a
fresh pass and are the ones to restore), any raw text (a document cut by a finer level,
the question) and the answer. Masks come
from positions, sliding windows included, so every key is kept and any layout is
exact with respect to what it attends to.

What is approximate is only what the cached states saw: a document's tokens attend to
the head but not to the documents before it in the coalition. With a recompute share
of 1 every document token is a query and the result is the exact model's.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from transformers import DynamicCache

from longshap.hierarchy.engines.blend_plan import BlendPlan, Segment, segments
from longshap.hierarchy.speculative import additive_mask

if TYPE_CHECKING:
    from longshap.hierarchy.engines.base import RunContext
    from longshap.hierarchy.engines.hf_engine import TransformersEngine

ROTATE_HALF_ARCHITECTURES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3"})
"""Families whose keys carry RoPE on their full head dimension in rotate-half layout: the ones blend can re-encode."""
LINEAR_ROPE_TYPES = frozenset({"default", "linear", "llama3"})
"""RoPE variants whose angle is a fixed linear function of position, so a shift is one more rotation."""
KEPT_PLANS = 2
"""Plans whose document states a cache scope keeps: a request's levels reuse them; older requests' are dropped."""
SLOTS_PER_TOKEN_BUDGET = 4
"""A blended batch holds at most this many times the engine's batch token budget in cached key slots (rows x slots)."""


def blend_supported(engine: TransformersEngine) -> bool:
    """Whether this model's keys can be moved to another position by a rotation, and its attention takes our masks."""
    config = engine.model.config
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    # One dict for the model, or (Gemma 3) one per layer type.
    per_type = list(parameters.values()) if parameters and all(isinstance(p, dict) for p in parameters.values()) else [parameters]
    kinds = [p.get("rope_type", p.get("type", "default")) for p in per_type]
    return engine.architecture in ROTATE_HALF_ARCHITECTURES and engine.tree_capable and all(k in LINEAR_ROPE_TYPES for k in kinds)


@dataclass
class _PlanStates:
    """A plan's states, stacked per layer: head first, then each block at `starts[block]`; (kv heads, slots, head dim)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    starts: list[int]


class BlendStates:
    """The engine's blend work; the documents' states live in each run's cache scope."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        backbone = engine.backbone
        config = engine.model.config
        self.layer_types: list[str | None] = list(getattr(config, "layer_types", None) or [None] * config.num_hidden_layers)
        self._takes_layer_type = "layer_type" in inspect.signature(backbone.rotary_emb.forward).parameters

    def plan_states(self, plan: BlendPlan, context: RunContext) -> _PlanStates:
        """The plan's stacked states from the run's scope, computed (and charged) on first use."""
        kept: OrderedDict[str, _PlanStates] = context.cache.store(self, OrderedDict)
        if plan.key in kept:
            kept.move_to_end(plan.key)
            return kept[plan.key]
        states = self._compute(plan, context)
        kept[plan.key] = states
        while len(kept) > KEPT_PLANS:
            kept.popitem(last=False)
        return states

    def _compute(self, plan: BlendPlan, context: RunContext) -> _PlanStates:
        """The head's exact states (through the prefix store), then each block forwarded once at its place in the full prompt."""
        engine, stats = self.engine, context.stats
        head = list(plan.head)
        cached, head_states = engine.prefix.states(head, context)
        if cached < len(head):
            engine.count_pass(context, len(head) - cached)
        stats.reused_tokens += cached
        keys = [[k[0]] for k, _ in head_states]
        values = [[v[0]] for _, v in head_states]
        starts, filled = [], len(head)
        for block in plan.blocks:
            context.check()
            new = self._encode_in_place(block, filled, head_states)
            engine.count_pass(context, len(block))
            for layer, (k, v) in enumerate(new):
                keys[layer].append(k)
                values[layer].append(v)
            starts.append(filled)
            filled += len(block)
        return _PlanStates([torch.cat(k, dim=1) for k in keys], [torch.cat(v, dim=1) for v in values], starts)

    def _encode_in_place(self, block: Sequence[int], first: int, head_states: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A block's states at its place in the full prompt (positions from `first`), attending to the head only.

        The head is as far away as in the full prompt, so each layer sees it as it would
        there: not at all through a sliding window that does not reach back that far.
        """
        engine = self.engine
        head = head_states[0][0].shape[2]
        cache = DynamicCache()  # every key kept: the masks carry the windows
        for layer, (keys, values) in enumerate(head_states):
            cache.update(keys, values, layer)
        positions = torch.arange(first, first + len(block), device=engine.device)[None]
        key_positions = torch.cat([torch.arange(head, device=engine.device)[None], positions], dim=1)
        valid = torch.ones_like(key_positions, dtype=torch.bool)
        mask = _masks(positions, key_positions, valid, engine.sliding_window, engine.mask_dtype)
        ids = torch.tensor([list(block)], dtype=torch.long, device=engine.device)
        engine.run_backbone(cache, input_ids=ids, attention_mask=mask, position_ids=positions)
        # A DynamicCache's layers are attention layers, each with its keys and values.
        return [(layer.keys[0, :, head:], layer.values[0, :, head:]) for layer in cache.layers]  # type: ignore[union-attr,index]

    # ---- batches and passes ------------------------------------------------------------------------------
    def plan_batches(self, rows: Sequence[Sequence[int]], plan: BlendPlan, max_tokens: int) -> list[list[int]] | None:
        """Batches of blended rows, sized by what they forward (queries) and what they read (cached slots);
        None when some row does not start with the plan's head (the call is then planned and scored exactly)."""
        costs = []
        for row in rows:
            layout = segments(row, plan)
            if layout is None:
                return None
            queries = sum(s.end - s.start if s.block < 0 else plan.recomputed(s.block) for s in layout)
            costs.append((queries, len(row) - queries))
        slot_budget = SLOTS_PER_TOKEN_BUDGET * max_tokens
        batches: list[list[int]] = []
        current: list[int] = []
        queries = slots = 0
        for index in sorted(range(len(rows)), key=lambda i: costs[i]):
            grown_queries, grown_slots = max(queries, costs[index][0]), max(slots, costs[index][1])
            if current and ((len(current) + 1) * grown_queries > max_tokens or (len(current) + 1) * grown_slots > slot_budget
                            or len(current) >= self.engine.max_batch_size):
                batches.append(current)
                current, grown_queries, grown_slots = [], costs[index][0], costs[index][1]
            current.append(index)
            queries, slots = grown_queries, grown_slots
        return batches + [current] if current else batches

    def last_logprobs(self, rows: Sequence[Sequence[int]], keep: int, plan: BlendPlan, context: RunContext) -> torch.Tensor | None:
        """As `hf_scoring.last_logprobs`, from the plan's states; None when some row does not start with the plan's head."""
        layouts = [segments(row, plan, raw_tail=keep) for row in rows]
        if any(layout is None for layout in layouts):
            return None
        return self._pass(rows, layouts, keep, plan, self.plan_states(plan, context), context)  # type: ignore[arg-type]

    def _pass(
        self, rows: Sequence[Sequence[int]], layouts: Sequence[list[Segment]], keep: int, plan: BlendPlan, states: _PlanStates,
        context: RunContext,
    ) -> torch.Tensor:
        engine, device = self.engine, self.engine.device
        slot_rows, query_rows = zip(*(_layout(row, layout, plan, states) for row, layout in zip(rows, layouts)))
        n_slots = max(len(slots[0]) for slots in slot_rows)
        n_queries = max(len(queries[0]) for queries in query_rows)
        batch = len(rows)
        index = torch.zeros((batch, n_slots), dtype=torch.long)
        shift = torch.zeros((batch, n_slots), dtype=torch.long)
        key_positions = torch.zeros((batch, n_slots + n_queries), dtype=torch.long)
        valid = torch.zeros((batch, n_slots + n_queries), dtype=torch.bool)
        ids = torch.full((batch, n_queries), engine.pad_id, dtype=torch.long)
        positions = torch.zeros((batch, n_queries), dtype=torch.long)
        for r, ((slot_index, slot_shift, slot_positions), (query_ids, query_positions)) in enumerate(zip(slot_rows, query_rows)):
            s, q = len(slot_index), len(query_ids)
            index[r, :s], shift[r, :s], key_positions[r, :s] = slot_index, slot_shift, slot_positions
            ids[r, :q], positions[r, :q] = query_ids, query_positions
            positions[r, q:] = query_positions[-1]
            key_positions[r, n_slots : n_slots + n_queries] = positions[r]
            valid[r, :s] = True
            valid[r, n_slots : n_slots + q] = True
        index, shift, ids, positions = index.to(device), shift.to(device), ids.to(device), positions.to(device)
        key_positions, valid = key_positions.to(device), valid.to(device)
        cache = DynamicCache()  # every key kept: the masks carry the windows
        rotations: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer, (keys, values) in enumerate(zip(states.keys, states.values)):
            layer_type = self.layer_types[layer]
            if layer_type not in rotations:
                rotations[layer_type] = self._rotation(shift, layer_type, keys)
            cos, sin = rotations[layer_type]
            gathered = keys[:, index].permute(1, 0, 2, 3).float()  # (batch, kv heads, slots, head dim)
            rotated = (gathered * cos + _rotate_half(gathered) * sin).to(keys.dtype)
            cache.update(rotated, values[:, index].permute(1, 0, 2, 3), layer)
        mask = _masks(positions, key_positions, valid, engine.sliding_window, engine.mask_dtype)
        engine.count_pass(context, sum(len(queries[0]) for queries in query_rows))
        context.stats.reused_tokens += sum(len(slots[0]) for slots in slot_rows)
        context.stats.blended_rows += batch
        hidden = engine.run_backbone(cache, input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        ends = torch.tensor([len(queries[0]) for queries in query_rows], device=device)
        where = (ends[:, None] - keep + torch.arange(keep, device=device)[None, :]).clamp(min=0)
        gathered_hidden = hidden.gather(1, where[:, :, None].expand(-1, -1, hidden.shape[-1]))
        return torch.log_softmax(engine.logits(gathered_hidden), dim=-1)

    def _rotation(self, shift: torch.Tensor, layer_type: str | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of RoPE at each slot's shift, (batch, 1, slots, head dim), without any attention scaling."""
        backbone = self.engine.backbone
        rotary = getattr(backbone, "rotary_emb_local", None) if layer_type == "sliding_attention" else None
        rotary = rotary or backbone.rotary_emb
        probe = torch.zeros((1,), dtype=torch.float32, device=like.device)
        if self._takes_layer_type:
            cos, sin = rotary(probe, shift, layer_type)
        else:
            cos, sin = rotary(probe, shift)
        cos, sin = cos.float(), sin.float()
        scale = torch.sqrt(cos * cos + sin * sin)  # YaRN-style scaling multiplies both: a pure rotation has norm 1
        return (cos / scale)[:, None], (sin / scale)[:, None]


def _layout(row: Sequence[int], layout: list[Segment], plan: BlendPlan, states: _PlanStates):
    """A row's cached slots (stack index, position shift, position) and its queries (ids, positions)."""
    head = len(plan.head)
    slot_index, slot_shift, slot_positions = list(range(head)), [0] * head, list(range(head))
    query_ids: list[int] = []
    query_positions: list[int] = []
    for segment in layout:
        if segment.block < 0:
            query_ids.extend(row[segment.start : segment.end])
            query_positions.extend(range(segment.start, segment.end))
            continue
        redo = plan.recomputed(segment.block)
        query_ids.extend(row[segment.start : segment.start + redo])
        query_positions.extend(range(segment.start, segment.start + redo))
        first = states.starts[segment.block]
        length = segment.end - segment.start
        slot_index.extend(range(first + redo, first + length))
        slot_shift.extend([segment.start - first] * (length - redo))
        slot_positions.extend(range(segment.start + redo, segment.end))
    as_tensor = torch.tensor
    return (as_tensor(slot_index), as_tensor(slot_shift), as_tensor(slot_positions)), (as_tensor(query_ids), as_tensor(query_positions))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _masks(
    positions: torch.Tensor, key_positions: torch.Tensor, valid: torch.Tensor, window: int | None, dtype: torch.dtype,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive masks (full, and sliding where the model has windows): a query sees every valid key at or before its position."""
    allowed = valid[:, None, :] & (key_positions[:, None, :] <= positions[:, :, None])
    full = additive_mask(allowed, dtype)
    if window is None:
        return full
    near = (positions[:, :, None] - key_positions[:, None, :]) < window
    return {"full_attention": full, "sliding_attention": additive_mask(allowed & near, dtype)}
