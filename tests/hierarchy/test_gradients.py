"""Gradient methods: Captum's numbers, summed onto units, with IG's completeness, through the explainer's level walk."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from captum.attr import LayerGradientXActivation, LayerIntegratedGradients
from longshap.hierarchy import Explainer
from longshap.hierarchy.engines import GRADIENTS, ModelView
from longshap.hierarchy.engines.gradient_spec import GradientSpec
from longshap.hierarchy.errors import RequestError
from longshap.hierarchy.engines.hf_gradients import _Value
from longshap.hierarchy.gradients import token_attributions
from longshap.hierarchy.prompt import QAPrompt
from longshap.hierarchy.segmentation import Document, FeatureTree
from longshap.hierarchy.values import Target, build_value_function

QUESTION = "What is the capital of France?"
DOCUMENTS = [
    {"title": "Paris", "text": "Paris is the capital of France. It is on the Seine."},
    {"title": "Berlin", "text": "Berlin is the capital of Germany. Dr. Smith lives in the U.S. now."},
]
TEXT, LABELS = "a charming and often affecting journey", ["negative", "positive"]


@pytest.fixture(scope="module")
def setting(tiny_explainer):
    """The full QA prompt, where its documents' text lies, and its logprob value function."""
    view = tiny_explainer.model_view()
    prompt = QAPrompt(QUESTION, [Document(d["text"], d["title"]) for d in DOCUMENTS])
    tree = FeatureTree(prompt.documents, view.token_offsets)
    full = prompt.render(tree)
    starts = prompt.text_starts(tree)
    ends = [s + len(d.text) for s, d in zip(starts, prompt.documents)]
    value = build_value_function("logprob", view, Target(full, answer="Paris is"))
    return view, full, starts, ends, value


def test_text_starts_locate_every_document(setting):
    _, full, starts, ends, _ = setting
    assert [full[s:e] for s, e in zip(starts, ends)] == [d["text"] for d in DOCUMENTS]


def test_integrated_gradients_are_complete_within_the_riemann_error(setting):
    view, full, starts, ends, value = setting
    gaps = []
    for steps in (8, 128):
        result = token_attributions(view, full, starts, ends, value, "integrated_gradients", "zero", steps)
        check = result.completeness
        effect = np.array(check["f_input"]) - np.array(check["f_baseline"])
        gap = np.abs(np.array(check["attribution_sum"]) - effect)
        np.testing.assert_allclose(gap, np.abs(check["delta"]), atol=1e-5)  # Captum's delta is the same gap
        gaps.append(gap.max())
        # The value the gradients explain is the value the games explain, at the full prompt.
        np.testing.assert_allclose(check["f_input"], value([full])[0, 1:], atol=1e-4)
        # Column 0 (the answer) is the sum of the token columns, and only the documents' tokens move.
        np.testing.assert_allclose(result.values[:, 0], result.values[:, 1:].sum(axis=1), atol=1e-12)
        outside = np.ones(len(result.anchors), bool)
        for s, e in zip(starts, ends):
            outside &= ~((result.anchors >= s) & (result.anchors < e))
        assert np.all(result.values[outside] == 0)
    assert gaps[1] < 0.02 * np.abs(effect).max() + 1e-4
    assert gaps[1] <= gaps[0] + 1e-6


def _captum_forward(view, ids: list[int], value_fn):
    """The logprob value's torch twin, from token ids (through the embedding layer Captum's layer methods hook)."""
    spec = GradientSpec(tuple(ids), (False,) * len(ids), (tuple(value_fn.tokens),), "logprob", None, "integrated_gradients", "pad", 32)
    value = _Value(view.engine, spec, view.context)
    return lambda tokens: value(view.engine.model.get_input_embeddings()(tokens))


