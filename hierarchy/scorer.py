"""Batched model scoring: many coalitions per forward pass, logits only where needed.

Every coalition is one prompt. Prompts are left-padded into batches bounded by a
token budget, so all continuations end at the right edge and `logits_to_keep`
computes the LM head only over the continuation positions; with Gemma's 262k-token
vocabulary the head dominates CPU time otherwise.

Coalitions of one request differ only after the first removed unit, so rows are
batched in lexicographic token order and each batch's longest common prefix is run
once; its KV cache is repeated across the batch and only the suffixes are forwarded.
The result is the same computation (up to float noise), with far fewer tokens.
Prefixes computed for one batch stay in a bounded radix tree of KV caches
(`hierarchy.prefix_cache`), so later batches, levels and requests only compute the
part of their shared prefix that no earlier batch did.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Callable, NoReturn, Sequence

import numpy as np
import torch
from transformers import DynamicCache, GenerationConfig

from longshap.hierarchy.attention import NAME as ATTENTION_NAME
from longshap.hierarchy.models import LoadedModel
from longshap.hierarchy.prefix_cache import LayerStates, PrefixKVCache
from longshap.hierarchy.speculative import AnswerTree, Verdict, tree_masks, walk
from longshap.hierarchy.errors import Cancelled

log = logging.getLogger(__name__)


DEFAULT_PREFIX_CACHE_BYTES = 512 * 2**20
PASS_OVERHEAD_TOKENS = 64
"""What one more forward pass costs, in forwarded tokens, when deciding where to close a batch."""
DECODE_CACHE_FACTOR = 4
"""Rows decoded together may hold this many times `max_batch_tokens` in KV cache.

