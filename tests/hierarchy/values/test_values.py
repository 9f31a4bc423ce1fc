"""Value functions: what they return for a batch of prompts, against the model view directly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from longshap.hierarchy.models import load_model
from longshap.hierarchy.values import VALUE_FUNCTIONS, Target, build_value_function
from longshap.hierarchy.values.answers import AnswerDistribution, normalise_answer
from longshap.hierarchy.values.label import label_token_ids, normalised_label_logprobs
from tiny_models import model_view

FULL = "Question: What is the capital of France?\nAnswer:"
PROMPTS = [FULL, "Paris is the capital of France.\n" + FULL, "Answer:"]
LABELS = ["negative", "positive", "neutral"]


@pytest.fixture(scope="module")
def view(tiny_llama_dir):
    return model_view(load_model(str(tiny_llama_dir), device="cpu"))


def test_registry_names_and_unknown_name(view):
    assert {"logprob", "probability", "label", "answers"} <= set(VALUE_FUNCTIONS)
    with pytest.raises(ValueError, match="unknown value function 'nope'"):
        build_value_function("nope", view, Target(FULL, answer="Paris"))


def test_logprob_is_session_logprob_of_space_answer(view):
    value = build_value_function("logprob", view, Target(FULL, answer="  the capital  "))
    assert value.name == "logprob" and value.columns == ["the capital"]
    tokens = view.continuation_ids(FULL, " the capital")
    assert value.tokens == tokens and len(tokens) > 1
    out = value(PROMPTS)
    assert out.shape == (len(PROMPTS), 1 + len(tokens))
    np.testing.assert_allclose(out[:, 0], view.continuation_logprobs(PROMPTS, [tokens])[:, 0], atol=1e-5)
    assert np.all(out < 0)
    # A different answer is a different value.
    other = build_value_function("logprob", view, Target(FULL, answer="Berlin"))(PROMPTS)
    assert not np.allclose(other[:, 0], out[:, 0])


def test_logprob_token_columns_are_each_tokens_conditional_logprob(view):
    value = build_value_function("logprob", view, Target(FULL, answer="the capital"))
    assert value.token_columns == [view.engine.tokenizer.decode([t]) for t in value.tokens]
    out = value(PROMPTS)
    np.testing.assert_allclose(out[:, 1:].sum(axis=1), out[:, 0], atol=1e-12)
    for row, prompt in enumerate(PROMPTS):  # column 1 + t is log p(token t | prompt + the tokens before it), one plain forward
        ids = view.encode_prompt(prompt) + value.tokens
        with torch.no_grad():
            logprobs = torch.log_softmax(view.engine.model(torch.tensor([ids])).logits[0].double(), dim=-1)
        start = len(ids) - len(value.tokens)
        expected = [float(logprobs[start + t - 1, token]) for t, token in enumerate(value.tokens)]
        np.testing.assert_allclose(out[row, 1:], expected, atol=1e-4)


def test_per_token_scores_cost_no_extra_model_work(view):
    value = build_value_function("logprob", view, Target(FULL, answer="the capital"))
    before = view.stats.as_dict()
    value(PROMPTS)
    middle = view.stats.as_dict()
    view.continuation_logprobs(PROMPTS, [value.tokens])
    after = view.stats.as_dict()
    assert {k: middle[k] - before[k] for k in before} == {k: after[k] - middle[k] for k in before}


def test_logprob_rejects_empty_answer(view):
    for answer in (None, "", "   "):
        with pytest.raises(ValueError, match="answer"):
            build_value_function("logprob", view, Target(FULL, answer=answer))


def test_probability_is_exp_logprob(view):
    target = Target(FULL, answer="Paris")
    logprob = build_value_function("logprob", view, target)(PROMPTS)
    probability = build_value_function("probability", view, target)(PROMPTS)
    np.testing.assert_allclose(probability[:, 0], np.exp(logprob[:, 0]), rtol=1e-12)
    assert np.all((probability[:, 0] > 0) & (probability[:, 0] < 1))
    # Token columns are the steps of the prefix probability: they add up to P(answer) - 1.
    np.testing.assert_allclose(probability[:, 1:].sum(axis=1), probability[:, 0] - 1, atol=1e-12)
    np.testing.assert_allclose(probability[:, 1], np.exp(logprob[:, 1]) - 1, atol=1e-12)


def test_label_value_normalised_over_labels(view):
    label_ids = label_token_ids(view, FULL, LABELS)
    assert label_ids == [view.continuation_ids(FULL, " " + label) for label in LABELS]
    raw = view.continuation_logprobs(PROMPTS, label_ids)
    normalised = normalised_label_logprobs(view, PROMPTS, label_ids)
    np.testing.assert_allclose(np.exp(normalised).sum(axis=1), 1.0, atol=1e-12)
    # Normalising only shifts each row: differences between labels are the raw ones.
    np.testing.assert_allclose(normalised - normalised[:, :1], raw - raw[:, :1], atol=1e-9)
    per_label = np.column_stack(
        [build_value_function("label", view, Target(FULL, labels=LABELS, label_index=i))(PROMPTS) for i in range(len(LABELS))]
    )
    np.testing.assert_allclose(per_label, normalised, atol=1e-9)
    np.testing.assert_allclose(np.exp(per_label).sum(axis=1), 1.0, atol=1e-9)
    value = build_value_function("label", view, Target(FULL, labels=LABELS, label_index=1))
    assert value.columns == ["positive"]


def test_label_needs_labels_and_index(view):
    with pytest.raises(ValueError, match="labels"):
        build_value_function("label", view, Target(FULL, labels=LABELS))
    with pytest.raises(ValueError, match="labels"):
        build_value_function("label", view, Target(FULL, label_index=0))


@pytest.mark.parametrize(
    "a, b",
    [("Paris", "paris"), ("Paris.", "paris"), ("  the   Eiffel Tower! ", "the eiffel tower"), ('"Yes"', "yes"), ("Paris,", "PARIS")],
)
def test_normalise_answer_merges_variants(a, b):
    assert normalise_answer(a) == normalise_answer(b)


def test_normalise_answer_keeps_different_answers_apart():
    assert normalise_answer("Paris") != normalise_answer("Paris, Texas")
    assert normalise_answer("U.S.") == "u.s"  # only trailing punctuation goes


class FakeSession:
    """Greedy answers scripted per prompt, to control which answers appear."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls = []
        self.trees = []

    def greedy(self, prompts, max_new_tokens, tree=None):
        self.calls.append(max_new_tokens)
        self.trees.append(tree)
        return [list(self.answers[p].encode()) for p in prompts]

    def decode(self, tokens):
        return bytes(tokens).decode().strip()


