from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tiny_models import build_tiny_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-gemma3"), "gemma3")


@pytest.fixture(scope="session")
def tiny_explainer(tiny_llama_dir):
    from longshap.hierarchy import Explainer

    return Explainer.from_pretrained(str(tiny_llama_dir))


@pytest.fixture(scope="session")
def default_explainer():
    """The real embedded default model (Gemma 3 270M) on the transformers engine; cached after its first load."""
    from longshap.hierarchy import Explainer

    return Explainer.from_pretrained(engine="transformers")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny Llama's weights and tokenizer as a float32 GGUF file (for the llamacpp and openai engines)."""
    pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed (pip install 'longshap[llamacpp]')")
    from tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tiny_llama_dir, tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def llamacpp_engine(tiny_gguf):
    from longshap.hierarchy.engines.llamacpp_engine import LlamaCppEngine

    engine = LlamaCppEngine(tiny_gguf, threads=1)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def llama_server(tiny_gguf, tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1 running the tiny GGUF, with prompt log-probabilities on."""
    from bench.llama_server import start_llama_server

    with start_llama_server(tiny_gguf, tmp_path_factory.mktemp("llama-server"), "--logits_all", "true") as (url, _):
        yield url


@pytest.fixture(scope="session")
def openai_engine(llama_server):
    from longshap.hierarchy.engines.openai_engine import OpenAIEngine

    engine = OpenAIEngine(llama_server)
    yield engine
    engine.close()
