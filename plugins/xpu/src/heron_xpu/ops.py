"""torch custom ops around heron-xpu's Triton kernels (:mod:`heron_xpu.kernels`).

Each op is a ``torch.library.triton_op``: eager calls launch the kernel directly, and
``torch.compile`` sees the Triton kernels through ``wrap_triton`` instead of an opaque call, so it
can trace through them. Each op also has an explicit fake implementation: shape and dtype checks
plus the output metadata, without launching anything.

Ops that the attention contract defines as in place (``write_kv`` into the cache, attention into
the caller's ``out``) are mutating ops; the elementwise ops return new tensors, as
``heron_interfaces.kernel_ops.KernelOps`` does. The kernels take any device Triton compiles for
(``xpu`` on Intel GPUs) and, under the interpreter (``HERON_XPU_INTERPRET=1``), CPU tensors.
Everything that could go wrong with a tensor is checked here and reported as a ``ValueError`` that
names the argument, because a kernel reading a wrong stride fails silently.

The module deliberately avoids ``from __future__ import annotations``: ``triton_op`` infers each
op's schema from real annotation objects.
"""

import torch
import triton
from torch.library import triton_op, wrap_triton

from heron_xpu import kernels

NAMESPACE = "heron_xpu"
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_SIZE = 256
"""Largest head size the attention kernel takes: one head padded to a power of two is one tile."""

