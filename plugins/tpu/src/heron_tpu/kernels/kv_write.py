"""The KV-cache write as a Pallas TPU kernel: each token's key and value rows DMA'd to its slot.

Why DMAs rather than a vector store: the cache lives in HBM and a token's slot is data (its block
comes from the block table), so the destination is only known at run time; a DMA to
``cache.at[kv, head, block, offset]`` is the TPU's scatter. The cache is aliased input-to-output,
so the write is in place and the rest of the cache is never touched.

Tokens are processed ``tile_tokens`` per grid step: their keys and values come into VMEM through
ordinary blocked inputs (laid out ``[num_kv_heads, tokens, head_size]`` so each row is one
``[1, head_size]`` DMA source), then every row with a non-negative slot is sent, and all sends are
awaited before the step ends. Negative slots (padding) are skipped, as the contract says.
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
    k = key.astype(kv_cache.dtype).transpose(1, 0, 2)
    v = value.astype(kv_cache.dtype).transpose(1, 0, 2)
    kernel = functools.partial(
        _kernel, tile_tokens=tile_tokens, block_size=block_size, num_kv_heads=num_kv_heads
    )
    block = pl.BlockSpec((num_kv_heads, tile_tokens, head_size), lambda t, *_: (0, t, 0))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(num_tiles,),
        in_specs=[block, block, pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=pl.BlockSpec(memory_space=pl.ANY),
        scratch_shapes=[pltpu.SemaphoreType.DMA((1,))],
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
