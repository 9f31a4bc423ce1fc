"""`longshap explain|classify|rerank` against a real server (and --local): outputs, inputs and exit codes."""
from __future__ import annotations

import io
import json
import socket
import subprocess
import sys

import pytest

from longshap.client.cli import main
from serving import DOCUMENTS, QUESTION
from tiny_models import build_tiny_model_dir


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(doc) + "\n" for doc in DOCUMENTS), encoding="utf-8")
    return path


def _stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def _without_times(explanation: dict) -> dict:
    explanation = dict(explanation, stats={k: v for k, v in explanation["stats"].items() if k != "wall_seconds"})
    explanation["levels"] = [dict(level, wall_seconds=None) for level in explanation["levels"]]
    return explanation


def _run_json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_explain_json_equals_the_engine(tiny_server, tiny_explainer, doc_files, capsys):
    got = _run_json(capsys, ["explain", "--server", tiny_server.address, "--question", QUESTION, "--doc", doc_files[0], "--doc", doc_files[1], "--budget", "30", "--seed", "2", "--json"])
    expected = tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, budget=30, seed=2).to_dict()
    assert _without_times(got) == _without_times(expected)


def test_docs_jsonl_file_stdin_and_doc_stdin_give_the_same_explanation(tiny_server, doc_files, jsonl, monkeypatch, capsys):
    common = ["explain", "--server", tiny_server.address, "--question", QUESTION, "--budget", "10", "--levels", "document", "--json"]
    from_file = _run_json(capsys, [*common, "--docs-jsonl", str(jsonl)])
    _stdin(monkeypatch, jsonl.read_bytes())
    from_stdin = _run_json(capsys, [*common, "--docs-jsonl", "-"])
    assert _without_times(from_file) == _without_times(from_stdin)
    _stdin(monkeypatch, DOCUMENTS[0]["text"].encode())
    one = _run_json(capsys, [*common, "--doc", "-", "--doc", doc_files[1]])
    assert [f["title"] for f in one["levels"][0]["features"]] == ["", "Berlin"]


