"""The CPU kernels as ``torch.library`` custom ops (``heron_cpu::write_kv``, ``::paged_attention``).

Registering them as custom ops lets ``torch.compile`` and graph tracing treat each kernel as one
opaque node. The C++ side sees only raw pointers, sizes and strides (it checks the integer
metadata it indexes with: slots, block tables, sequence bounds), so every tensor is checked here
and a mistake names the argument instead of crashing the process.

KV cache layout: ``[2, num_blocks, num_kv_heads, head_size, block_size]``, contiguous: one dense
tile per (block, KV head). Key tiles are transposed, ``[head_size, block_size]`` as the shape says,
so the kernel scores 16 keys per vector instruction (see csrc/kernels.cpp); value tiles hold the
same number of elements read row-major as ``[block_size, head_size]``.
``CpuAttentionBackend.kv_views`` shows both as ``[num_blocks, block_size, num_kv_heads, head]``.

:func:`write_kv_eager` and :func:`paged_attention_eager` are the same checked calls without the
custom-op dispatch, which costs tens of microseconds per call (more than the kernels themselves
on a small decode step); the backend uses them outside of ``torch.compile`` tracing.
"""

from __future__ import annotations

import torch

from heron_cpu import _kernels
from heron_cpu._kernels import _C
from heron_cpu.launch import launch
from heron_cpu.platform import BLOCK_SIZES, HEAD_SIZES

DTYPE_CODES: dict[torch.dtype, int] = {torch.float32: 0, torch.bfloat16: 1}

__all__ = [
    "BLOCK_SIZES",
    "DTYPE_CODES",
    "HEAD_SIZES",
    "paged_attention",
    "paged_attention_eager",
    "write_kv",
    "write_kv_eager",
]


def _check_tensor(
    name: str,
    t: torch.Tensor,
    *,
    ndim: int,
    dtypes: tuple[torch.dtype, ...],
    contiguous: bool = False,
) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if not t.is_cpu:  # no torch.device object built, unlike t.device.type
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if not contiguous and t.numel() and (t.stride(-1) != 1 or min(t.stride()) < 0):
        raise ValueError(f"{name} must have a contiguous last dimension, got strides {t.stride()}")


def _check_cache(kv_cache: torch.Tensor, head_size: int) -> tuple[int, int, int]:
    """``(num_blocks, num_kv_heads, block_size)`` of a valid cache for heads of ``head_size``."""
    _check_tensor("kv_cache", kv_cache, ndim=5, dtypes=tuple(DTYPE_CODES), contiguous=True)
    two, num_blocks, num_kv_heads, cache_head_size, block_size = kv_cache.shape
    if two != 2:
        raise ValueError(
            "kv_cache must have shape [2, blocks, kv_heads, head_size, block_size], "
            f"got {tuple(kv_cache.shape)}"
        )
    if cache_head_size != head_size:
        raise ValueError(f"kv_cache has head size {cache_head_size}, the tokens {head_size}")
    if head_size not in HEAD_SIZES:
        raise ValueError(f"head size {head_size} is not one of {list(HEAD_SIZES)}")
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"kv_cache block size {block_size} is not one of {list(BLOCK_SIZES)}")
    return num_blocks, num_kv_heads, block_size


def _check_tokens(
    name: str, t: torch.Tensor, dtype: torch.dtype, heads: int | None, head_size: int
) -> None:
    _check_tensor(name, t, ndim=3, dtypes=(dtype,))
    if heads is not None and t.shape[1] != heads:
        raise ValueError(f"{name} must have {heads} heads, got shape {tuple(t.shape)}")
    if t.shape[2] != head_size:
        raise ValueError(f"{name} has head size {t.shape[2]}, expected {head_size}")


