"""torch custom ops around the compiled GPU kernels of this package (``_C``).

The kernels take raw device addresses, so everything that could go wrong with a tensor is checked
here first, and reported as a ``ValueError`` that names the argument: device, dtype, layout and
shape. Each kernel is an out-variant (the caller allocates what it writes) launched on torch's
current stream of the tensors' device, so the ops compose with streams, ``torch.compile`` (through
``torch.library.custom_op``) and graph capture.

This file is shared verbatim by heron_cuda and heron_rocm (plugins/rocm's CMake installs it); the op
namespace is the package name, so the two register ``heron_cuda::*`` and ``heron_rocm::*``.
ROCm builds of torch expose HIP devices as ``"cuda"``, which is why both use that device type.

The module deliberately avoids ``from __future__ import annotations``: ``custom_op`` infers each
op's schema from real annotation objects.
"""

import math

import torch

from . import _C

_NAMESPACE: str = __package__ or "heron_cuda"

HEAD_SIZES: tuple[int, ...] = tuple(_C.HEAD_SIZES)
"""Head sizes the attention kernels were compiled for."""
BLOCK_SIZES: tuple[int, ...] = (16, 32)
"""KV block sizes the attention backend advertises (and the tests cover)."""
PARTITION_SIZE: int = int(_C.PARTITION_SIZE)
"""Context positions per block of the decode kernel; longer contexts are split and merged."""
ATTENTION_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)
ELEMENTWISE_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)

_DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: int(_C.DTYPE_FLOAT32),
    torch.float16: int(_C.DTYPE_FLOAT16),
    torch.bfloat16: int(_C.DTYPE_BFLOAT16),
}


def _check_device(name: str, t: torch.Tensor, device: torch.device | None = None) -> None:
    if t.device.type != "cuda":
        raise ValueError(f"{name} must be a GPU ('cuda') tensor, got a tensor on {t.device}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other tensors are on {device}")


def _check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise ValueError(
            f"{name} must have dtype {names}; got {str(t.dtype).removeprefix('torch.')}"
        )


