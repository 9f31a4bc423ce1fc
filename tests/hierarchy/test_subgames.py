"""Owen (nested) games over the feature tree, checked against brute-force nested permutations."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from longshap.hierarchy.estimators import estimate
from longshap.hierarchy.segmentation import ROOT, Document, FeatureTree
from longshap.hierarchy.subgames import RequestGame, UnitGame

DOCS = [
    Document("Alpha one two. Beta three four five.", "A"),
    Document("Gamma six. Delta seven eight. Epsilon nine.", "B"),
    Document("Zeta ten eleven.", "C"),
]


def build_tree() -> FeatureTree:
    tree = FeatureTree(DOCS)
    for doc in tree.expand(ROOT, "document"):
        for sentence in tree.expand(doc, "sentence"):
            tree.expand(sentence, "word")
    return tree


def leaves(tree: FeatureTree) -> list[str]:
    return [w for d in tree.root_children["document"] for s in tree.units[d].children for w in tree.units[s].children]


def synthetic_value(tree: FeatureTree):
    """A non-additive game on present words: weights plus dense pairwise interactions.

    Interactions link words across sentences and documents, and a saturating term adds
    interactions of every order: a pairwise game alone is linear in each outer unit's
    presence, so any context weighting with the right marginals would pass.
    """
    words = leaves(tree)
    rng = np.random.default_rng(3)
    weight = dict(zip(words, rng.normal(size=len(words))))
    pairs = [pair for pair in itertools.combinations(words, 2) if rng.random() < 0.3]
    bonus = dict(zip(pairs, rng.normal(size=len(pairs))))

    def present(absent: frozenset[str]) -> set[str]:
        return {w for w in words if not any(a in absent for a in tree.ancestors(w))}

    def value(absent_sets):
        out = []
        for absent in absent_sets:
            on = present(absent)
            linear = sum(weight[w] for w in on)
            out.append(linear + sum(b for (x, y), b in bonus.items() if x in on and y in on) + 2.0 * math.tanh(linear))
        return np.array(out)

    return value, present


def brute_force_owen(tree: FeatureTree, value, target_parent: str) -> dict[str, float]:
    """Average marginal contribution over every nested ordering (independent of UnitGame's code)."""
    chain = tree.ancestors(target_parent)
    sibling_lists = [tree.siblings(a) for a in chain]
    players = tree.units[target_parent].children
    totals = dict.fromkeys(players, 0.0)
    count = 0
    for orders in itertools.product(*(itertools.permutations(s) for s in sibling_lists)):
        absent_outer = set()
        for ancestor, order in zip(chain, orders):
            absent_outer.update(order[order.index(ancestor) + 1 :])
        for inner in itertools.permutations(players):
            count += 1
            for k, player in enumerate(inner):
                without = frozenset(absent_outer | set(inner[k:]))
                with_player = frozenset(absent_outer | set(inner[k + 1 :]))
                totals[player] += value([with_player])[0] - value([without])[0]
    return {p: t / count for p, t in totals.items()}


@pytest.mark.parametrize("parent", ["d1", "d0.s1", "d1.s1"])
def test_exact_owen_values_match_nested_permutations(parent):
    tree = build_tree()
    value, _ = synthetic_value(tree)
    request = RequestGame(lambda absent: frozenset(absent), value)
    players = tree.units[parent].children
    game = UnitGame(request, tree, parent, players, "owen")
    result = estimate(game, len(players), method="exact", budget=10**6)
    reference = brute_force_owen(tree, value, parent)
    np.testing.assert_allclose(result.values, [reference[p] for p in players], atol=1e-10)
    assert np.all(result.stderr == 0)


def test_owen_levels_add_up_to_their_parent():
    """Nested values are one game: a document's sentences sum to the document's Shapley value."""
    tree = build_tree()
    value, _ = synthetic_value(tree)
    request = RequestGame(lambda absent: frozenset(absent), value)
    docs = tree.root_children["document"]
    doc_values = estimate(UnitGame(request, tree, ROOT, docs, "owen"), len(docs), method="exact").values
    for doc, doc_value in zip(docs, doc_values):
        sentences = tree.units[doc].children
        sentence_values = estimate(UnitGame(request, tree, doc, sentences, "owen"), len(sentences), method="exact", budget=10**6).values
        assert sentence_values.sum() == pytest.approx(doc_value, abs=1e-10)
        for sentence, sentence_value in zip(sentences, sentence_values):
            words = tree.units[sentence].children
            word_values = estimate(UnitGame(request, tree, sentence, words, "owen"), len(words), method="exact", budget=10**6).values
            assert word_values.sum() == pytest.approx(sentence_value, abs=1e-10)


def test_local_mode_keeps_everything_outside_present():
    tree = build_tree()
    value, _ = synthetic_value(tree)
    request = RequestGame(lambda absent: frozenset(absent), value)
    words = tree.units["d1.s1"].children
    game = UnitGame(request, tree, "d1.s1", words, "local")
    assert game.sample_context(np.random.default_rng(0)) is None
    result = estimate(game, len(words), method="exact")
    full = value([frozenset()])[0]
    nothing = value([frozenset(words)])[0]
    assert result.values.sum() == pytest.approx(full - nothing, abs=1e-10)


def test_sampled_contexts_follow_the_owen_distribution():
    tree = build_tree()
    value, _ = synthetic_value(tree)
    game = UnitGame(RequestGame(lambda a: a, value), tree, "d1.s1", tree.units["d1.s1"].children, "owen")
    support = dict(game.context_support(limit=10**6))
    assert sum(support.values()) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    draws = 20000
    counts: dict = {}
    for _ in range(draws):
        context = game.sample_context(rng)
        counts[context] = counts.get(context, 0) + 1
    assert set(counts) <= set(support)
    for context, probability in support.items():
        tolerance = 4 * math.sqrt(probability * (1 - probability) / draws) + 1e-3
        assert counts.get(context, 0) / draws == pytest.approx(probability, abs=tolerance)


@pytest.mark.parametrize("mode", ["owen", "local"])
@pytest.mark.parametrize("method", ["permutation", "kernel", "leverage", "auto"])
def test_sampling_estimators_converge_to_exact_subgame_values(method, mode):
    tree = build_tree()
    value, _ = synthetic_value(tree)
    request = RequestGame(lambda absent: frozenset(absent), value)
    players = tree.units["d1"].children
    exact = estimate(UnitGame(request, tree, "d1", players, mode), len(players), method="exact", budget=10**6).values
    sampled = estimate(UnitGame(request, tree, "d1", players, mode), len(players), method=method, budget=4000, seed=1)
    assert np.all(np.abs(sampled.values - exact) <= 4 * sampled.stderr + 1e-9)
    assert np.abs(sampled.values - exact).max() < 0.25


def test_request_game_evaluates_each_absent_set_once():
    calls = []

    def value(prompts):
        calls.extend(prompts)
        return np.zeros(len(prompts))

    request = RequestGame(lambda absent: tuple(sorted(absent)), value)
    sets = [frozenset(), frozenset({"d0"}), frozenset(), frozenset({"d0"})]
    request.values(sets)
    request.values(sets)
    assert calls == [(), ("d0",)]
    assert request.evaluations == 2
