"""KV caches of token prefixes kept across batches: a radix tree bounded in bytes, least recently used out first.

The coalitions of one request share long prefixes (instruction, the first documents)
that batch boundaries cut apart: each batch used to recompute its own shared prefix.
Here every computed prefix is stored as a path of edges, each edge holding the keys
and values of its own tokens for every layer, so a later batch (or level, or request
with the same model) only computes what no stored path covers. Edges hold the full
per-layer states, sliding-window layers included; the engine trims those to the window
when it builds a batch cache, so attention stays exactly what a fresh pass computes.

Memory is bounded by `max_bytes`: after each insertion the least recently used leaves
go until the tree fits (a leaf, so no stored path ever loses its middle).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

LayerStates = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, (keys, values) of shape (1, heads, tokens, head_dim)."""


@dataclass(eq=False)
class _Node:
    tokens: tuple[int, ...]
    states: LayerStates
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    last_used: int = 0

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.states)

    def split(self, at: int) -> _Node:
        """Cut this edge after `at` tokens; the head becomes a new parent of this node, which is returned."""
        assert self.parent is not None, "the root is never split"
        head = _Node(self.tokens[:at], [(k[:, :, :at].clone(), v[:, :, :at].clone()) for k, v in self.states], self.parent, last_used=self.last_used)
        self.parent.children[self.tokens[0]] = head
        self.tokens = self.tokens[at:]
        self.states = [(k[:, :, at:].clone(), v[:, :, at:].clone()) for k, v in self.states]
        self.parent = head
        head.children[self.tokens[0]] = self
        return head


class PrefixKVCache:
    """Stores per-layer KV states of token prefixes; `lookup` returns the longest stored prefix of a query."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes: must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._root = _Node((), [], None)
        self._clock = itertools.count(1)

    def _walk(self, tokens: Sequence[int]) -> tuple[int, list[tuple[_Node, int]]]:
        """Matched length and the path of (node, tokens of its edge used)."""
        node, matched, path = self._root, 0, []
        while matched < len(tokens):
            child = node.children.get(tokens[matched])
            if child is None:
                break
            used = 0
            for a, b in zip(child.tokens, tokens[matched:]):
                if a != b:
                    break
                used += 1
            path.append((child, used))
            matched += used
            if used < len(child.tokens):
                break
            node = child
        return matched, path

    def match_length(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of `tokens` have stored states (no recency update)."""
        return self._walk(tokens)[0]

    def lookup(self, tokens: Sequence[int]) -> tuple[int, LayerStates | None]:
        """The longest stored prefix of `tokens`: its length and per-layer states (None when nothing matches)."""
        matched, path = self._walk(tokens)
        if matched == 0:
            return 0, None
        tick = next(self._clock)
        for node, _ in path:
            node.last_used = tick
        layers = len(path[0][0].states)
        states = [
            (
                torch.cat([node.states[i][0][:, :, :used] for node, used in path], dim=2),
                torch.cat([node.states[i][1][:, :, :used] for node, used in path], dim=2),
            )
            for i in range(layers)
        ]
        return matched, states

    def insert(self, tokens: Sequence[int], start: int, states: LayerStates) -> None:
        """Store `states` (covering tokens[start:]) under the prefix tokens[:start], then evict down to the bound.

        If tokens[:start] is no longer stored (evicted meanwhile), nothing is stored:
        the new states would have no path to hang from.
        """
        if self.max_bytes == 0:
            return
        tokens = tuple(tokens)
        matched, path = self._walk(tokens)
        if matched < start or matched == len(tokens):
            return
        parent = self._root
        if path:
            node, used = path[-1]
            parent = node.split(used) if used < len(node.tokens) else node
        offset = matched - start
        own = [(k[:, :, offset:].clone(), v[:, :, offset:].clone()) for k, v in states]
        tick = next(self._clock)
        leaf = _Node(tokens[matched:], own, parent, last_used=tick)
        parent.children[leaf.tokens[0]] = leaf
        node = parent
        while node is not self._root:
            node.last_used = tick
            assert node.parent is not None, "every node below the root has a parent"
            node = node.parent
        self.nbytes += leaf.nbytes
        self._evict()

    def _evict(self) -> None:
        while self.nbytes > self.max_bytes:
            leaves = [node for node in self._nodes() if not node.children]
            victim = min(leaves, key=lambda node: node.last_used)
            del victim.parent.children[victim.tokens[0]]
            self.nbytes -= victim.nbytes

    def _nodes(self):
        stack = list(self._root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def clear(self) -> None:
        self._root.children.clear()
        self.nbytes = 0

    @property
    def stored_tokens(self) -> int:
        return sum(len(node.tokens) for node in self._nodes())
