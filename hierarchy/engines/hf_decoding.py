"""Greedy decoding on the transformers engine: prefix-sharing prefill, answer-tree verification, batched steps.

Rows are prefilled in prefix-sharing batches (each also verifying the answer tree,
when there is one), then the rows that still need decoding continue from their
prefill states together, as many per batch as their states allow. Sliding-window
models are prefilled right-padded after the shared prefix with masks built from
positions, since left pads would shift windows that mask by cache index.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from transformers import DynamicCache, GenerationConfig

from longshap.hierarchy.engines.planning import DECODE_CACHE_FACTOR, decode_groups, plan_batches
from longshap.hierarchy.prefix_cache import LayerStates
from longshap.hierarchy.speculative import AnswerTree, Verdict, tree_masks, walk

if TYPE_CHECKING:
    from longshap.hierarchy.engines.base import RunContext
    from longshap.hierarchy.engines.hf_engine import TransformersEngine


def greedy_rows(
    engine: TransformersEngine, encoded: Sequence[Sequence[int]], max_new_tokens: int, context: RunContext, tree: AnswerTree | None = None
) -> list[list[int]]:
    """Greedy answers (ids, stop token excluded) of prompt rows; answers in `tree` are verified, not decoded.

    Rows that leave the tree continue from the verification pass's own KV states (no
    second prefill), or with the draft model when there is one.
    """
    if not engine.tree_capable:  # attention that takes no masks of ours: each batch prefills and decodes alone
        return engine.map_batches(encoded, lambda batch: _greedy_batch(engine, [encoded[i] for i in batch], max_new_tokens, context), context)
    verified = tree if tree is not None and tree.size else AnswerTree()
    checking = verified.size > 0
    answers: list[list[int]] = [[] for _ in encoded]
    state_tokens = DECODE_CACHE_FACTOR * engine.max_batch_tokens
    kept = engine.prefix.store(context).max_bytes > 0
    batches = plan_batches(encoded, engine.max_batch_tokens, engine.max_batch_size, engine.reuse_prefix, kept)
    for group in decode_groups(encoded, batches, state_tokens):
        rows = [encoded[i] for i in group]
        prefilled = engine.map_batches(
            rows,
            lambda batch: _verify_batch(engine, [rows[b] for b in batch], verified, max_new_tokens, context, keep_states=engine.draft is None),
            context,
        )
        if checking:
            context.stats.tree_checks += len(rows)
            context.stats.tree_accepted += sum(verdict.answer is not None for verdict, _ in prefilled)
        verdicts = [verdict for verdict, _ in prefilled]
        pending = [r for r, verdict in enumerate(verdicts) if verdict.answer is None]
        if engine.draft is not None:
            tails = [_draft_decode(engine, list(rows[r]) + verdicts[r].prefix, max_new_tokens - len(verdicts[r].prefix), context) for r in pending]
        else:
            tails = engine.map_batches(
                [list(rows[r]) + verdicts[r].prefix for r in pending],
                lambda batch: _decode_states(engine, [prefilled[pending[b]] for b in batch], max_new_tokens, context),
                context, share=False, budget=state_tokens,
            )
        continued = dict(zip(pending, tails))
        for r, verdict in enumerate(verdicts):
            answers[group[r]] = verdict.answer if verdict.answer is not None else verdict.prefix + continued[r]
    return answers


def _verify_batch(
    engine: TransformersEngine, rows: Sequence[Sequence[int]], tree: AnswerTree, max_new_tokens: int, context: RunContext, keep_states: bool
) -> list[tuple[Verdict, LayerStates | None]]:
    """One forward pass of each prompt followed by the whole answer tree; the argmax walk gives each verdict.

    With `keep_states`, a row that leaves the tree (or, with an empty tree, any row
    that does not stop at once) gets its prompt and tree-path KV states, gathered from
    this pass, so it can decode on without a second prefill.
    """
    device = engine.device
    shared = engine.prefix.shared_length(rows, 1, context)
    # Masks built from positions carry the sliding windows, so every layer keeps all its keys.
    cache = engine.prefix.batch_cache(rows, shared, context, windowed=False) if shared else None
    width = max(len(row) - shared for row in rows)
    ids = torch.full((len(rows), width + tree.size), engine.pad_id, dtype=torch.long, device=device)
    for r, row in enumerate(rows):
        ids[r, : len(row) - shared] = torch.tensor(row[shared:], dtype=torch.long)
    ids[:, width:] = torch.tensor(tree.tokens[1:], dtype=torch.long, device=device)
    positions, full, sliding = tree_masks([len(r) for r in rows], shared, width, tree, engine.sliding_window, engine.mask_dtype, device)
    mask = {"full_attention": full, "sliding_attention": sliding} if sliding is not None else full
    engine.count_pass(context, sum(len(row) - shared for row in rows) + tree.size * len(rows))
    if keep_states and cache is None:
        cache = DynamicCache()  # every position kept (no window trimming): diverged rows gather theirs from it
    hidden = engine.run_backbone(cache, input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state

    def argmax(pairs: Sequence[tuple[int, int]]) -> list[int]:
        """Next tokens after (row, tree node) pairs: node 0 is the row's last prompt token, node k sits at width + k - 1."""
        batch = torch.tensor([row for row, _ in pairs], device=device)
        where = torch.tensor([len(rows[row]) - shared - 1 if node == 0 else width + node - 1 for row, node in pairs], device=device)
        return engine.logits(hidden[batch, where]).argmax(-1).tolist()

    verdicts = walk(tree, len(rows), argmax, engine.stop_ids, max_new_tokens)
    states: list[LayerStates | None] = [None] * len(rows)
    if keep_states and cache is not None:
        for r, verdict in enumerate(verdicts):
            if verdict.answer is None:
                where = torch.tensor(_tree_path_indices(len(rows[r]), shared, width, tree, verdict.prefix[:-1]), device=device)
                # A DynamicCache's layers are attention layers, each with its keys and values.
                states[r] = [(layer.keys[r, :, where], layer.values[r, :, where]) for layer in cache.layers]  # type: ignore[union-attr,index]
    return list(zip(verdicts, states))


