"""Engines side by side: the 10-passage NQ three-level explanation on transformers float32 and bfloat16, llama.cpp, and an OpenAI server.

Run from the repository root: `python -m bench.engines [--quick] [--engines NAME ...] [--threads N] [--results DIR] [--json PATH]`.

- Same prompt and target for every engine: NQ row 5's question with its gold passage
  among 9 distractors (`client.data.nq_prompt`, seed 0), explained for transformers
  float32's greedy answer; document → sentence → word, seed 0, the default estimator
  and allocation; budget per level 4(n+1) with --quick, else the defaults.
- Each engine runs in a fresh process, one after another, so its start-up (loading the
  model; the transformers engine reads the dequantised copy cached on the first load)
  and its peak resident memory are its own. For openai the server's peak memory is added.
- "openai" is llama-cpp-python's OpenAI-compatible server on 127.0.0.1 running the
  same GGUF (`--logits_all true`, its prompt log-probabilities need it), with extra
  buffer types off where llama.cpp was built with AMX kernels (they crash, as in the llamacpp engine).
  That server turns the logits of every prompt position into log-probabilities and sorts
  the whole vocabulary per position in Python; with Gemma's 262k words one evaluation of
  the full prompt takes minutes, so it scores --openai-evaluations coalitions (the full
  prompt, then random halves of the passages), one request each, and its wall time is
  extrapolated from their mean to transformers float32's evaluations: the table says so.
- Figures: start-up s, wall s, evaluations, s per evaluation, forwarded tokens per second,
  peak RSS MB, the top document / sentence / word and whether they equal transformers
  float32's, and the Spearman correlation of the document values with its.
- Each engine's figures are kept in --results (default a temporary folder); with --reuse an
  engine whose figures are there for the same settings is not run again.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import parser, print_table, spearman, write_json
from bench.llama_server import start_llama_server
from bench.long_context import top_ids

ENGINES = ("transformers-f32", "transformers-bf16", "llamacpp", "openai")
LOAD_OPTIONS = {"transformers-f32": {"engine": "transformers", "dtype": "float32"}, "transformers-bf16": {"engine": "transformers", "dtype": "bfloat16"}}
NQ_ROW, DISTRACTORS = 5, 9


def child(name: str, target: str | None, quick: bool, threads: int, openai_evaluations: int, out: Path) -> None:
    """Run one engine's explanation in this (fresh) process and write its figures to `out`."""
    from longshap.client.data import load_nq, nq_prompt
    from longshap.hierarchy import Explainer

    prompt = nq_prompt(load_nq(), NQ_ROW, DISTRACTORS, seed=0)
    budget = 4 * (DISTRACTORS + 2) if quick else None
    figures: dict = {"engine": name}
    if name == "openai":
        figures.update(openai_probe(prompt, target or "", threads, openai_evaluations))
    else:
        import torch

        torch.set_num_threads(threads)
        options = LOAD_OPTIONS.get(name, {"engine": "llamacpp", "threads": threads})
        started = time.perf_counter()
        explainer = Explainer.from_pretrained(**options)
        figures["startup_s"] = time.perf_counter() - started
        result = explainer.explain(question=prompt.question, documents=prompt.documents, target=target, budget=budget, seed=0)
        figures.update(summary(result))
    figures["peak_rss_mb"] = figures.get("server_rss_mb", 0) + resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(figures))


def summary(result) -> dict:
    return {
        "answer": result.answer, "wall_s": result.stats["wall_seconds"], "evaluations": result.stats["coalitions"],
        "forward_tokens": result.stats["forward_tokens"], "top": "/".join(top_ids(result)),
        "documents": {f.id: f.value for f in result.levels[0].features},
    }