def test_terminal_view_streams_levels_and_shades_the_documents(tiny_server, doc_files, capsys):
    argv = ["explain", "--server", tiny_server.address, "--question", QUESTION, "--doc", doc_files[0], "--doc", doc_files[1], "--budget", "20", "--color", "always"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.index("answer (generated)") < out.index("== document level") < out.index("== sentence level") < out.index("== word level")
    assert "\x1b[48;2;" in out and "[d0] Paris" in out and "[d1] Berlin" in out
    assert "evaluations" in out.splitlines()[-1] and "first level event after" in out


def test_classify_from_a_file_with_labels(tiny_server, tiny_explainer, tmp_path, capsys):
    text = tmp_path / "review.txt"
    text.write_text("a charming journey", encoding="utf-8")
    got = _run_json(capsys, ["classify", "--server", tiny_server.address, "--text-file", str(text), "--label", "negative,positive", "--budget", "10", "--json"])
    expected = tiny_explainer.explain(text="a charming journey", labels=["negative", "positive"], budget=10).to_dict()
    assert _without_times(got) == _without_times(expected)


def test_rerank_prints_answers_then_documents(tiny_server, doc_files, capsys):
    argv = ["rerank", "--server", tiny_server.address, "--question", QUESTION, "--doc", doc_files[0], "--doc", doc_files[1], "--candidate", "Paris", "--candidate", "Berlin", "--budget", "6"]
    assert main([*argv, "--json"]) == 0
    response = json.loads(capsys.readouterr().out)
    assert sorted(a["answer"] for a in response["answers"]) == ["Berlin", "Paris"]
    assert sorted(d["index"] for d in response["documents"]) == [0, 1]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1. " in out and f"documents ranked for {response['answers'][0]['answer']!r}" in out


def test_local_mode_equals_the_server(tiny_server, tiny_llama_dir, jsonl, capsys):
    common = ["explain", "--question", QUESTION, "--docs-jsonl", str(jsonl), "--budget", "15", "--json"]
    remote = _run_json(capsys, [*common, "--server", tiny_server.address])
    local = _run_json(capsys, [*common, "--local", "--model", str(tiny_llama_dir)])
    assert _without_times(local) == _without_times(remote)


def test_blend_flags_reach_the_server_and_the_local_engine_alike(tiny_server, tiny_llama_dir, jsonl, capsys):
    common = ["explain", "--question", QUESTION, "--docs-jsonl", str(jsonl), "--target", "Paris", "--budget", "12", "--json",
              "--kv-mode", "blend", "--blend-recompute", "0.25", "--blend-checks", "2", "--blend-tolerance", "1e6"]
    remote = _run_json(capsys, [*common, "--server", tiny_server.address])
    local = _run_json(capsys, [*common, "--local", "--model", str(tiny_llama_dir)])
    assert _without_times(local) == _without_times(remote)
    assert remote["self_check"]["coalitions"] == 4 and remote["self_check"]["recompute"] == 0.25 and not remote["self_check"]["fallback"]
    assert remote["stats"]["blended_rows"] > 0
    assert main([arg for arg in common if arg != "--json"] + ["--server", tiny_server.address, "--color", "never"]) == 0
    assert "kv blend (0.25 of each document recomputed) kept; on 4 checked coalitions" in capsys.readouterr().out


def test_local_model_flags_load_the_model_that_way(tiny_llama_dir, jsonl, capsys):
    from longshap.hierarchy import Explainer

    argv = ["explain", "--question", QUESTION, "--docs-jsonl", str(jsonl), "--budget", "15", "--json", "--local", "--model", str(tiny_llama_dir)]
    got = _run_json(capsys, [*argv, "--dtype", "bfloat16", "--device", "cpu", "--attn-implementation", "eager"])
    engine = Explainer.from_pretrained(str(tiny_llama_dir), dtype="bfloat16", device="cpu", attn_implementation="eager")
    expected = engine.explain(question=QUESTION, documents=DOCUMENTS, budget=15).to_dict()
    assert _without_times(got) == _without_times(expected)
    assert _without_times(got) != _without_times(_run_json(capsys, argv))  # float32 scores differ: the flag took effect


@pytest.mark.parametrize(
    "flags, named",
    [(["--dtype", "bfloat16"], "--dtype"), (["--quantization", "8bit", "--device", "cpu"], "--device, --quantization"), (["--draft-model", "small"], "--draft-model")],
)
def test_model_flags_against_a_server_are_a_usage_error(doc_files, capsys, flags, named):
    assert main(["explain", "--server", "127.0.0.1:1", "--question", "q", "--doc", doc_files[0], *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{named}: model loading options need --local" in err


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory):
    """A tiny model whose tokenizer has one token more than the others'."""
    from transformers import AutoTokenizer

    path = build_tiny_model_dir(tmp_path_factory.mktemp("other-tokenizer"), "llama", seed=1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_tokens(["<other>"])
    tokenizer.save_pretrained(path)
    return path


def _without_stats(explanation: dict) -> dict:
    return {key: value for key, value in _without_times(explanation).items() if key != "stats"}


def test_a_local_draft_model_decodes_the_answer_and_changes_nothing_else(tiny_llama_dir, tmp_path, jsonl, capsys):
    draft = build_tiny_model_dir(tmp_path / "draft", "llama", seed=6)
    argv = ["explain", "--question", QUESTION, "--docs-jsonl", str(jsonl), "--budget", "10", "--json", "--local", "--model", str(tiny_llama_dir)]
    plain = _run_json(capsys, argv)
    drafted = _run_json(capsys, [*argv, "--draft-model", str(draft)])
    assert plain["stats"]["draft_tokens"] == 0 and drafted["stats"]["draft_tokens"] > 0
    assert _without_stats(drafted) == _without_stats(plain)


def test_a_draft_with_another_tokenizer_is_refused_in_one_line(tiny_llama_dir, other_tokenizer_dir, doc_files, capsys):
    argv = ["explain", "--local", "--model", str(tiny_llama_dir), "--draft-model", str(other_tokenizer_dir), "--question", "q", "--doc", doc_files[0]]
    assert main(argv) == 1
    err = capsys.readouterr().err  # transformers' loading bars aside, one line
    last = err.splitlines()[-1]
    assert last.startswith("longshap explain: ") and "cannot load a model: draft model: its tokenizer differs" in last and "Traceback" not in err


def test_serve_refuses_a_draft_with_another_tokenizer_in_one_line(tiny_llama_dir, other_tokenizer_dir):
    command = [sys.executable, "-m", "longshap.client.cli", "serve", "--model", f"tiny={tiny_llama_dir}", "--draft-model", str(other_tokenizer_dir),
               "--port", "0", "--threads", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.startswith("longshap serve")]  # JSON logs aside
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot load a model: draft model: its tokenizer differs" in lines[0]


def test_local_rerank_equals_the_server(tiny_server, tiny_llama_dir, doc_files, capsys):
    argv = ["rerank", "--question", QUESTION, "--doc", doc_files[0], "--doc", doc_files[1], "--candidate", "Paris", "--candidate", "Berlin", "--budget", "6", "--json"]
    remote = _run_json(capsys, [*argv, "--server", tiny_server.address])
    local = _run_json(capsys, [*argv, "--local", "--model", str(tiny_llama_dir)])
    assert {key: local[key] for key in ("answers", "documents")} == {key: remote[key] for key in ("answers", "documents")}


def test_an_unusable_local_device_exits_1_naming_it(tiny_llama_dir, doc_files, capsys):
    assert main(["explain", "--local", "--model", str(tiny_llama_dir), "--question", "q", "--doc", doc_files[0], "--device", "gpu"]) == 1
    assert "device 'gpu': not a torch device" in capsys.readouterr().err


def test_models_lists_the_served_models(tiny_server, capsys):
    assert main(["models", "--server", tiny_server.address]) == 0
    assert capsys.readouterr().out.startswith("tiny (default)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--value", "label"], 1, "INVALID_ARGUMENT: value"),
        (["--model", "nope"], 1, "NOT_FOUND: model"),
        (["--model", "/tmp/models"], 1, "INVALID_ARGUMENT: model"),
        (["--threshold", "nan"], 1, "INVALID_ARGUMENT: thresholds["),
        (["--levels", "word,document"], 1, "INVALID_ARGUMENT: levels"),
    ],
)
def test_server_errors_exit_1_with_one_line(tiny_server, doc_files, capsys, extra, code, message):
    assert main(["explain", "--server", tiny_server.address, "--question", QUESTION, "--doc", doc_files[0], *extra]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_an_unreachable_server_exits_1(doc_files, capsys):
    assert main(["explain", "--server", f"127.0.0.1:{_free_port()}", "--timeout", "3", "--question", "q", "--doc", doc_files[0]]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "UNAVAILABLE" in err


@pytest.mark.parametrize(
    "case, message",
    [
        ("invalid utf-8 doc", "not valid UTF-8"),
        ("invalid utf-8 jsonl", "not valid UTF-8"),
        ("missing file", "cannot read"),
        ("no documents", "no documents"),
        ("jsonl not json", "docs.jsonl:2: not JSON"),
        ("jsonl without text", "docs.jsonl:1: expected an object"),
        ("stdin twice", "stdin"),
        ("both text options", "exactly one of --text or --text-file"),
        ("invalid utf-8 text file", "not valid UTF-8"),
    ],
)
def test_usage_errors_exit_2(tiny_server, tmp_path, monkeypatch, capsys, case, message):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait \xff")
    jsonl = tmp_path / "docs.jsonl"
    lines = {"jsonl not json": '{"text": "ok"}\n{oops\n', "jsonl without text": '{"title": "x"}\n'}.get(case, '{"text": "caf\xe9"}\n')
    jsonl.write_bytes(lines.encode("latin-1") if case == "invalid utf-8 jsonl" else lines.encode())
    explain = ["explain", "--server", tiny_server.address, "--question", "q"]
    argv = {
        "invalid utf-8 doc": [*explain, "--doc", str(bad)],
        "invalid utf-8 jsonl": [*explain, "--docs-jsonl", str(jsonl)],
        "missing file": [*explain, "--doc", str(tmp_path / "missing.txt")],
        "no documents": explain,
        "jsonl not json": [*explain, "--docs-jsonl", str(jsonl)],
        "jsonl without text": [*explain, "--docs-jsonl", str(jsonl)],
        "stdin twice": [*explain, "--doc", "-", "--docs-jsonl", "-"],
        "both text options": ["classify", "--server", tiny_server.address, "--text", "x", "--text-file", str(bad), "--label", "a,b"],
        "invalid utf-8 text file": ["classify", "--server", tiny_server.address, "--text-file", str(bad), "--label", "a,b"],
    }[case]
    _stdin(monkeypatch, b"")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize("argv", [["explain", "--doc", "a.txt"], ["explain", "--question", "q", "--budget", "many"], ["explain", "--question", "q", "--server", "x", "--local"], ["frobnicate"]])
def test_bad_options_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2


def test_gradient_method_over_the_wire_and_the_png_figure(tiny_server, doc_files, tmp_path, capsys):
    image_module = pytest.importorskip("PIL.Image")
    png = tmp_path / "figure.png"
    argv = ["explain", "--server", tiny_server.address, "--question", QUESTION, "--doc", doc_files[0], "--doc", doc_files[1],
            "--target", "Paris", "--method", "integrated_gradients", "--baseline", "pad", "--budget", "16", "--json", "--png", str(png)]
    got = _run_json(capsys, argv)
    assert got["extras"]["gradients"]["method"] == "integrated_gradients"
    assert got["extras"]["gradients"]["completeness"]["steps"] == 16
    assert all(f["stderr"] is None for level in got["levels"] for f in level["features"])  # not applicable: null in strict JSON
    image = image_module.open(png).convert("RGB")
    assert image.size[0] >= 1000 and image.size[1] >= 400
    colours = image.getcolors(1 << 24)
    tinted = sum(count for count, p in colours if max(p) - min(p) > 40)  # the red-to-green heatmap cells
    assert tinted > 5000


# ---- issue 11: numbers in range, no deadline, unwritable outputs, bad certificates, closed pipes ----------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", "--question", "q", "--budget", str(2**62)], "--budget: must be in 1..2147483647"),
        (["explain", "--question", "q", "--budget", "0"], "--budget: must be in"),
        (["explain", "--question", "q", "--seed", str(2**64)], "--seed: must be in 0..9223372036854775807"),
        (["classify", "--text", "x", "--label", "a,b", "--seed", "-1"], "--seed: must be in"),
        (["rerank", "--question", "q", "--candidate", "a", "--budget", str(2**62)], "--budget: must be in"),
        (["explain", "--question", "q", "--timeout", "0"], "--timeout: must be > 0"),
        (["explain", "--question", "q", "--timeout", "nan"], "--timeout: must be > 0"),
        (["models", "--timeout=-inf"], "--timeout: must be > 0"),
    ],
)
def test_out_of_range_numbers_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err.splitlines()[-1] and "Traceback" not in err


