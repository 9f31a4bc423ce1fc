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
    """The real embedded default model (Gemma 3 270M); cached after its first load."""
    from longshap.hierarchy import Explainer

    return Explainer.from_pretrained()
