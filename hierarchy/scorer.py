"""Batched model scoring: many coalitions per forward pass, logits only where needed.

Every coalition is one prompt. Prompts are left-padded into batches bounded by a
token budget, so all continuations end at the right edge and `logits_to_keep`
computes the LM head only over the continuation positions; with Gemma's 262k-token
vocabulary the head dominates CPU time otherwise.
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
    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Group row indices, longest first, so each padded batch stays under the token budget."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches, current = [], []
        for index in order:
            width = lengths[current[0]] if current else lengths[index]
            if current and ((len(current) + 1) * width > self.max_batch_tokens or len(current) >= self.max_batch_size):
                batches.append(current)
                current = []
            current.append(index)
        if current:
            batches.append(current)
        return batches

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[r, width - len(row) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

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
            for batch in self._batches([len(e) for e in encoded]):
                logprobs = self._last_logprobs([encoded[i] for i in batch], keep=1)[:, 0, :]
                out[batch] = logprobs[:, label_ids].double().cpu().numpy()
            return out
        rows = [(p, c) for p in range(len(prompts)) for c in range(len(continuations))]
        sequences = [encoded[p] + list(continuations[c]) for p, c in rows]
        out = np.zeros((len(prompts), len(continuations)))
        for batch in self._batches([len(s) for s in sequences]):
            keep = max(len(continuations[rows[i][1]]) for i in batch) + 1
            logprobs = self._last_logprobs([sequences[i] for i in batch], keep=keep)
            for j, index in enumerate(batch):
                p, c = rows[index]
                target = torch.tensor(continuations[c], device=self.device)
                span = logprobs[j, keep - 1 - len(target) : keep - 1, :]
                out[p, c] = span.gather(1, target[:, None]).sum().item()
        return out

    def _last_logprobs(self, rows: Sequence[Sequence[int]], keep: int) -> torch.Tensor:
        """Log-softmax over the vocabulary at the last `keep` positions of each left-padded row."""
        ids, mask, positions = self._left_pad(rows)
        self.stats.forward_passes += 1
        self.stats.forward_tokens += int(mask.sum())
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep, use_cache=False).logits
        return torch.log_softmax(logits.float(), dim=-1)

    # ---- greedy decoding ----------------------------------------------------------
    @torch.inference_mode()
    def greedy(self, prompts: Sequence[str], max_new_tokens: int = 20) -> list[list[int]]:
        """Greedy answers (token ids, stop token excluded) for each prompt, decoded in batches with a KV cache."""
        encoded = [self.encode_prompt(p) for p in prompts]
        self.stats.evaluations += len(prompts)
        answers: list[list[int]] = [[] for _ in prompts]
        for batch in self._batches([len(e) + max_new_tokens for e in encoded]):
            for index, tokens in zip(batch, self._greedy_batch([encoded[i] for i in batch], max_new_tokens)):
                answers[index] = tokens
        return answers

    def _greedy_batch(self, rows: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        ids, mask, positions = self._left_pad(rows)
        self.stats.forward_passes += 1
        self.stats.forward_tokens += int(mask.sum())
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
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
