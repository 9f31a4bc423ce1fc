"""Verifying already-seen answers in one forward pass (TextGenSHAP's speculative decoding).

Across the coalitions of one request the model gives few distinct answers. Every
answer decoded so far (with the stop token that ended it) is kept in a prefix tree.
Under a new coalition the prompt and the whole tree go through the model once, with
a tree-shaped attention mask: each tree token sees the prompt and its own ancestors.
Following the argmax from the root down the tree either ends on a stop token inside
the tree, and the greedy answer is known without decoding, or leaves the tree at some
node, and greedy decoding continues from there (optionally with a draft model).
The masks are built from positions, so sliding-window layers see exactly the tokens
they would see in plain decoding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch


@dataclass
class AnswerTree:
    """A prefix tree of token sequences; node 0 is the root (the end of the prompt)."""

    tokens: list[int] = field(default_factory=lambda: [-1])
    parents: list[int] = field(default_factory=lambda: [-1])
    depths: list[int] = field(default_factory=lambda: [0])
    children: list[dict[int, int]] = field(default_factory=lambda: [{}])

    def add(self, sequence: Sequence[int]) -> None:
        node = 0
        for token in sequence:
            if token not in self.children[node]:
                self.children[node][token] = len(self.tokens)
                self.tokens.append(token)
                self.parents.append(node)
                self.depths.append(self.depths[node] + 1)
                self.children.append({})
            node = self.children[node][token]

    @property
    def size(self) -> int:
        """Number of token nodes (the root excluded)."""
        return len(self.tokens) - 1

    def path(self, node: int) -> list[int]:
        tokens = []
        while node > 0:
            tokens.append(self.tokens[node])
            node = self.parents[node]
        return tokens[::-1]

    def ancestry(self) -> torch.Tensor:
        """visible[i, j]: token node j+1 is node i+1 itself or one of its ancestors."""
        n = self.size
        visible = torch.zeros((n, n), dtype=torch.bool)
        for node in range(1, n + 1):
            walker = node
            while walker > 0:
                visible[node - 1, walker - 1] = True
                walker = self.parents[walker]
        return visible


@dataclass
class Verdict:
    """Outcome of walking the tree for one row: an accepted answer or where it diverged."""

    answer: list[int] | None
    prefix: list[int]
    """Tokens known to be the greedy continuation (the tree path plus the divergent token)."""


def walk(
    tree: AnswerTree, rows: int, argmax: Callable[[Sequence[tuple[int, int]]], Sequence[int]], stop_ids: set[int], max_new_tokens: int
) -> list[Verdict]:
    """Follow every row's argmax from the root, all rows one depth at a time.

    `argmax(pairs)` gives the model's argmax after tree node `node` of row `row` for
    each (row, node) pair. Asking only along the path walked, not at every tree node,
    keeps LM-head work (a vocabulary-wide matrix product per position, costlier than
    the rest of a small model) to the answer's length instead of the tree's size.
    """
    if max_new_tokens == 0:
        return [Verdict(answer=[], prefix=[]) for _ in range(rows)]
    nodes = [0] * rows
    verdicts: list[Verdict | None] = [None] * rows
    active = list(range(rows))
    while active:
        walking = []
        for row, token in zip(active, argmax([(row, nodes[row]) for row in active])):
            node = nodes[row]
            path = tree.path(node)
            child = tree.children[node].get(token)
            if token in stop_ids:
                verdicts[row] = Verdict(answer=path, prefix=path)
            elif child is None:
                verdicts[row] = Verdict(answer=None, prefix=path + [token])
            elif len(path) + 1 == max_new_tokens:  # the length cap ends an answer too: no argmax needed after it
                verdicts[row] = Verdict(answer=path + [token], prefix=path + [token])
            else:
                nodes[row] = child
                walking.append(row)
        active = walking
    assert all(verdict is not None for verdict in verdicts), "every row ends on a stop, a divergence or the length cap"
    return [verdict for verdict in verdicts if verdict is not None]


def tree_masks(
    prompt_lengths: Sequence[int], shared: int, width: int, tree: AnswerTree, window: int | None, dtype: torch.dtype, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Position ids and additive attention masks (full, sliding) for rows laid out as
    [shared prefix (cached)] [own prompt suffix, right-padded to `width`] [tree tokens]."""
    rows, n_tree = len(prompt_lengths), tree.size
    queries = width + n_tree
    depths = torch.tensor(tree.depths[1:], device=device)
    positions = torch.zeros((rows, queries), dtype=torch.long, device=device)
    allowed = torch.zeros((rows, queries, shared + queries), dtype=torch.bool, device=device)
    key_positions = torch.zeros((rows, shared + queries), dtype=torch.long, device=device)
    ancestry = tree.ancestry().to(device)
    for r, length in enumerate(prompt_lengths):
        own = length - shared
        suffix_positions = torch.arange(shared, length, device=device)
        tree_positions = length + depths - 1
        positions[r, :own] = suffix_positions
        positions[r, own:width] = length  # pads: masked out as keys, ignored as queries
        positions[r, width:] = tree_positions
        key_positions[r, :shared] = torch.arange(shared, device=device)
        key_positions[r, shared:] = positions[r]
        causal = torch.arange(own, device=device)
        allowed[r, :own, :shared] = True
        allowed[r, :own, shared : shared + own] = causal[None, :] <= causal[:, None]
        allowed[r, width:, : shared + own] = True
        allowed[r, width:, shared + width :] = ancestry
    near = (positions[:, :, None] - key_positions[:, None, :]) < window if window is not None else None
    return positions, additive_mask(allowed, dtype), additive_mask(allowed & near, dtype) if near is not None else None


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(rows, queries, keys) booleans as an additive mask (rows, 1, queries, keys); a query that may see no key
    (a pad) sees the first one, so its softmax stays finite."""
    first_key = torch.arange(allowed.shape[-1], device=allowed.device) == 0
    allowed = allowed | (~allowed.any(-1, keepdim=True) & first_key)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
