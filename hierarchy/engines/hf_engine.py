"""The transformers engine: a Hugging Face causal LM in this process, behind the engine protocol.

Its jobs live in their own modules: batch planning (`planning`, no torch), prefix KV
states (`hf_prefix`), scoring (`hf_scoring`), greedy decoding (`hf_decoding`) and
gradients (`hf_gradients`). This class holds what they share: the model's parts,
tokenisation, the LM head and the batch loop with its out-of-memory recovery.

One call runs at a time (a lock; a waiting caller still honours its stop flag), so
a shared engine never holds two batches' activations at once. The call's run context
is what the decoder layers poll: nothing about a request is kept on the engine.
"""
from __future__ import annotations

import inspect
import logging
import threading
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, NoReturn, Sequence

import numpy as np
import torch
from transformers import DynamicCache

from longshap.hierarchy.attention import NAME as ATTENTION_NAME, set_checkpoint
from longshap.hierarchy.engines import hf_decoding, hf_gradients, hf_scoring
from longshap.hierarchy.engines.base import (
    ANSWER_TREE, BLEND, DRAFT, GRADIENTS, PREFIX_REUSE, RunContext, ScoreRow, TokenRow, check_continuations, wait_for,
)
from longshap.hierarchy.engines.gradient_spec import GradientResult, GradientSpec
from longshap.hierarchy.engines.blend_plan import BlendPlan
from longshap.hierarchy.engines.hf_blend import BlendStates, blend_supported
from longshap.hierarchy.engines.hf_prefix import PrefixStates
from longshap.hierarchy.engines.planning import plan_batches
from longshap.hierarchy.models import LoadedModel
from longshap.hierarchy.speculative import AnswerTree

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_TOKENS = 4096
DEFAULT_PREFIX_CACHE_BYTES = 512 * 2**20

_ACTIVE: ContextVar[RunContext | None] = ContextVar("longshap_active_run", default=None)
"""The run whose call is on this thread: what the decoder layers' hooks poll."""
_HOOKED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


