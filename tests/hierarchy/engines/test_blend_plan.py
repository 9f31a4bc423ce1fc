"""Blend plans: spans to token blocks, and rows split into cached blocks and raw stretches (no model)."""
from __future__ import annotations

import pytest

from longshap.hierarchy.engines.blend_plan import BlendPlan, Segment, plan_from_spans, segments

HEAD = (2, 10, 11)
BLOCKS = ((20, 21, 22), (30, 31), (40, 41, 42, 43))
TAIL = [50, 51]
PLAN = BlendPlan(HEAD, BLOCKS, 0.5)


def test_recomputed_tokens_are_a_rounded_up_share_of_each_block():
    assert [PLAN.recomputed(b) for b in range(3)] == [2, 1, 2]
    assert BlendPlan(HEAD, BLOCKS, 0.0).recomputed(2) == 0
    assert BlendPlan(HEAD, BLOCKS, 1.0).recomputed(2) == 4


def test_the_key_names_the_cached_tokens_not_the_share():
    assert BlendPlan(HEAD, BLOCKS, 0.0).key == PLAN.key
    assert BlendPlan(HEAD, BLOCKS[:2], 0.5).key != PLAN.key


@pytest.mark.parametrize("head, blocks, share", [((), BLOCKS, 0.5), (HEAD, (), 0.5), (HEAD, ((),), 0.5), (HEAD, BLOCKS, 1.5)])
def test_an_empty_head_or_block_or_a_share_outside_0_1_is_refused(head, blocks, share):
    with pytest.raises(ValueError):
        BlendPlan(head, blocks, share)


def test_a_coalition_row_is_its_kept_blocks_in_order_then_its_raw_tail():
    row = list(HEAD) + list(BLOCKS[0]) + list(BLOCKS[2]) + TAIL
    assert segments(row, PLAN) == [Segment(3, 6, 0), Segment(6, 10, 2), Segment(10, 12)]


def test_a_document_cut_by_a_finer_level_runs_raw_between_cached_ones():
    row = list(HEAD) + [20, 22] + list(BLOCKS[1]) + TAIL
    assert segments(row, PLAN) == [Segment(3, 5), Segment(5, 7, 1), Segment(7, 9)]


def test_blocks_are_matched_in_plan_order_only():
    row = list(HEAD) + list(BLOCKS[2]) + list(BLOCKS[0]) + TAIL
    assert segments(row, PLAN) == [Segment(3, 7, 2), Segment(7, 12)]


def test_the_tokens_whose_states_are_read_stay_raw():
    row = list(HEAD) + list(BLOCKS[0]) + list(BLOCKS[1])
    assert segments(row, PLAN) == [Segment(3, 6, 0), Segment(6, 8)]
    assert segments(list(HEAD) + list(BLOCKS[0]) + TAIL, PLAN, raw_tail=3) == [Segment(3, 8)]


def test_a_row_without_the_head_is_not_blended():
    assert segments([2, 10] + list(BLOCKS[0]) + TAIL, PLAN) is None
    assert segments(list(HEAD), PLAN) is None


def test_plans_come_from_character_spans_on_token_boundaries():
    ids = [2, 10, 11, 20, 21, 30, 50]
    offsets = [(0, 0), (0, 3), (3, 5), (5, 9), (9, 12), (12, 15), (15, 18)]
    plan = plan_from_spans(ids, offsets, [(5, 12), (12, 15)], 0.25)
    assert plan.head == (2, 10, 11) and plan.blocks == ((20, 21), (30,)) and plan.recompute == 0.25


def test_a_boundary_inside_a_token_gives_that_token_to_the_next_block():
    # A document ending in a space: " \n\n" is one token, straddling its end and the next separator.
    ids = [2, 10, 11, 20, 21, 30, 50]
    offsets = [(0, 0), (0, 3), (3, 5), (5, 9), (9, 13), (13, 15), (15, 18)]
    plan = plan_from_spans(ids, offsets, [(5, 12), (12, 15)], 0.0)
    assert plan.blocks == ((20,), (21, 30)) and plan.head == (2, 10, 11)
    tail_straddled = plan_from_spans(ids, offsets, [(5, 9), (9, 14)], 0.0)
    assert tail_straddled.blocks == ((20,), (21,))
