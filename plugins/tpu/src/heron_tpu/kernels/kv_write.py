"""The KV-cache write as a Pallas TPU kernel: each token's key and value rows DMA'd to its slot.

Why DMAs rather than a vector store: the cache lives in HBM and a token's slot is data (its block
comes from the block table), so the destination is only known at run time; a DMA to
``cache.at[kv, head, block, offset]`` is the TPU's scatter. The cache is aliased input-to-output,
so the write is in place and the rest of the cache is never touched.

Tokens are processed ``tile_tokens`` per grid step: their keys and values come into VMEM through
ordinary blocked inputs (laid out ``[num_kv_heads, tokens, head_size]`` so each row is one
``[1, head_size]`` DMA source). Negative slots (padding) are skipped, as the contract says.

32-bit caches: every row is sent by its own DMA, all started, then all awaited.

16-bit caches: a TPU packs two 16-bit rows into each 32-bit sublane and tiles pages by 16 rows,
and the compiler rejects a DMA that starts inside a tile (found by ``heron_tpu.aot``; the
interpreter allows it). So each row is a read-modify-write of its aligned 16-row group: DMA the
group into VMEM, select the row in (keys and values arrive in float32, exactly, so a dynamic row
load stays 32-bit), DMA the group back, one token at a time, so two tokens of one group in the same
step never race.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu


def _kernel(
    slots_ref: Any,
    k_ref: Any,
    v_ref: Any,
    _cache_in: Any,
    cache_ref: Any,
    sem: Any,
    *,
    tile_tokens: int,
    block_size: int,
    num_kv_heads: int,
) -> None:
    base = pl.program_id(0) * tile_tokens

    def copies(i: jax.Array) -> tuple[jax.Array, list]:
        slot = slots_ref[base + i]
        block = jnp.maximum(slot, 0) // block_size
        offset = jnp.maximum(slot, 0) % block_size
        out = []
        for h in range(num_kv_heads):
            for kv, src in ((0, k_ref), (1, v_ref)):
                out.append(
                    pltpu.make_async_copy(
                        src.at[h, pl.ds(i, 1)],
                        cache_ref.at[kv, h, block, pl.ds(offset, 1)],
                        sem.at[0],
                    )
                )
        return slot >= 0, out

    def start(i: jax.Array, carry: None) -> None:
        valid, dmas = copies(i)

        @pl.when(valid)
        def _() -> None:
            for dma in dmas:
                dma.start()

    def wait(i: jax.Array, carry: None) -> None:
        valid, dmas = copies(i)

        @pl.when(valid)
        def _() -> None:
            for dma in dmas:
                dma.wait()

    jax.lax.fori_loop(0, tile_tokens, start, None)
    jax.lax.fori_loop(0, tile_tokens, wait, None)


PACKED_GROUP = 16
"""Rows of a 16-bit page tile: the unit a 16-bit row is rewritten in."""


def _packed_kernel(
    slots_ref: Any,
    k_ref: Any,
    v_ref: Any,
    _cache_in: Any,
    cache_ref: Any,
    buf: Any,
    sem: Any,
    *,
    tile_tokens: int,
    block_size: int,
    num_kv_heads: int,
) -> None:
    base = pl.program_id(0) * tile_tokens
    group_rows = jax.lax.broadcasted_iota(jnp.int32, buf.shape, 0)

    def one(i: jax.Array, carry: None) -> None:
        slot = slots_ref[base + i]

        @pl.when(slot >= 0)
        def _() -> None:
            block = slot // block_size
            offset = slot % block_size
            start = pl.multiple_of((offset // PACKED_GROUP) * PACKED_GROUP, PACKED_GROUP)
            for h in range(num_kv_heads):
                for kv, src in ((0, k_ref), (1, v_ref)):
                    group = cache_ref.at[kv, h, block, pl.ds(start, PACKED_GROUP)]
                    fetch = pltpu.make_async_copy(group, buf, sem.at[0])
                    fetch.start()
                    fetch.wait()
                    row = src[h, pl.ds(i, 1), :]
                    merged = jnp.where(
                        group_rows == offset - start, row, buf[...].astype(jnp.float32)
                    )
                    buf[...] = merged.astype(buf.dtype)
                    store = pltpu.make_async_copy(buf, group, sem.at[0])
                    store.start()
                    store.wait()

    jax.lax.fori_loop(0, tile_tokens, one, None)


def write_kv(
    key: jax.Array,
    value: jax.Array,
    kv_cache: jax.Array,
    slot_mapping: jax.Array,
    *,
    tile_tokens: int = 16,
    interpret: Any = None,
) -> jax.Array:
    """``kv_cache`` ``[2, KVH, blocks, block_size, D]`` with ``key``/``value`` ``[T, KVH, D]``
    written at ``slot_mapping`` ``[T]`` (negative: skipped). Donate ``kv_cache`` to write in place.
    """
    num_tokens, num_kv_heads, head_size = key.shape
    block_size = kv_cache.shape[3]
    num_tiles = pl.cdiv(num_tokens, tile_tokens)
    padded = num_tiles * tile_tokens
    slots = slot_mapping.astype(jnp.int32)
    if padded != num_tokens:
        pad = padded - num_tokens
        key = jnp.pad(key, ((0, pad), (0, 0), (0, 0)))
        value = jnp.pad(value, ((0, pad), (0, 0), (0, 0)))
        slots = jnp.pad(slots, (0, pad), constant_values=-1)
    packed = jnp.dtype(kv_cache.dtype).itemsize < 4
    # Rows travel in the cache's dtype for 32-bit caches, in float32 (exact) for packed ones.
    row_dtype = jnp.float32 if packed else kv_cache.dtype
    k = key.astype(kv_cache.dtype).astype(row_dtype).transpose(1, 0, 2)
    v = value.astype(kv_cache.dtype).astype(row_dtype).transpose(1, 0, 2)
    kernel = functools.partial(
        _packed_kernel if packed else _kernel,
        tile_tokens=tile_tokens,
        block_size=block_size,
        num_kv_heads=num_kv_heads,
    )
    scratch = [pltpu.SemaphoreType.DMA((1,))]
    if packed:
        scratch.insert(0, pltpu.VMEM((PACKED_GROUP, head_size), kv_cache.dtype))
    block = pl.BlockSpec((num_kv_heads, tile_tokens, head_size), lambda t, *_: (0, t, 0))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(num_tiles,),
        in_specs=[block, block, pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=pl.BlockSpec(memory_space=pl.ANY),
        scratch_shapes=scratch,
    )
    return pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(kv_cache.shape, kv_cache.dtype),
        # Operand 3 (after the one scalar-prefetch operand, key and value) is the cache.
        input_output_aliases={3: 0},
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary",)),
        interpret=interpret if interpret is not None else False,
        name="heron_write_kv",
    )(slots, k, v, kv_cache)