def openai_probe(prompt, target: str, threads: int, evaluations: int) -> dict:
    """Seconds per evaluation through the server: the full prompt and coalitions of half the passages, each one request."""
    from longshap.hierarchy.engines import ModelView, RunContext
    from longshap.hierarchy.engines.loading import gguf_path
    from longshap.hierarchy.engines.openai_engine import OpenAIEngine
    from longshap.hierarchy.prompt import QAPrompt
    from longshap.hierarchy.segmentation import Document, FeatureTree

    rng = np.random.default_rng(0)
    kept = [list(range(len(prompt.documents)))] + [sorted(rng.choice(len(prompt.documents), len(prompt.documents) // 2, replace=False)) for _ in range(evaluations - 1)]
    with tempfile.TemporaryDirectory() as folder, start_llama_server(gguf_path(None), Path(folder), "--logits_all", "true", threads=threads) as (url, server):
        started = time.perf_counter()
        remote = OpenAIEngine(url, timeout_s=3 * 3600)
        startup = time.perf_counter() - started
        view = ModelView(remote, RunContext())
        texts = []
        for documents in kept:
            qa = QAPrompt(prompt.question, [Document(prompt.documents[i]["text"], prompt.documents[i]["title"]) for i in documents])
            texts.append(qa.render(FeatureTree(qa.documents, view.token_offsets)))
        continuation = view.continuation_ids(texts[0], " " + target)
        started = time.perf_counter()
        for text in texts:
            view.continuation_logprobs([text], [continuation])
        seconds = (time.perf_counter() - started) / len(texts)
        rss = peak_rss_mb(server.pid)
        remote.close()
    return {"startup_s": startup, "seconds_per_evaluation": seconds, "measured_evaluations": len(texts), "server_rss_mb": rss,
            "forward_tokens": view.stats.forward_tokens, "measured_seconds": seconds * len(texts)}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    cli.add_argument("--threads", type=int, default=2, help="threads of every engine (default 2)")
    cli.add_argument("--openai-evaluations", type=int, default=1, help="coalitions the openai server scores: the full prompt, then halves (the rest extrapolated)")
    cli.add_argument("--results", type=Path, default=Path(tempfile.gettempdir()) / "longshap-bench-engines", help="where each engine's figures go")
    cli.add_argument("--reuse", action="store_true", help="keep the figures of engines already run with these settings")
    cli.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    cli.add_argument("--target", help=argparse.SUPPRESS)
    cli.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = cli.parse_args()
    if args.child:
        child(args.child, args.target, args.quick, args.threads, args.openai_evaluations, args.out)
        return
    runs: dict[str, dict] = {}
    target = None
    args.results.mkdir(parents=True, exist_ok=True)
    for name in ["transformers-f32", *[e for e in args.engines if e != "transformers-f32"]]:
        out = args.results / f"{name}-{'quick' if args.quick else 'full'}-{args.threads}.json"
        command = [sys.executable, "-m", "bench.engines", "--child", name, "--out", str(out), "--threads", str(args.threads),
                   "--openai-evaluations", str(args.openai_evaluations), *(["--target", target] if target else []), *(["--quick"] if args.quick else [])]
        if not (args.reuse and out.exists()):
            subprocess.run(command, check=True)
        runs[name] = json.loads(out.read_text())
        target = target or runs[name]["answer"]
        print(f"{name}: {json.dumps({k: v for k, v in runs[name].items() if k != 'documents'})}", flush=True)
    reference = runs["transformers-f32"]
    table, figures = [], {"target": target, "quick": args.quick}
    for name, run in runs.items():
        if "seconds_per_evaluation" in run:  # the server scored a few coalitions: the whole run is extrapolated
            run.update(evaluations=reference["evaluations"], wall_s=run["seconds_per_evaluation"] * reference["evaluations"])
        speedup = reference["wall_s"] / run["wall_s"]
        measured = "documents" in run
        rho = spearman(reference["documents"], run["documents"]) if measured else float("nan")
        table.append([
            name, f"{run['startup_s']:.2f}", f"{run['wall_s']:.1f}" + ("" if measured else f" (extrapolated from {run['measured_evaluations']})"),
            run["evaluations"], run["wall_s"] / run["evaluations"],
            run["forward_tokens"] / (run["wall_s"] if measured else run["measured_seconds"]), round(run["peak_rss_mb"]), f"{speedup:.2f}x",
            run["top"] if measured else "not run", run["top"] == reference["top"] if measured else "n/a", f"{rho:.3f}" if measured else "n/a",
        ])
        figures.update({f"{name}_{key}": value for key, value in run.items() if key != "documents"} | {f"{name}_speedup": speedup, f"{name}_spearman": rho})
    print_table(
        ["engine", "start-up s", "wall s", "evaluations", "s/evaluation", "forwarded tok/s", "peak RSS MB", "speed vs f32", "top doc/sentence/word",
         "same top", "doc Spearman"],
        table,
        f"Engines on NQ row {NQ_ROW}, {DISTRACTORS + 1} passages, three levels, target {target!r}, "
        f"{'quick budgets 4(n+1)/level' if args.quick else 'default budgets'}, {args.threads} threads each",
    )
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
