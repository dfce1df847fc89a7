"""Linear layers over weights kept in 8- and 4-bit blocks (``csrc/quant.cpp``, module ``_quant``).

A single decode stream reads every weight once per token, so a 4-bit weight (0.75 bytes each in
the layout below) streams 2.7x fewer bytes than bfloat16 for the same product. :func:`pack`
repacks a :class:`~heron_interfaces.quantization.QuantizedWeight` (GGUF Q8_0/Q4_0/Q4_1/Q4_K
blocks as in the file, or int8 with per-channel scales) once at load into the layout the kernels
read (Q4_K's 32-weight sub-blocks become 4-bit blocks with exact fp32 scales and minimums):

- ``qs``: each row's quantized values, contiguous (Q8: 32 int8 per block; Q4: 16 bytes of
  nibbles per block in llama.cpp's order);
- ``d``: float32 block scales ``[n, k / 32]``; ``mins``: float32 block minimums (Q4 only; Q4_0's
  ``d (q - 8)`` becomes ``d q + (-8 d)``, exactly, so both 4-bit formats share one loop);
- ``d16`` / ``mins16``: the same scales and minimums in float16 where that is exact (GGUF Q8_0,
  Q4_0 and Q4_1 store them so), read by the one-row AVX-512 VNNI loop: a single decode stream is
  bound by the bytes it reads, and these make a Q4 block 20 bytes as in the file instead of 24
  (Q8_0 34 instead of 36). The fp32 arrays stay for the other loops (~8 % more resident bytes).

:func:`linear` picks a compiled loop per call from the rows of ``x`` (:func:`select_path`):

- up to :data:`AMX_MIN_ROWS` - 1 rows (a decode step): by default AVX-512 VNNI where the CPU has
  it (``x`` quantized to int8 per 32-block once per call, as llama.cpp's Q8 activations, then
  integer dot products: ``csrc/quant_i8.cpp``), else the fp32 loop of the ISA in use (AVX-512,
  AVX2 or portable; ``HERON_CPU_ISA`` forces one, as for every heron-cpu kernel). These loops are
  bound by the weight's bytes at one row but repeat every dot product per extra row;
- from :data:`AMX_MIN_ROWS` to :data:`AMX_MAX_ROWS` rows with bfloat16 activations on a CPU with
  AMX-BF16 (speculative
  verification, batched decode, prefill): ``amx`` (``csrc/quant_amx.cpp``), which decodes a strip
  of 32 weight rows to bfloat16 in cache and multiplies it with tile instructions against every
  row, so a call decodes each weight once whatever the rows and writes nothing but its output;
- past :data:`MAX_GEMV_ROWS` rows without AMX, and past :data:`AMX_MAX_ROWS` with it: ``dequant``,
  the weight dequantized into a scratch matrix in one compiled pass and multiplied by torch's
  linear.

``HERON_CPU_QUANT_PATH`` forces one loop by name for every call (:data:`PATHS`). Every call goes
through :func:`~heron_cpu.launch.launch`, so decode steps are recorded in step graphs like the
bf16 path.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from heron_cpu import _kernels, _quant
from heron_cpu.launch import launch, launch_torch
from heron_interfaces.quantization import (
    BLOCK,
    GGUF_BLOCK_BYTES,
    QuantizedWeight,
    q4_k_scales_mins,
    q4_k_values,
)

__all__ = [
    "AMX_MAX_ROWS",
    "AMX_MIN_ROWS",
    "BF16_WEIGHT_PATHS",
    "INT8_PATHS",
    "MAX_GEMV_ROWS",
    "PATHS",
    "PATH_ENV",
    "PackedQuant",
    "auto_path",
    "available_paths",
    "describe",
    "linear",
    "pack",
    "select_path",
]

MAX_GEMV_ROWS = 16
"""Most rows of ``x`` that run the one-row loops where the CPU has no AMX; more rows dequantize
the weight and use a GEMM."""

AMX_MIN_ROWS = 6
"""Fewest rows of bfloat16 ``x`` that take the AMX loop where the CPU has it (measured against
the VNNI loop: benchmarks/RESULTS.md)."""

AMX_MAX_ROWS = 512
"""Most rows that take the AMX loop: it decodes the weight again for each 1 MiB chunk of ``x``,
so past this (long prefill chunks) one dequantize and torch's GEMM is faster (RESULTS.md)."""

