"""Gradient attributions (Captum) of the same value the coalition estimators explain.

Saliency, input x gradient and Integrated Gradients need the model, not a game: they
differentiate the value (log-probability or probability of the answer, or the
normalised label log-probability) with respect to the input embeddings of the full
prompt, through Captum's `Saliency`, `InputXGradient` and `IntegratedGradients` on
`inputs_embeds` (the output of the embedding layer, so the same numbers as Captum's
`LayerIntegratedGradients` / `LayerGradientXActivation` on that layer). Each token's
attribution is the sum over embedding dimensions; a unit's is the sum over the tokens
that start inside its character span, so one pass of gradients serves every level.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from longshap.hierarchy.errors import RequestError

if TYPE_CHECKING:  # torch only once a model is loaded
    import torch
    from longshap.hierarchy.scorer import ModelScorer
    from longshap.hierarchy.segmentation import FeatureTree

GRADIENT_METHODS = ("integrated_gradients", "saliency", "input_x_gradient")
UNSIGNED_METHODS = ("saliency",)
BASELINES = ("zero", "pad")
DEFAULT_STEPS = 50
"""Integrated Gradients' interpolation points (Captum's default, Gauss-Legendre)."""
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


def _unreachable(method: str, model) -> ValueError:
    """The refusal for a model whose embedding output does not reach the value differentiably."""
    return ValueError(
        f"method: {method} needs gradients through the model, and none flow through {type(model).__name__} "
        "(its embedding output does not reach the value differentiably); use a coalition method such as 'permutation'"
    )


def token_attributions(
    scorer: ModelScorer, full_prompt: str, text_starts: Sequence[int], text_ends: Sequence[int], value_fn,
    method: str, baseline: str = "zero", steps: int | None = None,
) -> TokenAttributions:
    """Attribute `value_fn`'s value at `full_prompt` to the prompt's tokens with the named gradient method.

    Tokens starting inside some [text_starts[d], text_ends[d]) are the ones Integrated
    Gradients moves to the baseline; `value_fn` is the request's logprob, probability
    or label value function, whose columns the result matches.
    """
    import torch
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    if not is_gradient_method(method):
        raise ValueError(f"method: {method!r} is not a gradient method; use one of {GRADIENT_METHODS}")
    encoded = scorer.tokenizer(full_prompt, return_offsets_mapping=True)
    ids = torch.tensor([encoded["input_ids"]], device=scorer.device)
    anchors = np.array([token_anchor(full_prompt, s, e) for s, e in encoded["offset_mapping"]])
    movable = np.zeros(len(anchors), dtype=bool)
    for start, end in zip(text_starts, text_ends):
        if start >= 0:
            movable |= (anchors >= start) & (anchors < end)
    value = _differentiable_value(scorer, value_fn)
    counter = _Counter(value)
    embedding = scorer.model.get_input_embeddings()
    with torch.enable_grad():
        inputs = embedding(ids).detach().requires_grad_(True)
        fill = embedding(torch.tensor([[scorer.pad_id]], device=scorer.device)).detach() if baseline == "pad" else torch.zeros_like(inputs[:, :1])
        mask = torch.tensor(movable, device=scorer.device)[None, :, None]
        reference = torch.where(mask, fill.expand_as(inputs), inputs).detach()
        probe = counter(inputs)
        if not probe.requires_grad:
            raise _unreachable(method, scorer.model)
        columns = probe.shape[1]
        batch = max(1, scorer.max_batch_tokens // (ids.shape[1] + value.extra_tokens))
        attributions, deltas = [], []
        try:
            for column in range(columns):
                if method == "integrated_gradients":
                    attribution, delta = IntegratedGradients(counter).attribute(
                        inputs, baselines=reference, target=column, n_steps=steps or DEFAULT_STEPS,
                        internal_batch_size=batch, return_convergence_delta=True,
                    )
                    deltas.append(float(delta.sum()))
                elif method == "saliency":
                    attribution = Saliency(counter).attribute(inputs, target=column, abs=True)
                else:
                    attribution = InputXGradient(counter).attribute(inputs, target=column)
                attributions.append(attribution[0].sum(dim=-1).detach().double().cpu().numpy())
        except RuntimeError:
            # A layer computing outside autograd can cut every path from the embeddings to the value, and
            # Captum then fails with "not used in the graph". Checked only here: it costs a backward pass.
            if torch.autograd.grad(probe.sum(), inputs, allow_unused=True)[0] is None:
                raise _unreachable(method, scorer.model) from None
            raise
        values = np.stack(attributions, axis=1)
        if movable.any() and not np.any(values[movable]):
            # Not one document token got any gradient: some layer computes outside autograd (as bitsandbytes'
            # inference-only CPU 4-bit layout does), and the residual stream alone carries only zeros back. Never report those.
            raise ValueError(
                f"method: {method} got no gradient at any document token of {type(scorer.model).__name__}"
                f"{' (4-bit)' if getattr(scorer.model, 'is_loaded_in_4bit', False) else ''}: its layers compute without autograd, "
                "so gradients cannot flow (as in bitsandbytes' inference-only CPU 4-bit layout); use a coalition method such as 'permutation'"
            )
        if not np.all(np.isfinite(values)):
            raise ValueError(f"method: {method} produced non-finite gradients on {type(scorer.model).__name__} (half precision overflow?)")
        completeness = None
        if method == "integrated_gradients":
            with torch.no_grad():
                at_input, at_baseline = (row.double().cpu().numpy() for row in counter(torch.cat([inputs, reference])))
            completeness = _completeness(values[movable], at_input, at_baseline, deltas, steps or DEFAULT_STEPS)
    values, completeness = _with_sequence_column(value_fn, values, completeness)
    return TokenAttributions(method, values, anchors, list(text_starts), counter.rows, completeness)


def token_anchor(text: str, start: int, end: int) -> int:
    """First non-space character of a token (-1 for special tokens and pure whitespace)."""
    while start < end and text[start].isspace():
        start += 1
    return start if start < end else -1


def _completeness(movable: np.ndarray, at_input: np.ndarray, at_baseline: np.ndarray, deltas: list[float], steps: int) -> dict:
    """Per column: sum of attributions against f(input) - f(baseline), and Captum's own delta."""
    return {
        "steps": steps,
        "attribution_sum": movable.sum(axis=0).tolist(),
        "f_input": at_input.tolist(),
        "f_baseline": at_baseline.tolist(),
        "delta": deltas,
    }


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


