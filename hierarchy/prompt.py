"""Prompt templates: how a coalition (a set of absent units) becomes model input text.

Base models continue text, so the templates end in a cue ("Answer:", "Sentiment:")
and the target is scored as the continuation after it, with a leading space.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

from longshap.hierarchy.errors import RequestError
from longshap.hierarchy.segmentation import Document, FeatureTree, covers_text, render_document

DEFAULT_QA_INSTRUCTION = "Answer the question using the documents. Answer with a short phrase."
DEFAULT_CLASSIFICATION_INSTRUCTION = "Classify the text as one of: {labels}."
_BRACES = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def fill_template(template: str, values: Mapping[str, str], field: str = "instruction") -> str:
    """`template` with each `{name}` of `values` replaced; `{{` and `}}` are literal braces.

    Request text is never given to str.format, which would evaluate `{x.attr}`, `{0}` or
    `{x:>99999}`: any other use of braces is refused with a ValueError naming `field`.
    """
    def substitute(match: re.Match) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        if match.group(1) not in values:
            known = ", ".join(f"{{{name}}}" for name in values) or "none"
            raise RequestError(field, f"{token!r} is not a placeholder (known: {known}); write {{{{ and }}}} for literal braces")
        return values[match.group(1)]

    return _BRACES.sub(substitute, template)


@dataclass
class QAPrompt:
    """Instruction, documents, question; the answer follows 'Answer:'."""

    question: str
    documents: list[Document]
    instruction: str = DEFAULT_QA_INSTRUCTION
    placeholder: str | None = None

    def __post_init__(self) -> None:
        check_text(self.question, "question")
        if not self.documents:
            raise RequestError("documents", "at least one document is required")
        for index, doc in enumerate(self.documents):
            check_text(doc.text, f"documents[{index}].text")

    def render(self, tree: FeatureTree, absent: Collection[str] = ()) -> str:
        return self._render(tree, absent)[0]

    def text_starts(self, tree: FeatureTree) -> list[int]:
        """Where each document's text begins in the full prompt: gradient methods map prompt tokens to units by it."""
        return self._render(tree, ())[1]

    def document_spans(self) -> list[tuple[int, int]]:
        """Each document's span in the full prompt, with the separator before it: what a coalition keeps or drops whole.

        A coalition's prompt is the full prompt with some of these spans cut out, so
        kv_mode blend caches each span's states once (`hierarchy.kv_blend`).
        """
        spans, offset = [], len(self.instruction)
        for doc in self.documents:
            head = f"Document (Title: {doc.title}): " if doc.title else "Document: "
            spans.append((offset, offset + 2 + len(head) + len(doc.text)))
            offset = spans[-1][1]
        return spans

    def _render(self, tree: FeatureTree, absent: Collection[str]) -> tuple[str, list[int]]:
        blocks, starts = [], []
        offset = len(self.instruction) + 2
        for index, doc in enumerate(self.documents):
            removed = [(tree.units[u].start, tree.units[u].end) for u in absent if tree.units[u].doc == index]
            # A document with all its text removed is gone, title included: removing every
            # sentence must equal removing the document, or the levels are not one game.
            if f"d{index}" in absent or covers_text(doc.text, removed):
                starts.append(-1)
                if self.placeholder is not None:
                    blocks.append(f"Document: {self.placeholder}")
                    offset += len(blocks[-1]) + 2
                continue
            text = render_document(doc.text, removed, self.placeholder)
            head = f"Document (Title: {doc.title}): " if doc.title else "Document: "
            starts.append(offset + len(head))
            blocks.append(head + text)
            offset += len(blocks[-1]) + 2
        context = "\n\n".join(blocks)
        return f"{self.instruction}\n\n{context}\n\nQuestion: {self.question.strip()}\nAnswer:", starts


@dataclass
class ClassificationPrompt:
    """A text to classify among fixed labels; the label follows a cue such as 'Sentiment:'."""

    text: str
    labels: list[str]
    instruction: str = DEFAULT_CLASSIFICATION_INSTRUCTION
    cue: str = "Label:"
    placeholder: str | None = None

    def __post_init__(self) -> None:
        check_text(self.text, "text")
        check_labels(self.labels)
        self.filled_instruction()  # refuses stray braces before any model work

    def filled_instruction(self) -> str:
        """The instruction with `{labels}` replaced by the comma-separated labels."""
        return fill_template(self.instruction, {"labels": ", ".join(self.labels)})

    @property
    def documents(self) -> list[Document]:
        return [Document(self.text)]

    def render(self, tree: FeatureTree, absent: Collection[str] = ()) -> str:
        removed = [(tree.units[u].start, tree.units[u].end) for u in absent]
        if "d0" in absent or covers_text(self.text, removed):
            text = self.placeholder or ""
        else:
            text = render_document(self.text, removed, self.placeholder)
        return f"{self._head()}{text}\n{self.cue}"

    def text_starts(self, tree: FeatureTree) -> list[int]:
        """Where the text begins in the full prompt: gradient methods map prompt tokens to units by it."""
        return [len(self._head())]

    def _head(self) -> str:
        return self.filled_instruction() + "\n\nText: "


def check_text(value: object, name: str) -> str:
    """A required text: a string with something besides whitespace."""
    if not isinstance(value, str) or not value.strip():
        raise RequestError(name, "must be a non-empty string")
    return value


def check_labels(labels: object) -> tuple[str, ...]:
    """Class labels: at least two, each a non-empty string, no two equal once stripped."""
    if isinstance(labels, str) or not isinstance(labels, Sequence) or len(labels) < 2:
        raise RequestError("labels", f"at least two labels are required, got {labels!r}")
    if any(not isinstance(label, str) or not label.strip() for label in labels):
        raise RequestError("labels", "every label must be a non-empty string")
    if len({label.strip() for label in labels}) != len(labels):
        raise RequestError("labels", f"duplicate labels in {list(labels)}")
    return tuple(labels)
