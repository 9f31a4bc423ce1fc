"""The llama.cpp engine: a GGUF model run natively, quantised kernels and all, behind the engine protocol.

The embedded default runs from its Q4_K_M file with no dequantised copy. Rows of one
call become sequences of one llama.cpp context: a batch's common prefix is decoded
once into sequence 0 and shared with the others (a KV sequence copy), the rest of
every row goes through the same decode calls, and logits are read only where a
continuation's tokens are scored or an answer token is chosen. Sequence 0 keeps the
last prefix for the next batch of the same cache scope. Cancellation and deadlines
are checked between decode calls. Gradient methods need torch's weights and refuse it.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from longshap.hierarchy.engines.base import (
    PREFIX_REUSE, RunContext, ScoreRow, TokenRow, check_continuations, score_by_tokens, wait_for,
)
from longshap.hierarchy.engines.llamacpp_model import LlamaCppModel
from longshap.hierarchy.engines.planning import common_prefix, plan_batches
from longshap.hierarchy.engines.text_offsets import piece_offsets

if TYPE_CHECKING:
    from longshap.hierarchy.engines.gradient_spec import GradientResult, GradientSpec
    from longshap.hierarchy.speculative import AnswerTree

PREFIX_SEQUENCE = 0
"""The sequence that holds a batch's shared prefix, and between batches the scope's last prefix."""


@dataclass
class _ResidentPrefix:
    """What sequence 0 holds for one cache scope: its tokens (valid while the engine still holds them for that scope)."""

    tokens: list[int] = field(default_factory=list)


class LlamaCppEngine:
    """Scores continuations and decodes greedy answers with llama.cpp on a GGUF file."""

    def __init__(
        self, path: str | os.PathLike, name: str | None = None, threads: int | None = None, max_batch_tokens: int = 4096,
        max_batch_size: int = 32, kv_cells: int = 16384, reuse_prefix: bool = True, repack: bool | None = None,
    ) -> None:
        """`threads`: llama.cpp's threads (default: every CPU); `kv_cells`: KV positions held at once, a batch's rows
        and prefix together (a prompt longer than that is refused); `repack`: llama.cpp's repacked CPU kernels
        (default: on, except where llama.cpp was built with AMX kernels, which crashed)."""
        if max_batch_tokens >= kv_cells:
            raise ValueError(f"max_batch_tokens ({max_batch_tokens}) must be below kv_cells ({kv_cells})")
        self.name = name or Path(path).name
        self.model = LlamaCppModel(path, threads, kv_cells, max_batch_size + 1, min(1024, max_batch_tokens), repack)
        self.architecture = self.model.architecture
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.reuse_prefix = reuse_prefix
        self.capabilities = frozenset({PREFIX_REUSE} if reuse_prefix else set())
        self._stop_ids: frozenset[int] | None = None
        self._resident: _ResidentPrefix | None = None
        """The scope record whose prefix sequence 0 holds now (the KV memory is one, whoever calls)."""
        self._lock = threading.Lock()

    # ---- tokenisation -------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=True)

    def encode_offsets(self, text: str, special_tokens: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        plain = self.model.tokenize(text, add_special=False)
        offsets = piece_offsets(text, [self.model.piece(token) for token in plain])
        if not special_tokens:
            return plain, offsets
        full = self.model.tokenize(text, add_special=True)
        start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
        spans = [(0, 0)] * start + offsets + [(0, 0)] * (len(full) - start - len(plain))
        return full, spans

    def decode(self, ids: Sequence[int]) -> str:
        return self.model.detokenize(list(ids)).strip()

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        return [self.model.piece(token).decode("utf-8", "replace") for token in ids]

    @property
    def stop_ids(self) -> frozenset[int]:
        """End-of-generation tokens and every token containing a newline, as the transformers engine stops."""
        if self._stop_ids is None:
            texts = (self.model.vocabulary_text(i) for i in range(self.model.n_vocab))
            self._stop_ids = frozenset(
                i for i, token in enumerate(texts)
                if self.model.is_end_of_generation(i) or "\n" in token or "Ċ" in token or token == "<0x0A>"
            )
        return self._stop_ids

    # ---- the protocol's model calls --------------------------------------------------
    def score(self, rows: Sequence[ScoreRow], context: RunContext) -> list[np.ndarray]:
        return score_by_tokens(rows, self.score_tokens, context)

    def score_tokens(self, rows: Sequence[TokenRow], context: RunContext) -> list[np.ndarray]:
        check_continuations([continuation for _, continuation in rows])
        return self._score_sequences([(list(prompt) + list(c), len(prompt)) for prompt, c in rows], context)

    def greedy(self, rows: Sequence[Sequence[int]], max_new_tokens: int, context: RunContext, tree: AnswerTree | None = None) -> list[list[int]]:
        answers: list[list[int]] = [[] for _ in rows]
        if max_new_tokens <= 0:
            return answers
        prompts = [list(row) for row in rows]
        stops = self.stop_ids
        with self._running(context):
            for batch in self._batches(prompts, extra_cells=max_new_tokens):
                logits = self._prefill([prompts[i] for i in batch], [[len(prompts[i]) - 1] for i in batch], context)
                chosen = [int(np.argmax(rows_logits[0])) for rows_logits in logits]
                active = list(range(len(batch)))
                for step in range(max_new_tokens):
                    active = [k for k in active if chosen[k] not in stops]
                    for k in active:
                        answers[batch[k]].append(chosen[k])
                    if not active or step == max_new_tokens - 1:
                        break
                    entries = [(chosen[k], len(prompts[batch[k]]) + step, k + 1, True) for k in active]
                    stepped = self._run(entries, context)
                    context.stats.decode_steps += 1
                    for k, row_logits in zip(active, stepped):
                        chosen[k] = int(np.argmax(row_logits))
                self._release(len(batch))
        return answers

    def attribute_tokens(self, spec: GradientSpec, context: RunContext) -> GradientResult:
        raise NotImplementedError("gradient methods need the model's weights in torch: use the transformers engine (--engine transformers)")

    def close(self) -> None:
        with self._lock:
            self.model.close()

    # ---- sequences ---------------------------------------------------------------------
    def _score_sequences(self, sequences: Sequence[tuple[list[int], int]], context: RunContext) -> list[np.ndarray]:
        """Per (tokens, start), log p(token t | tokens before t) for every t from `start` on."""
        results: list[np.ndarray] = [np.empty(0)] * len(sequences)
        with self._running(context):
            for batch in self._batches([tokens for tokens, _ in sequences]):
                wanted = [list(range(sequences[i][1] - 1, len(sequences[i][0]) - 1)) for i in batch]
                logits = self._prefill([sequences[i][0] for i in batch], wanted, context)
                for index, positions, row_logits in zip(batch, wanted, logits):
                    targets = np.array([sequences[index][0][p + 1] for p in positions])
                    results[index] = _log_softmax_at(row_logits, targets)
                self._release(len(batch))
        return results

    def _batches(self, rows: Sequence[Sequence[int]], extra_cells: int = 0) -> list[list[int]]:
        """Planned batches (sorted rows sharing prefixes), each within the KV cells with `extra_cells` per row to spare."""
        limit = self.model.kv_cells
        for row in rows:
            if len(row) + extra_cells > limit - 1:
                raise ValueError(f"a prompt of {len(row)} tokens (+{extra_cells} to decode) does not fit the engine's {limit} KV cells (kv_cells)")
        batches = plan_batches(rows, self.max_batch_tokens, self.max_batch_size, self.reuse_prefix, self.reuse_prefix)
        fitted: list[list[int]] = []
        while batches:
            batch = batches.pop(0)
            shared = min(common_prefix(rows[batch[0]], rows[i]) for i in batch)
            if len(batch) > 1 and shared + sum(len(rows[i]) - shared + extra_cells for i in batch) > limit:
                batches[:0] = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
                continue
            fitted.append(batch)
        return fitted

    def _prefill(self, rows: Sequence[list[int]], wanted: Sequence[Sequence[int]], context: RunContext) -> list[np.ndarray]:
        """Decode `rows` as sequences 1..k around their shared prefix; per row, the logits at its `wanted` positions."""
        shared = min(min(common_prefix(rows[0], row) for row in rows), min(positions[0] for positions in wanted))
        shared = shared if self.reuse_prefix else 0
        kept = self._prefix_in_memory(rows[0][:shared], context)
        self._run([(token, position, PREFIX_SEQUENCE, False) for position, token in enumerate(rows[0][kept:shared], kept)], context)
        entries: list[tuple[int, int, int, bool]] = []
        for sequence, (row, positions) in enumerate(zip(rows, wanted), 1):
            self.model.share_prefix(PREFIX_SEQUENCE, sequence, shared)
            chosen = set(positions)
            entries.extend((row[p], p, sequence, p in chosen) for p in range(shared, len(row)))
        flat = self._run(entries, context)
        context.stats.reused_tokens += shared * (len(rows) - 1) + kept
        context.stats.cached_tokens += kept
        logits, start = [], 0
        for positions in wanted:
            logits.append(flat[start : start + len(positions)])
            start += len(positions)
        return logits

    def _prefix_in_memory(self, prefix: list[int], context: RunContext) -> int:
        """Make sequence 0 hold `prefix` for this run's scope; how many of its tokens were already there."""
        scope = context.cache
        record = scope.store(self, _ResidentPrefix) if scope.enabled and self.reuse_prefix else None
        kept = common_prefix(record.tokens, prefix) if record is not None and record is self._resident else 0
        self.model.keep_prefix(PREFIX_SEQUENCE, kept)
        self._resident = record
        if record is not None:
            record.tokens = list(prefix)
        return kept

    def _run(self, entries: list[tuple[int, int, int, bool]], context: RunContext) -> np.ndarray:
        """Entries in decode calls of at most the model's call size, checking the run between calls; logits in order."""
        parts = []
        size = self.model.decode_tokens
        for start in range(0, len(entries), size):
            context.check()
            chunk = entries[start : start + size]
            parts.append(self.model.decode(chunk))
            context.stats.forward_passes += 1
            context.stats.forward_tokens += len(chunk)
        return np.concatenate(parts) if parts else np.empty((0, self.model.n_vocab), dtype=np.float32)

    def _release(self, rows: int) -> None:
        for sequence in range(1, rows + 1):
            self.model.keep_prefix(sequence, 0)

    @contextmanager
    def _running(self, context: RunContext) -> Iterator[None]:
        """One call at a time (a waiting caller still honours its stop flag); a failed call leaves no sequence behind."""
        context.check()
        wait_for(self._lock, context)
        try:
            if self.model.context is None:
                raise RuntimeError("the llamacpp engine is closed")
            yield
        except BaseException:
            if self.model.context is not None:  # stopped or failed mid-batch: forget every sequence, the kept prefix too
                self.model.clear()
            self._resident = None
            raise
        finally:
            self._lock.release()


def _log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log softmax(logits[k])[targets[k]] for each row k, in float64."""
    wide = logits.astype(np.float64)
    top = wide.max(axis=1, keepdims=True)
    normaliser = top[:, 0] + np.log(np.exp(wide - top).sum(axis=1))
    return wide[np.arange(len(targets)), targets] - normaliser
