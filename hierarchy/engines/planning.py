"""Batch planning: which rows share a forward pass. Pure functions on token ids, no model.

Coalitions of one request differ only after the first removed unit, so rows go in
lexicographic token order and each batch's longest common prefix runs once. Where to
close a batch weighs the prefix the next row would cut, the pads it would add and
what one more pass costs.
"""
from __future__ import annotations

from typing import Sequence

PASS_OVERHEAD_TOKENS = 64
"""What one more forward pass costs, in forwarded tokens, when deciding where to close a batch."""
DECODE_CACHE_FACTOR = 4
"""Rows decoded together may hold this many times the batch token budget in KV states.

A decoding step forwards one token per row but reads every weight, the LM head's
included; on a CPU that read, not the arithmetic, sets its time, so rows prefilled in
separate (prefix-sharing) batches decode together, as many as their states allow."""


def common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


def plan_batches(
    rows: Sequence[Sequence[int]], max_tokens: int, max_rows: int, share: bool, prefixes_kept: bool
) -> list[list[int]]:
    """Group row indices so each padded batch stays under `max_tokens` (its shared prefix counted once).

    With `share`, rows go in lexicographic order (the common prefix of a run of sorted
    rows is that of its first and last), and a batch of k rows sharing L tokens is
    closed before a row that would cut the shared prefix to L' or add P pads when that
    costs the batch more than the row gains, (L - L')(k - 1) + P > L': batches then
    follow the groups of coalitions that share an outer context, and rows of very
    different lengths do not pad each other. When `prefixes_kept` (states kept across
    batches) the next batch finds L' stored, so closing only costs a pass. Without
    `share`, longest first, which minimises padding.
    """
    if share:
        order = sorted(range(len(rows)), key=lambda i: list(rows[i]))
    else:
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    width = shared = 0
    for index in order:
        row = rows[index]
        grown = max(width, len(row))
        narrowed = min(shared, common_prefix(rows[current[0]], row)) if current else len(row)
        area = (len(current) + 1) * (grown - (narrowed if share else 0))
        full = area > max_tokens or len(current) >= max_rows
        # A batch of several rows stores its shared prefix; a row alone only reads stored ones.
        closing = min(narrowed, PASS_OVERHEAD_TOKENS) if prefixes_kept and len(current) > 1 else narrowed
        padding = len(current) * (grown - width) + grown - len(row)
        wasteful = share and current and (shared - narrowed) * (len(current) - 1) + padding > closing
        if current and (full or wasteful):
            batches.append(current)
            current, grown, narrowed = [], len(row), len(row)
        current.append(index)
        width, shared = grown, narrowed
    if current:
        batches.append(current)
    return batches


def decode_groups(rows: Sequence[Sequence[int]], batches: Sequence[Sequence[int]], max_state_tokens: int) -> list[list[int]]:
    """Consecutive prefill batches whose rows can then decode together within `max_state_tokens` of states."""
    groups: list[list[int]] = []
    width = 0
    for batch in batches:
        batch_width = max(len(rows[i]) for i in batch)
        if groups and (len(groups[-1]) + len(batch)) * max(width, batch_width) <= max_state_tokens:
            groups[-1].extend(batch)
            width = max(width, batch_width)
        else:
            groups.append(list(batch))
            width = batch_width
    return groups


def split_counts(counts: dict[str, int], weights: Sequence[int]) -> list[dict[str, int]]:
    """Share each counter of a merged call out in proportion to `weights`, in whole units that add up exactly."""
    shares: list[dict[str, int]] = [{} for _ in weights]
    total = sum(weights)
    for name, value in counts.items():
        exact = [value * (w / total if total else 1 / len(weights)) for w in weights]
        whole = [int(x) for x in exact]
        left = value - sum(whole)
        for index in sorted(range(len(weights)), key=lambda i: -(exact[i] - whole[i]))[:left]:
            whole[index] += 1
        for share, amount in zip(shares, whole):
            share[name] = amount
    return shares
