"""The transformers engine's gradient capability: Captum's methods on the input embeddings.

Saliency, input x gradient and Integrated Gradients run through Captum's `Saliency`,
`InputXGradient` and `IntegratedGradients` on `inputs_embeds` (the output of the
embedding layer). Each token's attribution is the sum over embedding dimensions.
Integrated Gradients moves only the documents' tokens from the baseline (zero
vector, or the pad token's embedding) to their embeddings.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency

from longshap.hierarchy.engines.gradient_spec import DEFAULT_STEPS, GradientResult, GradientSpec

if TYPE_CHECKING:
    from longshap.hierarchy.engines.base import RunContext
    from longshap.hierarchy.engines.hf_engine import TransformersEngine

def attribute_tokens(engine: TransformersEngine, spec: GradientSpec, context: RunContext) -> GradientResult:
    """Per-token attributions of the spec's value at its prompt (autograd on: called outside inference mode)."""
    model = engine.model
    ids = torch.tensor([list(spec.ids)], device=engine.device)
    movable = np.array(spec.movable, dtype=bool)
    value = _Value(engine, spec, context)
    embedding = model.get_input_embeddings()
    inputs = embedding(ids).detach().requires_grad_(True)
    fill = embedding(torch.tensor([[engine.pad_id]], device=engine.device)).detach() if spec.baseline == "pad" else torch.zeros_like(inputs[:, :1])
    mask = torch.tensor(movable, device=engine.device)[None, :, None]
    reference = torch.where(mask, fill.expand_as(inputs), inputs).detach()
    probe = value(inputs)
    if not probe.requires_grad:
        raise _unreachable(spec.method, model)
    batch = max(1, engine.max_batch_tokens // (ids.shape[1] + value.extra_tokens))
    steps = spec.steps or DEFAULT_STEPS
    attributions, deltas = [], []
    try:
        for column in range(probe.shape[1]):
            if spec.method == "integrated_gradients":
                attribution, delta = IntegratedGradients(value).attribute(
                    inputs, baselines=reference, target=column, n_steps=steps, internal_batch_size=batch, return_convergence_delta=True,
                )
                deltas.append(float(delta.sum()))
            elif spec.method == "saliency":
                attribution = Saliency(value).attribute(inputs, target=column, abs=True)
            else:
                attribution = InputXGradient(value).attribute(inputs, target=column)
            attributions.append(attribution[0].sum(dim=-1).detach().double().cpu().numpy())
    except RuntimeError:
        # A layer computing outside autograd can cut every path from the embeddings to the value, and
        # Captum then fails with "not used in the graph". Checked only here: it costs a backward pass.
        if torch.autograd.grad(probe.sum(), inputs, allow_unused=True)[0] is None:
            raise _unreachable(spec.method, model) from None
        raise
    values = np.stack(attributions, axis=1)
    if movable.any() and not np.any(values[movable]):
        # Not one document token got any gradient: some layer computes outside autograd (as bitsandbytes'
        # inference-only CPU 4-bit layout does), and the residual stream alone carries only zeros back.
        raise ValueError(
            f"method: {spec.method} got no gradient at any document token of {type(model).__name__}"
            f"{' (4-bit)' if getattr(model, 'is_loaded_in_4bit', False) else ''}: its layers compute without autograd, "
            "so gradients cannot flow (as in bitsandbytes' inference-only CPU 4-bit layout); use a coalition method such as 'permutation'"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(f"method: {spec.method} produced non-finite gradients on {type(model).__name__} (half precision overflow?)")
    completeness = None
    if spec.method == "integrated_gradients":
        with torch.no_grad():
            at_input, at_baseline = (row.double().cpu().numpy() for row in value(torch.cat([inputs, reference])))
        completeness = {
            "steps": steps,
            "attribution_sum": values[movable].sum(axis=0).tolist(),
            "f_input": at_input.tolist(),
            "f_baseline": at_baseline.tolist(),
            "delta": deltas,
        }
    return GradientResult(values, value.rows, completeness)


def _unreachable(method: str, model) -> ValueError:
    """The refusal for a model whose embedding output does not reach the value differentiably."""
    return ValueError(
        f"method: {method} needs gradients through the model, and none flow through {type(model).__name__} "
        "(its embedding output does not reach the value differentiably); use a coalition method such as 'permutation'"
    )


class _Value:
    """The explained value in torch, from input embeddings (batch, length, dim) to columns (batch, columns).

    Counts the sequences pushed through it (interpolation points included) and charges
    each pass to the run.
    """

    def __init__(self, engine: TransformersEngine, spec: GradientSpec, context: RunContext) -> None:
        self.engine = engine
        self.context = context
        self.continuations = [torch.tensor(c, device=engine.device) for c in spec.continuations]
        # Embedded once, outside any attribution: Captum's layer methods hook the embedding layer's output.
        with torch.no_grad():
            self.embedded = [engine.model.get_input_embeddings()(tokens) for tokens in self.continuations]
        self.columns = _columns(spec)
        self.single = all(len(c) == 1 for c in spec.continuations)
        """Every continuation is one token (typical labels): one pass, all read at the prompt's last position."""
        self.extra_tokens = 0 if self.single else max(len(c) for c in spec.continuations)
        self.rows = 0

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        self.rows += embeds.shape[0]
        self.engine.count_pass(self.context, embeds.shape[0] * (embeds.shape[1] + self.extra_tokens))
        backbone, logits = self.engine.backbone, self.engine.logits
        if self.single:
            hidden = backbone(inputs_embeds=embeds, use_cache=False).last_hidden_state[:, -1:]
            logprobs = torch.log_softmax(logits(hidden), dim=-1)
            return self.columns([logprobs[:, 0, tokens] for tokens in self.continuations])
        scores = []
        for tokens, embedded in zip(self.continuations, self.embedded):
            appended = embedded[None].expand(embeds.shape[0], -1, -1).to(embeds.dtype)
            hidden = backbone(inputs_embeds=torch.cat([embeds, appended], dim=1), use_cache=False).last_hidden_state
            positions = hidden[:, embeds.shape[1] - 1 : embeds.shape[1] - 1 + len(tokens)]
            logprobs = torch.log_softmax(logits(positions), dim=-1)
            scores.append(logprobs.gather(2, tokens[None, :, None].expand(embeds.shape[0], -1, 1))[..., 0])
        return self.columns(scores)


def _columns(spec: GradientSpec) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """How per-continuation token log-probabilities become the value's columns."""
    if spec.value == "logprob":
        return lambda scores: scores[0]
    if spec.value == "probability":

        def prefix_steps(scores: list[torch.Tensor]) -> torch.Tensor:
            prefix = torch.exp(torch.cumsum(scores[0], dim=1))
            return torch.diff(prefix, dim=1, prepend=torch.ones_like(prefix[:, :1]))

        return prefix_steps
    index = spec.label_index or 0

    def normalised(scores: list[torch.Tensor]) -> torch.Tensor:
        totals = torch.stack([s.sum(dim=1) for s in scores], dim=1)
        return (totals - torch.logsumexp(totals, dim=1, keepdim=True))[:, index : index + 1]

    return normalised