INTERPRETED: bool = kernels.INTERPRETING
"""True when the kernels were decorated under ``TRITON_INTERPRET=1`` and run on CPU tensors."""
TILE_ELEMENTS: int = 32768 if INTERPRETED else 4096
"""Elements one program of the elementwise kernels handles. On a device a few thousand keep a
program's values in registers; the interpreter runs programs one after another in Python, so it
gets fewer, larger ones (the same kernels, another launch configuration)."""
KV_TILE: int = 256 if INTERPRETED else 64
"""Cache positions per step of the attention kernel's inner loop (may span several blocks); larger
when interpreted, where each loop iteration costs milliseconds of Python."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        allowed = ", ".join(_dtype_name(d) for d in FLOAT_DTYPES)
        raise ValueError(f"{name} must have dtype {allowed}; got {_dtype_name(t.dtype)}")


def _check_same_dtype(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise ValueError(
            f"{name} has dtype {_dtype_name(t.dtype)} but must be {_dtype_name(dtype)}"
        )


def _check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    """Same device as the first tensor; a compiled kernel cannot read host memory."""
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other tensors are on {device}")
    if t.device.type == "cpu" and not INTERPRETED:
        raise ValueError(
            f"{name} is a CPU tensor, but the Triton kernels are compiled for a GPU; set "
            "HERON_XPU_INTERPRET=1 before importing heron_xpu to run them in Triton's interpreter"
        )


def _check_rows_contiguous(name: str, t: torch.Tensor) -> None:
    """The last dimension is contiguous (kernels index features as ``base + feature``)."""
    if t.dim() == 0 or (t.shape[-1] > 1 and t.stride(-1) != 1):
        raise ValueError(f"{name} must have a contiguous last dimension (strides {t.stride()})")


def _check_3d(name: str, t: torch.Tensor, heads: int, head_size: int) -> None:
    if t.dim() != 3 or t.shape[1] != heads or t.shape[2] != head_size:
        raise ValueError(
            f"{name} must be [tokens, {heads}, {head_size}]; got shape {tuple(t.shape)}"
        )
    _check_rows_contiguous(name, t)


def _check_index(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...], ndim: int) -> None:
    if t.dtype not in dtypes or t.dim() != ndim:
        allowed = "/".join(_dtype_name(d) for d in dtypes)
        raise ValueError(
            f"{name} must be a {ndim}-D {allowed} tensor; got {_dtype_name(t.dtype)} "
            f"of shape {tuple(t.shape)}"
        )
    if not t.is_contiguous() and not (ndim == 2 and t.stride(-1) == 1):
        raise ValueError(f"{name} must be contiguous (strides {t.stride()})")


def _check_cache(kv_cache: torch.Tensor) -> None:
    """``[2, num_blocks, block_size, num_kv_heads, head_size]``, contiguous, a float dtype."""
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2:
        raise ValueError(
            "kv_cache must be [2, num_blocks, block_size, num_kv_heads, head_size]; got shape "
            f"{tuple(kv_cache.shape)}"
        )
    if not kv_cache.is_contiguous():
        raise ValueError(f"kv_cache must be contiguous (strides {kv_cache.stride()})")
    _check_float("kv_cache", kv_cache)


def rows_per_program(rows: int, row_elements: int) -> int:
    """Rows (tokens) one program handles: a power of two, about :data:`TILE_ELEMENTS` elements."""
    return max(1, min(triton.next_power_of_2(max(rows, 1)), TILE_ELEMENTS // row_elements))


def attention_tiles(max_query_len: int, queries_per_kv: int) -> tuple[int, int]:
    """``(BLOCK_Q, BLOCK_M)``: query tokens per tile and the tile's rows (tokens x group heads).

    Decode-heavy steps (at most 16 rows of queries per sequence and KV head) get 16-row tiles, the
    smallest a device's ``tl.dot`` takes; longer prefill chunks 64-row tiles, so one K/V tile
    loaded from the cache serves more queries.
    """
    target = 16 if max_query_len * queries_per_kv <= 16 else 64
    block_q = max(1, target // queries_per_kv)
    return block_q, max(16, triton.next_power_of_2(block_q * queries_per_kv))


# -- KV cache write ------------------------------------------------------------------------------
def _check_write_kv(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    _check_cache(kv_cache)
    _, _, _, kv_heads, head_size = kv_cache.shape
    _check_3d("key", key, kv_heads, head_size)
    _check_3d("value", value, kv_heads, head_size)
    _check_same_dtype("key", key, kv_cache.dtype)
    _check_same_dtype("value", value, kv_cache.dtype)
    _check_index("slot_mapping", slot_mapping, (torch.int64, torch.int32), 1)
    if key.shape[0] != value.shape[0] or slot_mapping.shape[0] != key.shape[0]:
        raise ValueError(
            f"key ({key.shape[0]}), value ({value.shape[0]}) and slot_mapping "
            f"({slot_mapping.shape[0]}) must have one row per token"
        )
    for name, t in (("key", key), ("value", value), ("slot_mapping", slot_mapping)):
        _check_device(name, t, kv_cache.device)


@triton_op(f"{NAMESPACE}::write_kv", mutates_args=("kv_cache",))
def write_kv(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store token ``t``'s key and value at cache slot ``slot_mapping[t]`` (negative: skip)."""
    _check_write_kv(key, value, kv_cache, slot_mapping)
    num_tokens = key.shape[0]
    if num_tokens == 0:
        return
    _, num_blocks, block_size, kv_heads, head_size = kv_cache.shape
    key_cache, value_cache = kv_cache[0], kv_cache[1]
    head_pad = triton.next_power_of_2(head_size)
    features = triton.next_power_of_2(kv_heads) * head_pad
    tokens = rows_per_program(num_tokens, features)
    wrap_triton(kernels.write_kv_kernel)[(triton.cdiv(num_tokens, tokens),)](
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
        num_tokens,
        num_blocks * block_size,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        NUM_KV_HEADS=kv_heads,
        HEAD_SIZE=head_size,
        HEAD_PAD=head_pad,
        FEATURES_PAD=features,
        TOKENS=tokens,
        BLOCK_SIZE=block_size,
    )


