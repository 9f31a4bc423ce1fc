"""Blend plans: which token spans of a request's prompts are documents whose KV states may be reused anywhere.

A plan is built once per request from the full prompt: the head (everything before
the first document, computed exactly once), then one block per document (its
separator and text). Every prompt the request scores is then split into segments: a
block found whole, in order, is read from its cached states; every other token (the
question, the answer, a document cut by a finer level's coalition) is run in full.
Pure functions on token ids: no model, no torch.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Sequence



@dataclass(frozen=True)
class BlendPlan:
    """A request's cacheable spans, and how much of each block is recomputed for every coalition."""

    head: tuple[int, ...]
    blocks: tuple[tuple[int, ...], ...]
    recompute: float
    """Share of each block's tokens, its first ones, run again against the coalition's preceding context."""
    key: str = field(default="", compare=False)
    by_start: dict[tuple[int, ...], list[int]] = field(default_factory=dict, compare=False, repr=False)
    """Blocks by their first two tokens: where a row is looked up, once per plan rather than once per row."""

    def __post_init__(self) -> None:
        if not self.head or not self.blocks or any(not block for block in self.blocks):
            raise ValueError("a blend plan needs a head and non-empty blocks")
        if not 0 <= self.recompute <= 1:
            raise ValueError(f"recompute is a share of each block's tokens, in 0..1; got {self.recompute}")
        digest = hashlib.sha1(repr((self.head, self.blocks)).encode()).hexdigest()
        object.__setattr__(self, "key", digest)
        for index, block in enumerate(self.blocks):
            self.by_start.setdefault(block[:2], []).append(index)

    def recomputed(self, block: int) -> int:
        """How many of block `block`'s first tokens are recomputed in every coalition."""
        return math.ceil(self.recompute * len(self.blocks[block]))


@dataclass(frozen=True)
class Segment:
    """A stretch of a row: block `block` read from its states (block >= 0), or raw tokens [start, end) of the row."""

    start: int
    end: int
    block: int = -1


def plan_from_spans(ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], recompute: float) -> BlendPlan:
    """The plan of a full prompt given its token ids, their character offsets and each document block's character span.

    A span boundary inside a token (a document ending in a space merges it with the
    separator after it) moves to that token's start, so the token joins the next block.
    Such a block may then not appear whole in a coalition's prompt; it is computed in
    full there, which costs time but never exactness.
    """
    def first_token_ending_after(char: int) -> int:
        return next((index for index, (_, end) in enumerate(offsets) if end > char), len(ids))

    bounds = [first_token_ending_after(start) for start, _ in spans] + [first_token_ending_after(spans[-1][1])]
    head = tuple(ids[: bounds[0]])
    blocks = tuple(tuple(ids[first:last]) for first, last in zip(bounds, bounds[1:]))
    return BlendPlan(head, blocks, recompute)


def segments(row: Sequence[int], plan: BlendPlan, raw_tail: int = 1) -> list[Segment] | None:
    """`row` after the plan's head, as cached blocks (in plan order, each at most once) and raw stretches;
    None when the row does not start with the head (it is then scored exactly).

    The row's last `raw_tail` tokens are always raw: their hidden states are read, so they must be computed.
    """
    head = len(plan.head)
    if len(row) <= head or tuple(row[:head]) != plan.head:
        return None
    found: list[Segment] = []
    position, next_block, raw_from = head, 0, head
    while position < len(row):
        match = next(
            (b for b in plan.by_start.get(tuple(row[position : position + 2]), []) if b >= next_block
             and tuple(row[position : position + len(plan.blocks[b])]) == plan.blocks[b]),
            None,
        )
        if match is None or position + len(plan.blocks[match]) > len(row) - raw_tail:
            position += 1
            continue
        if raw_from < position:
            found.append(Segment(raw_from, position))
        found.append(Segment(position, position + len(plan.blocks[match]), match))
        position += len(plan.blocks[match])
        next_block, raw_from = match + 1, position
    found.append(Segment(raw_from, len(row)))
    return found