def _tree_path_indices(length: int, shared: int, width: int, tree: AnswerTree, path: Sequence[int]) -> list[int]:
    """Cache indices of a row's prompt tokens and of the tree nodes along `path`, in order."""
    indices, node = list(range(length)), 0
    for token in path:
        node = tree.children[node][token]
        indices.append(shared + width + node - 1)
    return indices


def _decode_states(
    engine: TransformersEngine, rows: Sequence[tuple[Verdict, LayerStates | None]], max_new_tokens: int, context: RunContext
) -> list[list[int]]:
    """Greedy decoding of rows after their known prefix, from their gathered KV states (left-padded into one cache)."""
    limits = [max_new_tokens - len(verdict.prefix) for verdict, _ in rows]
    if max(limits) <= 0:
        return [[] for _ in rows]
    gathered: list[LayerStates] = []
    for _, states in rows:
        assert states is not None, "rows to decode were prefilled with keep_states"
        gathered.append(states)
    device = engine.device
    lengths = [states[0][0].shape[1] for states in gathered]
    width = max(lengths)
    batch = DynamicCache(config=engine.model.config)
    mask = torch.zeros((len(rows), width + 1), dtype=torch.long, device=device)
    for r, length in enumerate(lengths):
        mask[r, width - length :] = 1
    mask[:, width] = 1
    for layer in range(len(gathered[0])):
        first = gathered[0][layer][0]
        keys = first.new_zeros((len(rows), first.shape[0], width, first.shape[2]))
        values = torch.zeros_like(keys)
        for r, (states, length) in enumerate(zip(gathered, lengths)):
            keys[r, :, width - length :], values[r, :, width - length :] = states[layer]
        batch.update(keys, values, layer)
    positions = torch.tensor([[length] for length in lengths], device=device)
    context.stats.decode_steps += 1
    context.stats.forward_tokens += len(rows)
    tokens = torch.tensor([verdict.prefix[-1] for verdict, _ in rows], device=device)[:, None]
    return _decode(engine, *_last_logits(engine, tokens, mask, positions, batch), mask, positions + 1, limits, context)


