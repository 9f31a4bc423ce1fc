"""A GGUF model loaded by llama.cpp (llama-cpp-python's C API): loading, tokenisation and one decode call.

The engine (`llamacpp_engine`) decides which tokens of which sequences go into a call;
this module only speaks to llama.cpp. Logits are asked for at the positions a caller
names and nowhere else: with Gemma's 262k-word vocabulary the LM head over a whole
prompt costs more than the rest of the model.
"""
from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

try:
    import llama_cpp as lc
except ImportError as error:  # the engine is an extra
    raise ImportError("the llamacpp engine needs llama-cpp-python: pip install 'longshap[llamacpp]'") from error

LLAMA_LOG = logging.getLogger("llama-cpp-python")
"""llama-cpp-python prints llama.cpp's log at and above this logger's level: errors only unless a user sets it."""
if LLAMA_LOG.level == logging.NOTSET:
    LLAMA_LOG.setLevel(logging.ERROR)


def built_with_amx() -> bool:
    """Whether this llama.cpp uses AMX kernels (built for a CPU that has them): they crashed with a segmentation fault here."""
    return b"AMX_INT8 = 1" in (lc.llama_print_system_info() or b"")


class LlamaCppModel:
    """One GGUF model and one llama.cpp context whose KV memory holds many sequences at once.

    The KV cache is unified (every sequence's cells in one buffer), so copying a shared
    prefix to another sequence only tags its cells; flash attention skips the cells a
    sequence cannot see, and sliding-window layers keep their full cache so a prefix can
    be cut back and extended.
    """

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, kv_cells: int = 16384, max_sequences: int = 64,
        decode_tokens: int = 1024, repack: bool | None = None,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
        lc.llama_backend_init()
        model_params = lc.llama_model_default_params()
        # Repacked (extra buffer type) kernels are llama.cpp's fastest on CPUs, but the AMX ones crashed.
        model_params.use_extra_bufts = (not built_with_amx()) if repack is None else repack
        self.model = lc.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise ValueError(f"{path}: llama.cpp could not load it as a GGUF model")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.threads = threads or os.cpu_count() or 1
        self.kv_cells = kv_cells
        self.max_sequences = max_sequences
        self.decode_tokens = decode_tokens
        params = lc.llama_context_default_params()
        params.n_ctx = kv_cells
        params.n_batch = decode_tokens
        params.n_ubatch = min(512, decode_tokens)
        params.n_seq_max = max_sequences
        params.n_threads = params.n_threads_batch = self.threads
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.swa_full = True
        params.kv_unified = True
        params.no_perf = True
        self.context = lc.llama_init_from_model(self.model, params)
        if not self.context:
            lc.llama_model_free(self.model)
            raise RuntimeError(f"llama.cpp could not create a context of {kv_cells} KV cells for {path}")
        self.memory = lc.llama_get_memory(self.context)
        self.architecture = self.metadata("general.architecture") or "unknown"
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        self._batch = lc.llama_batch_init(decode_tokens, 0, 1)

    def metadata(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(256)
        size = lc.llama_model_meta_val_str(self.model, key.encode(), buffer, len(buffer))
        return buffer.value.decode("utf-8", "replace") if size >= 0 else None

    def close(self) -> None:
        if getattr(self, "context", None):
            lc.llama_batch_free(self._batch)
            lc.llama_free(self.context)
            lc.llama_model_free(self.model)
            self.context = None

    # ---- tokens <-> text -------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            buffer = (lc.llama_token * capacity)()
            count = lc.llama_tokenize(self.vocab, data, len(data), buffer, capacity, add_special, True)
            if count >= 0:
                return list(buffer[:count])
            capacity = -count

    def piece(self, token: int, special: bool = True) -> bytes:
        """A token's bytes as it adds them to a text (special tokens as their text when `special`)."""
        buffer = ctypes.create_string_buffer(64)
        size = lc.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = lc.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
        return buffer.raw[:size]

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of `tokens`, special tokens rendered as nothing."""
        array = (lc.llama_token * max(1, len(tokens)))(*tokens)
        capacity = 8 * len(tokens) + 16
        while True:
            buffer = ctypes.create_string_buffer(capacity)
            size = lc.llama_detokenize(self.vocab, array, len(tokens), buffer, capacity, False, False)
            if size >= 0:
                return buffer.raw[:size].decode("utf-8", "replace")
            capacity = -size

    def vocabulary_text(self, token: int) -> str:
        """A token as the vocabulary spells it (what the stop rule reads)."""
        return (lc.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8", "replace")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self.vocab, token))

    # ---- KV memory ------------------------------------------------------------------
    def keep_prefix(self, sequence: int, length: int) -> None:
        """Drop `sequence`'s cells from position `length` on (0: all of them)."""
        lc.llama_memory_seq_rm(self.memory, sequence, length, -1)

    def share_prefix(self, source: int, target: int, length: int) -> None:
        """Give `target` the cells of `source`'s first `length` positions (tags, not copies, in a unified cache)."""
        lc.llama_memory_seq_cp(self.memory, source, target, 0, length)

    def clear(self) -> None:
        lc.llama_memory_clear(self.memory, True)

    # ---- one decode call ---------------------------------------------------------------
    def decode(self, tokens: Sequence[tuple[int, int, int, bool]]) -> np.ndarray:
        """Run (token, position, sequence, wants_logits) entries in one call; the logits asked for, in order (k, vocab)."""
        if len(tokens) > self.decode_tokens:
            raise ValueError(f"{len(tokens)} tokens in one decode call; at most {self.decode_tokens}")
        batch = self._batch
        outputs = []
        for index, (token, position, sequence, wants) in enumerate(tokens):
            batch.token[index] = token
            batch.pos[index] = position
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = sequence
            batch.logits[index] = wants
            if wants:
                outputs.append(index)
        batch.n_tokens = len(tokens)
        status = lc.llama_decode(self.context, batch)
        if status != 0:
            reason = "the KV cache is full" if status == 1 else f"llama_decode returned {status}"
            raise RuntimeError(f"llama.cpp could not run {len(tokens)} tokens: {reason}")
        logits = np.empty((len(outputs), self.n_vocab), dtype=np.float32)
        for row, index in enumerate(outputs):
            pointer = lc.llama_get_logits_ith(self.context, index)
            logits[row] = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        return logits
