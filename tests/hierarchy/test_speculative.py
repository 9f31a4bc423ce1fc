"""Answer-tree verification and draft decoding must give exactly the plain greedy answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from longshap.hierarchy.engines import DRAFT, EngineStats, ModelView, hf_decoding
from longshap.hierarchy.models import load_model
from longshap.hierarchy.speculative import AnswerTree, Verdict, tree_masks, walk
from tiny_models import build_tiny_model_dir, model_view

WORDS = (
    "Answer the question using the documents. Document (Title: Paris): Paris is the capital of France. It is on the "
    "Seine. Document (Title: Berlin): Berlin is the capital of Germany. The quick brown fox jumps over the lazy dog 1998."
).split()


def coalition_prompts(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(count):
        keep = rng.random(len(WORDS)) > 0.15
        keep[:6] = True
        prompts.append(" ".join(w for w, k in zip(WORDS, keep) if k) + " Question: What is the capital of France?\nAnswer:")
    return prompts


def decode_with_tree(view: ModelView, prompts: list[str], max_new_tokens: int, chunk: int = 8) -> list[list[int]]:
    tree, answers = AnswerTree(), []
    for start in range(0, len(prompts), chunk):
        batch = view.greedy(prompts[start : start + chunk], max_new_tokens, tree=tree)
        for tokens in batch:
            tree.add(tokens)
        answers += batch
    return answers


def test_tree_structure():
    tree = AnswerTree()
    tree.add([5, 6, 7])
    tree.add([5, 6, 8])
    tree.add([9])
    tree.add([5, 6])
    assert tree.size == 5
    assert tree.path(3) == [5, 6, 7] and tree.depths[4] == 3
    visible = tree.ancestry()
    assert visible[2].tolist() == [True, True, True, False, False]  # node 3 sees 1, 2, itself
    assert visible[4].tolist() == [False, False, False, False, True]  # node 5 ([9]) sees only itself


def test_walk_accepts_inside_the_tree_and_reports_divergence():
    tree = AnswerTree()
    tree.add([5, 6, 7])
    stop = {0}
    rows = [  # the model's argmax after the root and after each node (1: 5, 2: 6, 3: 7), one row each
        [5, 6, 7, 0],
        [5, 6, 0, 0],
        [5, 9, 0, 0],
        [5, 6, 7, 4],
    ]
    asked: list[tuple[int, int]] = []

    def argmax(pairs):
        asked.extend(pairs)
        return [rows[row][node] for row, node in pairs]

    accepted, shorter, diverged, capped = walk(tree, 4, argmax, stop, 20)
    assert accepted.answer == [5, 6, 7] and shorter.answer == [5, 6]
    assert diverged.answer is None and diverged.prefix == [5, 9]
    assert capped.answer is None and capped.prefix == [5, 6, 7, 4]  # left the tree after its last node
    assert walk(tree, 4, argmax, stop, 3)[3].answer == [5, 6, 7]  # the length cap ends an answer too
    # Only positions on a row's own path are asked for, never the whole tree.
    assert sorted(set(asked)) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2), (3, 3)]
    assert walk(tree, 2, argmax, stop, 0) == [Verdict([], []), Verdict([], [])]


def test_masks_let_tree_tokens_see_only_the_prompt_and_their_ancestors():
    tree = AnswerTree()
    tree.add([5, 6])
    tree.add([7])
    positions, full, sliding = tree_masks([4, 2], 0, 4, tree, window=3, dtype=torch.float32, device="cpu")
    allowed = full[:, 0] == 0
    assert positions[1].tolist() == [0, 1, 2, 2, 2, 3, 2]
    assert allowed[1, 4].tolist() == [True, True, False, False, True, False, False]  # node [5]: prompt + itself
    assert allowed[1, 5].tolist() == [True, True, False, False, True, True, False]  # node [5, 6]
    assert allowed[1, 6].tolist() == [True, True, False, False, False, False, True]  # node [7]
    near = sliding[:, 0] == 0
    assert near[0, 5].tolist() == [False, False, False, True, True, True, False]  # position 5 sees positions 3..5


def record_prefills(monkeypatch: pytest.MonkeyPatch) -> list:
    """The rows of every prefill pass from now on (each row's prompt, once per pass that reads it)."""
    prefilled, verify = [], hf_decoding._verify_batch
    monkeypatch.setattr(hf_decoding, "_verify_batch", lambda engine, rows, *args, **kwargs: prefilled.extend(rows) or verify(engine, rows, *args, **kwargs))
    monkeypatch.setattr(hf_decoding, "_greedy_batch", lambda *_: pytest.fail("sdpa models prefill through the verification pass"))
    return prefilled


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
@pytest.mark.parametrize("seed", [0, 5])
def test_tree_verification_equals_plain_greedy(tmp_path, monkeypatch, architecture, seed):
    view = model_view(load_model(str(build_tiny_model_dir(tmp_path, architecture, seed=seed))))
    prompts = coalition_prompts(32)
    plain = view.greedy(prompts, 6)
    view.context.stats = EngineStats()
    prefilled = record_prefills(monkeypatch)
    assert decode_with_tree(view, prompts, 6) == plain
    assert view.stats.tree_checks == 24 and view.stats.tree_accepted > 0
    assert len(prefilled) == 32  # every row once: rows leaving the tree decode on from the pass that checked it


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_rows_leaving_the_tree_continue_from_the_verification_pass(tmp_path, monkeypatch, architecture):
    """A tree of wrong answers: every row diverges (at the root or inside), and decoding goes on from the pass's cache."""
    view = model_view(load_model(str(build_tiny_model_dir(tmp_path, architecture, seed=3))))
    prompts = coalition_prompts(12, seed=2)
    plain = view.greedy(prompts, 7)
    tree = AnswerTree()
    for answer in plain:
        tree.add(answer[:2] + [answer[2] + 1] if len(answer) > 2 else [7, 8])  # right start, then a wrong turn
    tree.add([5, 6, 7])
    prefilled = record_prefills(monkeypatch)
    view.context.stats = EngineStats()
    assert view.greedy(prompts, 7, tree=tree) == plain
    assert view.stats.tree_accepted < view.stats.tree_checks == 12
    assert len(prefilled) == 12  # no diverged row was prefilled again


def test_draft_model_decoding_equals_plain_greedy(tmp_path):
    target = load_model(str(build_tiny_model_dir(tmp_path / "target", "llama", seed=5)))
    draft = load_model(str(build_tiny_model_dir(tmp_path / "draft", "llama", seed=6)))
    prompts = coalition_prompts(10, seed=1)
    plain = model_view(target).greedy(prompts, 6)
    assisted = model_view(target, draft=draft)
    assert DRAFT in assisted.engine.capabilities
    assert decode_with_tree(assisted, prompts, 6, chunk=4) == plain
    assert assisted.stats.draft_target_passes > 0


def test_explainer_answers_are_the_same_with_and_without_speculation(tiny_explainer):
    request = dict(
        question="What is the capital of France?",
        documents=[{"title": "Paris", "text": "Paris is the capital of France. It is on the Seine."},
                   {"title": "Fox", "text": "The quick brown fox jumps over the lazy dog 1998."}],
        value="answers", max_new_tokens=4, levels=("document", "sentence", "word"), thresholds=0.0, budget=40,
    )
    with_tree = tiny_explainer.explain(**request, speculative=True)
    without = tiny_explainer.explain(**request, speculative=False)
    assert with_tree.answers == without.answers
    values = lambda r: [f.values_by_answer for level in r.levels for f in level.features]  # noqa: E731
    assert values(with_tree) == values(without)
    assert with_tree.stats["tree_checks"] > 0 and without.stats["tree_checks"] == 0