@write_kv.register_fake
def _write_kv_fake(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    _check_write_kv(key, value, kv_cache, slot_mapping)


# -- paged attention -----------------------------------------------------------------------------
def _check_attention(
    out: torch.Tensor,
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
) -> None:
    _check_cache(kv_cache)
    _, _, _, kv_heads, head_size = kv_cache.shape
    if head_size > MAX_HEAD_SIZE:
        raise ValueError(f"head size {head_size} is larger than {MAX_HEAD_SIZE}")
    if query.dim() != 3 or query.shape[2] != head_size or query.shape[1] % kv_heads:
        raise ValueError(
            f"query must be [tokens, a multiple of {kv_heads} heads, {head_size}]; got shape "
            f"{tuple(query.shape)}"
        )
    _check_3d("query", query, query.shape[1], head_size)
    _check_3d("out", out, query.shape[1], head_size)
    if out.shape[0] != query.shape[0]:
        raise ValueError(f"out has {out.shape[0]} tokens but query has {query.shape[0]}")
    _check_same_dtype("query", query, kv_cache.dtype)
    _check_same_dtype("out", out, kv_cache.dtype)
    _check_index("query_start_loc", query_start_loc, (torch.int32,), 1)
    _check_index("seq_lens", seq_lens, (torch.int32,), 1)
    _check_index("block_tables", block_tables, (torch.int32,), 2)
    num_seqs = seq_lens.shape[0]
    if query_start_loc.shape[0] != num_seqs + 1 or block_tables.shape[0] < num_seqs:
        raise ValueError(
            f"{num_seqs} sequences need {num_seqs + 1} query_start_loc entries and as many block "
            f"table rows; got {query_start_loc.shape[0]} and {block_tables.shape[0]}"
        )
    for name, t in (
        ("out", out),
        ("query", query),
        ("query_start_loc", query_start_loc),
        ("seq_lens", seq_lens),
        ("block_tables", block_tables),
    ):
        _check_device(name, t, kv_cache.device)


@triton_op(f"{NAMESPACE}::paged_attention", mutates_args=("out",))
def paged_attention(
    out: torch.Tensor,
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_query_len: int,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
) -> None:
    """Causal paged attention of a flattened batch of prefill chunks and decodes, into ``out``;
    with ``causal`` false every query sees its sequence's whole context (encoder layers). With
    ``sliding_window`` the query at position ``p`` sees positions ``> p - window`` only;
    ``logits_soft_cap`` caps scaled scores with ``tanh`` (each value compiles its own kernel).

    Layouts are the attention contract's (``heron_interfaces.attention``); the cache is
    ``[2, num_blocks, block_size, num_kv_heads, head_size]``. ``max_query_len`` only sizes the
    grid, so it may be any bound on the longest query of the batch.
    """
    _check_attention(out, query, kv_cache, query_start_loc, seq_lens, block_tables)
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1 or None, got {sliding_window}")
    if logits_soft_cap is not None and not logits_soft_cap > 0:
        raise ValueError(f"logits_soft_cap must be > 0 or None, got {logits_soft_cap}")
    num_seqs = seq_lens.shape[0]
    if num_seqs == 0 or query.shape[0] == 0:
        return
    _, _, block_size, kv_heads, head_size = kv_cache.shape
    queries_per_kv = query.shape[1] // kv_heads
    block_q, block_m = attention_tiles(max_query_len, queries_per_kv)
    key_cache, value_cache = kv_cache[0], kv_cache[1]
    grid = (num_seqs, triton.cdiv(max(max_query_len, 1), block_q), kv_heads)
    wrap_triton(kernels.paged_attention_kernel)[grid](
        out,
        query,
        key_cache,
        value_cache,
        block_tables,
        seq_lens,
        query_start_loc,
        scale,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        block_tables.stride(0),
        QUERIES_PER_KV=queries_per_kv,
        HEAD_SIZE=head_size,
        HEAD_PAD=max(16, triton.next_power_of_2(head_size)),
        KV_BLOCK_SIZE=block_size,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        TILE_N=KV_TILE,
        EMULATE_BF16=INTERPRETED,
        CAUSAL=causal,
        WINDOW=int(sliding_window or 0),
        SOFT_CAP=float(logits_soft_cap or 0.0),
    )


@paged_attention.register_fake
def _paged_attention_fake(
    out: torch.Tensor,
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_query_len: int,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
) -> None:
    _check_attention(out, query, kv_cache, query_start_loc, seq_lens, block_tables)


# -- RMSNorm -------------------------------------------------------------------------------------
def _norm_rows(name: str, t: torch.Tensor) -> tuple[int, int, int, int]:
    """``(rows, inner_rows, outer_stride, inner_stride)`` of ``t`` seen as rows of its last dim.

    2-D tensors with contiguous rows and 3-D views whose two leading dimensions are strided (per
    head slices of a fused projection) are read in place; other layouts must be contiguous.
    """
    _check_rows_contiguous(name, t)
    if t.dim() == 1:
        return 1, 1, t.shape[0], 0
    if t.dim() == 2:
        return t.shape[0], 1, t.stride(0), 0
    if t.dim() == 3:
        return t.shape[0] * t.shape[1], t.shape[1], t.stride(0), t.stride(1)
    if not t.is_contiguous():
        raise ValueError(f"{name} of {t.dim()} dimensions must be contiguous")
    return t.numel() // t.shape[-1], 1, t.shape[-1], 0


def _check_norm(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> None:
    _check_float("x", x)
    _check_same_dtype("weight", weight, x.dtype)
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1] or not weight.is_contiguous():
        raise ValueError(
            f"weight must be a contiguous [{x.shape[-1]}]; got shape {tuple(weight.shape)}"
        )
    _check_device("weight", weight, x.device)
    _check_device("x", x, x.device)
    _norm_rows("x", x)
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual {tuple(residual.shape)} must match x {tuple(x.shape)}")
        _check_same_dtype("residual", residual, x.dtype)
        _check_device("residual", residual, x.device)
        _norm_rows("residual", residual)


def _launch_norm(
    out: torch.Tensor,
    summed: torch.Tensor,
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    add_residual: bool,
) -> None:
    rows, inner, x_outer, x_inner = _norm_rows("x", x)
    _, _, r_outer, r_inner = _norm_rows("residual", residual)
    if rows == 0:
        return
    hidden = x.shape[-1]
    block = triton.next_power_of_2(hidden)
    rows_each = rows_per_program(rows, block)
    wrap_triton(kernels.rms_norm_kernel)[(triton.cdiv(rows, rows_each),)](
        out,
        summed,
        x,
        residual,
        weight,
        eps,
        rows,
        inner,
        x_outer,
        x_inner,
        r_outer,
        r_inner,
        hidden,
        HIDDEN=hidden,
        BLOCK=block,
        ROWS=rows_each,
        ADD_RESIDUAL=add_residual,
        EMULATE_BF16=INTERPRETED,
    )


@triton_op(f"{NAMESPACE}::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / rms(x)`` over the last dimension, into a new contiguous tensor."""
    _check_norm(x, weight, None)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch_norm(out, out, x, x, weight, eps, add_residual=False)
    return out


@rms_norm.register_fake
def _rms_norm_fake(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    _check_norm(x, weight, None)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@triton_op(f"{NAMESPACE}::add_rms_norm", mutates_args=())
def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)`` in one pass over the rows."""
    _check_norm(x, weight, residual)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    summed = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch_norm(out, summed, x, residual, weight, eps, add_residual=True)
    return out, summed


@add_rms_norm.register_fake
def _add_rms_norm_fake(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_norm(x, weight, residual)
    return (
        torch.empty(x.shape, dtype=x.dtype, device=x.device),
        torch.empty(x.shape, dtype=x.dtype, device=x.device),
    )


# -- SiLU and multiply ---------------------------------------------------------------------------
def _check_silu(x: torch.Tensor) -> tuple[int, int]:
    """``(rows, row stride)`` of ``x = [gate | up]``."""
    _check_float("x", x)
    _check_device("x", x, x.device)
    if x.dim() == 0 or x.shape[-1] % 2:
        raise ValueError(f"x must have an even last dimension; got shape {tuple(x.shape)}")
    if x.dim() == 2 and (x.stride(1) == 1 or x.shape[1] <= 1):
        return x.shape[0], x.stride(0)
    if x.is_contiguous():
        return x.numel() // x.shape[-1] if x.shape[-1] else 0, x.shape[-1]
    raise ValueError(f"x must be contiguous or 2-D with contiguous rows (strides {x.stride()})")


@triton_op(f"{NAMESPACE}::silu_and_mul", mutates_args=())
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``x = [gate | up]`` along the last dimension."""
    rows, stride = _check_silu(x)
    width = x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], width), dtype=x.dtype, device=x.device)
    if rows == 0 or width == 0:
        return out
    block = min(TILE_ELEMENTS, triton.next_power_of_2(width))
    rows_each = rows_per_program(rows, block)
    wrap_triton(kernels.silu_and_mul_kernel)[
        (triton.cdiv(rows, rows_each), triton.cdiv(width, block))
    ](out, x, rows, width, stride, width, BLOCK=block, ROWS=rows_each, EMULATE_BF16=INTERPRETED)
    return out