class _Value:
    """The value function in torch, from input embeddings (batch, length, dim) to columns (batch, columns)."""

    def __init__(self, scorer: ModelScorer, continuations: list[list[int]], columns: Callable) -> None:
        import torch

        self.scorer = scorer
        self.continuations = [torch.tensor(c, device=scorer.device) for c in continuations]
        # Embedded once, outside any attribution: Captum's layer methods hook the embedding layer's output.
        with torch.no_grad():
            self.embedded = [scorer.model.get_input_embeddings()(tokens) for tokens in self.continuations]
        self.columns = columns
        self.single = all(len(c) == 1 for c in continuations)
        """Every continuation is one token (typical labels): one pass, all read at the prompt's last position."""
        self.extra_tokens = 0 if self.single else max(len(c) for c in continuations)

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        import torch

        if self.single:
            hidden = self.scorer.backbone(inputs_embeds=embeds, use_cache=False).last_hidden_state[:, -1:]
            logprobs = torch.log_softmax(self.scorer._logits(hidden), dim=-1)
            return self.columns([logprobs[:, 0, tokens] for tokens in self.continuations])
        scores = []
        for tokens, embedded in zip(self.continuations, self.embedded):
            appended = embedded[None].expand(embeds.shape[0], -1, -1).to(embeds.dtype)
            hidden = self.scorer.backbone(inputs_embeds=torch.cat([embeds, appended], dim=1), use_cache=False).last_hidden_state
            positions = hidden[:, embeds.shape[1] - 1 : embeds.shape[1] - 1 + len(tokens)]
            logprobs = torch.log_softmax(self.scorer._logits(positions), dim=-1)
            scores.append(logprobs.gather(2, tokens[None, :, None].expand(embeds.shape[0], -1, 1))[..., 0])
        return self.columns(scores)


class _Counter:
    """Counts the sequences pushed through the value (interpolation points included)."""

    def __init__(self, value: _Value) -> None:
        self.value = value
        self.rows = 0

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        self.rows += embeds.shape[0]
        tokens = embeds.shape[1] + self.value.extra_tokens
        self.value.scorer._count_pass(embeds.shape[0] * tokens)
        return self.value(embeds)


def _differentiable_value(scorer: ModelScorer, value_fn) -> _Value:
    """The torch twin of a logprob, probability or label value function (its token columns, or its label)."""
    import torch

    name = getattr(value_fn, "name", None)
    if name == "logprob":
        return _Value(scorer, [value_fn.tokens], lambda scores: scores[0])
    if name == "probability":

        def prefix_steps(scores: list[torch.Tensor]) -> torch.Tensor:
            prefix = torch.exp(torch.cumsum(scores[0], dim=1))
            return torch.diff(prefix, dim=1, prepend=torch.ones_like(prefix[:, :1]))

        return _Value(scorer, [value_fn.tokens], prefix_steps)
    if name == "label":

        def normalised(scores: list[torch.Tensor]) -> torch.Tensor:
            totals = torch.stack([s.sum(dim=1) for s in scores], dim=1)
            return (totals - torch.logsumexp(totals, dim=1, keepdim=True))[:, value_fn.label_index : value_fn.label_index + 1]

        return _Value(scorer, value_fn.label_ids, normalised)
    raise ValueError(f"value: gradient methods explain logprob, probability or label values, not {name!r}")
