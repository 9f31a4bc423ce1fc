"""Reading ../shared/data: multi-passage NQ prompts and SST-2."""
from __future__ import annotations

import pytest

from longshap.client.data import load_nq, load_sst2, nq_prompt, shared_data_dir


@pytest.fixture(scope="module")
def nq_rows():
    return load_nq()


def test_shared_data_dir_and_override(monkeypatch, tmp_path):
    assert (shared_data_dir() / "nq" / "nq-open-oracle.dev.jsonl.gz").is_file()
    monkeypatch.setenv("LONGSHAP_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv("LONGSHAP_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="LONGSHAP_DATA"):
        shared_data_dir()


def test_load_nq_rows(nq_rows):
    assert len(nq_rows) == 2155
    row = nq_rows[0]
    assert row["question"] and row["answers"] and row["ctxs"][0]["text"] and "title" in row["ctxs"][0]


@pytest.mark.parametrize("index, distractors", [(0, 0), (3, 4), (100, 9), (2154, 19)])
def test_nq_prompt_places_gold_passage(nq_rows, index, distractors):
    prompt = nq_prompt(nq_rows, index, distractors, seed=1)
    row = nq_rows[index]
    assert prompt.question == row["question"]
    assert prompt.answers == row["answers"]
    assert len(prompt.documents) == distractors + 1
    assert 0 <= prompt.gold_index <= distractors
    gold = row["ctxs"][0]
    assert prompt.documents[prompt.gold_index] == {"title": gold["title"], "text": gold["text"]}
    others = [d for i, d in enumerate(prompt.documents) if i != prompt.gold_index]
    assert all(set(d) == {"title", "text"} and d["text"] for d in others)
    # Distractors are other rows' gold passages, each at most once.
    pool = {(r["ctxs"][0]["title"], r["ctxs"][0]["text"]) for i, r in enumerate(nq_rows) if i != index}
    assert all((d["title"], d["text"]) in pool for d in others)
    assert len({d["text"] for d in others}) == len(others)


def test_nq_prompt_seeding(nq_rows):
    assert nq_prompt(nq_rows, 7, 9, seed=3) == nq_prompt(nq_rows, 7, 9, seed=3)
    prompts = [nq_prompt(nq_rows, 7, 9, seed=s) for s in range(6)]
    assert len({tuple(d["text"] for d in p.documents) for p in prompts}) > 1
    assert len({p.gold_index for p in prompts}) > 1
    # The generator is keyed by seed and row, so another row gets another draw.
    assert nq_prompt(nq_rows, 8, 9, seed=3).documents != nq_prompt(nq_rows, 7, 9, seed=3).documents


def test_nq_prompt_rejects_bad_index(nq_rows):
    with pytest.raises(IndexError, match="out of range"):
        nq_prompt(nq_rows, len(nq_rows), 3)
    with pytest.raises(IndexError):
        nq_prompt(nq_rows, -1, 3)


def test_load_sst2():
    rows = load_sst2()
    assert len(rows) == 872
    assert {label for _, label in rows} == {0, 1}
    assert all(isinstance(text, str) and text and text == text.strip() for text, _ in rows)
    assert rows[0] == ("it 's a charming and often affecting journey .", 1)
    positives = sum(label for _, label in rows)
    assert 400 < positives < 472  # roughly balanced (444 positive in the GLUE dev split)