@silu_and_mul.register_fake
def _silu_and_mul_fake(x: torch.Tensor) -> torch.Tensor:
    _check_silu(x)
    return torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=x.dtype, device=x.device)


# -- rotary embedding ----------------------------------------------------------------------------
def _check_rotary(
    positions: torch.Tensor, heads: torch.Tensor, cos_sin_cache: torch.Tensor
) -> None:
    _check_float("heads", heads)
    if heads.dim() != 3:
        raise ValueError(f"heads must be [tokens, heads, head_size]; got {tuple(heads.shape)}")
    _check_rows_contiguous("heads", heads)
    _check_index("positions", positions, (torch.int64, torch.int32), 1)
    if positions.shape[0] != heads.shape[0]:
        raise ValueError(f"{positions.shape[0]} positions for {heads.shape[0]} tokens")
    _check_same_dtype("cos_sin_cache", cos_sin_cache, heads.dtype)
    if (
        cos_sin_cache.dim() != 2
        or cos_sin_cache.shape[1] % 2
        or not 0 < cos_sin_cache.shape[1] <= heads.shape[2]
        or cos_sin_cache.stride(1) != 1
    ):
        raise ValueError(
            "cos_sin_cache must be [max_position, rotary_dim] with contiguous rows, an even "
            f"rotary_dim of at most head_size {heads.shape[2]}; got {tuple(cos_sin_cache.shape)}"
        )
    for name, t in (("heads", heads), ("positions", positions), ("cos_sin_cache", cos_sin_cache)):
        _check_device(name, t, heads.device)