PATHS: dict[str, int] = {
    "auto": 0,
    "avx512": 1,
    "avx2": 2,
    "portable": 3,
    "vnni512": 4,
    "avxvnni": 5,
    "amx": 6,
    "dequant": -1,
}
"""Loop selectors of ``linear(path=...)``, for tests and benchmarks: ``avx512``, ``avx2`` and
``portable`` widen the weights to fp32 and match dequantize-then-matmul up to the fp32 sums;
``vnni512`` and ``avxvnni`` quantize ``x`` to int8 per 32-block first (llama.cpp's Q8
activations) and take integer dot products (:data:`INT8_PATHS`); ``amx`` (bfloat16 ``x``; float32
``x`` runs the fp32 loop) and ``dequant`` (any dtype) multiply the weight rounded to bfloat16, as
``--quantization none`` does (:data:`BF16_WEIGHT_PATHS`)."""

INT8_PATHS = ("vnni512", "avxvnni")
"""The loops whose results carry the error of int8 activations."""

BF16_WEIGHT_PATHS = ("amx", "dequant")
"""The loops that multiply the weight rounded to bfloat16 (for bfloat16 ``x``)."""

PATH_ENV = "HERON_CPU_QUANT_PATH"
"""Environment variable forcing the loop of ``path="auto"`` (a :data:`PATHS` name)."""

_Q8, _Q4 = 0, 1
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