def test_timeout_inf_means_no_deadline(tiny_server, capsys):
    argv = ["classify", "--server", tiny_server.address, "--text", "a charming journey", "--label", "negative,positive", "--budget", "10", "--timeout", "inf", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["answer"] in ("negative", "positive")


def test_an_unwritable_html_path_is_refused_before_any_work(tiny_server, doc_files, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    argv = ["explain", "--server", tiny_server.address, "--question", QUESTION, "--doc", doc_files[0], "--html", str(tmp_path / "a-file" / "report.html")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--html" in err and "cannot write" in err


def test_a_garbage_ca_file_cannot_be_read_as_a_certificate(tiny_server, tmp_path, capsys):
    garbage = tmp_path / "ca.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    assert main(["models", "--server", tiny_server.address, "--tls-ca", str(garbage)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read certificate" in err


def test_a_closed_stdout_pipe_ends_quietly(tiny_server):
    """`longshap models | head -0`: the reader is gone before anything is written."""
    process = subprocess.Popen([sys.executable, "-m", "longshap.client.cli", "models", "--server", tiny_server.address], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 141 and err == b"", err.decode()


@pytest.mark.parametrize("where", ["/dev/null/x.png", "/proc/version", "fig.txt", "DIR", ""])
def test_an_unusable_png_path_is_refused_before_any_work(doc_files, tmp_path, capsys, where):
    """These used to fail with a traceback after the explanation ran, or wrote DIR.png / ./.png."""
    target = str(tmp_path) if where == "DIR" else where
    argv = ["explain", "--server", "127.0.0.1:1", "--question", QUESTION, "--doc", doc_files[0], "--png", target]
    assert main(argv) == 2  # no server at 127.0.0.1:1: refused before connecting
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--png" in err
