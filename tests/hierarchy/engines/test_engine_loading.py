"""Which engine runs a model: `auto`'s choice, explicit engines, and the errors for options an engine cannot honour."""
from __future__ import annotations

import shutil

import pytest
from longshap.hierarchy.engines.loading import load_engine

pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed (pip install 'longshap[llamacpp]')")


def test_auto_runs_gguf_files_with_llamacpp_and_model_directories_with_transformers(tiny_gguf, tiny_llama_dir):
    gguf = load_engine(str(tiny_gguf))
    assert type(gguf).__name__ == "LlamaCppEngine" and gguf.name == str(tiny_gguf)
    gguf.close()
    assert type(load_engine(str(tiny_llama_dir))).__name__ == "TransformersEngine"
    assert type(load_engine(str(tiny_llama_dir), engine="transformers", device="cpu")).__name__ == "TransformersEngine"


def test_a_directory_holding_one_gguf_runs_it(tiny_gguf, tmp_path):
    shutil.copy(tiny_gguf, tmp_path / "model.gguf")
    engine = load_engine(str(tmp_path), engine="llamacpp", threads=1)
    assert engine.model.threads == 1
    engine.close()
    shutil.copy(tiny_gguf, tmp_path / "other.gguf")
    with pytest.raises(FileNotFoundError, match="needs one .gguf file there, found 2"):
        load_engine(str(tmp_path), engine="llamacpp")


@pytest.mark.parametrize("options, message", [
    ({"engine": "llamacpp", "dtype": "bfloat16"}, "dtype: these apply to the transformers engine, not llamacpp"),
    ({"engine": "llamacpp", "draft_model": "x"}, "draft_model: these apply to the transformers engine"),
    ({"engine": "llamacpp", "base_url": "http://127.0.0.1:1/v1"}, "--base-url: only the openai engine talks to a server"),
    ({"engine": "vllm"}, "unknown engine 'vllm'; use auto, transformers, llamacpp, openai"),
])
def test_options_an_engine_cannot_honour_are_refused_by_name(tiny_gguf, options, message):
    with pytest.raises(ValueError, match=message):
        load_engine(str(tiny_gguf), **options)


def test_llamacpp_needs_a_gguf_and_openai_a_server(tiny_llama_dir):
    with pytest.raises(FileNotFoundError, match="found 0"):
        load_engine(str(tiny_llama_dir), engine="llamacpp")
    with pytest.raises(FileNotFoundError, match="runs a .gguf file"):
        load_engine(str(tiny_llama_dir / "config.json"), engine="llamacpp")
    with pytest.raises(ValueError, match="runs the server's model: name it with remote_model"):
        load_engine("some-model", engine="openai", base_url="http://127.0.0.1:1/v1")


def test_without_the_extra_llamacpp_is_a_clear_error(tiny_gguf, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    for name in ("longshap.hierarchy.engines.llamacpp_engine", "longshap.hierarchy.engines.llamacpp_model"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(RuntimeError, match=r"needs llama-cpp-python: pip install 'longshap\[llamacpp\]'"):
        load_engine(str(tiny_gguf), engine="llamacpp")