def test_equal_to_captums_layer_methods_on_the_embedding_layer(setting):
    view, full, starts, ends, value = setting
    ids = torch.tensor([view.encode_prompt(full)])
    layer = view.engine.model.get_input_embeddings()
    forward = _captum_forward(view, ids[0].tolist(), value)
    ours = {m: token_attributions(view, full, starts, ends, value, m, "pad", 32) for m in ("integrated_gradients", "input_x_gradient", "saliency")}
    movable = torch.tensor(ours["integrated_gradients"].values[:, 0] != 0)  # document tokens; elsewhere input == baseline
    baseline_ids = torch.where(movable[None], torch.full_like(ids, view.engine.pad_id), ids)
    for column in range(len(value.tokens)):
        theirs = LayerIntegratedGradients(forward, layer).attribute(ids, baselines=baseline_ids, target=column, n_steps=32)
        np.testing.assert_allclose(ours["integrated_gradients"].values[:, 1 + column], theirs[0].sum(-1).detach().double().numpy(), atol=1e-5)
        theirs = LayerGradientXActivation(forward, layer).attribute(ids, target=column)
        np.testing.assert_allclose(ours["input_x_gradient"].values[:, 1 + column], theirs[0].sum(-1).detach().double().numpy(), atol=1e-5)
        gradient = LayerGradientXActivation(forward, layer, multiply_by_inputs=False).attribute(ids, target=column)
        np.testing.assert_allclose(ours["saliency"].values[:, 1 + column], gradient[0].abs().sum(-1).detach().double().numpy(), atol=1e-5)


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "input_x_gradient"])
def test_explainer_sums_token_attributions_onto_every_level(tiny_explainer, method):
    result = tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, target="Paris is", method=method, thresholds=0.0, max_expanded=2)
    assert [level.method for level in result.levels] == [method] * len(result.levels)
    if method == "saliency":  # unsigned, so threshold 0 expands everything up to the caps
        assert [level.level for level in result.levels] == ["document", "sentence", "word"]
    assert result.levels[0].evaluations > 0 and all(level.evaluations == 0 for level in result.levels[1:])
    assert result.extras["gradients"]["method"] == method
    for finer, coarser in zip(result.levels[1:], result.levels):
        for parent in (f for f in coarser.features if f.expanded):
            children = [f.value for f in finer.features if f.parent == parent.id]
            assert sum(children) == pytest.approx(parent.value, abs=1e-6)  # tokens partition the text
    for level in result.levels:
        for feature in level.features:
            assert np.isnan(feature.stderr)  # nothing sampled: a standard error does not apply
            assert sum(feature.values_by_token) == pytest.approx(feature.value, abs=1e-9)
    if method == "saliency":
        assert all(f.value >= 0 for level in result.levels for f in level.features)


def test_integrated_gradients_document_values_add_up_to_the_effect(tiny_explainer):
    result = tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, target="Paris", method="integrated_gradients", budget=256, levels=["document"])
    completeness = result.extras["gradients"]["completeness"]
    total = sum(f.value for f in result.levels[0].features)
    assert total == pytest.approx(completeness["sequence"]["effect"], abs=2e-3)


def test_label_value_and_classification(tiny_explainer):
    result = tiny_explainer.explain(text=TEXT, labels=LABELS, method="integrated_gradients", budget=64)
    completeness = result.extras["gradients"]["completeness"]
    assert completeness["f_input"][0] == pytest.approx(result.full_value, abs=1e-4)
    assert result.answer_tokens is None and result.levels[0].features[0].values_by_token is None
    assert sum(f.value for f in result.levels[0].features) == pytest.approx(completeness["attribution_sum"][0], abs=1e-9)


def test_clear_errors(tiny_explainer):
    with pytest.raises(ValueError, match="value: integrated_gradients needs a differentiable value"):
        tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, method="integrated_gradients", value="answers")
    with pytest.raises(ValueError, match="baseline: must be one of"):
        tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, target="Paris", method="saliency", baseline="mean")
    with pytest.raises(ValueError, match="budget: integrated_gradients uses it as Integrated Gradients' steps"):
        tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, target="Paris", method="integrated_gradients", budget=5000)
    with pytest.raises(ValueError, match="unknown method 'gradients'"):
        tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, target="Paris", method="gradients")