def write_kv_eager(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store ``key``/``value`` (``[tokens, kv_heads, head]``) at their slots; skip negative ones."""
    _check_tensor("key", key, ndim=3, dtypes=tuple(DTYPE_CODES))
    head_size = key.shape[2]
    num_blocks, num_kv_heads, block_size = _check_cache(kv_cache, head_size)
    _check_tokens("key", key, kv_cache.dtype, num_kv_heads, head_size)
    _check_tokens("value", value, kv_cache.dtype, num_kv_heads, head_size)
    _check_tensor("slot_mapping", slot_mapping, ndim=1, dtypes=(torch.int64,), contiguous=True)
    num_tokens = key.shape[0]
    if value.shape[0] != num_tokens or slot_mapping.shape[0] != num_tokens:
        raise ValueError(
            f"key, value and slot_mapping disagree on the token count: {num_tokens}, "
            f"{value.shape[0]}, {slot_mapping.shape[0]}"
        )
    if num_tokens == 0:
        return
    launch(
        _C.write_kv,
        key.data_ptr(),
        value.data_ptr(),
        *_halves(kv_cache),
        slot_mapping.data_ptr(),
        num_tokens,
        num_kv_heads,
        head_size,
        block_size,
        num_blocks,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        DTYPE_CODES[kv_cache.dtype],
        torch.get_num_threads(),
    )


def paged_attention_eager(
    out: torch.Tensor,
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    num_seqs: int,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
) -> None:
    """Causal attention of each sequence's query tokens over its cached context, into ``out``.

    The new tokens' keys and values must already be in ``kv_cache`` (see :func:`write_kv`).
    ``sliding_window`` limits the query at position ``p`` to positions ``> p - window`` (blocks
    wholly before a sequence's window are never read); ``logits_soft_cap`` caps scaled scores
    with ``cap * tanh(score / cap)`` (heron_interfaces 1.9).
    """
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1 or None, got {sliding_window}")
    if logits_soft_cap is not None and not logits_soft_cap > 0:
        raise ValueError(f"logits_soft_cap must be > 0 or None, got {logits_soft_cap}")
    _check_tensor("query", query, ndim=3, dtypes=tuple(DTYPE_CODES))
    head_size = query.shape[2]
    num_blocks, num_kv_heads, block_size = _check_cache(kv_cache, head_size)
    _check_tokens("query", query, kv_cache.dtype, None, head_size)
    _check_tokens("out", out, kv_cache.dtype, query.shape[1], head_size)
    if out.shape[0] != query.shape[0]:
        raise ValueError(f"out has {out.shape[0]} tokens, query has {query.shape[0]}")
    if query.shape[1] % num_kv_heads:
        raise ValueError(
            f"query heads {query.shape[1]} are not a multiple of kv heads {num_kv_heads}"
        )
    int32 = (torch.int32,)
    _check_tensor("query_start_loc", query_start_loc, ndim=1, dtypes=int32, contiguous=True)
    _check_tensor("seq_lens", seq_lens, ndim=1, dtypes=int32, contiguous=True)
    _check_tensor("block_tables", block_tables, ndim=2, dtypes=int32)
    if (
        not 0
        <= num_seqs
        <= min(seq_lens.shape[0], block_tables.shape[0], query_start_loc.shape[0] - 1)
    ):
        raise ValueError(
            f"num_seqs {num_seqs} exceeds the rows of seq_lens, block_tables or query_start_loc"
        )
    if num_seqs == 0 or query.shape[0] == 0:
        return
    launch(
        _C.paged_attention,
        out.data_ptr(),
        query.data_ptr(),
        *_halves(kv_cache),
        query_start_loc.data_ptr(),
        seq_lens.data_ptr(),
        block_tables.data_ptr(),
        num_seqs,
        query.shape[0],
        query.shape[1],
        num_kv_heads,
        head_size,
        block_size,
        num_blocks,
        block_tables.stride(0),
        block_tables.shape[1],
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        scale,
        sliding_window or 0,
        logits_soft_cap or 0.0,
        DTYPE_CODES[kv_cache.dtype],
        torch.get_num_threads(),
    )


def _halves(kv_cache: torch.Tensor) -> tuple[int, int]:
    """Addresses of the key and value halves (``kv_cache[i].data_ptr()`` without two views)."""
    start = kv_cache.data_ptr()
    return start, start + kv_cache.stride(0) * kv_cache.element_size()


write_kv = torch.library.custom_op(
    "heron_cpu::write_kv", mutates_args=("kv_cache",), device_types="cpu"
)(write_kv_eager)
paged_attention = torch.library.custom_op(
    "heron_cpu::paged_attention", mutates_args=("out",), device_types="cpu"
)(paged_attention_eager)


def isa() -> str:
    """The active kernel variant; re-exported so callers need only this module."""
    return _kernels.isa()
