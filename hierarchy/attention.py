"""Block-bounded SDPA: each block of queries attends only to the keys its mask lets it see.

With a materialised mask (padding, a shared-prefix cache, sliding windows) SDPA's CPU
kernel multiplies every query by every key and masks afterwards. Gemma 3's
sliding-window layers (5 of 6) let a query see 512 keys and its global layers half of
a causal square, so on long prompts most of that work is masked out. Cutting the queries into blocks and each
block's keys to the span its mask allows skips only masked-out work: a masked key
adds nothing to a softmax, so outputs are SDPA's up to float rounding.

Registered with transformers as `sdpa_blocked` (mask built as for `sdpa`), and the
default attention on CPUs (`hierarchy.models.attention_implementation`).

Long passes without a mask (one causal row) run block by block too, each block over
the keys up to its last query with a causal mask of its own, and every block calls the
checkpoint (`set_checkpoint`): a stop flag is then honoured within a block of queries,
not only between decoder layers, which over a long prompt can be many seconds apart.
"""
from __future__ import annotations

from typing import Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from longshap.hierarchy.options import SDPA_BLOCKED as NAME

QUERY_BLOCK = 128
"""Queries per block: smaller blocks hug a sliding window more tightly but make more, smaller kernel calls."""
CAUSAL_BLOCKS_FROM = 8 * QUERY_BLOCK
"""Unmasked causal passes shorter than this stay one SDPA call: short passes stop between layers soon enough."""
BLOCK_SCORES = 2**24
"""Attention scores one block of a long causal pass may hold (queries x keys x heads): with a mask SDPA
materialises them, so blocks over very many keys hold fewer queries."""



def _no_checkpoint() -> None:
    """Until an engine sets its own, blocks run without a check."""


_checkpoint: Callable[[], None] = _no_checkpoint


def set_checkpoint(checkpoint: Callable[[], None]) -> None:
    """`checkpoint()` runs before every block of queries; it may raise to stop the pass (an engine's cancellation)."""
    global _checkpoint
    _checkpoint = checkpoint


def key_span(mask: torch.Tensor) -> tuple[int, int]:
    """First and one-past-last key column that any query of `mask` (..., queries, keys) may attend to.

    Boolean masks allow True; additive masks allow anything above the dtype's minimum.
    A mask that allows nothing keeps every column, so fully masked rows come out as SDPA gives them.
    """
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min
    columns = allowed.reshape(-1, allowed.shape[-1]).any(0).nonzero()
    if len(columns) == 0:
        return 0, mask.shape[-1]
    return int(columns[0]), int(columns[-1]) + 1


def blocked_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, run block by block of queries over each block's visible key span."""
    queries = query.shape[2]
    if attention_mask is None and queries >= CAUSAL_BLOCKS_FROM and kwargs.get("is_causal", getattr(module, "is_causal", True)):
        return _causal_blocks(module, query, key, value, **kwargs)
    # No mask: SDPA's own causal kernel already skips the masked half. A mask broadcast over queries has no blocks.
    if attention_mask is None or queries <= QUERY_BLOCK or attention_mask.shape[-2] != queries:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    attention_mask = attention_mask[..., : key.shape[2]]
    outputs = []
    for start in range(0, queries, QUERY_BLOCK):
        _checkpoint()
        block_mask = attention_mask[..., start : start + QUERY_BLOCK, :]
        first, last = key_span(block_mask)
        output, _ = sdpa_attention_forward(
            module, query[:, :, start : start + QUERY_BLOCK], key[:, :, first:last], value[:, :, first:last],
            block_mask[..., first:last], **kwargs,
        )
        outputs.append(output)
    return torch.cat(outputs, dim=1), None


def _causal_blocks(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs) -> tuple[torch.Tensor, None]:
    """A causal pass block by block: each block sees the keys before its queries (cached ones first) and itself causally."""
    queries, keys = query.shape[2], key.shape[2]
    offset = keys - queries  # keys of a cached prefix come before the first query
    outputs = []
    start = 0
    while start < queries:
        _checkpoint()
        end = min(queries, start + max(16, min(QUERY_BLOCK, BLOCK_SCORES // ((offset + start + QUERY_BLOCK) * query.shape[1]))))
        visible = offset + end
        rows = torch.arange(offset + start, offset + end, device=query.device)[:, None]
        mask = torch.arange(visible, device=query.device)[None, :] <= rows
        output, _ = sdpa_attention_forward(
            module, query[:, :, start:end], key[:, :, :visible], value[:, :, :visible], mask[None, None], **{**kwargs, "is_causal": False},
        )
        outputs.append(output)
        start = end
    return torch.cat(outputs, dim=1), None


AttentionInterface.register(NAME, blocked_sdpa_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)