def _check_same_dtype(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise ValueError(f"{name} has dtype {t.dtype} but must match {dtype}")


def _check_ndim(name: str, t: torch.Tensor, ndim: int, layout: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {layout}; got shape {tuple(t.shape)}")


def _check_contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (strides {t.stride()})")


def _token_stride(name: str, t: torch.Tensor) -> int:
    """Stride between tokens of a ``[tokens, heads, head_size]`` or ``[tokens, features]`` tensor.

    Only the token dimension may be strided (a slice of a fused QKV projection); the features of
    one token must be contiguous because the kernels index them as ``token * stride + feature``.
    """
    if t.dim() == 3:
        if t.stride(2) != 1 or (t.shape[1] > 1 and t.stride(1) != t.shape[2]):
            raise ValueError(
                f"{name} must have contiguous heads and features per token (strides {t.stride()})"
            )
    elif t.dim() == 2:
        if t.stride(1) != 1 and t.shape[1] > 1:
            raise ValueError(
                f"{name} must have contiguous features per token (strides {t.stride()})"
            )
    else:
        raise ValueError(f"{name} must be 2-D or 3-D (tokens first); got shape {tuple(t.shape)}")
    return t.stride(0)


def _rows(name: str, t: torch.Tensor) -> tuple[int, int]:
    """(number of rows, row stride) of a tensor seen as ``[rows, last_dim]``."""
    if t.dim() == 2 and (t.stride(1) == 1 or t.shape[1] <= 1):
        return t.shape[0], t.stride(0)
    if t.dim() >= 1 and t.is_contiguous():
        last = t.shape[-1]
        return (t.numel() // last if last else 0), last
    raise ValueError(
        f"{name} must be contiguous, or 2-D with contiguous rows (shape {tuple(t.shape)}, "
        f"strides {t.stride()})"
    )


def _launch_context(t: torch.Tensor) -> tuple[int, int]:
    """Device ordinal and torch's current stream on it, as the integers the kernels take."""
    device = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return device, torch.cuda.current_stream(t.device).cuda_stream


@torch.library.custom_op(f"{_NAMESPACE}::write_kv", mutates_args=("kv_cache",), device_types="cuda")
def write_kv(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store token ``t``'s key and value at ``slot_mapping[t]`` (negative: skip).

    ``kv_cache`` is ``[2, num_blocks, num_kv_heads, block_size, head_size]``; ``key`` and
    ``value`` are ``[num_tokens, num_kv_heads, head_size]``. Slots past the cache are skipped by
    the kernel (it cannot raise without a device sync).
    """
    _check_device("kv_cache", kv_cache)
    device = kv_cache.device
    _check_ndim("kv_cache", kv_cache, 5, "[2, num_blocks, num_kv_heads, block_size, head_size]")
    if kv_cache.shape[0] != 2:
        raise ValueError(
            f"kv_cache must have 2 (key, value) planes; got shape {tuple(kv_cache.shape)}"
        )
    _check_contiguous("kv_cache", kv_cache)
    _check_dtype("kv_cache", kv_cache, ELEMENTWISE_DTYPES)
    _, num_blocks, num_kv_heads, block_size, head_size = kv_cache.shape
    for name, t in (("key", key), ("value", value)):
        _check_device(name, t, device)
        _check_same_dtype(name, t, kv_cache.dtype)
        _check_ndim(name, t, 3, "[num_tokens, num_kv_heads, head_size]")
        if tuple(t.shape[1:]) != (num_kv_heads, head_size):
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}; expected [num_tokens, {num_kv_heads}, "
                f"{head_size}] to match kv_cache"
            )
    if value.shape[0] != key.shape[0]:
        raise ValueError(f"value has {value.shape[0]} tokens but key has {key.shape[0]}")
    _check_device("slot_mapping", slot_mapping, device)
    _check_dtype("slot_mapping", slot_mapping, (torch.int64,))
    _check_ndim("slot_mapping", slot_mapping, 1, "[num_tokens]")
    _check_contiguous("slot_mapping", slot_mapping)
    if slot_mapping.shape[0] != key.shape[0]:
        raise ValueError(
            f"slot_mapping has {slot_mapping.shape[0]} entries but key has {key.shape[0]} tokens"
        )
    key_stride = _token_stride("key", key)
    value_stride = _token_stride("value", value)
    dev, stream = _launch_context(kv_cache)
    plane = num_blocks * num_kv_heads * block_size * head_size * kv_cache.element_size()
    _C.write_kv(
        key.data_ptr(),
        key_stride,
        value.data_ptr(),
        value_stride,
        kv_cache.data_ptr(),
        kv_cache.data_ptr() + plane,
        slot_mapping.data_ptr(),
        key.shape[0],
        num_kv_heads,
        head_size,
        block_size,
        num_blocks,
        _DTYPE_CODES[kv_cache.dtype],
        dev,
        stream,
    )


@torch.library.custom_op(
    f"{_NAMESPACE}::paged_attention", mutates_args=("out",), device_types="cuda"
)
def paged_attention(
    out: torch.Tensor,
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_query_len: int,
    max_seq_len: int,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
) -> None:
    """Causal paged attention of a mixed prefill/decode batch, written into ``out``; with
    ``causal=False`` (encoder layers) every query sees its sequence's whole context. With
    ``sliding_window`` the query at position ``p`` sees positions ``> p - window`` only (blocks
    wholly before it are never read); ``logits_soft_cap`` caps scaled scores with ``tanh``.

    Conventions are those of :mod:`heron_interfaces.attention`; ``kv_cache`` is laid out as
    ``[2, num_blocks, num_kv_heads, block_size, head_size]`` and already holds every context
    position, including the batch's own tokens. ``max_seq_len`` must bound every ``seq_lens``
    entry: it sizes the decode kernel's partition grid.
    """
    _check_device("query", query)
    device = query.device
    _check_dtype("query", query, ATTENTION_DTYPES)
    _check_ndim("query", query, 3, "[num_tokens, num_heads, head_size]")
    num_tokens, num_heads, head_size = query.shape
    _check_device("out", out, device)
    _check_same_dtype("out", out, query.dtype)
    if out.shape != query.shape:
        raise ValueError(f"out has shape {tuple(out.shape)} but query has {tuple(query.shape)}")
    if head_size not in HEAD_SIZES:
        raise ValueError(f"query head size {head_size} is not one of {list(HEAD_SIZES)}")

    _check_device("kv_cache", kv_cache, device)
    _check_same_dtype("kv_cache", kv_cache, query.dtype)
    _check_ndim("kv_cache", kv_cache, 5, "[2, num_blocks, num_kv_heads, block_size, head_size]")
    _check_contiguous("kv_cache", kv_cache)
    _, num_blocks, num_kv_heads, block_size, cache_head_size = kv_cache.shape
    if kv_cache.shape[0] != 2 or cache_head_size != head_size:
        raise ValueError(
            f"kv_cache has shape {tuple(kv_cache.shape)}; expected [2, num_blocks, num_kv_heads, "
            f"block_size, {head_size}]"
        )
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(
            f"query has {num_heads} heads, not a multiple of kv_cache's {num_kv_heads} KV heads"
        )
    if block_size <= 0:
        raise ValueError("kv_cache block_size must be positive")

    for name, t, ndim in (
        ("query_start_loc", query_start_loc, 1),
        ("seq_lens", seq_lens, 1),
        ("block_tables", block_tables, 2),
    ):
        _check_device(name, t, device)
        _check_dtype(name, t, (torch.int32,))
        _check_ndim(name, t, ndim, f"{ndim}-D int32")
    _check_contiguous("query_start_loc", query_start_loc)
    _check_contiguous("seq_lens", seq_lens)
    num_seqs = seq_lens.shape[0]
    if query_start_loc.shape[0] != num_seqs + 1:
        raise ValueError(
            f"query_start_loc has {query_start_loc.shape[0]} entries; expected num_seqs + 1 = "
            f"{num_seqs + 1}"
        )
    if block_tables.shape[0] < num_seqs:
        raise ValueError(f"block_tables has {block_tables.shape[0]} rows for {num_seqs} sequences")
    if block_tables.shape[1] > 1 and block_tables.stride(1) != 1:
        raise ValueError(f"block_tables rows must be contiguous (strides {block_tables.stride()})")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1 or None, got {sliding_window}")
    if logits_soft_cap is not None and not logits_soft_cap > 0:
        raise ValueError(f"logits_soft_cap must be > 0 or None, got {logits_soft_cap}")
    if max_query_len < 0 or max_seq_len < 0:
        raise ValueError("max_query_len and max_seq_len must be non-negative")
    if max_seq_len > block_tables.shape[1] * block_size:
        raise ValueError(
            f"max_seq_len {max_seq_len} exceeds what block_tables can address "
            f"({block_tables.shape[1]} blocks of {block_size})"
        )
    out_stride = _token_stride("out", out)
    query_stride = _token_stride("query", query)
    if num_seqs == 0 or num_tokens == 0:
        return

    partitions = max(1, math.ceil(max_seq_len / PARTITION_SIZE))
    if partitions > 1:
        tmp_out = torch.empty(
            (num_seqs, num_heads, partitions, head_size), dtype=torch.float32, device=device
        )
        stats = torch.empty(
            (2, num_seqs, num_heads, partitions), dtype=torch.float32, device=device
        )
        workspace = (tmp_out.data_ptr(), stats[0].data_ptr(), stats[1].data_ptr())
    else:
        workspace = (0, 0, 0)
    plane = num_blocks * num_kv_heads * block_size * head_size * kv_cache.element_size()
    dev, stream = _launch_context(query)
    _C.paged_attention(
        out.data_ptr(),
        out_stride,
        query.data_ptr(),
        query_stride,
        kv_cache.data_ptr(),
        kv_cache.data_ptr() + plane,
        query_start_loc.data_ptr(),
        seq_lens.data_ptr(),
        block_tables.data_ptr(),
        block_tables.stride(0),
        num_seqs,
        num_heads,
        num_kv_heads,
        head_size,
        block_size,
        float(scale),
        max_query_len,
        partitions,
        *workspace,
        _DTYPE_CODES[query.dtype],
        dev,
        stream,
        int(causal),
        sliding_window or 0,
        float(logits_soft_cap or 0.0),
    )


@torch.library.custom_op(f"{_NAMESPACE}::rms_norm", mutates_args=("out",), device_types="cuda")
def rms_norm(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """``out = x / sqrt(mean(x**2, -1) + eps) * weight`` over the last dimension.

    Statistics in float32; the normalised row is rounded to ``x``'s dtype before the weight
    multiply, as Hugging Face's RMSNorm does, so results match its eager version bit for bit in
    nearly every element.
    """
    _check_device("x", x)
    _check_dtype("x", x, ELEMENTWISE_DTYPES)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    hidden = x.shape[-1]
    for name, t in (("out", out), ("weight", weight)):
        _check_device(name, t, x.device)
        _check_same_dtype(name, t, x.dtype)
    if out.shape != x.shape:
        raise ValueError(f"out has shape {tuple(out.shape)} but x has {tuple(x.shape)}")
    if weight.shape != (hidden,):
        raise ValueError(f"weight must have shape ({hidden},); got {tuple(weight.shape)}")
    _check_contiguous("weight", weight)
    rows, x_stride = _rows("x", x)
    _, out_stride = _rows("out", out)
    if rows == 0 or hidden == 0:
        return
    dev, stream = _launch_context(x)
    _C.rms_norm(
        out.data_ptr(),
        out_stride,
        x.data_ptr(),
        x_stride,
        weight.data_ptr(),
        rows,
        hidden,
        float(eps),
        _DTYPE_CODES[x.dtype],
        dev,
        stream,
    )


@torch.library.custom_op(
    f"{_NAMESPACE}::rotary_embedding", mutates_args=("query", "key"), device_types="cuda"
)
def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    head_size: int,
) -> None:
    """Neox-style rotary embedding, in place on ``query`` and ``key``.

    ``query`` is ``[num_tokens, num_heads * head_size]`` or ``[num_tokens, num_heads, head_size]``
    (``key`` likewise with its KV heads); ``positions`` is int64 ``[num_tokens]``;
    ``cos_sin_cache`` is float32 ``[max_position, rot_dim]`` with the cosines in the first half of
    each row and the sines in the second. The first ``rot_dim`` features of every head rotate as
    two halves; the rest are untouched. Tokens whose position is outside the cache are skipped.
    Each product and each sum is rounded to ``query``'s dtype, as eager PyTorch rounds
    ``x1 * cos - x2 * sin``; a cache widened from the model dtype thus reproduces Hugging Face's
    rotation bit for bit.
    """
    _check_device("query", query)
    device = query.device
    _check_dtype("query", query, ELEMENTWISE_DTYPES)
    _check_device("key", key, device)
    _check_same_dtype("key", key, query.dtype)
    _check_device("positions", positions, device)
    _check_dtype("positions", positions, (torch.int64,))
    _check_ndim("positions", positions, 1, "[num_tokens]")
    _check_contiguous("positions", positions)
    _check_device("cos_sin_cache", cos_sin_cache, device)
    _check_dtype("cos_sin_cache", cos_sin_cache, (torch.float32,))
    _check_ndim("cos_sin_cache", cos_sin_cache, 2, "[max_position, rot_dim]")
    _check_contiguous("cos_sin_cache", cos_sin_cache)
    if head_size <= 0:
        raise ValueError(f"head_size must be positive; got {head_size}")
    rot_dim = cos_sin_cache.shape[1]
    if rot_dim % 2 or rot_dim > head_size or rot_dim == 0:
        raise ValueError(
            f"cos_sin_cache rows hold rot_dim={rot_dim} values; it must be even, positive and at "
            f"most head_size={head_size}"
        )
    num_tokens = positions.shape[0]
    heads: dict[str, int] = {}
    for name, t in (("query", query), ("key", key)):
        if t.shape[0] != num_tokens:
            raise ValueError(f"{name} has {t.shape[0]} tokens but positions has {num_tokens}")
        features = math.prod(t.shape[1:])
        if t.dim() == 3 and t.shape[2] != head_size:
            raise ValueError(f"{name} has head size {t.shape[2]}; expected {head_size}")
        if features % head_size:
            raise ValueError(
                f"{name} has {features} features per token, not a multiple of {head_size}"
            )
        heads[name] = features // head_size
    query_stride = _token_stride("query", query)
    key_stride = _token_stride("key", key)
    if num_tokens == 0:
        return
    dev, stream = _launch_context(query)
    _C.rotary_embedding(
        positions.data_ptr(),
        query.data_ptr(),
        query_stride,
        key.data_ptr(),
        key_stride,
        cos_sin_cache.data_ptr(),
        cos_sin_cache.shape[0],
        rot_dim,
        num_tokens,
        heads["query"],
        heads["key"],
        head_size,
        _DTYPE_CODES[query.dtype],
        dev,
        stream,
    )


@torch.library.custom_op(f"{_NAMESPACE}::silu_and_mul", mutates_args=("out",), device_types="cuda")
def silu_and_mul(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out = silu(x[..., :d]) * x[..., d:]`` where ``x`` has ``2 * d`` features (SwiGLU gate)."""
    _check_device("x", x)
    _check_dtype("x", x, ELEMENTWISE_DTYPES)
    if x.dim() == 0 or x.shape[-1] % 2:
        raise ValueError(f"x must end in an even dimension (2 * d); got shape {tuple(x.shape)}")
    d = x.shape[-1] // 2
    _check_device("out", out, x.device)
    _check_same_dtype("out", out, x.dtype)
    if tuple(out.shape) != (*x.shape[:-1], d):
        raise ValueError(f"out has shape {tuple(out.shape)}; expected {(*x.shape[:-1], d)}")
    rows, x_stride = _rows("x", x)
    _, out_stride = _rows("out", out)
    if rows == 0 or d == 0:
        return
    dev, stream = _launch_context(x)
    _C.silu_and_mul(
        out.data_ptr(),
        out_stride,
        x.data_ptr(),
        x_stride,
        rows,
        d,
        _DTYPE_CODES[x.dtype],
        dev,
        stream,
    )
