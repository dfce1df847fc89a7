"""Long prefill chunks through torch's blocked (flash) CPU attention, whose matmuls run on oneDNN.

The paged-attention kernel multiplies with vector FMAs, one query row group at a time: ideal for
decodes and short chunks, where reading the KV tiles is the cost, but a prompt of thousands of
tokens is compute-bound (attention's work grows with the square of its length) and there oneDNN's
AMX / AVX512-BF16 matmuls are several times faster: an 8,000-token prompt of SmolLM2-135M spent
~16 s in the kernel and spends ~4 s here (see benchmarks/RESULTS.md, "long-context prefill").

A chunk of ``q_len`` queries on top of ``prefix`` cached positions is two attentions merged by their
log-sum-exp: the chunk's own keys (causal, a square) and the prefix's keys (fully visible, no mask).
One masked call would be simpler but runs the masked path, ~1.5-3x slower than the two unmasked
ones; torch's causal flag alone aligns the mask to the top-left, which is wrong once a prefix exists.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

MIN_QUERY_TOKENS_ENV = "HERON_CPU_LONG_PREFILL_TOKENS"
DEFAULT_MIN_QUERY_TOKENS = 256
"""A sequence with at least this many query tokens in a step takes this path; below it the kernel
is as fast or faster (plugins/cpu/benchmarks/bench_long_prefill.py). 0 turns the path off."""


def min_query_tokens() -> int:
    """The threshold, read per call so that tests and users can change it in a running process."""
    value = os.environ.get(MIN_QUERY_TOKENS_ENV)
    if value is None or value == "":
        return DEFAULT_MIN_QUERY_TOKENS
    try:
        tokens = int(value)
    except ValueError:
        raise ValueError(
            f"{MIN_QUERY_TOKENS_ENV} must be a whole number of tokens (0 turns the path off), "
            f"got {value!r}"
        ) from None
    if tokens < 0:
        raise ValueError(f"{MIN_QUERY_TOKENS_ENV} must be >= 0, got {tokens}")
    return tokens


_flash_with_lse = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of heads-first ``[1, heads, len, head_size]`` tensors; lse is float32."""
    if _flash_with_lse is not None:
        out, lse = _flash_with_lse(query, key, value, 0.0, causal, scale=scale)[:2]
        return out, lse
    # Without torch's private flash op: the same result from plain matmuls, in float32.
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
    if causal:
        n = scores.shape[-1]
        visible = torch.ones(n, n, dtype=torch.bool).tril()
        scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), value.float())
    return out.to(query.dtype), lse


