"""Bidirectional attention of whole prompts, read in place from a fused q/k/v projection.

An encoder (BERT, all-MiniLM) computes each prompt whole in one step and pools it at once, so its
keys and values are never read again: the paged KV cache is pure cost. :func:`encoder_attention`
runs the compiled kernel of ``csrc/encoder_attention.cpp`` straight over the projection's output
``[tokens, 3 * heads * head_size]`` (q, then k, then v; rows may be strided), each prompt at its
own length (no padding), softmax in fp32, OpenMP over (prompt, head). bfloat16 inputs with
``head_size % 32 == 0`` run both products on AMX-BF16 tiles where the CPU and OS allow them (the
probabilities rounded once to bfloat16 for P.V); otherwise AVX-512 fp32 loops where the CPU has
them and ``head_size % 16 == 0``; a portable loop elsewhere (and under ``HERON_CPU_ISA=portable``).
At head size 32 torch's SDPA is slow on the CPU (see the file).

:func:`encoder_attention_eager` is the checked call; ``heron_cpu::encoder_attention`` the same as
a ``torch.library`` custom op, for ``torch.compile``.
"""

from __future__ import annotations

import torch

from heron_cpu import _kernels
from heron_cpu._kernels import _C

__all__ = ["PATHS", "encoder_attention", "encoder_attention_eager", "kernel_paths", "mean_pool"]

PATHS: dict[str, int] = {"auto": 0, "avx512": 1, "portable": 2, "amx": 3}
"""Loop selectors for ``path=``: ``amx`` falls back as ``auto`` does where it cannot run (float32,
head sizes not a multiple of 32, no AMX), ``avx512`` to ``portable`` where the CPU (or the head
size) does not allow it; the call returns the name of the loop that ran."""
_NAMES = {1: "avx512", 2: "portable", 3: "amx"}
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


def kernel_paths() -> list[str]:
    """The loops this CPU runs (for tests and benchmarks)."""
    paths = ["avx512", "portable"] if _C.encoder_attention_avx512() else ["portable"]
    return (["amx"] if _C.encoder_attention_amx() else []) + paths


def encoder_attention_eager(
    out: torch.Tensor,
    qkv: torch.Tensor,
    query_start_loc: torch.Tensor,
    num_heads: int,
    head_size: int,
    scale: float,
    path: str = "auto",
) -> str:
    """``out[t]`` = softmax(q_t K_S^T * scale) V_S over the tokens S of t's own prompt.

    ``qkv`` ``[tokens, >= 3 * num_heads * head_size]`` float32 or bfloat16 with a contiguous last
    dimension (q in columns ``[0, w)``, k in ``[w, 2w)``, v in ``[2w, 3w)``, ``w = num_heads *
    head_size``); ``query_start_loc`` int32 ``[num_seqs + 1]`` contiguous on the CPU (prompt ``s``
    is rows ``[qsl[s], qsl[s + 1])``); ``out`` ``[tokens, w]`` of ``qkv``'s dtype with a contiguous
    last dimension. Rows outside every prompt are left as they were. Returns the loop that ran.
    """
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be an int >= 1, got {num_heads!r}")
    if not isinstance(head_size, int) or head_size < 1:
        raise ValueError(f"head_size must be an int >= 1, got {head_size!r}")
    if path not in PATHS:
        raise ValueError(f"path must be one of {sorted(PATHS)}, got {path!r}")
    width = num_heads * head_size
    _check_rows("qkv", qkv, None, 3 * width)
    _check_rows("out", out, qkv.dtype, width)
    if out.shape[0] != qkv.shape[0]:
        raise ValueError(f"out has {out.shape[0]} rows, qkv has {qkv.shape[0]}")
    if (
        not isinstance(query_start_loc, torch.Tensor)
        or query_start_loc.dtype != torch.int32
        or not query_start_loc.is_cpu
        or query_start_loc.ndim != 1
        or query_start_loc.shape[0] < 1
        or not query_start_loc.is_contiguous()
    ):
        raise ValueError(
            "query_start_loc must be a contiguous 1-D int32 CPU tensor of num_seqs + 1 entries"
        )
    code = PATHS[path]
    if code == 0 and _kernels.isa() == "portable":
        code = PATHS["portable"]  # HERON_CPU_ISA=portable: measure or debug the portable loops
    ran = 2
    if qkv.shape[0]:
        ran = _C.encoder_attention(
            out.data_ptr(),
            qkv.data_ptr(),
            query_start_loc.data_ptr(),
            qkv.shape[0],
            query_start_loc.shape[0] - 1,
            num_heads,
            head_size,
            qkv.stride(0),
            width,
            2 * width,
            out.stride(0),
            float(scale),
            _DTYPES[qkv.dtype],
            torch.get_num_threads(),
            code,
        )
    return _NAMES[ran]


