"""Plain-torch definitions of the attention kernels: the oracle every backend is tested against.

Written for clarity, not speed: a loop over sequences, float32 math. Core's reference backend runs on
these, and :mod:`heron_interfaces.testing` compares every backend's kernels with them. Importing this
module imports torch; ``import heron_interfaces`` does not.
"""

from __future__ import annotations

import torch

from heron_interfaces.attention import AttentionBackend, AttentionMetadata


def write_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store token ``t`` at ``slot_mapping[t]`` of caches viewed as ``[blocks, block_size, kv_heads, head]``."""
    block_size = key_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blocks, offsets = slots // block_size, slots % block_size
    key_cache[blocks, offsets] = key[keep].to(key_cache.dtype)
    value_cache[blocks, offsets] = value[keep].to(value_cache.dtype)


def gather_context(
    cache: torch.Tensor, block_table: torch.Tensor, length: int, start: int = 0
) -> torch.Tensor:
    """Positions ``start .. length - 1`` of one sequence as ``[length - start, kv_heads, head]``.

    Only the blocks holding those positions are read: with a sliding window (API 1.9) the blocks
    before ``start`` may have been freed and handed to other sequences.
    """
    block_size = cache.shape[1]
    first = start // block_size
    num_blocks = (length + block_size - 1) // block_size
    blocks = cache[block_table[first:num_blocks].long()]
    return blocks.reshape(-1, *cache.shape[2:])[
        start - first * block_size : length - first * block_size
    ]


def window_start(context: int, q_len: int, sliding_window: int | None) -> int:
    """The first context position any of a sequence's ``q_len`` last queries sees."""
    if sliding_window is None:
        return 0
    return max(0, context - q_len - sliding_window + 1)


def soft_cap(scores: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma 2's logit soft-capping, ``cap * tanh(scores / cap)`` (``None``: unchanged)."""
    if cap is None:
        return scores
    return torch.tanh(scores / cap) * cap


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    metadata: AttentionMetadata,
    scale: float,
    out: torch.Tensor,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
) -> torch.Tensor:
    """Attention of each sequence's query tokens over its cached context (written already).

    Causal unless ``causal`` is false (API 1.7): then every query sees the whole context. With
    ``sliding_window`` (API 1.9) the query at position ``p`` sees positions ``> p - window`` only,
    and blocks wholly before the first query's window are never read; ``logits_soft_cap`` caps
    the scaled scores with ``tanh`` before the mask.
    """
    num_heads = query.shape[1]
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    starts = metadata.query_start_loc.tolist()
    lengths = metadata.seq_lens.tolist()
    for i in range(metadata.num_seqs):
        q_start, q_end, context = starts[i], starts[i + 1], lengths[i]
        q_len = q_end - q_start
        if q_len == 0:
            continue
        lo = window_start(context, q_len, sliding_window)
        q = query[q_start:q_end].float()
        k = gather_context(key_cache, metadata.block_tables[i], context, lo).float()
        v = gather_context(value_cache, metadata.block_tables[i], context, lo).float()
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = soft_cap(torch.einsum("qhd,khd->hqk", q, k) * scale, logits_soft_cap)
        if causal:
            q_pos = torch.arange(context - q_len, context).unsqueeze(1)
            k_pos = torch.arange(lo, context).unsqueeze(0)
            hidden = k_pos > q_pos
            if sliding_window is not None:
                hidden |= k_pos <= q_pos - sliding_window
            scores.masked_fill_(hidden, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[q_start:q_end] = torch.einsum("hqk,khd->qhd", probs, v).to(out.dtype)
    return out


def dense_causal_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
) -> torch.Tensor:
    """Attention of one whole sequence without a cache: the oracle of the oracle (bidirectional
    when ``causal`` is false; windowed and soft-capped as :func:`paged_attention`)."""
    group = query.shape[1] // key.shape[1]
    k = key.float().repeat_interleave(group, dim=1)
    v = value.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", query.float(), k) * scale
    scores = soft_cap(scores, logits_soft_cap)
    if causal:
        n = query.shape[0]
        mask = torch.ones(n, n, dtype=torch.bool).triu(1)
        if sliding_window is not None:
            mask |= torch.ones(n, n, dtype=torch.bool).tril(-sliding_window)
        scores.masked_fill_(mask, float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), v).to(query.dtype)


class ReferenceAttention(AttentionBackend):
    """An attention backend made of the functions above, over the default KV layout.

    Core's reference backend, the conformance suite's self-test and model tests all use this one
    class; a vendor can subclass it to bring up a platform before its kernels exist.
    """

    name = "reference"
    supports_non_causal = True
    supports_sliding_window = True
    supports_logits_soft_cap = True

    @classmethod
    def supported_block_sizes(cls) -> tuple[int, ...]:
        return (1, 2, 4, 8, 16, 32, 64, 128)

    @classmethod
    def kv_cache_shape(
        cls, num_blocks: int, block_size: int, num_kv_heads: int, head_size: int
    ) -> tuple[int, ...]:
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        key_cache, value_cache = self.kv_views(kv_cache)
        write_kv(key, value, key_cache, value_cache, slot_mapping)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        out: torch.Tensor,
    ) -> torch.Tensor:
        self.write_kv(key, value, kv_cache, metadata.slot_mapping)
        key_cache, value_cache = self.kv_views(kv_cache)
        return paged_attention(
            query,
            key_cache,
            value_cache,
            metadata,
            self.spec.scale,
            out,
            causal=self.spec.causal,
            sliding_window=self.spec.sliding_window,
            logits_soft_cap=self.spec.logits_soft_cap,
        )
