"""KV-cache prefix reuse on and off: the same explanation, forwarded tokens and time per level.

Run from the repository root: `python -m bench.kv_reuse [--quick] [--json PATH]`.
Both runs use the same seed, so they evaluate the same coalitions; the values must
agree up to float noise, and the table reports the largest difference. Reuse can only
share the tokens before the first unit a coalition removes: in Owen mode the outer
context (which earlier documents are present) changes with every permutation pair, in
local mode it does not, so both modes are measured.
"""
from __future__ import annotations

import time

from bench.common import parser, print_table, write_json
from longshap.hierarchy import Explainer
from longshap.hierarchy.engines import TransformersEngine
from longshap.client.data import load_nq, nq_prompt


def run(explainer: Explainer, prompt, budget: int, mode: str):
    started = time.perf_counter()
    result = explainer.explain(question=prompt.question, documents=prompt.documents, budget=budget, seed=0, mode=mode)
    return result, time.perf_counter() - started


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rows, budget, distractors = ([5], 40, 3) if args.quick else ([5, 3, 11], 100, 5)
    explainer = Explainer.from_pretrained(args.model, engine="transformers")
    # The same weights behind an engine that forwards every row whole.
    plain = Explainer(TransformersEngine(explainer.engine.loaded, reuse_prefix=False))
    nq = load_nq()
    table, figures = [], {}
    worst = 0.0
    for mode in ("owen", "local"):
        totals = {"off": 0, "on": 0, "t_off": 0.0, "t_on": 0.0}
        for row in rows:
            prompt = nq_prompt(nq, row, distractors, seed=0)
            off, time_off = run(plain, prompt, budget, mode)
            on, time_on = run(explainer, prompt, budget, mode)
            for level_off, level_on in zip(off.levels, on.levels):
                diff = max(abs(a.value - b.value) for a, b in zip(level_off.features, level_on.features))
                worst = max(worst, diff)
                table.append([
                    mode, row, level_on.level, level_on.evaluations, level_off.forward_tokens, level_on.forward_tokens,
                    level_on.reused_tokens, level_off.forward_tokens / max(level_on.forward_tokens, 1),
                    level_off.wall_seconds, level_on.wall_seconds, diff,
                ])
                if level_on.level != "document":
                    totals["off"] += level_off.forward_tokens
                    totals["on"] += level_on.forward_tokens
            totals["t_off"] += time_off
            totals["t_on"] += time_on
        suffix = "" if mode == "owen" else "_local"
        figures[f"forwarded_token_ratio{suffix}"] = totals["off"] / max(totals["on"], 1)
        figures[f"time_ratio{suffix}"] = totals["t_off"] / totals["t_on"]
    print_table(
        ["mode", "NQ row", "level", "evals", "tokens off", "tokens on", "reused", "ratio", "s off", "s on", "max |Δvalue|"],
        table,
        f"KV prefix reuse, {distractors + 1} passages, budget {budget}/level, {explainer.engine.loaded.name}",
    )
    for mode, suffix in (("owen", ""), ("local", "_local")):
        print(f"{mode}: sentence+word levels forward {figures['forwarded_token_ratio' + suffix]:.2f}× fewer tokens, "
              f"whole explanation {figures['time_ratio' + suffix]:.2f}× faster")
    print(f"largest value difference, reuse on vs off: {worst:.2e}")
    write_json(args.json, {**figures, "max_value_difference": worst, "budget": budget, "passages": distractors + 1})


if __name__ == "__main__":
    main()
