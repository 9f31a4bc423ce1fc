"""Reading the reference data in ../shared/data: multi-passage NQ prompts and SST-2.

A long-context NQ prompt is one question's gold passage plus distractors drawn from
other rows, shuffled with a seed; the gold position is then known, which gives a
ground truth for document-level attribution.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path


def shared_data_dir() -> Path:
    """$LONGSHAP_DATA, else ../shared/data next to the project root."""
    configured = os.environ.get("LONGSHAP_DATA")
    path = Path(configured) if configured else Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if not path.is_dir():
        raise FileNotFoundError(f"reference data not found at {path}; set LONGSHAP_DATA to the shared/data folder")
    return path


@dataclass
class NQPrompt:
    question: str
    answers: list[str]
    documents: list[dict]
    gold_index: int


def load_nq(path: Path | None = None) -> list[dict]:
    path = path or shared_data_dir() / "nq" / "nq-open-oracle.dev.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def nq_prompt(rows: list[dict], index: int, distractors: int, seed: int = 0) -> NQPrompt:
    """Row `index`'s question with its gold passage among `distractors` passages of other rows."""
    if not 0 <= index < len(rows):
        raise IndexError(f"NQ row {index} out of range 0..{len(rows) - 1}")
    rng = random.Random(f"{seed}-{index}")
    gold = rows[index]["ctxs"][0]
    others = rng.sample([i for i in range(len(rows)) if i != index], distractors)
    passages = [{"title": rows[i]["ctxs"][0]["title"], "text": rows[i]["ctxs"][0]["text"]} for i in others]
    gold_index = rng.randrange(distractors + 1)
    passages.insert(gold_index, {"title": gold["title"], "text": gold["text"]})
    return NQPrompt(rows[index]["question"], list(rows[index]["answers"]), passages, gold_index)


def load_sst2(path: Path | None = None) -> list[tuple[str, int]]:
    """SST-2 dev rows as (text, label) with label 1 = positive."""
    path = path or shared_data_dir() / "sst2" / "dev.tsv"
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(row["text"].strip(), int(row["label"])) for row in reader]
