"""Batched model scoring: many coalitions per forward pass, logits only where needed.

Every coalition is one prompt. Prompts are left-padded into batches bounded by a
token budget, so all continuations end at the right edge and `logits_to_keep`
computes the LM head only over the continuation positions; with Gemma's 262k-token
vocabulary the head dominates CPU time otherwise.

Coalitions of one request differ only after the first removed unit, so rows are
batched in lexicographic token order and each batch's longest common prefix is run
once; its KV cache is repeated across the batch and only the suffixes are forwarded.
The result is the same computation (up to float noise), with far fewer tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from hierarchy.models import LoadedModel
from hierarchy.subgames import Cancelled


@dataclass
class ScorerStats:
    """What the scorer has done: coalitions evaluated and tokens pushed through the model."""

    evaluations: int = 0
    forward_tokens: int = 0
    reused_tokens: int = 0
    """Prompt tokens not recomputed because their KV cache was shared with other rows."""
    forward_passes: int = 0
    decode_steps: int = 0

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
        self.backbone = getattr(self.model, self.model.base_model_prefix)
        self.head = self.model.get_output_embeddings()
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        # Sliding-window layers mask by cache index, so pads between a shared prefix and a
        # row's own tokens would shift the window; decoding keeps real tokens contiguous instead.
        self.sliding_window = getattr(self.model.config, "sliding_window", None) is not None
        for module in self.model.modules():
            if type(module).__name__.endswith("DecoderLayer"):
                module.register_forward_pre_hook(self._interrupt)

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
        stops = set()
        for source in (self.model.generation_config, self.model.config, self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            stops.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        vocab = self.tokenizer.get_vocab()
        stops.update(i for token, i in vocab.items() if "\n" in token or "Ċ" in token or token == "<0x0A>")
        return stops

    # ---- batching -----------------------------------------------------------------
    def _batches(self, rows: Sequence[Sequence[int]]) -> list[list[int]]:
        """Group row indices so each padded batch stays under the token budget.

        With prefix reuse, rows go in lexicographic order so neighbours share long
        prefixes; otherwise longest first, which minimises padding.
        """
        if self.reuse_prefix:
            order = sorted(range(len(rows)), key=lambda i: list(rows[i]))
        else:
            order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        batches, current, width = [], [], 0
        for index in order:
            grown = max(width, len(rows[index]))
            if current and ((len(current) + 1) * grown > self.max_batch_tokens or len(current) >= self.max_batch_size):
                batches.append(current)
                current, grown = [], len(rows[index])
            current.append(index)
            width = grown
        if current:
            batches.append(current)
        return batches

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[r, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _shared_prefix(self, rows: Sequence[Sequence[int]], keep: int) -> int:
        """Length of the prefix all rows share, leaving every row at least `keep` tokens of its own."""
        if not self.reuse_prefix or len(rows) < 2:
            return 0
        first, length = rows[0], min(len(row) for row in rows) - keep
        for row in rows[1:]:
            common = 0
            while common < length and row[common] == first[common]:
                common += 1
            length = common
        return length if length >= self.min_shared_prefix else 0

    def _prefix_cache(self, rows: Sequence[Sequence[int]], shared: int):
        """KV cache of the rows' shared prefix, computed once and repeated across the batch."""
        prefix = torch.tensor([list(rows[0][:shared])], dtype=torch.long, device=self.device)
        cache = self.backbone(input_ids=prefix, use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(rows))
        self.stats.forward_passes += 1
        self.stats.forward_tokens += shared
        self.stats.reused_tokens += shared * (len(rows) - 1)
        return cache

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    # ---- scoring ------------------------------------------------------------------
    @torch.inference_mode()
    def continuation_logprobs(self, prompts: Sequence[str], continuations: Sequence[Sequence[int]]) -> np.ndarray:
        """Log-probability of each continuation (token ids) after each prompt: shape (m, c).

        Single-token continuations share one pass per prompt (all label ids read from
        the last position); longer ones get one row per (prompt, continuation).
        """
        if not continuations or any(len(c) == 0 for c in continuations):
            raise ValueError("every continuation needs at least one token")
        encoded = [self.encode_prompt(p) for p in prompts]
        self.stats.evaluations += len(prompts)
        if all(len(c) == 1 for c in continuations):
            label_ids = torch.tensor([c[0] for c in continuations], device=self.device)
            out = np.zeros((len(prompts), len(continuations)))
            for batch in self._batches(encoded):
                logprobs = self._last_logprobs([encoded[i] for i in batch], keep=1)[:, 0, :]
                out[batch] = logprobs[:, label_ids].double().cpu().numpy()
            return out
        rows = [(p, c) for p in range(len(prompts)) for c in range(len(continuations))]
        sequences = [encoded[p] + list(continuations[c]) for p, c in rows]
        out = np.zeros((len(prompts), len(continuations)))
        for batch in self._batches(sequences):
            keep = max(len(continuations[rows[i][1]]) for i in batch) + 1
            logprobs = self._last_logprobs([sequences[i] for i in batch], keep=keep)
            for j, index in enumerate(batch):
                p, c = rows[index]
                target = torch.tensor(continuations[c], device=self.device)
                span = logprobs[j, keep - 1 - len(target) : keep - 1, :]
                out[p, c] = span.gather(1, target[:, None]).sum().item()
        return out

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
        self.stats.forward_passes += 1
        self.stats.forward_tokens += sum(len(suffix) for suffix in suffixes)
        hidden = self.backbone(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=cache is not None
        ).last_hidden_state
        ends = torch.tensor([len(suffix) for suffix in suffixes], device=self.device)
        # A short row batched with a longer continuation has fewer than `keep` tokens; the
        # positions before its start are never read (its own span is shorter), so clamp them.
        index = (ends[:, None] - keep + torch.arange(keep, device=self.device)[None, :]).clamp(min=0)
        gathered = hidden.gather(1, index[:, :, None].expand(-1, -1, hidden.shape[-1]))
        return torch.log_softmax(self._logits(gathered), dim=-1)

    # ---- greedy decoding ----------------------------------------------------------
    @torch.inference_mode()
    def greedy(self, prompts: Sequence[str], max_new_tokens: int = 20) -> list[list[int]]:
        """Greedy answers (token ids, stop token excluded) for each prompt, decoded in batches with a KV cache."""
        encoded = [self.encode_prompt(p) for p in prompts]
        self.stats.evaluations += len(prompts)
        answers: list[list[int]] = [[] for _ in prompts]
        for batch in self._batches(encoded):
            for index, tokens in zip(batch, self._greedy_batch([encoded[i] for i in batch], max_new_tokens)):
                answers[index] = tokens
        return answers

    def _greedy_batch(self, rows: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        shared = 0 if self.sliding_window else self._shared_prefix(rows, keep=1)
        cache = self._prefix_cache(rows, shared) if shared else None
        ids, mask = self._left_pad([row[shared:] for row in rows])
        positions = shared + (mask.cumsum(dim=1) - 1).clamp(min=0)
        if shared:
            mask = torch.cat([torch.ones((len(rows), shared), dtype=mask.dtype, device=self.device), mask], dim=1)
        self.stats.forward_passes += 1
        self.stats.forward_tokens += int(mask[:, shared:].sum())
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
        answers: list[list[int]] = [[] for _ in rows]
        done = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        next_position = positions[:, -1:] + 1
        for _ in range(max_new_tokens):
            token = out.logits[:, -1, :].argmax(dim=-1)
            for r, t in enumerate(token.tolist()):
                if not done[r]:
                    if t in self.stop_ids:
                        done[r] = True
                    else:
                        answers[r].append(t)
            if all(done[r] or len(answers[r]) >= max_new_tokens for r in range(len(rows))):
                break
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=self.device)], dim=1)
            self.stats.decode_steps += 1
            self.stats.forward_tokens += int((~done).sum())
            out = self.model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=next_position,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            next_position = next_position + 1
        return answers

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
