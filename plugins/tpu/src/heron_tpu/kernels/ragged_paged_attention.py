"""Ragged paged attention as one Pallas TPU kernel over a flattened batch of prefill chunks and decodes.

Why one kernel for both: a TPU runs whole compiled programs of fixed shapes, so a step that mixes
decodes and prefill chunks must be one program whose shapes depend only on the padding bucket
(tokens, sequences), never on how the tokens split into sequences. Everything per step (where each
sequence's rows start, its context length, its pages) arrives as scalars prefetched into SMEM.

Layout (chosen for the TPU's (8, 128) vector tiles):

* KV cache, one array per layer: ``[2, num_kv_heads, num_blocks, block_size, head_size]``. One KV
  head's page is a contiguous ``[block_size, head_size]`` slab, which is what one DMA brings from
  HBM into VMEM.
* Queries are regrouped by the wrapper into ``[num_kv_heads, num_tokens * group, head_size]``: the
  ``group`` query heads that share a KV head become consecutive rows, so grouped-query attention is
  a plain 2-D matmul against one page, and the page is fetched once for the whole group.

Grid: ``(token_tiles, num_kv_heads)``. A tile of ``tile_tokens`` consecutive flattened tokens may
span several sequences (a tile of decodes spans up to ``tile_tokens``); the kernel walks the
sequences that overlap the tile (their range is prefetched per tile), and for each one the pages its
rows can see, ``pages_per_step`` pages per iteration. Each row belongs to exactly one sequence, so a
single online-softmax state per row (running max, running sum, accumulator) is carried across all
of them: rows of other sequences are masked and keep their state unchanged.

Masking is exact with respect to unwritten memory: cache slots past a sequence's length (and VMEM
that no DMA filled) may hold NaN, so probabilities are selected with ``where`` (never multiplied by
a mask) and value rows past the tile's last visible position are zeroed before the matmul.

Non-causal layers (heron_interfaces 1.7, encoder models: ``causal=False``): every row sees its
sequence's whole context, ``0 .. seq_len - 1``, so each sequence's walk covers all its pages
whatever the row; the masking stays the same ``where`` selections.

Sliding window (heron_interfaces 1.9, ``sliding_window``): a row at position ``p`` sees positions
``> p - window`` only; each sequence's walk starts at the page holding the window start of the
tile's first row of it, so pages wholly before it (which core frees) are never fetched, and value
rows of unfetched pages are zeroed like those past the end. Logit soft-capping
(``logits_soft_cap``): scaled scores become ``cap * tanh(score / cap)`` before the mask.

The code is pure JAX (no torch): the same source is interpreted on a CPU host by
``pltpu.InterpretParams`` and compiled by the TPU compiler in :mod:`heron_tpu.aot`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

NEG_INF = -1e30
"""A finite "minus infinity": ``exp(NEG_INF - NEG_INF)`` is 1, not NaN, for rows with no key yet."""


def tile_sequence_ranges(
    query_start_loc: jax.Array, num_seqs: jax.Array, num_tiles: int, tile_tokens: int
) -> tuple[jax.Array, jax.Array]:
    """First and one-past-last sequence overlapping each token tile (computed on device, in jnp).

    ``query_start_loc`` is padded past ``num_seqs`` with the total token count, so padded
    sequences are empty and never overlap a tile.
    """
    starts = jnp.arange(num_tiles, dtype=jnp.int32) * tile_tokens
    ends = starts + tile_tokens
    total = query_start_loc[num_seqs[0]]
    seq_ends = query_start_loc[1:]
    first = jnp.searchsorted(seq_ends, starts, side="right").astype(jnp.int32)
    last = jnp.searchsorted(seq_ends, jnp.minimum(ends, total) - 1, side="right").astype(jnp.int32)
    last = jnp.where(starts < total, jnp.minimum(last + 1, num_seqs[0]), first)
    return first, last


def _kernel(
    # scalar prefetch (SMEM)
    qsl_ref: Any,
    seq_lens_ref: Any,
    block_tables_ref: Any,
    tile_first_ref: Any,
    tile_last_ref: Any,
    # inputs
    q_ref: Any,
    kv_hbm_ref: Any,
    # output
    o_ref: Any,
    # scratch
    k_buf: Any,
    v_buf: Any,
    sems: Any,
    *,
    scale: float,
    group: int,
    tile_tokens: int,
    block_size: int,
    pages_per_step: int,
    max_blocks: int,
    window: int,
    soft_cap: float,
    causal: bool,
) -> None:
    tile = pl.program_id(0)
    kv_head = pl.program_id(1)
    rows = tile_tokens * group
    chunk = pages_per_step * block_size
    head_size = q_ref.shape[-1]

    q = q_ref[...].astype(jnp.float32) * scale
    token = tile * tile_tokens + jax.lax.broadcasted_iota(jnp.int32, (rows, 1), 0) // group
    col = jax.lax.broadcasted_iota(jnp.int32, (1, chunk), 1)
    vrow = jax.lax.broadcasted_iota(jnp.int32, (chunk, 1), 0)
    tile_end = (tile + 1) * tile_tokens

    def page_copies(
        seq: jax.Array, step: jax.Array, num_pages: jax.Array, first_page: jax.Array
    ) -> list:
        """The K and V DMAs of the pages of ``step`` that exist and may be read; each guarded by
        ``first_page <= page < num_pages``."""
        out = []
        for p in range(pages_per_step):
            page = step * pages_per_step + p
            block = block_tables_ref[seq * max_blocks + jnp.minimum(page, max_blocks - 1)]
            k_copy = pltpu.make_async_copy(
                kv_hbm_ref.at[0, kv_head, block], k_buf.at[p], sems.at[0, p]
            )
            v_copy = pltpu.make_async_copy(
                kv_hbm_ref.at[1, kv_head, block], v_buf.at[p], sems.at[1, p]
            )
            out.append(((page < num_pages) & (page >= first_page), k_copy, v_copy))
        return out

    def per_sequence(seq: jax.Array, state: tuple) -> tuple:
        q_start = qsl_ref[seq]
        q_end = qsl_ref[seq + 1]
        context = seq_lens_ref[seq]
        first_pos = context - (q_end - q_start)
        # The last of this sequence's tokens inside the tile sees the most pages (causal); a
        # non-causal row sees the whole context.
        tile_last = first_pos + jnp.minimum(q_end, tile_end) - 1 - q_start
        last_pos = tile_last if causal else context - 1
        num_pages = last_pos // block_size + 1
        num_steps = (num_pages + pages_per_step - 1) // pages_per_step
        mine = (token >= q_start) & (token < q_end)
        q_pos = first_pos + token - q_start
        if window:
            # The tile's first row of this sequence sees the earliest position.
            tile_first = first_pos + jnp.maximum(q_start, tile * tile_tokens) - q_start
            first_page = jnp.maximum(tile_first - window + 1, 0) // block_size
        else:
            first_page = jnp.int32(0)
        first_step = first_page // pages_per_step

        def per_step(step: jax.Array, state: tuple) -> tuple:
            m_prev, l_prev, acc_prev = state
            copies = page_copies(seq, step, num_pages, first_page)
            for exists, k_copy, v_copy in copies:

                @pl.when(exists)
                def _start(k_copy: Any = k_copy, v_copy: Any = v_copy) -> None:
                    k_copy.start()
                    v_copy.start()

            for exists, k_copy, v_copy in copies:

                @pl.when(exists)
                def _wait(k_copy: Any = k_copy, v_copy: Any = v_copy) -> None:
                    k_copy.wait()
                    v_copy.wait()

            k = k_buf[...].reshape(chunk, head_size).astype(jnp.float32)
            v = v_buf[...].reshape(chunk, head_size).astype(jnp.float32)
            k_pos = step * chunk + col
            visible = mine & (k_pos <= (q_pos if causal else last_pos))
            if window:
                visible = visible & (k_pos > q_pos - window)
            scores = jax.lax.dot_general(
                q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
            )
            if soft_cap:
                scores = jnp.tanh(scores / soft_cap) * soft_cap
            scores = jnp.where(visible, scores, NEG_INF)
            m_new = jnp.maximum(m_prev, scores.max(axis=1, keepdims=True))
            probs = jnp.where(visible, jnp.exp(scores - m_new), 0.0)
            alpha = jnp.exp(m_prev - m_new)
            # Rows of V past the last position this tile may see were never written (or never
            # fetched): zero them, since 0 * NaN is NaN inside the matmul.
            v_pos = step * chunk + vrow
            v = jnp.where((v_pos <= last_pos) & (v_pos >= first_page * block_size), v, 0.0)
            acc = alpha * acc_prev + jax.lax.dot_general(
                probs, v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32
            )
            return m_new, alpha * l_prev + probs.sum(axis=1, keepdims=True), acc

        return jax.lax.fori_loop(first_step, num_steps, per_step, state)

    init = (
        jnp.full((rows, 1), NEG_INF, jnp.float32),
        jnp.zeros((rows, 1), jnp.float32),
        jnp.zeros((rows, head_size), jnp.float32),
    )
    _, l_final, acc = jax.lax.fori_loop(
        tile_first_ref[tile], tile_last_ref[tile], per_sequence, init
    )
    safe = jnp.where(l_final > 0, l_final, 1.0)
    o_ref[...] = jnp.where(l_final > 0, acc / safe, 0.0).astype(o_ref.dtype)


def ragged_paged_attention(
    query: jax.Array,
    kv_cache: jax.Array,
    query_start_loc: jax.Array,
    seq_lens: jax.Array,
    block_tables: jax.Array,
    num_seqs: jax.Array,
    *,
    scale: float,
    tile_tokens: int = 16,
    pages_per_step: int = 1,
    interpret: Any = None,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    causal: bool = True,
) -> jax.Array:
    """Causal attention of ``query`` ``[T, H, D]`` over the paged ``kv_cache``; returns ``[T, H, D]``.

    ``causal=False``: every query sees its sequence's whole context (no sliding window then).

    ``query_start_loc`` ``[S + 1]``, ``seq_lens`` ``[S]`` and ``block_tables`` ``[S, max_blocks]``
    (int32) may be padded past ``num_seqs`` (``[1]`` int32): padded entries of
    ``query_start_loc`` must equal the total token count. Rows of padding tokens come out as zeros.
    All shapes, and nothing else, decide what is compiled. ``T`` need not be a multiple of
    ``tile_tokens``: the wrapper pads. ``sliding_window`` / ``logits_soft_cap``: see the module
    docstring (``None``: off; each value compiles its own kernel).
    """
    if not causal and sliding_window:
        raise ValueError("sliding_window applies to causal attention only (causal=False given)")
    num_tokens, num_heads, head_size = query.shape
    _, num_kv_heads, _, block_size, _ = kv_cache.shape
    group = num_heads // num_kv_heads
    max_blocks = block_tables.shape[1]
    num_tiles = pl.cdiv(num_tokens, tile_tokens)
    padded = num_tiles * tile_tokens
    if padded != num_tokens:
        query = jnp.pad(query, ((0, padded - num_tokens), (0, 0), (0, 0)))
    # [T, KVH * G, D] -> [KVH, T * G, D]: the group of a KV head becomes consecutive rows.
    q = query.reshape(padded, num_kv_heads, group, head_size).transpose(1, 0, 2, 3)
    q = q.reshape(num_kv_heads, padded * group, head_size)
    first, last = tile_sequence_ranges(query_start_loc, num_seqs, num_tiles, tile_tokens)
    rows = tile_tokens * group
    kernel = functools.partial(
        _kernel,
        scale=scale,
        group=group,
        tile_tokens=tile_tokens,
        block_size=block_size,
        pages_per_step=pages_per_step,
        max_blocks=max_blocks,
        window=int(sliding_window or 0),
        soft_cap=float(logits_soft_cap or 0.0),
        causal=bool(causal),
    )
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=5,
        grid=(num_tiles, num_kv_heads),
        in_specs=[
            pl.BlockSpec((None, rows, head_size), lambda t, h, *_: (h, t, 0)),
            pl.BlockSpec(memory_space=pl.ANY),
        ],
        out_specs=pl.BlockSpec((None, rows, head_size), lambda t, h, *_: (h, t, 0)),
        scratch_shapes=[
            pltpu.VMEM((pages_per_step, block_size, head_size), kv_cache.dtype),
            pltpu.VMEM((pages_per_step, block_size, head_size), kv_cache.dtype),
            pltpu.SemaphoreType.DMA((2, pages_per_step)),
        ],
    )
    out = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, query.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary", "arbitrary")),
        interpret=interpret if interpret is not None else False,
        name="heron_ragged_paged_attention",
    )(
        query_start_loc.astype(jnp.int32),
        seq_lens.astype(jnp.int32),
        block_tables.astype(jnp.int32).reshape(-1),
        first,
        last,
        q,
        kv_cache,
    )
    out = out.reshape(num_kv_heads, padded, group, head_size).transpose(1, 0, 2, 3)
    return out.reshape(padded, num_heads, head_size)[:num_tokens]