A decoding step forwards one token per row but reads every weight, the LM head's
included; on a CPU that read, not the arithmetic, sets its time, so rows prefilled in
separate (prefix-sharing) batches decode together, as many as their caches allow."""


@dataclass
class ScorerStats:
    """What the scorer has done: coalitions evaluated and tokens pushed through the model."""

    evaluations: int = 0
    forward_tokens: int = 0
    reused_tokens: int = 0
    """Prompt tokens not recomputed because their KV cache was shared with other rows."""
    cached_tokens: int = 0
    """... of which read from the prefix cache kept across batches (a subset of reused_tokens)."""
    forward_passes: int = 0
    decode_steps: int = 0
    tree_checks: int = 0
    """Coalitions whose greedy answer was looked up in the answer tree."""
    tree_accepted: int = 0
    """... of which the answer was found in the tree, with no decoding."""
    draft_target_passes: int = 0
    draft_tokens: int = 0
    """Target-model passes and tokens produced while decoding with a draft model."""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ModelScorer:
    """Scores continuations and decodes greedy answers for batches of prompts."""

    loaded: LoadedModel
    max_batch_tokens: int = 8192
    max_batch_size: int = 32
    reuse_prefix: bool = True
    min_shared_prefix: int = 8
    prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES
    """Bound on the KV states of prefixes kept across batches; 0 recomputes every batch's prefix."""
    draft: LoadedModel | None = None
    """A smaller model with the same tokenizer that proposes tokens when decoding is needed."""
    stats: ScorerStats = field(default_factory=ScorerStats)
    should_stop: Callable[[], bool] | None = None
    """Polled before every decoder layer, so a cancelled request stops mid-batch, not after it."""

    def __post_init__(self) -> None:
        self.model = self.loaded.model
        self.tokenizer = self.loaded.tokenizer
        self.device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id or 0
        self.stop_ids = self._stop_token_ids()
        self.prefix_kv = PrefixKVCache(self.prefix_cache_bytes if self.reuse_prefix else 0)
        # get_decoder, not base_model_prefix: transformers 4.x names Gemma 3's prefix `language_model`.
        self.backbone = self.model.get_decoder()
        # transformers 5 renames the forward's `past_key_values` to `cache` and drops the old
        # name in 5.40, after which a cache passed under it would be silently ignored.
        parameters = inspect.signature(self.backbone.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.head = self.model.get_output_embeddings()
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        # Sliding-window layers mask by cache index, so pads between a shared prefix and a
        # row's own tokens would shift the window; decoding keeps real tokens contiguous instead.
        config = self.model.config
        self.sliding_window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None) or []
        # Tree verification needs masks of our own; a model with sliding windows must accept one per layer type.
        self.tree_capable = config._attn_implementation in (ATTENTION_NAME, "sdpa", "eager") and (
            self.sliding_window is None or "sliding_attention" in layer_types
        )
        if self.draft is not None and self.draft.tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError("draft model: its tokenizer differs from the target model's; a draft must share the vocabulary")
        for module in self.model.modules():
            if type(module).__name__.endswith("DecoderLayer"):
                module.register_forward_pre_hook(self._interrupt)
        if self.device.type == "meta":  # every pass, the LM's own included, runs the backbone
            self.backbone.register_forward_pre_hook(_weightless)

    def _interrupt(self, *_) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("explanation cancelled")

    # ---- tokenisation -------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def continuation_ids(self, prompt: str, continuation: str) -> list[int]:
        """Tokens of `continuation` as the model sees them after `prompt` (joint tokenisation when it splits cleanly)."""
        head = self.encode_prompt(prompt)
        joint = self.encode_prompt(prompt + continuation)
        if joint[: len(head)] == head and len(joint) > len(head):
            return joint[len(head) :]
        return self.tokenizer(continuation, add_special_tokens=False)["input_ids"]

    def _stop_token_ids(self) -> set[int]:
        """End-of-sequence ids and every token containing a newline: base models run on past the answer."""
        stops: set[int] = set()
        for source in (self.model.generation_config, self.model.config, self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            stops.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        vocab = self.tokenizer.get_vocab()
        stops.update(i for token, i in vocab.items() if "\n" in token or "Ċ" in token or token == "<0x0A>")
        return stops

    # ---- batching -----------------------------------------------------------------
    def _batches(self, rows: Sequence[Sequence[int]], share: bool = True, budget: int | None = None) -> list[list[int]]:
        """Group row indices so each padded batch stays under the token budget.

        With prefix reuse, rows go in lexicographic order (the common prefix of a run of
        sorted rows is that of its first and last), and a batch of k rows sharing L tokens
        is closed before a row that would cut the shared prefix to L' or add P pads when
        that costs the batch more than the row gains, (L - L')(k - 1) + P > L': batches
        then follow the groups of coalitions that share an outer context, and rows of very
        different lengths (coalitions dropping whole documents) do not pad each other. With
        the prefix cache across batches the next batch finds L' cached, so closing only costs a pass, counted as
        PASS_OVERHEAD_TOKENS: batches then follow the rows' prefix tree much more closely.
        Without reuse (or `share=False`), longest first, which minimises padding.
        """
        share = share and self.reuse_prefix
        if not share:
            order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        else:
            order = sorted(range(len(rows)), key=lambda i: list(rows[i]))
        batches: list[list[int]] = []
        current: list[int] = []
        width = shared = 0
        for index in order:
            row = rows[index]
            grown = max(width, len(row))
            narrowed = min(shared, _common_prefix(rows[current[0]], row)) if current else len(row)
            # The shared prefix runs once, so only the padded suffixes count against the budget.
            area = (len(current) + 1) * (grown - (narrowed if share else 0))
            full = area > (budget or self.max_batch_tokens) or len(current) >= self.max_batch_size
            # Closing recomputes the narrowed prefix, unless the prefix cache will hold it (a batch of several rows
            # stores its shared prefix; a row alone only reads the cache): then it only costs a pass.
            closing = min(narrowed, PASS_OVERHEAD_TOKENS) if self.prefix_kv.max_bytes and len(current) > 1 else narrowed
            # Pads cost a pass as much as tokens do: k rows widened by (grown - width), the new row by its own gap.
            padding = len(current) * (grown - width) + grown - len(row)
            wasteful = share and current and (shared - narrowed) * (len(current) - 1) + padding > closing
            if current and (full or wasteful):
                batches.append(current)
                current, grown, narrowed = [], len(row), len(row)
            current.append(index)
            width, shared = grown, narrowed
        if current:
            batches.append(current)
        return batches

    def _map_batches(
        self, rows: Sequence[Sequence[int]], run: Callable[[list[int]], Sequence], share: bool = True, budget: int | None = None
    ) -> list:
        """Run `run(batch)` over all batches and return one result per row, in row order.

        A batch that runs out of accelerator memory is split in two and retried, and the
        token budget is halved for later batches, so big inputs slow down instead of failing.
        """
        if self.device.type == "meta":  # before a batch's preparation reads meta tensors (mask sums) and fails obscurely
            _weightless(self.backbone)
        results: list = [None] * len(rows)
        queue = self._batches(rows, share, budget)
        while queue:
            batch = queue.pop(0)
            try:
                for index, result in zip(batch, run(batch)):
                    results[index] = result
            except torch.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                self.max_batch_tokens = max(1, self.max_batch_tokens // 2)
                self.prefix_kv.clear()
                log.warning("out of memory on a batch of %d rows; retrying in halves (max_batch_tokens=%d)", len(batch), self.max_batch_tokens)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                half = len(batch) // 2
                queue[:0] = [batch[:half], batch[half:]]
        return results

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[r, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _shared_prefix(self, rows: Sequence[Sequence[int]], keep: int) -> int:
        """Length of the prefix all rows share, leaving every row at least `keep` tokens of its own.

        A row alone only reads the prefix cache: storing every distinct prompt would
        churn it for prefixes no other row asks for.
        """
        if not self.reuse_prefix:
            return 0
        limit = min(len(row) for row in rows) - keep
        if len(rows) < 2:
            length = min(limit, self.prefix_kv.match_length(rows[0]))
        else:
            length = min(limit, *(_common_prefix(rows[0], row) for row in rows[1:]))
        return length if length >= self.min_shared_prefix else 0

    def _prefix_cache(self, rows: Sequence[Sequence[int]], shared: int, windowed: bool = True):
        """KV cache of the rows' shared prefix, repeated across the batch.

        Only the part beyond the longest prefix already in the cache is forwarded
        (once); the result is stored for later batches. A `windowed` cache, typed by the
        model's config, trims sliding-window layers to their window as a fresh pass would;
        passes with masks of their own need every key instead.
        """
        cached, states = self._prefix_states(list(rows[0][:shared]))
        cache = DynamicCache(config=self.model.config) if windowed else DynamicCache()
        for layer, (keys, values) in enumerate(states):
            cache.update(keys, values, layer)
        cache.batch_repeat_interleave(len(rows))
        self._count_prefix(len(rows), shared, cached)
        return cache

    def _prefix_states(self, prefix: list[int]) -> tuple[int, LayerStates]:
        """Tokens of `prefix` found in the prefix cache, and the full states of `prefix` (computed and stored beyond those)."""
        cached, states = self.prefix_kv.lookup(prefix)
        if cached < len(prefix):
            states = self._extend(prefix, cached, states)
            self.prefix_kv.insert(prefix, cached, [(k[:, :, cached:], v[:, :, cached:]) for k, v in states])
        assert states is not None, "a fully cached prefix is non-empty, so the cache returned its states"
        return cached, states

    def _extend(self, prefix: Sequence[int], cached: int, states: LayerStates | None) -> LayerStates:
        """Full per-layer states of `prefix`, forwarding only tokens[cached:] on top of the cached states.

        The pass runs on a config-typed cache (sliding layers attend over their window
        only, as in a fresh pass), while every layer's new states are recorded as they
        are written, so the stored states stay complete and can later be cut anywhere.
        """
        cache = _RecordingCache(config=self.model.config)
        for layer, (keys, values) in enumerate(states or []):
            cache.update(keys, values, layer)
        cache.recorded.clear()
        ids = torch.tensor([list(prefix[cached:])], dtype=torch.long, device=self.device)
        positions = torch.arange(cached, len(prefix), device=self.device)[None, :]
        self._backbone(cache, input_ids=ids, position_ids=positions)
        new = [cache.recorded[layer] for layer in range(len(cache.recorded))]
        if states is None:
            return new
        return [(torch.cat([k, nk], dim=2), torch.cat([v, nv], dim=2)) for (k, v), (nk, nv) in zip(states, new)]

    def _count_prefix(self, rows: int, shared: int, cached: int = 0) -> None:
        """One pass over the uncached part of a shared prefix, whose tokens the other rows then reuse."""
        if cached < shared:
            self.stats.forward_passes += 1
        self.stats.forward_tokens += shared - cached
        self.stats.reused_tokens += shared * rows - (shared - cached)
        self.stats.cached_tokens += cached

    def _count_pass(self, tokens: int) -> None:
        """One batched pass forwarding `tokens` non-pad tokens."""
        self.stats.forward_passes += 1
        self.stats.forward_tokens += tokens

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits (soft-capped where the model caps them) of hidden states (..., hidden).

        A plain head on a CPU multiplies as weight @ hidden^T: for the few rows of a
        decoding step F.linear's (hidden @ weight^T) kernel was several times slower with
        Gemma's 262k x 640 head on a 2-core CPU (same values up to float noise).
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

    # ---- scoring ------------------------------------------------------------------
    @torch.inference_mode()
    def continuation_logprobs(self, prompts: Sequence[str], continuations: Sequence[Sequence[int]]) -> np.ndarray:
        """Log-probability of each continuation (token ids) after each prompt: shape (m, c)."""
        check_continuations(continuations)
        encoded = [self.encode_prompt(p) for p in prompts]
        self.stats.evaluations += len(prompts)
        return np.array(self.score_rows([(row, continuations) for row in encoded])).reshape(len(prompts), len(continuations))

    @torch.inference_mode()
    def score_rows(self, rows: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]) -> list[np.ndarray]:
        """Token-level scoring: for each (prompt ids, continuations) row, the continuations' log-probabilities.

        Rows may come from different requests (a server merges concurrent requests'
        rows into the same passes), each with its own continuations. A row whose
        continuations are all single tokens takes one pass (all ids read from the last
        position); otherwise each (prompt, continuation) pair is a sequence of its own.
        """
        # (row, column or None for a label row, token ids); a label row reads all its ids at once.
        items: list[tuple[int, int | None, list[int]]] = []
        for r, (prompt, continuations) in enumerate(rows):
            if all(len(c) == 1 for c in continuations):
                items.append((r, None, list(prompt)))
            else:
                items.extend((r, c, list(prompt) + list(continuation)) for c, continuation in enumerate(continuations))
        sequences = [tokens for _, _, tokens in items]

        def score(batch: list[int]) -> list:
            lengths = [0 if (col := items[i][1]) is None else len(rows[items[i][0]][1][col]) for i in batch]
            keep = max(lengths) + 1
            logprobs = self._last_logprobs([sequences[i] for i in batch], keep=keep)
            scores: list[np.ndarray | float] = []
            for j, (index, length) in enumerate(zip(batch, lengths)):
                row, column, _ = items[index]
                if column is None:
                    ids = torch.tensor([c[0] for c in rows[row][1]], device=self.device)
                    scores.append(logprobs[j, keep - 1, ids].double().cpu().numpy())
                else:
                    target = torch.tensor(rows[row][1][column], device=self.device)
                    span = logprobs[j, keep - 1 - length : keep - 1, :]
                    scores.append(span.gather(1, target[:, None]).sum().item())
            return scores

        results = [np.zeros(len(continuations)) for _, continuations in rows]
        for (row, column, _), value in zip(items, self._map_batches(sequences, score)):
            if column is None:
                results[row] = value
            else:
                results[row][column] = value
        return results

    @torch.inference_mode()
    def continuation_token_logprobs(self, prompts: Sequence[str], continuation: Sequence[int]) -> np.ndarray:
        """log p(token t | prompt, earlier tokens) of one continuation after each prompt: shape (m, len(continuation)).

        The same passes as `continuation_logprobs` (whose value is each row's sum), so
        per-token values cost nothing extra.
        """
        if len(continuation) == 0:
            raise ValueError("every continuation needs at least one token")
        encoded = [self.encode_prompt(p) for p in prompts]
        self.stats.evaluations += len(prompts)
        return np.vstack(self.token_logprob_rows([(row, continuation) for row in encoded]))

    @torch.inference_mode()
    def token_logprob_rows(self, rows: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[np.ndarray]:
        """Per-token log-probabilities of each (prompt ids, continuation) row; rows may come from different requests."""
        return self._token_logprobs([prompt for prompt, _ in rows], [continuation for _, continuation in rows])

    def new_request(self) -> None:
        """Forget cached prefixes: a request's values and token counts never depend on earlier requests."""
        self.prefix_kv.clear()

    def _token_logprobs(self, encoded: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per-token log-probabilities of continuations[i] after encoded[i], batched."""
        sequences = [list(prompt) + list(tokens) for prompt, tokens in zip(encoded, continuations)]

        def score(batch: list[int]) -> list[np.ndarray]:
            keep = max(len(continuations[i]) for i in batch) + 1
            logprobs = self._last_logprobs([sequences[i] for i in batch], keep=keep)
            scores = []
            for j, index in enumerate(batch):
                target = torch.tensor(continuations[index], device=self.device)
                span = logprobs[j, keep - 1 - len(target) : keep - 1, :]
                scores.append(span.gather(1, target[:, None])[:, 0].double().cpu().numpy())
            return scores

        return self._map_batches(sequences, score)

    def _last_logprobs(self, rows: Sequence[Sequence[int]], keep: int) -> torch.Tensor:
        """Log-softmax over the vocabulary at the last `keep` positions of each row: (rows, keep, vocab).

        Rows are right-padded after their shared prefix, so every row's tokens are
        contiguous (exact for sliding-window attention too); hidden states are gathered
        at each row's own last positions and only those go through the LM head.
        """
        shared = self._shared_prefix(rows, keep)
        cache = self._prefix_cache(rows, shared) if shared else None
        suffixes = [row[shared:] for row in rows]
        width = max(len(suffix) for suffix in suffixes)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(rows), shared + width), dtype=torch.long, device=self.device)
        for r, suffix in enumerate(suffixes):
            ids[r, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
            mask[r, : shared + len(suffix)] = 1
        positions = torch.arange(shared, shared + width, device=self.device).expand(len(rows), width)
        self._count_pass(sum(len(suffix) for suffix in suffixes))
        hidden = self._backbone(cache, input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        ends = torch.tensor([len(suffix) for suffix in suffixes], device=self.device)
        # A short row batched with a longer continuation has fewer than `keep` tokens; the
        # positions before its start are never read (its own span is shorter), so clamp them.
        index = (ends[:, None] - keep + torch.arange(keep, device=self.device)[None, :]).clamp(min=0)
        gathered = hidden.gather(1, index[:, :, None].expand(-1, -1, hidden.shape[-1]))
        return torch.log_softmax(self._logits(gathered), dim=-1)

    # ---- greedy decoding ----------------------------------------------------------
    @torch.inference_mode()
    def greedy(self, prompts: Sequence[str], max_new_tokens: int = 20, tree: AnswerTree | None = None) -> list[list[int]]:
        """Greedy answers (token ids, stop token excluded) for each prompt.

        With an answer tree, answers already in it are verified in one pass per batch
        and only the rest are decoded, from where they left the tree: from the
        verification pass's own KV cache (no second prefill), or with the draft model.
        """
        encoded = [self.encode_prompt(p) for p in prompts]
        self.stats.evaluations += len(prompts)
        return self.greedy_ids(encoded, max_new_tokens, tree)

    @torch.inference_mode()
    def greedy_ids(self, encoded: Sequence[Sequence[int]], max_new_tokens: int, tree: AnswerTree | None = None) -> list[list[int]]:
        """`greedy` on token ids; rows may come from different requests (without a tree).

        Rows are prefilled in prefix-sharing batches (each also verifying the answer tree,
        when there is one), then the rows that still need decoding continue from their
        prefill states together, as many per batch as their caches allow.
        """
        if not self.tree_capable:  # attention that takes no masks of ours: each batch prefills and decodes alone
            return self._map_batches(encoded, lambda batch: self._greedy_batch([encoded[i] for i in batch], max_new_tokens))
        verified = tree if tree is not None and tree.size else AnswerTree()
        checking = verified.size > 0
        answers: list[list[int]] = [[] for _ in encoded]
        for group in self._decode_groups(encoded):
            rows = [encoded[i] for i in group]
            prefilled = self._map_batches(
                rows, lambda batch: self._verify_batch([rows[b] for b in batch], verified, max_new_tokens, keep_states=self.draft is None)
            )
            if checking:
                self.stats.tree_checks += len(rows)
                self.stats.tree_accepted += sum(verdict.answer is not None for verdict, _ in prefilled)
            verdicts = [verdict for verdict, _ in prefilled]
            pending = [r for r, verdict in enumerate(verdicts) if verdict.answer is None]
            if self.draft is not None:
                tails = [self._draft_decode(list(rows[r]) + verdicts[r].prefix, max_new_tokens - len(verdicts[r].prefix)) for r in pending]
            else:
                tails = self._map_batches(
                    [list(rows[r]) + verdicts[r].prefix for r in pending],
                    lambda batch: self._decode_states([prefilled[pending[b]] for b in batch], max_new_tokens),
                    share=False, budget=DECODE_CACHE_FACTOR * self.max_batch_tokens,
                )
            continued = dict(zip(pending, tails))
            for r, verdict in enumerate(verdicts):
                answers[group[r]] = verdict.answer if verdict.answer is not None else verdict.prefix + continued[r]
        return answers

    def _decode_groups(self, rows: Sequence[Sequence[int]]) -> list[list[int]]:
        """Consecutive prefill batches whose rows can then decode in one batch (DECODE_CACHE_FACTOR)."""
        groups: list[list[int]] = []
        width = 0
        for batch in self._batches(rows):
            batch_width = max(len(rows[i]) for i in batch)
            if groups and (len(groups[-1]) + len(batch)) * max(width, batch_width) <= DECODE_CACHE_FACTOR * self.max_batch_tokens:
                groups[-1].extend(batch)
                width = max(width, batch_width)
            else:
                groups.append(list(batch))
                width = batch_width
        return groups

    def _verify_batch(self, rows: Sequence[Sequence[int]], tree: AnswerTree, max_new_tokens: int, keep_states: bool = False):
        """One forward pass of each prompt followed by the whole answer tree; the argmax walk gives each verdict.

        Returns (verdict, states) per row. With `keep_states`, a row that leaves the tree
        (or, with an empty tree, any row that does not stop at once) gets its prompt and
        tree-path KV states, gathered from this pass, so it can decode on without a second prefill.
        """
        shared = self._shared_prefix(rows, keep=1)
        # Masks built from positions carry the sliding windows, so every layer keeps all its keys.
        cache = self._prefix_cache(rows, shared, windowed=False) if shared else None
        width = max(len(row) - shared for row in rows)
        ids = torch.full((len(rows), width + tree.size), self.pad_id, dtype=torch.long, device=self.device)
        for r, row in enumerate(rows):
            ids[r, : len(row) - shared] = torch.tensor(row[shared:], dtype=torch.long)
        ids[:, width:] = torch.tensor(tree.tokens[1:], dtype=torch.long, device=self.device)
        dtype = next(self.model.parameters()).dtype if next(self.model.parameters()).is_floating_point() else torch.float32
        positions, full, sliding = tree_masks([len(r) for r in rows], shared, width, tree, self.sliding_window, dtype, self.device)
        mask = {"full_attention": full, "sliding_attention": sliding} if sliding is not None else full
        self._count_pass(sum(len(row) - shared for row in rows) + tree.size * len(rows))
        if keep_states and cache is None:
            cache = DynamicCache()  # every position kept (no window trimming): diverged rows gather theirs from it
        hidden = self._backbone(cache, input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state

        def argmax(pairs: Sequence[tuple[int, int]]) -> list[int]:
            """Next tokens after (row, tree node) pairs: node 0 is the row's last prompt token, node k sits at width + k - 1."""
            batch = torch.tensor([row for row, _ in pairs], device=self.device)
            where = torch.tensor([len(rows[row]) - shared - 1 if node == 0 else width + node - 1 for row, node in pairs], device=self.device)
            return self._logits(hidden[batch, where]).argmax(-1).tolist()

        verdicts = walk(tree, len(rows), argmax, self.stop_ids, max_new_tokens)
        states: list[LayerStates | None] = [None] * len(rows)
        if keep_states and cache is not None:
            for r, verdict in enumerate(verdicts):
                if verdict.answer is None:
                    where = torch.tensor(self._tree_path_indices(len(rows[r]), shared, width, tree, verdict.prefix[:-1]), device=self.device)
                    states[r] = [(layer.keys[r, :, where], layer.values[r, :, where]) for layer in cache.layers]
        return list(zip(verdicts, states))

    @staticmethod
    def _tree_path_indices(length: int, shared: int, width: int, tree: AnswerTree, path: Sequence[int]) -> list[int]:
        """Cache indices of a row's prompt tokens and of the tree nodes along `path`, in order."""
        indices, node = list(range(length)), 0
        for token in path:
            node = tree.children[node][token]
            indices.append(shared + width + node - 1)
        return indices

    def _decode_states(self, rows: Sequence[tuple[Verdict, LayerStates | None]], max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding of rows after their known prefix, from their gathered KV states (left-padded into one cache)."""
        limits = [max_new_tokens - len(verdict.prefix) for verdict, _ in rows]
        if max(limits) <= 0:
            return [[] for _ in rows]
        gathered: list[LayerStates] = []
        for _, states in rows:
            assert states is not None, "rows to decode were prefilled with keep_states"
            gathered.append(states)
        lengths = [states[0][0].shape[1] for states in gathered]
        width = max(lengths)
        batch = DynamicCache(config=self.model.config)
        mask = torch.zeros((len(rows), width + 1), dtype=torch.long, device=self.device)
        for r, length in enumerate(lengths):
            mask[r, width - length :] = 1
        mask[:, width] = 1
        for layer in range(len(gathered[0])):
            first = gathered[0][layer][0]
            keys = first.new_zeros((len(rows), first.shape[0], width, first.shape[2]))
            values = torch.zeros_like(keys)
            for r, (states, length) in enumerate(zip(gathered, lengths)):
                keys[r, :, width - length :], values[r, :, width - length :] = states[layer]
            batch.update(keys, values, layer)
        positions = torch.tensor([[length] for length in lengths], device=self.device)
        self.stats.decode_steps += 1
        self.stats.forward_tokens += len(rows)
        tokens = torch.tensor([verdict.prefix[-1] for verdict, _ in rows], device=self.device)[:, None]
        return self._decode(*self._last_logits(tokens, mask, positions, batch), mask, positions + 1, limits)

    def _draft_decode(self, row: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy decoding of one row with transformers' assisted generation (the draft proposes, the target verifies)."""
        if max_new_tokens <= 0:
            return []
        assert self.draft is not None, "only called with a draft model"
        passes = [0]
        hook = self.model.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
        try:
            config = GenerationConfig(
                do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=sorted(self.stop_ids), pad_token_id=self.pad_id
            )
            # transformers' stub resolves `generate` through Module.__getattr__ (a Tensor), hiding the method.
            output = self.model.generate(  # type: ignore[operator]
                input_ids=torch.tensor([list(row)], device=self.device), assistant_model=self.draft.model, generation_config=config
            )[0, len(row) :].tolist()
        finally:
            hook.remove()
        tokens = []
        for token in output:
            if token in self.stop_ids:
                break
            tokens.append(token)
        self.stats.draft_target_passes += passes[0]
        self.stats.draft_tokens += len(output)
        return tokens

    def _greedy_batch(self, rows: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Prefill and decode one batch, left-padded, for attention that takes no masks of ours (flash attention).

        Sliding windows mask by cache index there, so pads between a shared prefix and a
        row's own tokens would shift them: such models prefill every row whole.
        """
        shared = 0 if self.sliding_window else self._shared_prefix(rows, keep=1)
        cache = self._prefix_cache(rows, shared) if shared else None
        ids, mask = self._left_pad([row[shared:] for row in rows])
        positions = shared + (mask.cumsum(dim=1) - 1).clamp(min=0)
        if shared:
            mask = torch.cat([torch.ones((len(rows), shared), dtype=mask.dtype, device=self.device), mask], dim=1)
        self._count_pass(int(mask[:, shared:].sum()))
        return self._decode(*self._last_logits(ids, mask, positions, cache), mask, positions[:, -1:] + 1, [max_new_tokens] * len(rows))

    def _last_logits(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> tuple[DynamicCache, torch.Tensor]:
        """One cached pass (a fresh cache when `cache` is None); the cache and the logits at each row's last position."""
        cache = cache if cache is not None else DynamicCache(config=self.model.config)
        out = self._backbone(cache, input_ids=ids, attention_mask=mask, position_ids=positions)
        return cache, self._logits(out.last_hidden_state[:, -1])

    def _backbone(self, cache: DynamicCache | None, **inputs: torch.Tensor | dict[str, torch.Tensor]):
        """The backbone's output, filling `cache` in place (None: no cache) under the name this transformers reads."""
        return self.backbone(**inputs, **{self._cache_argument: cache}, use_cache=cache is not None)

    def _decode(self, cache: DynamicCache, logits: torch.Tensor, mask: torch.Tensor, next_position: torch.Tensor, limits: Sequence[int]) -> list[list[int]]:
        """Greedy steps from a pass whose `logits` (rows, vocabulary) give each row's next token.

        A row that has finished leaves the batch (and its cache) at once: every step costs
        an LM-head product per row, the largest matrix of a small model, and answers of
        one batch often differ in length by several tokens.
        """
        answers: list[list[int]] = [[] for _ in limits]
        live = list(range(len(limits)))  # answer index of each batch row
        while live:
            tokens = logits.argmax(dim=-1)
            staying = []
            for row, (r, t) in enumerate(zip(live, tokens.tolist())):
                if len(answers[r]) < limits[r] and t not in self.stop_ids:
                    answers[r].append(t)
                    if len(answers[r]) < limits[r]:
                        staying.append(row)
            if not staying:
                break
            if len(staying) < len(live):
                keep = torch.tensor(staying, dtype=torch.long, device=self.device)
                cache.batch_select_indices(keep)
                tokens, mask, next_position = tokens[keep], mask[keep], next_position[keep]
                live = [live[row] for row in staying]
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=self.device)], dim=1)
            self.stats.decode_steps += 1
            self.stats.forward_tokens += len(live)
            cache, logits = self._last_logits(tokens[:, None], mask, next_position, cache)
            next_position = next_position + 1
        return answers

    def decode(self, tokens: Sequence[int]) -> str:
        # transformers' stub: decode takes any id sequence and returns str for a single sequence.
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()  # type: ignore[arg-type,union-attr]


class _RecordingCache(DynamicCache):
    """A DynamicCache that also keeps each layer's newly written states, before any window trimming."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.recorded[layer_idx] = (key_states, value_states)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


def _weightless(module: torch.nn.Module, args: object = None) -> NoReturn:
    """Refuse model work in a process that loaded the model without weights (a forward pre-hook, and called directly)."""
    raise RuntimeError(
        f"{type(module).__name__} was loaded without weights (load_model(weights=False)): this process only tokenises; "
        "its forward passes belong to the replicas"
    )


def check_continuations(continuations: Sequence[Sequence[int]]) -> None:
    if not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("every continuation needs at least one token")


def _common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length