class TransformersEngine:
    """Scores continuations and decodes greedy answers for batches of prompts on a transformers model."""

    def __init__(
        self,
        loaded: LoadedModel,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_batch_size: int = 32,
        reuse_prefix: bool = True,
        min_shared_prefix: int = 8,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
        draft: LoadedModel | None = None,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.reuse_prefix = reuse_prefix
        self.min_shared_prefix = min_shared_prefix
        self.prefix_cache_bytes = prefix_cache_bytes if reuse_prefix else 0
        """Bound on the prefix states one cache scope keeps across batches; 0 recomputes every batch's prefix."""
        self.draft = draft
        self.architecture = str(self.model.config.model_type)
        self.device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id or 0
        self.stop_ids = self._stop_token_ids()
        # get_decoder, not base_model_prefix: transformers 4.x names Gemma 3's prefix `language_model`.
        self.backbone = self.model.get_decoder()
        # transformers 5 renames the forward's `past_key_values` to `cache` and drops the old name in 5.40.
        parameters = inspect.signature(self.backbone.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.head = self.model.get_output_embeddings()
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        config = self.model.config
        self.sliding_window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None) or []
        # Tree verification needs masks of our own; a model with sliding windows must accept one per layer type.
        self.tree_capable = config._attn_implementation in (ATTENTION_NAME, "sdpa", "eager") and (
            self.sliding_window is None or "sliding_attention" in layer_types
        )
        if draft is not None and draft.tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError("draft model: its tokenizer differs from the target model's; a draft must share the vocabulary")
        self.capabilities = frozenset(
            {GRADIENTS}
            | ({PREFIX_REUSE} if reuse_prefix else set())
            | ({ANSWER_TREE} if self.tree_capable else set())
            | ({DRAFT} if draft is not None else set())
            | ({BLEND} if blend_supported(self) else set())
        )
        self.prefix = PrefixStates(self)
        self.blend = BlendStates(self)
        self._lock = threading.Lock()
        if self.model not in _HOOKED:  # several engines may share one model: one set of hooks serves them all
            _HOOKED.add(self.model)
            for module in self.model.modules():
                if type(module).__name__.endswith("DecoderLayer"):
                    module.register_forward_pre_hook(_interrupt)
            if self.device.type == "meta":  # every pass, the LM's own included, runs the backbone
                self.backbone.register_forward_pre_hook(_weightless)

    # ---- tokenisation -------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def encode_offsets(self, text: str, special_tokens: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        encoded = self.tokenizer(text, add_special_tokens=special_tokens, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [(int(s), int(e)) for s, e in encoded["offset_mapping"]]

    def decode(self, ids: Sequence[int]) -> str:
        # transformers' stub: decode takes any id sequence and returns str for a single sequence.
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()  # type: ignore[arg-type,union-attr]

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        return [str(self.tokenizer.decode([token])) for token in ids]

    def _stop_token_ids(self) -> set[int]:
        """End-of-sequence ids and every token containing a newline: base models run on past the answer."""
        stops: set[int] = set()
        for source in (self.model.generation_config, self.model.config, self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            stops.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        vocab = self.tokenizer.get_vocab()
        stops.update(i for token, i in vocab.items() if "\n" in token or "Ċ" in token or token == "<0x0A>")
        return stops

    # ---- the protocol's model calls --------------------------------------------------
    def score(self, rows: Sequence[ScoreRow], context: RunContext) -> list[np.ndarray]:
        for _, continuations in rows:
            check_continuations(continuations)
        with self.running(context):
            return hf_scoring.score_rows(self, rows, context)

    def score_tokens(self, rows: Sequence[TokenRow], context: RunContext) -> list[np.ndarray]:
        check_continuations([continuation for _, continuation in rows])
        with self.running(context):
            return hf_scoring.token_rows(self, rows, context)

    def greedy(self, rows: Sequence[Sequence[int]], max_new_tokens: int, context: RunContext, tree: AnswerTree | None = None) -> list[list[int]]:
        with self.running(context):
            return hf_decoding.greedy_rows(self, rows, max_new_tokens, context, tree)

    def attribute_tokens(self, spec: GradientSpec, context: RunContext) -> GradientResult:
        with self.running(context, inference=False), torch.enable_grad():
            return hf_gradients.attribute_tokens(self, spec, context)

    def close(self) -> None:
        """Nothing to release: the weights belong to the caller's LoadedModel."""

    @contextmanager
    def running(self, context: RunContext, inference: bool = True) -> Iterator[None]:
        """One call at a time, with `context` polled by the decoder layers."""
        if self.device.type == "meta":  # before a batch's preparation reads meta tensors and fails obscurely
            _weightless(self.backbone)
        context.check()
        wait_for(self._lock, context)
        token = _ACTIVE.set(context)
        try:
            with torch.inference_mode(inference):
                yield
        finally:
            _ACTIVE.reset(token)
            self._lock.release()

    # ---- what the job modules share ---------------------------------------------------
    def map_batches(
        self, rows: Sequence[Sequence[int]], run: Callable[[list[int]], Sequence], context: RunContext,
        share: bool = True, budget: int | None = None, blend: BlendPlan | None = None,
    ) -> list:
        """Run `run(batch)` over planned batches and return one result per row, in row order.

        A batch that runs out of accelerator memory is split in two and retried, and
        this call's later batches get half the token budget: big inputs slow down
        instead of failing, and later calls start from the engine's budget again.
        Rows of a `blend` plan (scoring in kv_mode blend) are batched by what a blended pass forwards and reads.
        """
        share = share and self.reuse_prefix
        max_tokens = budget or self.max_batch_tokens
        kept = self.prefix.store(context).max_bytes > 0
        results: list = [None] * len(rows)
        blended = self.blend.plan_batches(rows, blend, max_tokens) if blend is not None else None
        queue = blended if blended is not None else plan_batches(rows, max_tokens, self.max_batch_size, share, kept)
        while queue:
            context.check()
            batch = queue.pop(0)
            try:
                for index, result in zip(batch, run(batch)):
                    results[index] = result
            except torch.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                max_tokens = max(1, max_tokens // 2)
                self.prefix.store(context).clear()
                log.warning("out of memory on a batch of %d rows; retrying in halves (%d tokens per batch)", len(batch), max_tokens)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                half = len(batch) // 2
                queue[:0] = [batch[:half], batch[half:]]
        return results

    def run_backbone(self, cache: DynamicCache | None, **inputs: torch.Tensor | dict[str, torch.Tensor]):
        """The backbone's output, filling `cache` in place (None: no cache) under the name this transformers reads."""
        return self.backbone(**inputs, **{self._cache_argument: cache}, use_cache=cache is not None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits (soft-capped where the model caps them) of hidden states (..., hidden).

        A plain head on a CPU multiplies as weight @ hidden^T: for the few rows of a
        decoding step F.linear's (hidden @ weight^T) kernel was several times slower
        with Gemma's 262k-row head (same values up to float noise).
        """
        head = self.head
        if self.device.type == "cpu" and type(head) is torch.nn.Linear and head.bias is None:
            flat = hidden.reshape(-1, hidden.shape[-1])
            logits = (head.weight @ flat.T).T.reshape(*hidden.shape[:-1], -1).float()
        else:
            logits = head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @property
    def mask_dtype(self) -> torch.dtype:
        """The dtype of additive masks we build: the weights' own, or float32 for quantised (integer) weights."""
        parameter = next(self.model.parameters())
        return parameter.dtype if parameter.is_floating_point() else torch.float32

    def count_pass(self, context: RunContext, tokens: int) -> None:
        """One batched pass forwarding `tokens` non-pad tokens."""
        context.stats.forward_passes += 1
        context.stats.forward_tokens += tokens


def _interrupt(*_) -> None:
    """Before every decoder layer and every block of blocked attention: stop the running call once its request should stop."""
    context = _ACTIVE.get()
    if context is not None:
        context.check()


set_checkpoint(_interrupt)


def _weightless(module: torch.nn.Module, args: object = None) -> NoReturn:
    """Refuse model work in a process that loaded the model without weights (a forward pre-hook, and called directly)."""
    raise RuntimeError(
        f"{type(module).__name__} was loaded without weights (load_model(weights=False)): this process only tokenises; "
        "its forward passes belong to the replicas"
    )
