"""LongSHAP against Captum 0.9's LLMAttribution on SST-2: time, agreement and faithfulness of word attributions.

Run from the repository root: `python -m bench.vs_captum [--quick] [--json PATH] [--model DIR]`.

The seed paper's experiment: Feature Ablation and Shapley Value Sampling through
Captum and through LongSHAP, on the same model, prompt, word features and value.
- Value (both sides): log p(predicted label continuation | prompt), not normalised over
  the labels, because that is what Captum's LLMAttribution scores (attr_target="log_prob").
  LongSHAP runs its estimators (`estimate`) on a value function over word masks that
  renders the ClassificationPrompt and calls the batched engine.
- Features: whitespace words. Captum gets a TextTemplateInput with one slot per word and
  "" baselines, through a callable template that joins the kept words with single spaces:
  a "{} {} {}" string template would leave double spaces where a word was dropped, a
  different tokenisation from LongSHAP's removal. Every sentence's rendered strings are
  checked identical on the full, empty and random masks before anything is timed.
- FA: Captum FeatureAblation (n + 1 forwards) against LongSHAP "loo" (n + 1 evaluations).
- SVS: Captum ShapleyValueSampling with n_samples=5 permutations (5n + 1 forwards) against
  LongSHAP "permutation" with the same budget of 5(n + 1) evaluations; LongSHAP samples
  antithetic pairs (2n new evaluations each) while another pair fits the budget, i.e.
  2 pairs = 4 permutations when n > 5 and 3 pairs = 6 when n <= 5; the table reports
  evaluations and permutations actually used. Both are scored against exact Shapley
  values (all 2^n coalitions, LongSHAP's exact estimator on the same value).
- Faithfulness: AOPC sufficiency and comprehensiveness (hierarchy.metrics) of each
  attribution, on p(predicted label) normalised over the labels (the explainer's
  probability_function); higher comprehensiveness and sufficiency are better.
Each sentence runs the four timed attributions interleaved, so load on the machine hits both sides alike.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from captum.attr import FeatureAblation, LLMAttribution, ShapleyValueSampling, TextTemplateInput

from bench.common import parser, print_table, write_json
from longshap.hierarchy import Explainer
from longshap.client.data import load_sst2
from longshap.hierarchy.estimators import estimate
from longshap.hierarchy.metrics import aopc
from longshap.hierarchy.prompt import ClassificationPrompt
from longshap.hierarchy.segmentation import ROOT, FeatureTree
from longshap.hierarchy.values.label import label_token_ids

LABELS = ["negative", "positive"]
MAX_WORDS = 12
QUICK_MAX_WORDS = 8
"""Exact Shapley costs 2^n evaluations; --quick keeps it to 256 per sentence."""
CAPTUM_PERMUTATIONS = 5
RENDER_CHECK_MASKS = 8
METHODS = ("captum_fa", "longshap_fa", "captum_svs", "longshap_svs", "exact")
"""In the order they run for each sentence: the two sides interleaved, then the reference."""


@dataclass
class Sentence:
    """One SST-2 sentence framed as LongSHAP's classification prompt, with its explained label."""

    text: str
    prompt: ClassificationPrompt
    tree: FeatureTree
    words: list[str]
    label: str
    label_ids: list[int]

    def render(self, keep: np.ndarray) -> str:
        return self.prompt.render(self.tree, {w for w, kept in zip(self.words, keep) if not kept})


def sentences(count: int, max_words: int, seed: int) -> list[str]:
    """A seeded subset of SST-2 dev sentences of at most `max_words` words, single-spaced."""
    pool = [" ".join(text.split()) for text, _ in load_sst2() if 2 <= len(text.split()) <= max_words]
    return random.Random(seed).sample(pool, count)


def frame(explainer: Explainer, text: str) -> Sentence:
    prompt = ClassificationPrompt(text, LABELS)
    view = explainer.model_view()
    tree = FeatureTree(prompt.documents, view.token_offsets)
    words = tree.expand(ROOT, "word")
    full = prompt.render(tree)
    ids = label_token_ids(view, full, LABELS)
    best = int(np.argmax(view.continuation_logprobs([full], ids)[0]))
    return Sentence(text, prompt, tree, words, LABELS[best], ids[best])


