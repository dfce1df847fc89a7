"""RMSNorm (optionally fused with the residual add) as a Pallas TPU kernel.

Rounding follows Hugging Face's Llama: statistics in float32, the normalised rows cast back to the
input dtype, then multiplied by the weight in that dtype. The fused form returns the sum
``x + residual`` too, as a decoder layer needs it for the next residual, so the sum is read once
from HBM instead of twice.

Rows are tiled ``tile_rows`` per grid step with the whole hidden dimension in one block (a norm
needs the full row); the weight is one ``[1, hidden]`` block that every step reuses.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu


def round_to(x32: jax.Array, dtype: Any) -> jax.Array:
    """``x32`` (float32) rounded to ``dtype``'s precision, kept in float32.

    Why not ``x.astype(bfloat16)``: with XLA's default excess precision, the CPU compiler (the
    interpreter's) keeps bfloat16 intermediates in float32 and drops the rounding that HF's torch
    code performs; integer bit arithmetic (round to nearest even) cannot be elided.
    """
    if jnp.dtype(dtype) == jnp.float32:
        return x32
    if jnp.dtype(dtype) != jnp.bfloat16:
        return x32.astype(dtype).astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(x32, jnp.uint32)
    bits = bits + (jnp.uint32(0x7FFF) + ((bits >> 16) & jnp.uint32(1)))
    return jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFF0000), jnp.float32)


def _normalise(x32: jax.Array, w: jax.Array, eps: float, dtype: Any) -> jax.Array:
    """HF's rounding points: float32 statistics, the normalised row rounded to ``dtype``, then
    the weight multiply (exact in float32 for 16-bit operands) rounded once on the store."""
    inv = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return w.astype(jnp.float32) * round_to(x32 * inv, dtype)


def _norm_kernel(x_ref: Any, w_ref: Any, o_ref: Any, *, eps: float) -> None:
    x32 = x_ref[...].astype(jnp.float32)
    o_ref[...] = _normalise(x32, w_ref[...], eps, x_ref.dtype).astype(o_ref.dtype)


def _add_norm_kernel(
    x_ref: Any, r_ref: Any, w_ref: Any, o_ref: Any, sum_ref: Any, *, eps: float
) -> None:
    dtype = x_ref.dtype
    summed = round_to(x_ref[...].astype(jnp.float32) + r_ref[...].astype(jnp.float32), dtype)
    sum_ref[...] = summed.astype(dtype)
    o_ref[...] = _normalise(summed, w_ref[...], eps, dtype).astype(o_ref.dtype)


def _tiles(rows: int, tile_rows: int) -> tuple[int, int]:
    tile = min(tile_rows, max(8, pl.next_power_of_2(rows)))
    return tile, pl.cdiv(rows, tile)


def rms_norm(
    x: jax.Array,
    weight: jax.Array,
    eps: float,
    residual: jax.Array | None = None,
    *,
    tile_rows: int = 64,
    interpret: Any = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """``rms_norm(x)``, or ``(rms_norm(x + residual), x + residual)`` when ``residual`` is given.

    ``x`` is ``[rows, hidden]``; rows are padded to a whole number of tiles and cut back after.
    """
    rows, hidden = x.shape
    tile, num_tiles = _tiles(rows, tile_rows)
    padded = tile * num_tiles
    out_dtype = jnp.result_type(weight.dtype, x.dtype)
    operands = [x] if residual is None else [x, residual]
    if padded != rows:
        operands = [jnp.pad(a, ((0, padded - rows), (0, 0))) for a in operands]
    row_block = pl.BlockSpec((tile, hidden), lambda i: (i, 0))
    w_block = pl.BlockSpec((1, hidden), lambda i: (0, 0))
    params = pltpu.CompilerParams(dimension_semantics=("parallel",))
    interp = interpret if interpret is not None else False
    w2 = weight.reshape(1, hidden)
    if residual is None:
        out = pl.pallas_call(
            functools.partial(_norm_kernel, eps=eps),
            grid=(num_tiles,),
            in_specs=[row_block, w_block],
            out_specs=row_block,
            out_shape=jax.ShapeDtypeStruct((padded, hidden), out_dtype),
            compiler_params=params,
            interpret=interp,
            name="heron_rms_norm",
        )(*operands, w2)
        return out[:rows]
    out, summed = pl.pallas_call(
        functools.partial(_add_norm_kernel, eps=eps),
        grid=(num_tiles,),
        in_specs=[row_block, row_block, w_block],
        out_specs=[row_block, row_block],
        out_shape=[
            jax.ShapeDtypeStruct((padded, hidden), out_dtype),
            jax.ShapeDtypeStruct((padded, hidden), x.dtype),
        ],
        compiler_params=params,
        interpret=interp,
        name="heron_add_rms_norm",
    )(*operands, w2)
    return out[:rows], summed[:rows]
