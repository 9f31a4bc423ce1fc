"""Prompt templates: the full coalition renders every document exactly; absent units disappear."""
from __future__ import annotations

import pytest

from longshap.hierarchy.prompt import DEFAULT_QA_INSTRUCTION, ClassificationPrompt, QAPrompt, fill_template
from longshap.hierarchy.segmentation import ROOT, Document, FeatureTree

DOCS = [
    Document("Paris is the capital of France. It is on the Seine.", "Paris"),
    Document("Berlin is the capital of Germany.", "Berlin"),
    Document("An untitled passage about nothing."),
]


def qa_tree(prompt):
    tree = FeatureTree(prompt.documents)
    for doc_id in tree.expand(ROOT, "document"):
        for sentence in tree.expand(doc_id, "sentence"):
            tree.expand(sentence, "word")
    return tree


def test_qa_full_coalition_is_exact_template():
    prompt = QAPrompt("  What is the capital of France? ", DOCS)
    tree = qa_tree(prompt)
    expected = (
        f"{DEFAULT_QA_INSTRUCTION}\n\n"
        "Document (Title: Paris): Paris is the capital of France. It is on the Seine.\n\n"
        "Document (Title: Berlin): Berlin is the capital of Germany.\n\n"
        "Document: An untitled passage about nothing.\n\n"
        "Question: What is the capital of France?\nAnswer:"
    )
    assert prompt.render(tree) == expected
    assert prompt.render(tree, absent=set()) == expected


def test_qa_absent_documents_disappear_with_their_title():
    prompt = QAPrompt("Where?", DOCS, instruction="Read.")
    tree = qa_tree(prompt)
    out = prompt.render(tree, {"d1"})
    assert "Berlin" not in out
    assert out == (
        "Read.\n\nDocument (Title: Paris): Paris is the capital of France. It is on the Seine.\n\n"
        "Document: An untitled passage about nothing.\n\nQuestion: Where?\nAnswer:"
    )
    everything = prompt.render(tree, {"d0", "d1", "d2"})
    assert "Document" not in everything and everything.endswith("Question: Where?\nAnswer:")


def test_qa_absent_sentences_and_words_only_touch_their_document():
    prompt = QAPrompt("Where?", DOCS)
    tree = qa_tree(prompt)
    first_sentence = tree.expand("d0", "sentence")[0]
    out = prompt.render(tree, {first_sentence})
    assert "Document (Title: Paris): It is on the Seine.\n\n" in out
    assert "Berlin is the capital of Germany." in out
    word = [w for w in tree.units[tree.expand("d1", "sentence")[0]].children if tree.units[w].text == "capital"][0]
    out = prompt.render(tree, {word})
    assert "Document (Title: Berlin): Berlin is the of Germany.\n\n" in out
    assert "Paris is the capital of France." in out  # the same word in another document stays


def test_qa_placeholder_mode():
    prompt = QAPrompt("Where?", DOCS, placeholder="[...]")
    tree = qa_tree(prompt)
    out = prompt.render(tree, {"d1", tree.expand("d0", "sentence")[1]})
    assert "Document: [...]\n\n" in out
    assert "Document (Title: Paris): Paris is the capital of France. [...]\n\n" in out


def test_classification_full_and_partial():
    prompt = ClassificationPrompt("a charming and often affecting journey", ["negative", "positive"], cue="Sentiment:")
    tree = FeatureTree(prompt.documents)
    tree.expand(ROOT, "document")
    words = tree.expand("d0", "word")
    assert prompt.render(tree) == (
        "Classify the text as one of: negative, positive.\n\nText: a charming and often affecting journey\nSentiment:"
    )
    absent = {w for w in words if tree.units[w].text in ("charming", "journey")}
    assert prompt.render(tree, absent).endswith("Text: a and often affecting\nSentiment:")
    assert prompt.render(tree, {"d0"}).endswith("Text: \nSentiment:")
    masked = ClassificationPrompt("good film", ["bad", "good"], placeholder="_")
    assert masked.render(tree, {"d0"}).endswith("Text: _\nLabel:")
    assert prompt.documents == [Document("a charming and often affecting journey")]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(question="", documents=DOCS), "question"),
        (dict(question="   ", documents=DOCS), "question"),
        (dict(question="q?", documents=[]), "documents"),
        (dict(question="q?", documents=[Document("ok"), Document("  ")]), r"documents\[1\]\.text"),
    ],
)
def test_qa_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QAPrompt(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(text=" ", labels=["a", "b"]), "text"),
        (dict(text="fine", labels=["only"]), "at least two labels"),
        (dict(text="fine", labels=[]), "at least two labels"),
        (dict(text="fine", labels=["pos", " pos "]), "duplicate"),
        (dict(text="fine", labels=["pos", "pos"]), "duplicate"),
        (dict(text="fine", labels=["pos", "  "]), "non-empty"),
    ],
)
def test_classification_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassificationPrompt(**kwargs)


@pytest.mark.parametrize("instruction", ["{labels.__class__.__mro__}", "{0}", "{x}", "{labels:x>20000}", "{labels!r}", "{}", "open {", "close }"])
def test_a_classification_instruction_is_never_a_format_string(instruction):
    with pytest.raises(ValueError, match=r"^instruction: .* is not a placeholder"):
        ClassificationPrompt("fine", ["bad", "good"], instruction=instruction)


def test_labels_are_substituted_and_doubled_braces_are_literal():
    prompt = ClassificationPrompt("fine", ["bad", "good"], instruction="Pick {labels}; answer {{as JSON}} {labels}.")
    tree = FeatureTree(prompt.documents)
    assert prompt.render(tree).startswith("Pick bad, good; answer {as JSON} bad, good.\n")
    assert fill_template("no braces", {}) == "no braces"
