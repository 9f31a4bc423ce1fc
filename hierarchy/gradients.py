"""Gradient attributions (Captum) of the same value the coalition estimators explain.

Saliency, input x gradient and Integrated Gradients need the model, not a game: they
differentiate the value (log-probability or probability of the answer, or the
normalised label log-probability) with respect to the input embeddings of the full
prompt. Engines that hold the weights declare the gradient capability and run them
(`hierarchy.engines.hf_gradients`); this module asks for them and turns token
attributions into unit attributions: a unit's is the sum over the tokens that start
inside its character span, so one pass of gradients serves every level.

Only the documents' text is "removed": Integrated Gradients interpolates the text's
tokens from the baseline (zero vector, or the pad token's embedding) to their input
embeddings and keeps the template, question, titles and answer fixed, like the
coalition games which never remove them. Completeness then reads
sum(attributions) = f(input) - f(baseline), up to the integral's discretisation.

Standard errors do not apply (nothing is sampled): features carry NaN, and the
completeness gap of Integrated Gradients is reported with the explanation instead.
Saliency is unsigned (|gradient|), so its expansion threshold is a share of the
level's total saliency rather than of the value's total effect.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from longshap.hierarchy.engines.base import GRADIENTS
from longshap.hierarchy.engines.gradient_spec import GradientSpec
from longshap.hierarchy.errors import RequestError

if TYPE_CHECKING:
    from longshap.hierarchy.engines.view import ModelView
    from longshap.hierarchy.segmentation import FeatureTree

GRADIENT_METHODS = ("integrated_gradients", "saliency", "input_x_gradient")
UNSIGNED_METHODS = ("saliency",)
BASELINES = ("zero", "pad")
MAX_STEPS = 1024


def is_gradient_method(method: str) -> bool:
    return method in GRADIENT_METHODS


def check_gradient_options(method: str, value: str, baseline: str, steps: int | None) -> None:
    """Errors before any model work, naming the field."""
    if value == "answers":
        raise RequestError("value", f"{method} needs a differentiable value (logprob, probability or label), not 'answers'")
    if baseline not in BASELINES:
        raise RequestError("baseline", f"must be one of {BASELINES}, got {baseline!r}")
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise RequestError("budget", f"{method} uses it as Integrated Gradients' steps, 1..{MAX_STEPS}; got {steps}")


@dataclass
class TokenAttributions:
    """Per-token attributions of the full prompt, one column per value column (as the coalition games return)."""

    method: str
    values: np.ndarray
    """(prompt tokens, columns)."""
    anchors: np.ndarray
    """Character position in the prompt where each token's text starts (-1 for special tokens)."""
    text_starts: list[int]
    forward_rows: int
    """Sequences pushed through the model (forward and backward), interpolation points included."""
    completeness: dict | None = None

    def for_units(self, tree: FeatureTree, unit_ids: Sequence[str]) -> np.ndarray:
        """(units, columns): each unit's tokens summed."""
        rows = []
        for unit_id in unit_ids:
            unit = tree.units[unit_id]
            start = self.text_starts[unit.doc]
            inside = (self.anchors >= start + unit.start) & (self.anchors < start + unit.end)
            rows.append(self.values[inside].sum(axis=0))
        return np.array(rows).reshape(len(unit_ids), self.values.shape[1])

    def summary(self) -> dict:
        return {"method": self.method, "forward_rows": self.forward_rows, "completeness": self.completeness}


def token_attributions(
    view: ModelView, full_prompt: str, text_starts: Sequence[int], text_ends: Sequence[int], value_fn,
    method: str, baseline: str = "zero", steps: int | None = None,
) -> TokenAttributions:
    """Attribute `value_fn`'s value at `full_prompt` to the prompt's tokens with the named gradient method.

    Tokens starting inside some [text_starts[d], text_ends[d]) are the ones Integrated
    Gradients moves to the baseline; `value_fn` is the request's logprob, probability
    or label value function, whose columns the result matches.
    """
    if not is_gradient_method(method):
        raise ValueError(f"method: {method!r} is not a gradient method; use one of {GRADIENT_METHODS}")
    engine = view.engine
    if GRADIENTS not in engine.capabilities:
        raise ValueError(f"method: {method} needs gradients, which the {type(engine).__name__} engine does not offer; use a coalition method such as 'permutation'")
    ids, offsets = engine.encode_offsets(full_prompt, special_tokens=True)
    anchors = np.array([token_anchor(full_prompt, s, e) for s, e in offsets])
    movable = np.zeros(len(anchors), dtype=bool)
    for start, end in zip(text_starts, text_ends):
        if start >= 0:
            movable |= (anchors >= start) & (anchors < end)
    name = getattr(value_fn, "name", None)
    continuations: tuple[tuple[int, ...], ...]
    if name in ("logprob", "probability"):
        continuations, label_index = (tuple(value_fn.tokens),), None
    elif name == "label":
        continuations, label_index = tuple(tuple(ids) for ids in value_fn.label_ids), value_fn.label_index
    else:
        raise ValueError(f"value: gradient methods explain logprob, probability or label values, not {name!r}")
    spec = GradientSpec(tuple(ids), tuple(bool(m) for m in movable), continuations, name, label_index, method, baseline, steps)
    view.context.check()
    result = engine.attribute_tokens(spec, view.context)
    values, completeness = _with_sequence_column(value_fn, result.values, result.completeness)
    return TokenAttributions(method, values, anchors, list(text_starts), result.rows, completeness)


def token_anchor(text: str, start: int, end: int) -> int:
    """First non-space character of a token (-1 for special tokens and pure whitespace)."""
    while start < end and text[start].isspace():
        start += 1
    return start if start < end else -1


def _with_sequence_column(value_fn, values: np.ndarray, completeness: dict | None) -> tuple[np.ndarray, dict | None]:
    """Per-token value functions get column 0 = the answer's value, which is the sum of the token columns.

    Attributions are linear in the explained function and blind to constants, so the sum
    is exact: for probability, P(answer) = 1 + the sum of the prefix-probability steps.
    """
    if getattr(value_fn, "token_columns", None) is None:
        return values, completeness
    values = np.hstack([values.sum(axis=1, keepdims=True), values])
    if completeness is not None:
        effect = sum(completeness["f_input"]) - sum(completeness["f_baseline"])
        sequence = {"attribution_sum": sum(completeness["attribution_sum"]), "effect": effect, "delta": sum(completeness["delta"])}
        completeness = {**completeness, "sequence": sequence}
    return values, completeness
