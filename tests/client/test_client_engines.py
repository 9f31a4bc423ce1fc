"""The llamacpp and openai engines from the command line and behind the gRPC server: the same explanations as in process."""
from __future__ import annotations

import json

import pytest

from longshap.client.cli import main
from serving import DOCUMENTS, QUESTION

pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed (pip install 'longshap[llamacpp]')")


@pytest.fixture
def doc_flags(doc_files) -> list[str]:
    return [flag for path in doc_files for flag in ("--doc", path)]


def _values(explanation: dict) -> list[list[float]]:
    return [[round(f["value"], 3) for f in level["features"]] for level in explanation["levels"]]


def _explain_json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_local_llamacpp_and_openai_runs_equal_the_engine(tiny_gguf, llamacpp_engine, llama_server, doc_flags, capsys):
    from longshap.hierarchy import Explainer

    common = ["explain", "--local", "--question", QUESTION, *doc_flags, "--budget", "12", "--seed", "1", "--target", "Paris", "--json"]
    expected = Explainer(llamacpp_engine).explain(question=QUESTION, documents=DOCUMENTS, budget=12, seed=1, target="Paris").to_dict()
    local = _explain_json(capsys, [*common, "--engine", "llamacpp", "--model", str(tiny_gguf)])
    remote = _explain_json(capsys, [*common, "--engine", "openai", "--base-url", llama_server])
    assert _values(local) == _values(expected) == _values(remote)


def test_served_by_llamacpp_over_grpc(tiny_gguf, doc_flags, capsys):
    from longshap.hierarchy import Explainer
    from longshap.server.app import ServerThread
    from longshap.server.config import ServerConfig

    explainer = Explainer.from_pretrained(str(tiny_gguf), engine="llamacpp", threads=1)
    with ServerThread(ServerConfig(port=0), {"tiny": explainer}) as server:
        got = _explain_json(capsys, ["explain", "--server", server.address, "--question", QUESTION, *doc_flags, "--budget", "12", "--seed", "1", "--json"])
        assert main(["models", "--server", server.address]) == 0
        assert "tiny (default)  llama" in capsys.readouterr().out
    expected = explainer.explain(question=QUESTION, documents=DOCUMENTS, budget=12, seed=1).to_dict()
    assert got["answer"] == expected["answer"] and _values(got) == _values(expected)
    explainer.engine.close()


def test_gradient_methods_name_the_engine_to_use(tiny_gguf, doc_flags, capsys):
    code = main(["explain", "--local", "--engine", "llamacpp", "--model", str(tiny_gguf), "--question", QUESTION, *doc_flags,
                 "--method", "integrated_gradients"])
    assert code != 0
    assert "LlamaCppEngine engine does not offer" in capsys.readouterr().err