def logprob_value(explainer: Explainer, sentence: Sentence) -> Callable[[np.ndarray], np.ndarray]:
    """log p(label | prompt with only the kept words), unnormalised: Captum's log_prob target."""
    view = explainer.model_view()

    def value(masks: np.ndarray) -> np.ndarray:
        prompts = [sentence.render(row) for row in masks]
        return view.continuation_logprobs(prompts, [sentence.label_ids])[:, 0]

    return value


def captum_input(sentence: Sentence) -> TextTemplateInput:
    """One template slot per word, "" baselines; dropped words take their separating space with them."""
    full = sentence.render(np.ones(len(sentence.words), dtype=bool))
    empty = sentence.render(np.zeros(len(sentence.words), dtype=bool))
    head = os.path.commonprefix([full, empty])
    tail = empty[len(head):]
    if full != head + sentence.text + tail:
        raise RuntimeError(f"cannot locate the text in the rendered prompt {full!r}")
    words = [sentence.tree.units[w].text for w in sentence.words]
    return TextTemplateInput(WordTemplate(head, tail), words, baselines=[""] * len(words))


def check_rendering(sentence: Sentence, inp: TextTemplateInput, rng: np.random.Generator) -> int:
    """Captum's and LongSHAP's prompt strings on the full, empty and random masks; raises on a mismatch."""
    n = len(sentence.words)
    masks = np.vstack([np.ones(n, bool), np.zeros(n, bool), rng.random((RENDER_CHECK_MASKS - 2, n)) < 0.5])
    for mask in masks:
        ours, theirs = sentence.render(mask), inp.to_model_input(torch.tensor(mask[None, :], dtype=torch.float))
        if ours != theirs:
            raise RuntimeError(f"Captum renders {theirs!r} where LongSHAP renders {ours!r}")
    return len(masks)


class WordTemplate:
    """The prompt with the kept words joined by single spaces; counts its calls, i.e. Captum's evaluations."""

    def __init__(self, head: str, tail: str) -> None:
        self.head, self.tail = head, tail
        self.calls = 0

    def __call__(self, *words: str) -> str:
        self.calls += 1
        return self.head + " ".join(w for w in words if w) + self.tail


@dataclass
class Run:
    """One attribution of one sentence: values, model evaluations it took, seconds, permutations sampled."""

    values: np.ndarray
    evaluations: int
    seconds: float
    permutations: int = 0


def run_captum(method, explainer: Explainer, inp: TextTemplateInput, target: torch.Tensor, seed: int, **kwargs) -> Run:
    before, started = inp.format_fn.calls, time.perf_counter()
    torch.manual_seed(seed)
    result = LLMAttribution(method, explainer.engine.tokenizer).attribute(inp, target=target, **kwargs)
    return Run(result.seq_attr.double().cpu().numpy(), inp.format_fn.calls - before, time.perf_counter() - started)


def run_longshap(value: Callable[[np.ndarray], np.ndarray], n: int, method: str, budget: int | None, seed: int) -> Run:
    started = time.perf_counter()
    result = estimate(value, n, method, budget=budget, seed=seed)
    return Run(result.values, result.evaluations, time.perf_counter() - started, result.extras.get("permutations", 0))


def attribute(explainer: Explainer, sentence: Sentence, seed: int) -> dict[str, Run]:
    """The four timed attributions, interleaved, then the exact reference, for one sentence."""
    model, n = explainer.engine.model, len(sentence.words)
    inp = captum_input(sentence)
    target = torch.tensor(sentence.label_ids)
    value = logprob_value(explainer, sentence)
    return {
        "captum_fa": run_captum(FeatureAblation(model), explainer, inp, target, seed),
        "longshap_fa": run_longshap(value, n, "loo", None, seed),
        "captum_svs": run_captum(ShapleyValueSampling(model), explainer, inp, target, seed, n_samples=CAPTUM_PERMUTATIONS),
        "longshap_svs": run_longshap(value, n, "permutation", CAPTUM_PERMUTATIONS * (n + 1), seed),
        "exact": run_longshap(value, n, "exact", None, seed),
    }


