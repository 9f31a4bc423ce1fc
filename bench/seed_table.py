"""The seed survey's Table I on SST-2: time, sufficiency, comprehensiveness per method, LongSHAP and Captum 0.9.

Run from the repository root: `python -m bench.seed_table [--quick] [--json PATH] [--model DIR]`.

Every method explains the same value on the same prompt and word features: the label
value function, log p(predicted label | prompt) normalised over {negative, positive},
of LongSHAP's ClassificationPrompt with whitespace words removed.
- LongSHAP: `Explainer.explain(text=, labels=, levels=["word"], method=...)`, the product path.
- Captum 0.9: its FeatureAblation, ShapleyValueSampling (5 permutations) and KernelShap
  over a 1 x n word mask whose forward renders the same prompt and runs one plain model
  forward per evaluation (batch 1, as LLMAttribution does); LayerIntegratedGradients (50
  steps) and saliency (|gradient|, LayerGradientXActivation without the input factor)
  on the embedding layer, token attributions summed onto the same words by the same
  character spans. Integrated Gradients' baseline is the pad embedding on both sides,
  on the sentence's tokens only.
- Budgets: FA n + 1 evaluations; SVS and KernelSHAP 5(n + 1) on both sides.
- Metrics on p(ŷ) normalised over the labels (hierarchy.metrics): sufficiency and
  comprehensiveness of the top 20% of words (at least one), their AOPC over top
  1/5/10/20/50%, and for the perturbation methods the mean absolute error against
  exact Shapley values (LongSHAP "exact", all 2^n coalitions). Lower seconds, higher
  sufficiency and comprehensiveness, lower error are better.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import (
    FeatureAblation,
    KernelShap,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    ShapleyValueSampling,
)
from longshap.hierarchy import Explainer
from longshap.hierarchy.gradients import token_anchor
from longshap.hierarchy.metrics import aopc, comprehensiveness, sufficiency
from longshap.hierarchy.values.label import normalised_label_logprobs

from bench.common import parser, print_table, write_json
from bench.vs_captum import LABELS, Sentence, frame, sentences

QUICK_SENTENCES, FULL_SENTENCES = 8, 50
QUICK_MAX_WORDS, MAX_WORDS = 10, 12
PERMUTATIONS = 5
IG_STEPS = 50
TOP_FRACTION = 0.2
METHODS = {  # row name: (LongSHAP method, Captum method)
    "Feature Ablation (leave-one-out)": ("loo", "fa"),
    f"Shapley value sampling ({PERMUTATIONS} perms)": ("permutation", "svs"),
    "KernelSHAP": ("kernel", "kernel"),
    f"Integrated Gradients ({IG_STEPS} steps)": ("integrated_gradients", "ig"),
    "Saliency": ("saliency", "saliency"),
}
PAPER = {  # Table I of the seed paper (Mistral-7B 4-bit, Colab GPU, free-text parsing): s/sentence, sufficiency
    "Feature Ablation (leave-one-out)": (71.6, 0.2),
    f"Shapley value sampling ({PERMUTATIONS} perms)": (354.5, 0.0),
}


@dataclass
class Run:
    values: np.ndarray
    evaluations: int
    seconds: float


def budget(method: str, n: int) -> int | None:
    return {"loo": None, "permutation": PERMUTATIONS * (n + 1), "kernel": PERMUTATIONS * (n + 1), "integrated_gradients": IG_STEPS}.get(method)


def run_longshap(explainer: Explainer, sentence: Sentence, method: str) -> Run:
    started = time.perf_counter()
    result = explainer.explain(
        text=sentence.text, labels=LABELS, target=sentence.label, levels=["word"], method=method,
        budget=budget(method, len(sentence.words)), baseline="pad",
    )
    # Every model evaluation is charged: predicting the label, the full and empty prompts, the gradient passes.
    evaluations = result.stats["evaluations"] + result.stats.get("gradient_rows", 0)
    return Run(np.array([f.value for f in result.levels[0].features]), evaluations, time.perf_counter() - started)


class CaptumValue:
    """The label value of a word mask, one plain model forward per row (what Captum's LLMAttribution does)."""

    def __init__(self, explainer: Explainer, sentence: Sentence) -> None:
        self.explainer, self.sentence = explainer, sentence
        self.label_ids = [explainer.model_view().continuation_ids(sentence.render(np.ones(len(sentence.words), bool)), " " + label) for label in LABELS]
        self.index = LABELS.index(sentence.label)
        self.calls = 0

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        tokenizer = self.explainer.engine.tokenizer
        values = []
        for mask in masks.detach().cpu().numpy().astype(bool):
            self.calls += 1
            ids = torch.tensor([tokenizer(self.sentence.render(mask))["input_ids"]])
            with torch.no_grad():
                scores = label_scores(self.explainer.engine.model, ids, self.label_ids)[0]
            values.append(scores[self.index] - torch.logsumexp(scores, 0))
        return torch.stack(values)[:, None].double()


def label_scores(model, ids: torch.Tensor, label_ids: list[list[int]]) -> torch.Tensor:
    """log p(label | each row of ids) for every label: (rows, labels); one forward when every label is one token."""
    if all(len(label) == 1 for label in label_ids):
        logits = model(ids, logits_to_keep=1).logits[:, -1].float()
        return torch.log_softmax(logits, -1)[:, [label[0] for label in label_ids]]
    scores = []
    for label in label_ids:
        appended = torch.tensor(label).expand(ids.shape[0], -1)
        logits = model(torch.cat([ids, appended], 1)).logits[:, ids.shape[1] - 1 : ids.shape[1] - 1 + len(label)].float()
        scores.append(torch.log_softmax(logits, -1).gather(2, appended[:, :, None])[..., 0].sum(1))
    return torch.stack(scores, 1)


def run_captum_perturbation(explainer: Explainer, sentence: Sentence, kind: str, seed: int) -> Run:
    value = CaptumValue(explainer, sentence)
    n = len(sentence.words)
    inputs, baselines = torch.ones((1, n)), torch.zeros((1, n))
    torch.manual_seed(seed)
    started = time.perf_counter()
    if kind == "fa":
        result = FeatureAblation(value).attribute(inputs, baselines=baselines, target=0)
    elif kind == "svs":
        result = ShapleyValueSampling(value).attribute(inputs, baselines=baselines, target=0, n_samples=PERMUTATIONS)
    else:
        result = KernelShap(value).attribute(inputs, baselines=baselines, target=0, n_samples=PERMUTATIONS * (n + 1))
    return Run(result[0].double().numpy(), value.calls, time.perf_counter() - started)


def run_captum_gradient(explainer: Explainer, sentence: Sentence, kind: str) -> Run:
    """Captum's layer methods on the embedding layer over the full prompt's tokens, summed onto words."""
    engine, model, view = explainer.engine, explainer.engine.model, explainer.model_view()
    full = sentence.render(np.ones(len(sentence.words), bool))
    encoded = engine.tokenizer(full, return_offsets_mapping=True)
    ids = torch.tensor([encoded["input_ids"]])
    anchors = np.array([token_anchor(full, s, e) for s, e in encoded["offset_mapping"]])
    start = sentence.prompt.text_starts(sentence.tree)[0]
    spans = [(start + sentence.tree.units[w].start, start + sentence.tree.units[w].end) for w in sentence.words]
    in_text = (anchors >= start) & (anchors < start + len(sentence.text))
    label_ids = [view.continuation_ids(full, " " + label) for label in LABELS]
    index = LABELS.index(sentence.label)
    rows = [0]

    def forward(input_ids: torch.Tensor) -> torch.Tensor:
        rows[0] += input_ids.shape[0]
        scores = label_scores(model, input_ids, label_ids)
        return (scores - torch.logsumexp(scores, 1, keepdim=True))[:, index : index + 1]

    layer = model.get_input_embeddings()
    started = time.perf_counter()
    if kind == "ig":
        baseline = torch.where(torch.tensor(in_text)[None], torch.full_like(ids, engine.pad_id), ids)
        tokens = LayerIntegratedGradients(forward, layer).attribute(ids, baselines=baseline, target=0, n_steps=IG_STEPS)[0].sum(-1)
    else:
        tokens = LayerGradientXActivation(forward, layer, multiply_by_inputs=False).attribute(ids, target=0)[0].abs().sum(-1)
    tokens = tokens.detach().double().numpy()[: len(anchors)]  # the label tokens appended by `forward` are not input
    words = np.array([tokens[(anchors >= s) & (anchors < e)].sum() for s, e in spans])
    return Run(words, rows[0], time.perf_counter() - started)


def probability_of(explainer: Explainer, sentence: Sentence) -> Callable[[np.ndarray], np.ndarray]:
    """p(ŷ | only the kept words), normalised over the labels, batched through one view of the engine."""
    full = sentence.render(np.ones(len(sentence.words), bool))
    view = explainer.model_view()
    ids = [view.continuation_ids(full, " " + label) for label in LABELS]
    index = LABELS.index(sentence.label)

    def probability(keep: np.ndarray) -> np.ndarray:
        prompts = [sentence.render(row) for row in np.asarray(keep, bool).reshape(-1, len(sentence.words))]
        return np.exp(normalised_label_logprobs(view, prompts, ids)[:, index])

    return probability


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--sentences", type=int, help="how many sentences (default 8 with --quick, else 50)")
    cli.add_argument("--methods", help="comma-separated LongSHAP names of the rows to run (default: all)")
    args = cli.parse_args()
    chosen = {name: pair for name, pair in METHODS.items() if not args.methods or pair[0] in args.methods.split(",")}
    if not chosen:
        cli.error(f"--methods: none of {args.methods!r} is one of {[pair[0] for pair in METHODS.values()]}")
    perturbation = any(theirs in ("fa", "svs", "kernel") for _, theirs in chosen.values())
    count, max_words = (QUICK_SENTENCES, QUICK_MAX_WORDS) if args.quick else (FULL_SENTENCES, MAX_WORDS)
    count = args.sentences or count
    explainer = Explainer.from_pretrained(args.model, engine="transformers")
    sides = [(name, side) for name in chosen for side in ("LongSHAP", "Captum")]
    figures = {key: {m: [] for m in ("seconds", "evaluations", "suff", "comp", "aopc_suff", "aopc_comp", "mae")} for key in sides}
    words = []
    for seed, text in enumerate(sentences(count, max_words, seed=0)):
        sentence = frame(explainer, text)
        probability = probability_of(explainer, sentence)
        exact = run_longshap(explainer, sentence, "exact").values if perturbation else None
        for name, (ours, theirs) in chosen.items():
            runs = {"LongSHAP": run_longshap(explainer, sentence, ours)}
            if theirs in ("fa", "svs", "kernel"):
                runs["Captum"] = run_captum_perturbation(explainer, sentence, theirs, seed)
            else:
                runs["Captum"] = run_captum_gradient(explainer, sentence, theirs)
            for side, run in runs.items():
                row = figures[(name, side)]
                curve = aopc(probability, run.values)
                row["seconds"].append(run.seconds)
                row["evaluations"].append(run.evaluations)
                row["suff"].append(sufficiency(probability, run.values, TOP_FRACTION))
                row["comp"].append(comprehensiveness(probability, run.values, TOP_FRACTION))
                row["aopc_suff"].append(curve["aopc_sufficiency"])
                row["aopc_comp"].append(curve["aopc_comprehensiveness"])
                row["mae"].append(float(np.abs(run.values - exact).mean()) if theirs in ("fa", "svs", "kernel") else float("nan"))
        words.append(len(sentence.words))
        print(f"[{seed + 1}/{count}] {len(sentence.words)} words, label {sentence.label}", flush=True)

    mean = {key: {m: float(np.mean(v)) for m, v in row.items()} for key, row in figures.items()}
    rows = []
    for name, side in sides:
        figure = mean[(name, side)]
        paper = PAPER.get(name) if side == "Captum" else None
        rows.append([
            name, side, figure["seconds"], figure["evaluations"], figure["suff"], figure["comp"], figure["aopc_suff"],
            figure["aopc_comp"], "—" if np.isnan(figure["mae"]) else figure["mae"],
            f"{paper[0]} s, suff {paper[1]}" if paper else "",
        ])
    print_table(
        ["method", "library", "s/sentence", "evals/sentence", "suff@20%", "comp@20%", "AOPC suff", "AOPC comp", "MAE vs exact", "paper (Captum)"],
        rows,
        f"SST-2 dev, {count} seeded sentences of {min(words)}-{max(words)} words (mean {np.mean(words):.3g}), "
        f"value: normalised log p(predicted label), {explainer.engine.loaded.name}",
    )
    flat = {"sentences": count, "mean_words": float(np.mean(words))}
    for (name, side), figure in mean.items():
        key = f"{side.lower()}_{METHODS[name][0 if side == 'LongSHAP' else 1]}"
        flat.update({f"{key}_{metric}": value for metric, value in figure.items()})
    write_json(args.json, flat)


if __name__ == "__main__":
    main()
