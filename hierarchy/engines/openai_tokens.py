"""Tokens for the openai engine: the server's tokenize endpoints, or a local tokenizer the user names.

Two server dialects are spoken: vLLM's and SGLang's `/tokenize` and `/detokenize`, and
llama-cpp-python's `/extras/tokenize` and `/extras/detokenize` (which always add the
model's BOS: what `bos` is for). The first that answers is used. A token's piece (for
character offsets and per-token columns) is its detokenised text, asked once per token;
a token that is part of a UTF-8 character has none a server can send, and gets an empty
span. A local tokenizer gives exact offsets.
"""
from __future__ import annotations

import threading
from pathlib import Path

from longshap.hierarchy.engines.openai_http import JsonClient, ServerError

DIALECTS = {
    "vllm": ("/tokenize", "/detokenize"),
    "llama-cpp-python": ("/extras/tokenize", "/extras/detokenize"),
}


class ServerTokenizer:
    """encode / decode / piece through a local Hugging Face tokenizer or the server's endpoints."""

    def __init__(self, client: JsonClient, model: str, tokenizer: str | None = None) -> None:
        self.client = client
        self.model = model
        self.local = _local_tokenizer(tokenizer) if tokenizer else None
        self.dialect = None if self.local is not None else self._dialect()
        self._pieces: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self.bos: list[int] = self._encode_raw("")
        """What encoding adds before any text (the model's BOS, or nothing)."""

    def encode(self, text: str, special: bool) -> list[int]:
        ids = self._encode_raw(text)
        if not special and ids[: len(self.bos)] == self.bos:
            return ids[len(self.bos) :]
        return ids

    def decode(self, ids: list[int], retries: int | None = None) -> str:
        if self.local is not None:
            return str(self.local.decode(ids, skip_special_tokens=True))
        if self.dialect == "vllm":
            return str(self.client.post("/detokenize", {"model": self.model, "tokens": ids}, retries=retries)["prompt"])
        return str(self.client.post(DIALECTS["llama-cpp-python"][1], {"model": self.model, "tokens": ids}, retries=retries)["text"])

    def offsets(self, text: str, special: bool) -> tuple[list[int], list[tuple[int, int]]] | None:
        """A local tokenizer's ids and character spans; None when tokens come from the server."""
        if self.local is None:
            return None
        encoded = self.local(text, add_special_tokens=special, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [(int(start), int(end)) for start, end in encoded["offset_mapping"]]

    def piece(self, token: int) -> bytes:
        with self._lock:
            known = self._pieces.get(token)
        if known is None:
            try:
                known = self.decode([token], retries=0).encode("utf-8") if token not in self.bos else b""
            except ServerError as error:
                if error.status is None or error.status < 500:
                    raise
                known = b""  # part of a UTF-8 character: the server cannot send it as text
            with self._lock:
                self._pieces[token] = known
        return known

    def _encode_raw(self, text: str) -> list[int]:
        if self.local is not None:
            return list(self.local(text, add_special_tokens=True)["input_ids"])
        if self.dialect == "vllm":
            reply = self.client.post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": True})
        else:
            reply = self.client.post(DIALECTS["llama-cpp-python"][0], {"model": self.model, "input": text})
        return [int(token) for token in reply["tokens"]]

    def _dialect(self) -> str:
        for name, (path, _) in DIALECTS.items():
            body = {"model": self.model, "prompt": "a", "add_special_tokens": True} if name == "vllm" else {"model": self.model, "input": "a"}
            try:
                reply = self.client.post(path, body)
            except ServerError as error:
                if error.status in (400, 404, 405, 422):
                    continue
                raise
            if isinstance(reply, dict) and isinstance(reply.get("tokens"), list):
                return name
        raise ServerError(
            f"the server at {self.client.root} has no tokenize endpoint this engine knows ({', '.join(p for p, _ in DIALECTS.values())}): "
            "name a local copy of its tokenizer with --tokenizer"
        )


def _local_tokenizer(path: str):
    from transformers import AutoTokenizer

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer {path!r}: not a local Hugging Face tokenizer directory")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)