def _draft_decode(engine: TransformersEngine, row: Sequence[int], max_new_tokens: int, context: RunContext) -> list[int]:
    """Greedy decoding of one row with transformers' assisted generation (the draft proposes, the target verifies)."""
    if max_new_tokens <= 0:
        return []
    assert engine.draft is not None, "only called with a draft model"
    passes = [0]
    hook = engine.model.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    try:
        config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=sorted(engine.stop_ids), pad_token_id=engine.pad_id)
        # transformers' stub resolves `generate` through Module.__getattr__ (a Tensor), hiding the method.
        output = engine.model.generate(  # type: ignore[operator]
            input_ids=torch.tensor([list(row)], device=engine.device), assistant_model=engine.draft.model, generation_config=config
        )[0, len(row) :].tolist()
    finally:
        hook.remove()
    tokens = []
    for token in output:
        if token in engine.stop_ids:
            break
        tokens.append(token)
    context.stats.draft_target_passes += passes[0]
    context.stats.draft_tokens += len(output)
    return tokens


def _greedy_batch(engine: TransformersEngine, rows: Sequence[Sequence[int]], max_new_tokens: int, context: RunContext) -> list[list[int]]:
    """Prefill and decode one batch, left-padded, for attention that takes no masks of ours (flash attention).

    Sliding windows mask by cache index there, so pads between a shared prefix and a
    row's own tokens would shift them: such models prefill every row whole.
    """
    device = engine.device
    shared = 0 if engine.sliding_window else engine.prefix.shared_length(rows, 1, context)
    cache = engine.prefix.batch_cache(rows, shared, context) if shared else None
    width = max(len(row) - shared for row in rows)
    ids = torch.full((len(rows), width), engine.pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for r, row in enumerate(rows):
        suffix = row[shared:]
        ids[r, width - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
        mask[r, width - len(suffix) :] = 1
    positions = shared + (mask.cumsum(dim=1) - 1).clamp(min=0)
    if shared:
        mask = torch.cat([torch.ones((len(rows), shared), dtype=mask.dtype, device=device), mask], dim=1)
    engine.count_pass(context, int(mask[:, shared:].sum()))
    logits = _last_logits(engine, ids, mask, positions, cache)
    return _decode(engine, *logits, mask, positions[:, -1:] + 1, [max_new_tokens] * len(rows), context)


def _last_logits(engine: TransformersEngine, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> tuple[DynamicCache, torch.Tensor]:
    """One cached pass (a fresh cache when `cache` is None); the cache and the logits at each row's last position."""
    cache = cache if cache is not None else DynamicCache(config=engine.model.config)
    out = engine.run_backbone(cache, input_ids=ids, attention_mask=mask, position_ids=positions)
    return cache, engine.logits(out.last_hidden_state[:, -1])


def _decode(
    engine: TransformersEngine, cache: DynamicCache, logits: torch.Tensor, mask: torch.Tensor, next_position: torch.Tensor,
    limits: Sequence[int], context: RunContext,
) -> list[list[int]]:
    """Greedy steps from a pass whose `logits` (rows, vocabulary) give each row's next token.

    A row that has finished leaves the batch (and its cache) at once: every step costs
    an LM-head product per row, the largest matrix of a small model, and answers of
    one batch often differ in length by several tokens.
    """
    device = engine.device
    answers: list[list[int]] = [[] for _ in limits]
    live = list(range(len(limits)))  # answer index of each batch row
    while live:
        tokens = logits.argmax(dim=-1)
        staying = []
        for row, (r, t) in enumerate(zip(live, tokens.tolist())):
            if len(answers[r]) < limits[r] and t not in engine.stop_ids:
                answers[r].append(t)
                if len(answers[r]) < limits[r]:
                    staying.append(row)
        if not staying:
            break
        if len(staying) < len(live):
            keep = torch.tensor(staying, dtype=torch.long, device=device)
            cache.batch_select_indices(keep)
            tokens, mask, next_position = tokens[keep], mask[keep], next_position[keep]
            live = [live[row] for row in staying]
        mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=device)], dim=1)
        context.stats.decode_steps += 1
        context.stats.forward_tokens += len(live)
        cache, logits = _last_logits(engine, tokens[:, None], mask, next_position, cache)
        next_position = next_position + 1
    return answers
