"""Scoring on the transformers engine: log-probabilities of continuations, logits only where they are read.

Rows are right-padded after their shared prefix, so every row's tokens stay
contiguous (exact for sliding-window attention too); hidden states are gathered at
each row's own last positions and only those go through the LM head, which with
Gemma's 262k-token vocabulary dominates CPU time otherwise.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from longshap.hierarchy.engines.base import RunContext, ScoreRow, TokenRow
    from longshap.hierarchy.engines.hf_engine import TransformersEngine


def score_rows(engine: TransformersEngine, rows: Sequence[ScoreRow], context: RunContext) -> list[np.ndarray]:
    """For each (prompt ids, continuations) row, the continuations' log-probabilities.

    A row whose continuations are all single tokens takes one pass (all ids read from
    the last position); otherwise each (prompt, continuation) pair is a sequence of its own.
    """
    # (row, column or None for a single-token row, token ids); a single-token row reads all its ids at once.
    items: list[tuple[int, int | None, list[int]]] = []
    for r, (prompt, continuations) in enumerate(rows):
        if all(len(c) == 1 for c in continuations):
            items.append((r, None, list(prompt)))
        else:
            items.extend((r, c, list(prompt) + list(continuation)) for c, continuation in enumerate(continuations))
    sequences = [tokens for _, _, tokens in items]

    def score(batch: list[int]) -> list:
        lengths = [0 if (col := items[i][1]) is None else len(rows[items[i][0]][1][col]) for i in batch]
        keep = max(lengths) + 1
        logprobs = last_logprobs(engine, [sequences[i] for i in batch], keep, context)
        scores: list[np.ndarray | float] = []
        for j, (index, length) in enumerate(zip(batch, lengths)):
            row, column, _ = items[index]
            if column is None:
                ids = torch.tensor([c[0] for c in rows[row][1]], device=engine.device)
                scores.append(logprobs[j, keep - 1, ids].double().cpu().numpy())
            else:
                target = torch.tensor(rows[row][1][column], device=engine.device)
                span = logprobs[j, keep - 1 - length : keep - 1, :]
                scores.append(span.gather(1, target[:, None]).sum().item())
        return scores

    results = [np.zeros(len(continuations)) for _, continuations in rows]
    for (row, column, _), value in zip(items, engine.map_batches(sequences, score, context, blend=context.blend)):
        if column is None:
            results[row] = value
        else:
            results[row][column] = value
    return results


def token_rows(engine: TransformersEngine, rows: Sequence[TokenRow], context: RunContext) -> list[np.ndarray]:
    """Per-token log-probabilities of each (prompt ids, continuation) row."""
    sequences = [list(prompt) + list(tokens) for prompt, tokens in rows]

    def score(batch: list[int]) -> list[np.ndarray]:
        keep = max(len(rows[i][1]) for i in batch) + 1
        logprobs = last_logprobs(engine, [sequences[i] for i in batch], keep, context)
        scores = []
        for j, index in enumerate(batch):
            target = torch.tensor(rows[index][1], device=engine.device)
            span = logprobs[j, keep - 1 - len(target) : keep - 1, :]
            scores.append(span.gather(1, target[:, None])[:, 0].double().cpu().numpy())
        return scores

    return engine.map_batches(sequences, score, context, blend=context.blend)


def last_logprobs(engine: TransformersEngine, rows: Sequence[Sequence[int]], keep: int, context: RunContext) -> torch.Tensor:
    """Log-softmax over the vocabulary at the last `keep` positions of each row: (rows, keep, vocab).

    In a run with a blend plan the rows are read from the documents' cached states instead (`hf_blend`).
    """
    if context.blend is not None:
        blended = engine.blend.last_logprobs(rows, keep, context.blend, context)
        if blended is not None:
            return blended
    shared = engine.prefix.shared_length(rows, keep, context)
    cache = engine.prefix.batch_cache(rows, shared, context) if shared else None
    suffixes = [row[shared:] for row in rows]
    width = max(len(suffix) for suffix in suffixes)
    device = engine.device
    ids = torch.full((len(rows), width), engine.pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), shared + width), dtype=torch.long, device=device)
    for r, suffix in enumerate(suffixes):
        ids[r, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
        mask[r, : shared + len(suffix)] = 1
    positions = torch.arange(shared, shared + width, device=device).expand(len(rows), width)
    engine.count_pass(context, sum(len(suffix) for suffix in suffixes))
    hidden = engine.run_backbone(cache, input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
    ends = torch.tensor([len(suffix) for suffix in suffixes], device=device)
    # A short row batched with a longer continuation has fewer than `keep` tokens; the
    # positions before its start are never read (its own span is shorter), so clamp them.
    index = (ends[:, None] - keep + torch.arange(keep, device=device)[None, :]).clamp(min=0)
    gathered = hidden.gather(1, index[:, :, None].expand(-1, -1, hidden.shape[-1]))
    return torch.log_softmax(engine.logits(gathered), dim=-1)
