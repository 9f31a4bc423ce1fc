"""Batch planning: pure functions on token ids (no model): which rows share a pass, which decode together, how costs split."""
from __future__ import annotations

import numpy as np
import pytest

from longshap.hierarchy.engines.planning import common_prefix, decode_groups, plan_batches, split_counts


def random_rows(rng: np.random.Generator, count: int) -> list[list[int]]:
    """Coalition-like rows: a shared instruction, then a few variants, with very different lengths."""
    head = list(range(10, 40))
    rows = []
    for _ in range(count):
        variant = [int(t) for t in rng.integers(50, 53, size=int(rng.integers(0, 4)))]
        rows.append(head[: int(rng.integers(0, 31))] + variant + [int(t) for t in rng.integers(60, 90, size=int(rng.integers(1, 60)))])
    return rows


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([7], [8]) == 0


@pytest.mark.parametrize("prefixes_kept", [False, True], ids=["no-cache", "cache"])
def test_rows_of_very_different_lengths_do_not_pad_each_other(prefixes_kept):
    """Pads cost a pass what tokens do: a row 300 tokens longer than its batch starts its own, with or without the cache."""
    prefix = list(range(10, 110))
    similar = [prefix + [5] * 10, prefix + [6] * 12, prefix + [7] * 11]
    batches = plan_batches([*similar, prefix + [8] * 300], 4096, 32, share=True, prefixes_kept=prefixes_kept)
    assert sorted(sorted(batch) for batch in batches) == [[0, 1, 2], [3]]


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("prefixes_kept", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_every_row_once_within_the_budgets(share, prefixes_kept, seed):
    rows = random_rows(np.random.default_rng(seed), 40)
    max_tokens, max_rows = 256, 6
    batches = plan_batches(rows, max_tokens, max_rows, share, prefixes_kept)
    assert sorted(i for batch in batches for i in batch) == list(range(len(rows)))
    for batch in batches:
        assert 1 <= len(batch) <= max_rows
        if len(batch) == 1:
            continue  # a row alone always runs, however long
        width = max(len(rows[i]) for i in batch)
        shared = min(common_prefix(rows[batch[0]], rows[i]) for i in batch) if share else 0
        assert len(batch) * (width - shared) <= max_tokens  # the shared prefix is counted once


def test_sharing_orders_rows_lexicographically_and_plain_batches_longest_first():
    rows = [[3, 1], [1, 2, 3], [1, 2], [2], [1, 2, 3, 4, 5]]
    shared = [i for batch in plan_batches(rows, 10**6, 100, share=True, prefixes_kept=False) for i in batch]
    assert [rows[i] for i in shared] == sorted(rows)
    plain = plan_batches(rows, 10**6, 100, share=False, prefixes_kept=False)
    assert plain == [[4, 1, 0, 2, 3]]  # one batch, longest first (ties keep their order)
    assert plan_batches(rows, 10**6, 2, share=False, prefixes_kept=False) == [[4, 1], [0, 2], [3]]


def test_shared_prefixes_group_coalitions_of_one_outer_context():
    """Two families of rows with different long prefixes: no batch mixes them, which would cut the shared prefix to nothing."""
    first, second = list(range(100, 180)), list(range(200, 280))
    rows = [first + [i] * (1 + i % 3) for i in range(4)] + [second + [i] * (1 + i % 3) for i in range(4)]
    for kept in (False, True):
        batches = plan_batches(rows, 4096, 32, share=True, prefixes_kept=kept)
        assert sorted(sorted(batch) for batch in batches) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_decode_groups_merge_consecutive_batches_within_the_state_budget():
    rows = [[1] * 10, [2] * 10, [3] * 20, [4] * 5, [5] * 5, [6] * 40]
    batches = [[0, 1], [2], [3, 4], [5]]
    # Merged while (rows in the group) * (widest row) stays within the budget.
    assert decode_groups(rows, batches, 60) == [[0, 1, 2], [3, 4], [5]]
    assert decode_groups(rows, batches, 10**6) == [[0, 1, 2, 3, 4, 5]]
    assert decode_groups(rows, batches, 1) == [[0, 1], [2], [3, 4], [5]]  # a batch alone always fits
    assert decode_groups(rows, [], 100) == []


def test_split_counts_is_exact_and_proportional():
    shares = split_counts({"forward_tokens": 10, "forward_passes": 1, "evaluations": 0}, [1, 1, 1])
    assert sorted(s["forward_tokens"] for s in shares) == [3, 3, 4]
    assert sum(s["forward_passes"] for s in shares) == 1 and all(s["evaluations"] == 0 for s in shares)
    assert split_counts({"forward_tokens": 90}, [1, 2, 0]) == [{"forward_tokens": 30}, {"forward_tokens": 60}, {"forward_tokens": 0}]
    assert split_counts({"n": 7}, [0, 0]) in ([{"n": 4}, {"n": 3}], [{"n": 3}, {"n": 4}])  # no weight at all: even shares
    rng = np.random.default_rng(0)
    for _ in range(300):
        weights = [int(w) for w in rng.integers(0, 50, size=int(rng.integers(1, 8)))]
        counts = {name: int(v) for name, v in zip("abcd", rng.integers(0, 10**6, size=4))}
        shares = split_counts(counts, weights)
        assert len(shares) == len(weights)
        total = sum(weights)
        for name, value in counts.items():
            parts = [share[name] for share in shares]
            assert sum(parts) == value and all(isinstance(p, int) and p >= 0 for p in parts)  # whole units, adding up exactly
            exact = [value * (w / total if total else 1 / len(weights)) for w in weights]
            assert all(abs(p - e) < 1 for p, e in zip(parts, exact))  # each within one unit of its exact share