def _gather_context(
    kv_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int, group: int, first: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of positions ``[first, seq_len)`` as ``[1, heads, seq_len - first, hd]``
    (``first`` a block start: under a sliding window, earlier blocks may be freed).

    The cache holds one tile per (block, KV head): keys transposed ``[head_size, block_size]``,
    values ``[block_size, head_size]``. KV heads are repeated to the query heads, because the flash
    op has no grouped-query mode; the copy is small next to the attention it feeds.
    """
    _, _, num_kv_heads, head_size, block_size = kv_cache.shape
    first_block = first // block_size
    num_blocks = -(-seq_len // block_size) - first_block
    seq_len -= first_block * block_size
    blocks = block_table[first_block : first_block + num_blocks].long()
    keys = kv_cache[0].index_select(0, blocks)  # [nb, kvh, hd, bs]
    keys = keys.permute(1, 0, 3, 2).reshape(num_kv_heads, num_blocks * block_size, head_size)
    values = (
        kv_cache[1].index_select(0, blocks).view(num_blocks, num_kv_heads, block_size, head_size)
    )
    values = values.transpose(0, 1).reshape(num_kv_heads, num_blocks * block_size, head_size)
    keys = keys[:, :seq_len].repeat_interleave(group, dim=0).unsqueeze(0)
    values = values[:, :seq_len].repeat_interleave(group, dim=0).unsqueeze(0)
    return keys, values


def attend_sequence(
    out: torch.Tensor,
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    start: int,
    q_len: int,
    seq_len: int,
    scale: float,
    causal: bool = True,
    sliding_window: int | None = None,
) -> None:
    """Causal attention of one sequence's ``q_len`` query rows (from ``start``) into ``out``;
    bidirectional (every row sees all ``seq_len`` positions) when ``causal`` is false; the query
    at position ``p`` sees only positions ``> p - sliding_window`` when a window is given.

    Its keys and values, the chunk's own included, must already be in ``kv_cache``.
    """
    num_heads = query.shape[1]
    group = num_heads // kv_cache.shape[2]
    q = query[start : start + q_len].transpose(0, 1).unsqueeze(0)  # [1, heads, q_len, hd]
    prefix = seq_len - q_len
    if sliding_window is not None and causal:
        # One masked call over the blocks the window reaches (the window bounds its cost).
        block_size = kv_cache.shape[4]
        first = max(0, prefix - sliding_window + 1) // block_size * block_size
        keys, values = _gather_context(kv_cache, block_table, seq_len, group, first)
        q_pos = torch.arange(prefix, seq_len).unsqueeze(1)
        k_pos = torch.arange(first, seq_len).unsqueeze(0)
        mask = (k_pos <= q_pos) & (k_pos > q_pos - sliding_window)
        result = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
        out[start : start + q_len].copy_(result[0].transpose(0, 1))
        return
    keys, values = _gather_context(kv_cache, block_table, seq_len, group)
    if not causal:
        result = F.scaled_dot_product_attention(q, keys, values, is_causal=False, scale=scale)
    elif prefix == 0:
        result = F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=scale)
    else:
        own, own_lse = _attend(q, keys[:, :, prefix:], values[:, :, prefix:], scale, True)
        past, past_lse = _attend(q, keys[:, :, :prefix], values[:, :, :prefix], scale, False)
        top = torch.maximum(own_lse, past_lse)
        own_w = torch.exp(own_lse - top).unsqueeze(-1)
        past_w = torch.exp(past_lse - top).unsqueeze(-1)
        result = (own.float() * own_w + past.float() * past_w) / (own_w + past_w)
    out[start : start + q_len].copy_(result[0].transpose(0, 1))


PROMPT_GROUPS = 4
"""Whole prompts of a step are sorted by length and attended in this many padded calls."""


def attend_prompts(
    out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    starts: list[int],
    lengths: list[int],
    scale: float,
) -> None:
    """Bidirectional attention of whole prompts over their own keys and values as the step
    computed them (no cache gather), in a few padded SDPA calls, into ``out``.

    Prompt ``i`` owns rows ``starts[i]:starts[i]+lengths[i]``. A step holds tens of prompts of
    mixed lengths: one call per prompt pays per-call overheads (thread-team wake-ups, layout
    copies) tens of times per layer, one call for all pads every prompt to the longest. Sorted by
    length and split into :data:`PROMPT_GROUPS` calls with a key-padding mask, the padding stays
    small and the calls few.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    size = -(-len(order) // PROMPT_GROUPS)
    for first in range(0, len(order), size):
        chosen = order[first : first + size]
        _attend_padded(
            out,
            query,
            key,
            value,
            [starts[i] for i in chosen],
            [lengths[i] for i in chosen],
            scale,
        )


def _attend_padded(
    out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    starts: list[int],
    lengths: list[int],
    scale: float,
) -> None:
    """One SDPA call over prompts padded to the longest (no mask when they are all as long)."""
    device = query.device
    longest = max(lengths)
    positions = torch.arange(longest, device=device)
    first = torch.tensor(starts, device=device).unsqueeze(1)
    valid = positions.unsqueeze(0) < torch.tensor(lengths, device=device).unsqueeze(1)
    rows = torch.where(valid, first + positions, 0)  # [prompts, longest]; padding reads row 0
    group = query.shape[1] // key.shape[1]
    q = query[rows].transpose(1, 2)  # [prompts, heads, longest, head_size]
    k = key[rows].transpose(1, 2)
    v = value[rows].transpose(1, 2)
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    padded = min(lengths) < longest
    mask = valid[:, None, None, :] if padded else None  # padded keys get no weight
    result = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if padded:  # padded query rows are dropped
        out[rows[valid]] = result.transpose(1, 2)[valid].to(out.dtype)
    else:
        out[rows.flatten()] = result.transpose(1, 2).flatten(0, 1).to(out.dtype)


def split_long_sequences(
    query_start_loc: list[int], threshold: int
) -> tuple[list[int], list[tuple[int, int]]]:
    """``(long sequences, runs of the others)``; a run ``(first, end)`` is a slice of sequences.

    Runs keep the kernel's batch as whole as possible: one launch per run of short sequences.
    """
    long_ids: list[int] = []
    runs: list[tuple[int, int]] = []
    run_start = 0
    for i in range(len(query_start_loc) - 1):
        if query_start_loc[i + 1] - query_start_loc[i] >= threshold:
            long_ids.append(i)
            if run_start < i:
                runs.append((run_start, i))
            run_start = i + 1
    if run_start < len(query_start_loc) - 1:
        runs.append((run_start, len(query_start_loc) - 1))
    return long_ids, runs