class _WithoutGradients:
    """An engine that runs the model but does not offer gradients (as a remote one may not)."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.capabilities = engine.capabilities - {GRADIENTS}

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


def test_an_engine_without_gradients_refuses_gradient_methods(tiny_explainer, setting):
    engine = _WithoutGradients(tiny_explainer.engine)
    explainer = Explainer(engine)
    assert explainer.engine is engine  # an engine is used as it is
    with pytest.raises(RequestError, match="method: saliency needs the model's gradients, which the _WithoutGradients engine does not offer"):
        explainer.explain(question=QUESTION, documents=DOCUMENTS, target="Paris", method="saliency")
    view, full, starts, ends, value = setting
    with pytest.raises(ValueError, match="needs gradients, which the _WithoutGradients engine does not offer"):
        token_attributions(ModelView(engine), full, starts, ends, value, "saliency")
    # Coalition methods only need scores.
    assert explainer.explain(question=QUESTION, documents=DOCUMENTS, target="Paris", levels=["document"], method="exact").levels


@pytest.mark.slow
def test_default_model_gradients_explain_the_same_values(default_explainer):
    """Gemma 3 270M: the gradients differentiate the very values the games score, and IG is nearly complete.

    At 64 Gauss-Legendre steps the Riemann gap of IG on this model measured about 7% of the effect,
    and it is exactly Captum's own convergence delta.
    """
    from longshap.client.data import load_nq, nq_prompt

    sst = default_explainer.explain(text="a charming and often affecting journey", labels=LABELS, method="integrated_gradients", budget=64)
    completeness = sst.extras["gradients"]["completeness"]
    effect = completeness["f_input"][0] - completeness["f_baseline"][0]
    total = sum(f.value for f in sst.levels[0].features)
    assert completeness["f_input"][0] == pytest.approx(sst.full_value, abs=1e-3)
    assert total - effect == pytest.approx(completeness["delta"][0], abs=1e-3)
    assert abs(total - effect) < 0.1 * abs(effect)
    prompt = nq_prompt(load_nq(), 5, 3, seed=0)
    for method in ("integrated_gradients", "saliency"):
        result = default_explainer.explain(
            question=prompt.question, documents=prompt.documents, levels=("document",), method=method, budget=16,
        )
        documents = result.level("document").features
        assert all(sum(f.values_by_token) == pytest.approx(f.value, abs=1e-9) for f in documents)
        assert all(np.isnan(f.stderr) for f in documents)
        if method == "saliency":
            assert all(f.value > 0 for f in documents)
        else:
            check = result.extras["gradients"]["completeness"]
            assert sum(check["f_input"]) == pytest.approx(result.full_value, abs=1e-3)  # per-token values add up to the answer's
            assert sum(f.value for f in documents) == pytest.approx(check["sequence"]["attribution_sum"], abs=1e-6)


@pytest.fixture(scope="module")
def wide_llama_dir(tmp_path_factory):
    """bitsandbytes' CPU 4-bit path needs layers wider than the tiny models' 32."""
    from tiny_models import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("wide-llama"), hidden_size=128)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_bitsandbytes_on_cpu_gradients_flow_and_integrated_gradients_is_complete(wide_llama_dir, quantization):
    """bitsandbytes >= 0.50 backpropagates through CPU 4-bit layers too, AVX512-BF16 CPUs included (see `_keep_4bit_differentiable`)."""
    from longshap.hierarchy import Explainer
    from longshap.hierarchy.models import load_model

    request = {"text": TEXT, "labels": LABELS, "method": "integrated_gradients", "budget": 64}
    result = Explainer(load_model(str(wide_llama_dir), device="cpu", quantization=quantization)).explain(**request)
    completeness = result.extras["gradients"]["completeness"]
    effect = completeness["f_input"][0] - completeness["f_baseline"][0]
    assert any(f.value != 0 for f in result.levels[0].features)
    assert sum(f.value for f in result.levels[0].features) == pytest.approx(effect, abs=0.05 * abs(effect) + 1e-3)


def test_a_model_whose_layers_compute_outside_autograd_is_a_clear_error(tiny_explainer):
    """A model whose embeddings do not reach the value differentiably gets a clear refusal, not Captum's internal error."""
    first = next(m for m in tiny_explainer.engine.model.modules() if type(m).__name__.endswith("DecoderLayer"))
    # As a layer computing without autograd would: its output carries no gradient back to the tokens.
    hooks = [first.register_forward_hook(lambda module, args, output: output.detach() if torch.is_tensor(output) else
                                         tuple(o.detach() if torch.is_tensor(o) else o for o in output))]
    try:
        with pytest.raises(ValueError, match=r"method: integrated_gradients needs gradients through the model, and none flow through .*'permutation'"):
            tiny_explainer.explain(text=TEXT, labels=LABELS, method="integrated_gradients", budget=16)
    finally:
        for hook in hooks:
            hook.remove()