def faithfulness(explainer: Explainer, sentence: Sentence, values: np.ndarray) -> tuple[float, float]:
    """AOPC sufficiency and comprehensiveness on p(label) normalised over the labels."""
    _, probability = explainer.probability_function("word", text=sentence.text, labels=LABELS, target=sentence.label)
    scores = aopc(probability, values)
    return scores["aopc_sufficiency"], scores["aopc_comprehensiveness"]


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    count, max_words = (4, QUICK_MAX_WORDS) if args.quick else (20, MAX_WORDS)
    explainer = Explainer.from_pretrained(args.model, engine="transformers")
    rng = np.random.default_rng(0)
    per = {m: {"seconds": [], "evaluations": [], "mae_exact": [], "suff": [], "comp": []} for m in METHODS}
    pearson = {"fa": [], "svs": []}
    max_diff = {"fa": 0.0, "svs": 0.0}
    words, svs_permutations, checked = [], [], 0
    for seed, text in enumerate(sentences(count, max_words, seed=0)):
        sentence = frame(explainer, text)
        checked += check_rendering(sentence, captum_input(sentence), rng)
        runs = attribute(explainer, sentence, seed)
        for method, run in runs.items():
            suff, comp = faithfulness(explainer, sentence, run.values)
            mae = float(np.abs(run.values - runs["exact"].values).mean())
            for key, figure in zip(per[method], (run.seconds, run.evaluations, mae, suff, comp)):
                per[method][key].append(figure)
        for kind in pearson:
            ours, theirs = runs[f"longshap_{kind}"].values, runs[f"captum_{kind}"].values
            pearson[kind].append(float(np.corrcoef(ours, theirs)[0, 1]) if np.std(ours) > 0 and np.std(theirs) > 0 else float("nan"))
            max_diff[kind] = max(max_diff[kind], float(np.abs(ours - theirs).max()))
        words.append(len(sentence.words))
        svs_permutations.append(runs["longshap_svs"].permutations)
        print(f"[{seed + 1}/{count}] {len(sentence.words)} words, label {sentence.label}: "
              + ", ".join(f"{m} {r.seconds:.2f}s" for m, r in runs.items()), flush=True)

    mean = {m: {k: float(np.nanmean(v)) for k, v in figures.items()} for m, figures in per.items()}
    speedup = {kind: mean[f"captum_{kind}"]["seconds"] / mean[f"longshap_{kind}"]["seconds"] for kind in ("fa", "svs")}
    names = {
        "captum_fa": "Captum FeatureAblation", "longshap_fa": "LongSHAP loo",
        "captum_svs": f"Captum SVS ({CAPTUM_PERMUTATIONS} perms)",
        "longshap_svs": f"LongSHAP permutation ({np.mean(svs_permutations):.3g} perms)", "exact": "LongSHAP exact (reference)",
    }
    rows = []
    for method in METHODS:
        kind = method.rsplit("_", 1)[-1]
        versus = method.startswith("longshap_")
        rows.append([
            names[method], mean[method]["seconds"], mean[method]["evaluations"],
            speedup[kind] if versus else "", float(np.nanmean(pearson[kind])) if versus else "",
            max_diff[kind] if versus else "", mean[method]["mae_exact"], mean[method]["suff"], mean[method]["comp"],
        ])
    print_table(
        ["method", "s/sentence", "evals/sentence", "speed-up vs Captum", "Pearson r vs Captum", "max |Δ| vs Captum",
         "MAE vs exact", "AOPC suff", "AOPC comp"],
        rows,
        f"SST-2, {count} sentences of {min(words)}-{max(words)} words (mean {np.mean(words):.3g}), value log p(label), "
        f"{explainer.engine.loaded.name}; rendering identical on {checked} masks",
    )
    figures = {
        "speedup_fa": speedup["fa"], "speedup_svs": speedup["svs"], "sentences": count, "mean_words": float(np.mean(words)),
        "fa_pearson": float(np.nanmean(pearson["fa"])), "fa_max_abs_diff": max_diff["fa"],
        "svs_pearson": float(np.nanmean(pearson["svs"])), "svs_max_abs_diff": max_diff["svs"],
        "longshap_svs_permutations": float(np.mean(svs_permutations)), "captum_svs_permutations": CAPTUM_PERMUTATIONS,
        "render_masks_checked": checked, "value": "log p(predicted label continuation), unnormalised",
    }
    figures.update({f"{m}_{k}": v for m, row in mean.items() for k, v in row.items()})
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