@dataclass(frozen=True, slots=True)
class PackedQuant:
    """A weight ``[n, k]`` in the kernels' layout (see the module docstring)."""

    format: str
    """The source format (``q8_0``, ``q4_0``, ``q4_1``, ``q4_k``, ``int8``), for logs."""
    n: int
    k: int
    qs: torch.Tensor
    d: torch.Tensor
    mins: torch.Tensor | None
    d16: torch.Tensor | None = None
    mins16: torch.Tensor | None = None

    @property
    def kind(self) -> int:
        return _Q8 if self.mins is None else _Q4

    @property
    def nbytes(self) -> int:
        """Bytes the one-row loop streams per product (values, scales and minimums; the f16
        copies where there are some)."""
        scales = [self.d16, self.mins16] if self.d16 is not None else [self.d, self.mins]
        return self.qs.numel() + sum(t.numel() * t.element_size() for t in scales if t is not None)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight ``[n, k]`` in ``dtype`` (float32 or bfloat16), by the compiled decoder."""
        out = torch.empty((self.n, self.k), dtype=dtype)
        launch(
            _quant.quant_dequantize,
            out.data_ptr(), self.qs.data_ptr(), self.d.data_ptr(),
            0 if self.mins is None else self.mins.data_ptr(), self.n, self.k, self.kind,
            _DTYPES[dtype], torch.get_num_threads(),
        )  # fmt: skip
        return out


@functools.cache
def _paths() -> dict[str, bool]:
    return {**_quant.quant_paths(), "dequant": True}


def available_paths() -> list[str]:
    """The explicit loops this CPU runs (tests run each)."""
    return [name for name, ok in _paths().items() if ok]


def auto_path(dtype: torch.dtype = torch.bfloat16) -> str:
    """The loop ``path="auto"`` runs for a few rows (a decode step) of ``dtype`` activations:
    :data:`PATH_ENV` if set, else the fastest this CPU has that keeps the dtype's accuracy.
    :func:`select_path` says what runs for more rows.

    For bfloat16 with ``HERON_CPU_ISA`` at its default (or ``avx512``) that is ``vnni512`` where
    the CPU has AVX-512 VNNI: int8 per 32-block rounds each activation by at most 1/254 of its
    block's largest, the order of bfloat16's own rounding (1/256 of the value), and the integer
    dot products beat widening to fp32 (benchmarks/RESULTS.md). float32 activations keep the fp32
    loop, exact up to the order of the sums. ``HERON_CPU_ISA=avx2`` or ``portable`` forces the
    fp32 loop of that ISA, as for every kernel.
    """
    forced = os.environ.get(PATH_ENV, "").strip().lower()
    if forced and forced != "auto":
        if forced not in PATHS:
            raise ValueError(f"{PATH_ENV} must be one of {sorted(PATHS)}, got {forced!r}")
        if not _paths()[forced]:
            raise ValueError(f"{PATH_ENV}={forced}: this CPU lacks that loop")
        return forced
    isa = _kernels.isa()  # HERON_CPU_ISA (or heron_cpu._kernels.set_isa)
    if isa == "avx512":
        return "vnni512" if dtype == torch.bfloat16 and _paths()["vnni512"] else "avx512"
    return "avx2" if isa == "avx2" else "portable"


_LOOP_NAMES = {
    "avx512": "AVX-512 (weights widened to fp32)",
    "avx2": "AVX2 (weights widened to fp32)",
    "portable": "portable",
    "vnni512": "AVX-512 VNNI (int8 activations)",
    "avxvnni": "AVX-VNNI (int8 activations)",
    "amx": "AMX-BF16 (weight strips decoded in cache)",
    "dequant": "the weight dequantized for torch's GEMM",
}


def describe() -> str:
    """Which loops run quantized products here, for the start-up log."""
    bf16, f32 = auto_path(torch.bfloat16), auto_path(torch.float32)
    loops = (
        _LOOP_NAMES[bf16]
        if bf16 == f32
        else f"{_LOOP_NAMES[bf16]} for bfloat16 activations, {_LOOP_NAMES[f32]} for float32"
    )
    many = select_path(torch.bfloat16, MAX_GEMV_ROWS + 1)
    if many == "amx":
        return (
            f"heron-cpu's quantized loops: below {AMX_MIN_ROWS} rows {loops}; "
            f"{AMX_MIN_ROWS}-{AMX_MAX_ROWS} rows of bfloat16 activations {_LOOP_NAMES['amx']}; "
            f"past that {_LOOP_NAMES['dequant']}"
        )
    return (
        f"heron-cpu's quantized loops: up to {MAX_GEMV_ROWS} rows {loops}; past that "
        f"{_LOOP_NAMES[many]}"
    )


def _f16(raw: torch.Tensor) -> torch.Tensor:
    return raw.contiguous().view(torch.float16).squeeze(-1)


def pack(weight: QuantizedWeight) -> PackedQuant | None:
    """``weight`` repacked for the kernels, or None where they do not serve its shape."""
    n, k = weight.shape
    if k % BLOCK or k == 0 or n == 0:
        return None
    nb = k // BLOCK
    if weight.format == "int8":
        qs = weight.data.contiguous().view(torch.uint8)
        d = weight.scales.float().unsqueeze(1).expand(n, nb).contiguous()
        return PackedQuant("int8", n, k, qs, d, None)
    if weight.format == "q4_k":
        return _pack_q4_k(weight)
    raw = weight.data.reshape(n, nb, GGUF_BLOCK_BYTES[weight.format])
    d16 = _f16(raw[..., :2])
    d = d16.float()
    if weight.format == "q8_0":
        qs = raw[..., 2:].reshape(n, nb * 32).contiguous()
        return PackedQuant("q8_0", n, k, qs, d, None, d16=d16)
    if weight.format == "q4_0":
        qs, mins = raw[..., 2:], -8.0 * d
        mins16 = mins.half()  # exact unless -8 d leaves float16's range: then fp32 only
        if not torch.equal(mins16.float(), mins):
            d16 = mins16 = None
    else:
        qs, mins16 = raw[..., 4:], _f16(raw[..., 2:4])
        mins = mins16.float()
    qs = qs.reshape(n, nb * 16).contiguous()
    return PackedQuant(weight.format, n, k, qs, d, mins, d16=d16, mins16=mins16)


def _pack_q4_k(weight: QuantizedWeight) -> PackedQuant | None:
    """Q4_K as the 4-bit loop's blocks, exactly: each 32-weight sub-block's scale ``d sc`` and
    minimum ``-(dmin m)`` are float32 products of an f16 and a 6-bit integer (exact), and its
    values move to the loop's nibble order (value ``j`` low, ``j + 16`` high in byte ``j``)."""
    n, k = weight.shape
    if k % 256:
        return None
    raw = weight.data.reshape(n, k // 256, GGUF_BLOCK_BYTES["q4_k"])
    scale, minimum = q4_k_scales_mins(raw)
    values = q4_k_values(raw)  # [n, k / 256, 8, 32]
    qs = values[..., :16] | (values[..., 16:] << 4)
    d, mins = scale.reshape(n, k // BLOCK), minimum.reshape(n, k // BLOCK)
    return PackedQuant(
        "q4_k", n, k, qs.reshape(n, k // 2).contiguous(), d.contiguous(), mins.contiguous()
    )


def select_path(dtype: torch.dtype, rows: int) -> str:
    """The loop ``path="auto"`` runs for ``rows`` rows of ``x`` in ``dtype``.

    :data:`PATH_ENV` forces one for every call. Else: from :data:`AMX_MIN_ROWS` to
    :data:`AMX_MAX_ROWS` rows of bfloat16 ``x`` with the AVX-512 kernels in use and AMX-BF16
    present, ``amx`` (each weight decoded once per call); else past :data:`MAX_GEMV_ROWS` rows
    ``dequant`` (the one-row loops repeat every dot product per row); else :func:`auto_path`.
    """
    one_row = auto_path(dtype)
    if os.environ.get(PATH_ENV, "").strip().lower() not in ("", "auto"):
        return one_row
    if (
        AMX_MIN_ROWS <= rows <= AMX_MAX_ROWS
        and dtype == torch.bfloat16
        and _paths()["amx"]
        and _kernels.isa() == "avx512"
    ):
        return "amx"
    return "dequant" if rows > MAX_GEMV_ROWS else one_row


def linear(
    x: torch.Tensor,
    weight: PackedQuant,
    bias: torch.Tensor | None = None,
    *,
    path: str = "auto",
) -> torch.Tensor:
    """``x @ W^T + bias`` for ``x`` ``[..., k]`` in float32 or bfloat16 (the result's dtype).

    Accumulates in float32 and rounds once, after the bias. Any other dtype is computed by torch
    on the dequantized weight.
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {sorted(PATHS)}, got {path!r}")
    if x.shape[-1] != weight.k:
        raise ValueError(
            f"x has K = {x.shape[-1]} (shape {tuple(x.shape)}), the weight has K = {weight.k}"
        )
    code = _DTYPES.get(x.dtype)
    if code is None or not x.is_cpu or (bias is not None and bias.dtype != x.dtype):
        w = weight.dequantize().to(x.dtype)
        return F.linear(x, w, bias)
    if x.dim() != 2 or x.stride(-1) != 1:
        rows = x.reshape(-1, weight.k).contiguous()
        return linear(rows, weight, bias, path=path).view(*x.shape[:-1], weight.n)
    m = x.shape[0]
    if bias is not None:
        if bias.shape != (weight.n,):
            raise ValueError(f"bias must have shape ({weight.n},), got {tuple(bias.shape)}")
        bias = bias.contiguous()
    if path == "auto":
        path = select_path(x.dtype, m)
    if path == "dequant":
        return launch_torch(F.linear, x, weight.dequantize(x.dtype), bias)
    out = x.new_empty((m, weight.n))
    launch(
        _quant.quant_linear,
        out.data_ptr(), x.data_ptr(), weight.qs.data_ptr(), weight.d.data_ptr(),
        0 if weight.mins is None else weight.mins.data_ptr(),
        0 if bias is None else bias.data_ptr(), m, weight.n, weight.k, max(x.stride(0), weight.k),
        weight.kind, code, torch.get_num_threads(), PATHS[path],
        0 if weight.d16 is None else weight.d16.data_ptr(),
        0 if weight.mins16 is None else weight.mins16.data_ptr(),
    )  # fmt: skip
    return out