def mean_pool(hidden: torch.Tensor, query_start_loc: torch.Tensor) -> torch.Tensor | None:
    """``KernelOps.mean_pool`` (API 1.15) by the compiled loop: float32 sums straight from the
    rows (AVX-512 where the CPU has it), or None for inputs it does not take (another dtype or
    device, a strided last dimension, a ``query_start_loc`` that is not int32 on the CPU)."""
    if (
        not hidden.is_cpu
        or hidden.dtype not in _DTYPES
        or hidden.ndim != 2
        or (hidden.shape[0] > 1 and hidden.stride(0) < hidden.shape[1])
        or (hidden.shape[1] > 1 and hidden.stride(1) != 1)
        or query_start_loc.dtype != torch.int32
        or not query_start_loc.is_cpu
        or query_start_loc.ndim != 1
        or query_start_loc.shape[0] < 1
        or not query_start_loc.is_contiguous()
    ):
        return None
    num_seqs = query_start_loc.shape[0] - 1
    out = torch.empty((num_seqs, hidden.shape[1]), dtype=torch.float32)
    if num_seqs and hidden.shape[1]:
        _C.mean_pool(
            out.data_ptr(),
            hidden.data_ptr(),
            query_start_loc.data_ptr(),
            hidden.shape[0],
            num_seqs,
            hidden.shape[1],
            hidden.stride(0) if hidden.shape[0] > 1 else hidden.shape[1],
            _DTYPES[hidden.dtype],
            torch.get_num_threads(),
            _kernels.isa() == "portable",
        )
    return out


def _check_rows(name: str, t: torch.Tensor, dtype: torch.dtype | None, min_cols: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if not t.is_cpu:
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")
    if t.dtype not in _DTYPES:
        raise ValueError(f"{name} must be float32 or bfloat16, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} must have qkv's dtype {dtype}, got {t.dtype}")
    if t.ndim != 2 or t.shape[1] < min_cols:
        raise ValueError(f"{name} must be [tokens, >= {min_cols}], got shape {tuple(t.shape)}")
    if t.shape[0] and (t.stride(1) != 1 or (t.shape[0] > 1 and t.stride(0) < min_cols)):
        raise ValueError(
            f"{name} must have a contiguous last dimension and non-overlapping rows, got strides "
            f"{t.stride()}"
        )


def _encoder_attention_op(
    out: torch.Tensor,
    qkv: torch.Tensor,
    query_start_loc: torch.Tensor,
    num_heads: int,
    head_size: int,
    scale: float,
) -> None:
    encoder_attention_eager(out, qkv, query_start_loc, num_heads, head_size, scale)


def encoder_attention(
    qkv: torch.Tensor,
    query_start_loc: torch.Tensor,
    num_heads: int,
    head_size: int,
    scale: float,
) -> torch.Tensor:
    """:func:`encoder_attention_eager` into a new ``[tokens, num_heads * head_size]`` tensor
    (rows outside every prompt are left uninitialised)."""
    out = qkv.new_empty((qkv.shape[0], num_heads * head_size))
    encoder_attention_eager(out, qkv, query_start_loc, num_heads, head_size, scale)
    return out


encoder_attention_op = torch.library.custom_op(
    "heron_cpu::encoder_attention", mutates_args=("out",), device_types="cpu"
)(_encoder_attention_op)
