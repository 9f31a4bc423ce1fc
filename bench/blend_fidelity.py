"""kv_mode blend against exact: document values on many NQ prompts, for each share of recomputed tokens.

Run from the repository root: `python -m bench.blend_fidelity [--quick] [--prompts 20] [--shares 0 0.15 0.3] [--dtype bfloat16]
[--json PATH]`.

- Prompts: NQ rows 0..P-1 (`--prompts`, quick: 6), each question with its gold passage
  among 9 distractors (`client.data.nq_prompt`, seed 0), explained for its gold answer
  (value logprob), document level only, the default estimator, budget 4(n + 1) = 44,
  seed 0: the same coalitions in every mode.
- Per share of recomputed tokens (`--shares`), blend runs with the self-check's tolerance
  off, so the table shows the blend itself: mean and lowest Spearman correlation of the
  document values with the exact run's, how often the top document agrees, the
  self-check's mean of its largest relative difference, and forwarded tokens over the
  total a pass-per-coalition engine would forward. Speed is measured alone on the machine
  by `bench.long_context --kv-mode exact blend`; this benchmark reports no times.
- "delivered": the default share with the default tolerance, as a request gets it: a
  prompt whose check fails falls back to exact, and the row says how often that happened.
"""
from __future__ import annotations

import numpy as np

from longshap.client.data import load_nq, nq_prompt
from longshap.hierarchy import Explainer
from longshap.hierarchy.options import DTYPES, OPTIONS

from bench.common import parser, print_table, spearman, write_json

PASSAGES = 10
SHARES = (0.0, 0.15, 0.3)
TOLERANCE_OFF = 1e12
"""A tolerance no finite difference reaches: the blend is kept whatever its check says (requests take finite tolerances only)."""


def document_run(explainer: Explainer, prompt, **options) -> tuple[dict[str, float], float, dict | None]:
    """Document values, forwarded share of tokens and self-check of one document-level explanation."""
    result = explainer.explain(
        question=prompt.question, documents=prompt.documents, target=prompt.answers[0], levels=["document"],
        budget=4 * (PASSAGES + 1), seed=0, **options,
    )
    stats = result.stats
    forwarded = stats["forward_tokens"] / (stats["forward_tokens"] + stats["reused_tokens"])
    return {f.id: f.value for f in result.levels[0].features}, forwarded, result.self_check


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--prompts", type=int, default=None, help="NQ rows 0..P-1 (default 20; quick 6)")
    cli.add_argument("--shares", type=float, nargs="*", default=list(SHARES), help="recompute shares to run (default 0 0.15 0.3)")
    cli.add_argument("--dtype", choices=DTYPES, default="float32", help="the model's dtype, in every mode (default float32)")
    args = cli.parse_args()
    prompts = args.prompts or (6 if args.quick else 20)
    explainer = Explainer.from_pretrained(args.model, engine="transformers", dtype=args.dtype)
    nq = load_nq()
    default_share, tolerance = OPTIONS["blend_recompute"].default, OPTIONS["blend_tolerance"].default
    runs = [(f"blend {share:g}", {"blend_recompute": share, "blend_tolerance": TOLERANCE_OFF}) for share in args.shares]
    runs.append((f"delivered {default_share:g}", {}))
    measured: dict[str, list[tuple]] = {name: [] for name, _ in runs}
    exact_share = []
    for row in range(prompts):
        prompt = nq_prompt(nq, row, PASSAGES - 1, seed=0)
        reference, forwarded, _ = document_run(explainer, prompt)
        exact_share.append(forwarded)
        top = max(reference, key=reference.__getitem__)
        for name, options in runs:
            values, forwarded, check = document_run(explainer, prompt, kv_mode="blend", **options)
            assert check is not None, "a blended request reports its self-check"
            same = max(values, key=values.__getitem__) == top
            measured[name].append((spearman(reference, values), same, check["max_difference"], forwarded, check["fallback"]))
        print(f"row {row}: top {top}; " + "; ".join(
            f"{name} rho {m[-1][0]:.3f} top {'=' if m[-1][1] else '≠'} check {m[-1][2]:.3f}{' (fell back)' if m[-1][4] else ''}"
            for name, m in measured.items()), flush=True)
    table, figures = [["exact", prompts, 1.0, 1.0, 1.0, "—", float(np.mean(exact_share)), "—"]], {}
    for name, rows in measured.items():
        rho, same, largest, forwarded, fallback = (np.array(column, dtype=float) for column in zip(*rows))
        table.append([name, prompts, float(np.mean(rho)), float(np.min(rho)), float(np.mean(same)), float(np.nanmean(largest)),
                      float(np.mean(forwarded)), f"{int(fallback.sum())}/{prompts}" if name.startswith("delivered") else "off"])
        key = name.replace(" ", "_")
        figures.update({f"{key}_mean_spearman": float(np.mean(rho)), f"{key}_same_top": float(np.mean(same)),
                        f"{key}_forwarded_share": float(np.mean(forwarded)), f"{key}_fallbacks": int(fallback.sum())})
    print_table(
        ["run", "prompts", "mean Spearman", "lowest Spearman", "same top doc", "mean max check diff", "forwarded share", "fallbacks"],
        table,
        f"kv_mode blend vs exact, NQ rows 0..{prompts - 1}, {PASSAGES} passages, document level, budget {4 * (PASSAGES + 1)}, "
        f"{explainer.engine.loaded.name}, {args.dtype}; check tolerance {tolerance:g} for 'delivered', off otherwise",
    )
    write_json(args.json, {**figures, "prompts": prompts, "passages": PASSAGES})


if __name__ == "__main__":
    main()