@triton_op(f"{NAMESPACE}::rotary", mutates_args=())
def rotary(
    positions: torch.Tensor, heads: torch.Tensor, cos_sin_cache: torch.Tensor
) -> torch.Tensor:
    """GPT-NeoX rotation of ``heads`` by ``positions``, into a new contiguous tensor."""
    _check_rotary(positions, heads, cos_sin_cache)
    tokens, num_heads, head_size = heads.shape
    out = torch.empty((tokens, num_heads, head_size), dtype=heads.dtype, device=heads.device)
    if tokens == 0 or num_heads == 0:
        return out
    half = cos_sin_cache.shape[1] // 2
    heads_pad = triton.next_power_of_2(num_heads)
    half_pad = triton.next_power_of_2(half)
    tokens_each = rows_per_program(tokens, heads_pad * half_pad)
    rest = head_size - 2 * half
    wrap_triton(kernels.rotary_kernel)[(triton.cdiv(tokens, tokens_each),)](
        out,
        heads,
        positions,
        cos_sin_cache,
        tokens,
        num_heads,
        heads.stride(0),
        heads.stride(1),
        cos_sin_cache.stride(0),
        HEAD_SIZE=head_size,
        HALF_ROTARY=half,
        HEADS_PAD=heads_pad,
        TOKENS=tokens_each,
        HALF_PAD=half_pad,
        REST_PAD=triton.next_power_of_2(rest) if rest else 0,
        EMULATE_BF16=INTERPRETED,
    )
    return out


@rotary.register_fake
def _rotary_fake(
    positions: torch.Tensor, heads: torch.Tensor, cos_sin_cache: torch.Tensor
) -> torch.Tensor:
    _check_rotary(positions, heads, cos_sin_cache)
    return torch.empty(tuple(heads.shape), dtype=heads.dtype, device=heads.device)
