"""Small-batch bf16 linear layer for decode: ``out = x @ weight.T (+ bias)`` with few rows of ``x``.

At decode with 1-8 sequences a linear layer reads its whole weight for a few dot products each, so
its speed is the memory bandwidth it sustains; oneDNN reaches 13-24 GB/s of the ~30 GB/s that two
Sapphire Rapids cores stream, this module 24-32 GB/s at one row. :func:`linear_small` calls the compiled loops of ``csrc/gemv.cpp`` (AVX512-BF16 for up to
three rows, AMX tiles from four, a portable loop on other CPUs), which stream the weight in place:
no prepacking, any ``[N, K]`` contiguous bf16 weight.

It is called about 120 times per decode step, so it goes straight to ``_C`` (no custom-op
dispatch, unlike :mod:`heron_cpu.ops`) and checks its tensors with one combined condition; only a
failing call pays for finding and naming the bad argument.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from heron_cpu._kernels import _C
from heron_cpu.launch import launch

__all__ = [
    "MAX_ROWS",
    "PATHS",
    "available",
    "available_paths",
    "check_tensor",
    "kernel_paths",
    "linear_small",
    "operands_ok",
    "raise_invalid_operands",
]

MAX_ROWS = 8
"""The most rows of ``x`` for which :func:`linear_small` was measured to beat oneDNN's prepacked
bf16 linear on every SmolLM2-135M shape (``benchmarks/bench_gemv.py``: cold weights, 2 cores; at 8
rows the lm_head is within a few percent, at 16 oneDNN wins it). More rows stay correct, but a
GEMM that reuses each weight line across rows should win there."""

PATHS: dict[str, int] = {"auto": 0, "avx512_bf16": 1, "amx": 2, "portable": 3}
"""Loop selectors for ``linear_small(path=...)``; a path this CPU lacks falls back to a simpler one."""

_BF16 = torch.bfloat16


@functools.cache
def kernel_paths() -> dict[str, bool]:
    """Which compiled linear loops this CPU runs (``_C.gemv_paths``), asked once per process."""
    # The first call asks Linux for the AMX tile state, so it is not done at import.
    return dict(_C.gemv_paths())


def available() -> bool:
    """Whether the fast path (AVX512-BF16, plus AMX where present) runs on this CPU."""
    return kernel_paths()["avx512_bf16"]


def available_paths() -> list[str]:
    """The explicit paths this CPU runs, for tests and benchmarks."""
    return [name for name, ok in kernel_paths().items() if ok and name in PATHS]


def linear_small(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    *,
    path: str = "auto",
) -> torch.Tensor:
    """``x @ weight.T + bias`` in bfloat16, accumulated in fp32 and rounded to nearest even.

    ``x`` is ``[M, K]`` with a contiguous last dimension (rows may be strided, e.g. a slice of a
    fused projection's output), ``weight`` ``[N, K]`` contiguous, ``bias`` ``[N]`` or None, and
    ``out`` ``[M, N]`` contiguous (allocated when None; it must not overlap the inputs). All are
    bfloat16 CPU tensors. Fastest for ``M <= MAX_ROWS``; ``path`` is for tests and benchmarks.
    Runs on ``torch.get_num_threads()`` threads, without autograd.
    """
    try:
        n, k = weight.shape
        if out is None:
            out = x.new_empty(x.shape[0], n)  # like x, checked below; faster than torch.empty
        code = PATHS.get(path)
        valid = (
            weight.dtype is _BF16
            and weight.is_cpu
            and weight.is_contiguous()
            and code is not None
            and operands_ok(x, n, k, bias, out)
        )
    except (AttributeError, TypeError, ValueError):  # not tensors, or not 2-D
        valid = False
    if not valid:
        _raise_invalid(x, weight, bias, out, path)
    launch(
        _C.linear_bf16,
        out.data_ptr(),
        x.data_ptr(),
        weight.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        x.shape[0],
        n,
        k,
        x.stride(0),
        torch.get_num_threads(),
        code,
    )
    return out


def operands_ok(x: Any, n: int, k: int, bias: Any, out: Any) -> bool:
    """One combined check of x (``[M, k]``), bias (``[n]`` or None) and out (``[M, n]``).

    Both linear kernels run it before every call (shared with :mod:`heron_cpu.gemm`); it may
    raise AttributeError, TypeError or ValueError for non-tensors, which callers treat as False
    and then call :func:`raise_invalid_operands` to name the bad argument.
    """
    m, x_k = x.shape
    x_stride, x_step = x.stride()
    return (
        x.dtype is _BF16
        and out.dtype is _BF16
        and x.is_cpu
        and out.is_cpu
        and x_k == k
        and (x_step == 1 or k <= 1)
        and (x_stride >= k or m <= 1)
        and out.is_contiguous()
        and out.shape == (m, n)
        and (
            bias is None
            or (bias.dtype is _BF16 and bias.is_cpu and bias.shape == (n,) and bias.is_contiguous())
        )
    )


def check_tensor(name: str, t: object, ndim: int) -> torch.Tensor:
    """``t`` if it is a ``ndim``-D bfloat16 CPU tensor, else a ValueError naming ``name``."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if not t.is_cpu:
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")
    if t.dtype is not _BF16:
        raise ValueError(f"{name} must be bfloat16, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def _raise_invalid(x: object, weight: object, bias: object, out: object, path: str) -> None:
    """Names the first bad argument of a call whose combined check failed."""
    weight = check_tensor("weight", weight, 2)
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous")
    raise_invalid_operands(x, weight.shape[0], weight.shape[1], bias, out)
    if path not in PATHS:
        raise ValueError(f"path must be one of {sorted(PATHS)}, got {path!r}")
    raise ValueError("invalid arguments")  # unreachable unless the two checks disagree


def raise_invalid_operands(x: object, n: int, k: int, bias: object, out: object) -> None:
    """Names the first bad one of ``x`` (``[M, k]``), ``bias`` (``[n]``) and ``out`` (``[M, n]``).

    Returns if all are valid (the caller then names what else was wrong); shared with
    :mod:`heron_cpu.gemm`, whose weight is packed but whose other operands are the same.
    """
    x = check_tensor("x", x, 2)
    m = x.shape[0]
    if x.shape[1] != k:
        raise ValueError(f"x has K = {x.shape[1]} (shape {tuple(x.shape)}), the weight has K = {k}")
    if k > 1 and x.stride(1) != 1:
        raise ValueError(f"x must have a contiguous last dimension, got strides {x.stride()}")
    if m > 1 and x.stride(0) < k:
        raise ValueError(f"x rows must not overlap, got strides {x.stride()} for shape {(m, k)}")
    if bias is not None:
        bias = check_tensor("bias", bias, 1)
        if bias.shape[0] != n:
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
        if not bias.is_contiguous():
            raise ValueError("bias must be contiguous")
    out = check_tensor("out", out, 2)  # None was replaced by a valid tensor
    if out.shape != (m, n):
        raise ValueError(f"out must have shape {(m, n)}, got {tuple(out.shape)}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
