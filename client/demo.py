"""`make demo`: explain a real multi-passage NaturalQuestions answer on the default model.

Builds a 4-passage prompt (the gold passage among seeded distractors) from
../shared/data/nq, explains the model's greedy answer document → sentence → word,
and prints each level as soon as it is finished.
"""
from __future__ import annotations

import argparse
import time

from hierarchy import Explainer
from hierarchy.data import load_nq, nq_prompt

DEMO_ROW = 5  # "when did the angel of the north get built": Gemma 3 270M answers it from its passage


def print_level(level, top: int = 6) -> None:
    print(f"\n== {level.level} level: {len(level.features)} units, {level.evaluations} model evaluations, {level.wall_seconds:.1f} s")
    for feature in sorted(level.features, key=lambda f: -f.value)[:top]:
        mark = "▶" if feature.expanded else " "
        text = feature.text if feature.id.count(".") else f"[{feature.title}] {feature.text}"
        print(f"  {mark} {feature.id:<12} {feature.value:+8.3f} ± {feature.stderr:.3f}  {text[:70]!s}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", type=int, default=DEMO_ROW, help="NQ row whose question is asked")
    parser.add_argument("--distractors", type=int, default=3)
    parser.add_argument("--budget", type=int, default=60, help="model evaluations per level")
    parser.add_argument("--model", default=None, help="local Hugging Face directory (default: embedded Gemma 3 270M)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    explainer = Explainer.from_pretrained(args.model)
    print(f"model loaded in {time.perf_counter() - started:.1f} s")
    prompt = nq_prompt(load_nq(), args.row, args.distractors, seed=0)
    print(f"question: {prompt.question}\ngold answers: {prompt.answers}; gold passage: d{prompt.gold_index}")
    for event in explainer.explain_stream(question=prompt.question, documents=prompt.documents, budget=args.budget, seed=0):
        if event.kind == "answer":
            print(f"model answer ({event.source}): {event.answer!r}")
        elif event.kind == "level":
            print_level(event.result)
        elif event.kind == "done":
            stats = event.explanation.stats
            print(
                f"\ntotal: {stats['evaluations']} evaluations, {stats['forward_tokens']} forwarded tokens, "
                f"{stats['wall_seconds']:.1f} s explaining, {time.perf_counter() - started:.1f} s in all"
            )


if __name__ == "__main__":
    main()
