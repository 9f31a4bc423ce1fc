"""The openai engine: the model a team already serves (vLLM, SGLang, llama.cpp's servers), over its completions API.

Every coalition is one `/v1/completions` request with `echo` and `logprobs`: the
server returns the log-probability of each prompt token, and the continuation's are
the last ones of the prompt. Answers are decoded at temperature 0 and end before
the first token holding a newline, as the in-process engines' do. The server's own batching and prefix cache do the work; this process
loads no weights. Requests run `concurrency` at a time; a stopped run sends no more.

Prompts go as token ids where the server takes them (vLLM, SGLang) and otherwise as
the text they were encoded from; either way the server's count of prompt tokens is
checked against ours, so a server that tokenises differently is an error, not a
silently shifted score. Tokens come from the server's tokenize endpoint, or from a
local tokenizer (`tokenizer`: a Hugging Face tokenizer directory) when given.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

import numpy as np

from longshap.hierarchy.engines.base import POLL_S, RunContext, ScoreRow, TokenRow, check_continuations, score_by_tokens
from longshap.hierarchy.engines.openai_http import JsonClient, ServerError
from longshap.hierarchy.engines.openai_tokens import ServerTokenizer
from longshap.hierarchy.engines.text_offsets import piece_offsets
from longshap.hierarchy.errors import Cancelled

if TYPE_CHECKING:
    from longshap.hierarchy.engines.gradient_spec import GradientResult, GradientSpec
    from longshap.hierarchy.speculative import AnswerTree

_T = TypeVar("_T")
KNOWN_TEXTS = 8192
"""Prompts remembered by their ids, so a text-only server gets back exactly the text that was encoded."""
NO_LOGPROBS = (
    "returned no prompt log-probabilities (echo + logprobs); start it with them on "
    "(llama-cpp-python: --logits_all true; vLLM and SGLang return them by default)"
)


class OpenAIEngine:
    """Scores continuations and decodes greedy answers on an OpenAI-compatible completions server."""

    def __init__(
        self, base_url: str, remote_model: str | None = None, api_key_file: str | None = None, tokenizer: str | None = None,
        concurrency: int = 4, timeout_s: float = 300.0, retries: int = 4, max_batch_tokens: int = 4096,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        root = base_url.rstrip("/").removesuffix("/v1")
        api_key = Path(api_key_file).expanduser().read_text(encoding="utf-8").strip() if api_key_file else None
        self.client = JsonClient(root, api_key, timeout_s, retries)
        self.model = remote_model or self._only_model()
        self.name = self.model
        self.tokens = ServerTokenizer(self.client, self.model, tokenizer)
        self.architecture = "openai:" + self.model
        self.capabilities: frozenset[str] = frozenset()
        self.max_batch_tokens = max_batch_tokens
        self.concurrency = concurrency
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="longshap-openai")
        self._texts: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._texts_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.token_prompts = self._probe()
        """Whether the server takes prompts as token ids (else they go as text)."""

    # ---- tokenisation -------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        ids = self.tokens.encode(text, special=True)
        with self._texts_lock:
            self._texts[tuple(ids)] = text
            self._texts.move_to_end(tuple(ids))
            while len(self._texts) > KNOWN_TEXTS:
                self._texts.popitem(last=False)
        return ids

    def encode_offsets(self, text: str, special_tokens: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        exact = self.tokens.offsets(text, special_tokens)
        if exact is not None:
            return exact
        ids = self.tokens.encode(text, special=special_tokens)
        lead = len(self.tokens.bos) if special_tokens else 0
        spans = piece_offsets(text, [self.tokens.piece(token) for token in ids[lead:]])
        return ids, [(0, 0)] * lead + spans

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokens.decode(list(ids)).strip()

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        return [self.tokens.piece(token).decode("utf-8", "replace") for token in ids]

    # ---- the protocol's model calls --------------------------------------------------
    def score(self, rows: Sequence[ScoreRow], context: RunContext) -> list[np.ndarray]:
        return score_by_tokens(rows, self.score_tokens, context)

    def score_tokens(self, rows: Sequence[TokenRow], context: RunContext) -> list[np.ndarray]:
        check_continuations([continuation for _, continuation in rows])
        return self._run([(list(prompt), list(c)) for prompt, c in rows], self._prompt_logprobs, context)

    def greedy(self, rows: Sequence[Sequence[int]], max_new_tokens: int, context: RunContext, tree: AnswerTree | None = None) -> list[list[int]]:
        if max_new_tokens <= 0:
            return [[] for _ in rows]
        return self._run([(list(row), max_new_tokens) for row in rows], self._answer, context)

    def attribute_tokens(self, spec: GradientSpec, context: RunContext) -> GradientResult:
        raise NotImplementedError("gradient methods need the model's weights in this process: use the transformers engine (--engine transformers)")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- requests ----------------------------------------------------------------------
    def _run(self, items: Sequence[_T], call: Callable[[_T, RunContext], object], context: RunContext) -> list:
        """`call` on every item, `concurrency` at a time; stops sending once the run should stop."""
        context.check()
        futures = [self._pool.submit(_unless_stopped, call, item, context) for item in items]
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_EXCEPTION)
                if any(future.exception() is not None for future in done) or context.stopped():
                    break
            context.check()
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()

    def _completion(self, prompt: list[int], context: RunContext, **options: object) -> tuple[dict, int]:
        """The first choice of a completion of `prompt`, and how many tokens the server generated."""
        body = {"model": self.model, "prompt": prompt if self.token_prompts else self._text(prompt), "temperature": 0.0, **options}
        reply = self.client.post("/v1/completions", body, context)
        usage = reply.get("usage") or {}
        sent = usage.get("prompt_tokens")
        if sent is not None and sent != len(prompt):
            raise ServerError(f"the server read {sent} prompt tokens where this engine encoded {len(prompt)}: it tokenises differently; "
                              "name its tokenizer with --tokenizer")
        cached = int(((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
        generated = int(usage.get("completion_tokens") or 0)
        with self._stats_lock:  # the run's requests finish on several threads
            context.stats.add({"forward_passes": 1, "forward_tokens": len(prompt) - cached, "reused_tokens": cached,
                               "cached_tokens": cached, "decode_steps": generated})
        return reply["choices"][0], generated

    def _prompt_logprobs(self, pair: tuple[list[int], list[int]], context: RunContext) -> np.ndarray:
        prompt, continuation = pair
        choice, generated = self._completion(prompt + continuation, context, max_tokens=1, echo=True, logprobs=1)
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
        if not logprobs:
            raise ServerError(f"the server at {self.client.root} {NO_LOGPROBS}")
        scores = logprobs[len(logprobs) - generated - len(continuation) : len(logprobs) - generated]
        if len(scores) != len(continuation) or any(score is None for score in scores):
            raise ServerError(f"the server at {self.client.root} returned {len(logprobs)} log-probabilities, not one per prompt token")
        return np.array(scores, dtype=np.float64)

    def _answer(self, item: tuple[list[int], int], context: RunContext) -> list[int]:
        """The greedy answer's tokens, cut before the first token holding a newline (the transformers engine's stop rule).

        No stop string is sent: a server cuts at the newline character, which keeps the
        text before it in the same token, where the rule drops that whole token.
        """
        prompt, max_new_tokens = item
        # llama-cpp-python's server penalises repeats unless told not to (1.1): greedy means none.
        choice, _ = self._completion(prompt, context, max_tokens=max_new_tokens, repeat_penalty=1.0)
        text = str(choice.get("text") or "")
        if not text:
            return []
        joint = self.tokens.encode(self._text(prompt) + text, special=True)
        answer = joint[len(prompt) :] if joint[: len(prompt)] == prompt else self.tokens.encode(text, special=False)
        for index, token in enumerate(answer[:max_new_tokens]):
            if b"\n" in self.tokens.piece(token):
                return answer[:index]
        return answer[:max_new_tokens]

    def _text(self, ids: list[int]) -> str:
        with self._texts_lock:
            known = self._texts.get(tuple(ids))
        return known if known is not None else self.tokens.decode(ids[len(self.tokens.bos) :] if ids[: len(self.tokens.bos)] == self.tokens.bos else ids)

    # ---- start-up ------------------------------------------------------------------------
    def _only_model(self) -> str:
        listed = self.client.get("/v1/models") or {}
        names = [entry.get("id") for entry in listed.get("data", []) if entry.get("id")]
        if len(names) != 1:
            raise ValueError(f"the server at {self.client.root} serves {len(names)} models ({', '.join(names)}): name one with --remote-model")
        return names[0]

    def _probe(self) -> bool:
        """Whether the server takes token-id prompts (else text); fails now if it returns no prompt log-probabilities."""
        probe_ids = self.encode("The capital of France is Paris")
        for token_prompts in (True, False):
            self.token_prompts = token_prompts
            try:
                self._prompt_logprobs((probe_ids[:-1] or probe_ids, probe_ids[-1:]), RunContext())
                return token_prompts
            except ServerError as error:
                if NO_LOGPROBS in str(error):
                    raise
                if "logprob" in str(error).lower():
                    raise ServerError(f"the server at {self.client.root} {NO_LOGPROBS} ({error})") from None
                if not token_prompts:  # a refused token-id prompt (llama-cpp-python's: a 500) is retried as text
                    raise ServerError(f"the server at {self.client.root} cannot score prompts: {error}") from None
        raise AssertionError("unreachable: text prompts return or raise")


def _unless_stopped(call: Callable[[_T, RunContext], object], item: _T, context: RunContext) -> object:
    if context.stopped():
        raise Cancelled("explanation cancelled")
    return call(item, context)