def test_answers_one_hot_and_growing_columns():
    view = FakeSession({"a": " Paris.", "b": "paris", "c": "Berlin", "d": "  Rome ", "e": "BERLIN!"})
    value = AnswerDistribution(view, Target("full", answer="Paris", max_new_tokens=7, speculative=True))
    assert value.columns == ["Paris"]
    first = value(["a", "c", "b"])
    np.testing.assert_array_equal(first, [[1, 0], [0, 1], [1, 0]])
    assert value.columns == ["Paris", "Berlin"]
    second = value(["d", "e", "a"])
    np.testing.assert_array_equal(second, [[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    assert value.columns == ["Paris", "Berlin", "Rome"]
    assert value.counts == [3, 2, 1]
    assert view.calls == [7, 7]
    assert view.trees[0] is view.trees[1] is value.tree  # one answer tree per request
    # every decoded byte sequence is in the tree; " Paris."/"  Rome " and "Berlin"/"BERLIN!" share a first byte
    assert value.tree.size == len(" Paris.") + len("Berlin") + len("  Rome ") + len("BERLIN!") + len("paris") - 2
    assert AnswerDistribution.name == "answers"


def test_answers_without_target_answer_start_empty():
    value = AnswerDistribution(FakeSession({"x": "Lyon"}), Target("full"))
    assert value.columns == []
    np.testing.assert_array_equal(value(["x", "x"]), [[1], [1]])
    assert value.columns == ["Lyon"]


def test_answers_on_the_tiny_model_match_greedy(view):
    value = build_value_function("answers", view, Target(FULL, max_new_tokens=4))
    out = value(PROMPTS)
    decoded = [view.decode(t) for t in view.greedy(PROMPTS, 4)]
    assert out.shape == (len(PROMPTS), len(value.columns))
    np.testing.assert_array_equal(out.sum(axis=1), 1.0)
    assert set(np.unique(out)) <= {0.0, 1.0}
    for row, answer in zip(out, decoded):
        assert normalise_answer(value.columns[int(row.argmax())]) == normalise_answer(answer)
