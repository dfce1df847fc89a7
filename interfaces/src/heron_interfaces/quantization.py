"""Weights kept quantized (API 1.8): what core hands a backend, and the reference decode.

Users of CPUs run 4- and 8-bit GGUF files because a single decode stream reads every weight once
per token: fewer bytes per weight is more tokens per second. Core therefore passes such a weight
to :meth:`KernelOps.prepare_quantized_linear` as it is stored, as a :class:`QuantizedWeight`; a
backend with kernels for the format repacks it once into its own layout, and one without returns
None, in which case core dequantizes (:meth:`QuantizedWeight.dequantize`) and goes on as for any
weight, so no backend has to know about quantization to keep working.

Formats (``QuantizedWeight.format``):

- ``q8_0``, ``q4_0``, ``q4_1``: llama.cpp's GGUF blocks of 32 weights along a row, bytes exactly
  as in the file: ``q8_0`` = float16 scale d + 32 int8 q (w = d q); ``q4_0`` = d + 16 bytes of
  nibbles (w = d (q - 8)); ``q4_1`` = d + float16 minimum m + nibbles (w = d q + m). Weight ``j`` of
  a block is the low nibble of byte ``j`` and weight ``j + 16`` the high one.
- ``q4_k`` (API 1.10): llama.cpp's Q4_K super-blocks of 256 weights, 144 bytes: float16 d and
  dmin, 12 bytes of 6-bit scales ``sc`` and minimums ``m`` for its eight 32-weight sub-blocks,
  then 128 bytes of nibbles (sub-block ``2i`` in the low nibbles of bytes ``32i..32i+31``, ``2i+1``
  in the high ones); w = (d sc) q - (dmin m), each product rounded to float32 first (as gguf-py).
- ``int8``: weight-only int8 with one float32 scale per output channel (w = scale[row] q), what
  core makes from a Hugging Face checkpoint with ``--quantization int8``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BLOCK = 32
"""Weights per block of the GGUF formats (the scale granularity of every format here)."""

GGUF_BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q4_k": 144}
"""Bytes per stored block, scales included, of each GGUF format (:data:`GGUF_BLOCK_WEIGHTS`
weights each)."""

GGUF_BLOCK_WEIGHTS = {"q8_0": BLOCK, "q4_0": BLOCK, "q4_1": BLOCK, "q4_k": 256}
"""Weights per stored block of each GGUF format (API 1.10: Q4_K's super-blocks hold 256)."""

FORMATS = (*GGUF_BLOCK_BYTES, "int8")


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantizedWeight:
    """A linear layer's weight ``[out_features, in_features]`` in one of :data:`FORMATS`.

    ``data`` is uint8 ``[out_features, in_features / block_weights * block_bytes]`` for the GGUF
    formats (rows of blocks) and int8 ``[out_features, in_features]`` for ``int8``, whose ``scales`` is
    float32 ``[out_features]``. All on the CPU, contiguous.
    """

    format: str
    shape: tuple[int, int]
    data: torch.Tensor
    scales: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        rows, cols = self.shape
        if self.format == "int8":
            if tuple(self.data.shape) != (rows, cols):
                raise ValueError(f"int8 data must have shape {self.shape}, got {self.data.shape}")
            if self.scales is None or tuple(self.scales.shape) != (rows,):
                raise ValueError(f"int8 weights need scales of shape ({rows},)")
            return
        block = GGUF_BLOCK_WEIGHTS[self.format]
        if cols % block:
            raise ValueError(f"{self.format}: in_features {cols} is not a multiple of {block}")
        expected = (rows, cols // block * GGUF_BLOCK_BYTES[self.format])
        if tuple(self.data.shape) != expected:
            raise ValueError(
                f"{self.format} data must have shape {expected}, got {self.data.shape}"
            )

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight as float32 (then cast to ``dtype``): the reference every kernel meets."""

        if self.format == "int8":
            weight = self.data.float() * self.scales.float().unsqueeze(1)
        else:
            raw = self.data.reshape(self.shape[0], -1, GGUF_BLOCK_BYTES[self.format])
            weight = _decode_blocks(raw, self.format).reshape(self.shape)
        return weight if dtype is None else weight.to(dtype)


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """Little-endian float16 stored in two uint8 columns, as float32 ``[..., 1]``."""
    import torch

    return raw.contiguous().view(torch.float16).float()


def _decode_blocks(raw: torch.Tensor, fmt: str) -> torch.Tensor:
    """uint8 ``[..., blocks, block_bytes]`` to float32 ``[..., blocks, block_weights]``."""
    import torch

    if fmt == "q4_k":
        return _decode_q4_k(raw)
    if fmt == "q8_0":
        return _f16(raw[..., :2]) * raw[..., 2:].contiguous().view(torch.int8).float()
    offset = 4 if fmt == "q4_1" else 2
    qs = raw[..., offset:]
    q = torch.cat([qs & 0x0F, qs >> 4], dim=-1)
    if fmt == "q4_0":
        return _f16(raw[..., :2]) * (q.to(torch.int8) - 8).float()
    return _f16(raw[..., :2]) * q.float() + _f16(raw[..., 2:4])


def q4_k_scales_mins(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K blocks uint8 ``[..., 144]`` to the float32 scale ``d sc`` and minimum ``-(dmin m)``
    of each 32-weight sub-block, ``[..., 8]`` each (exact: an f16 times a 6-bit integer)."""
    import torch

    packed = raw[..., 4:16].long()
    low, high, extra = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = torch.cat([low & 63, (extra & 15) | ((low >> 6) << 4)], dim=-1)
    m = torch.cat([high & 63, (extra >> 4) | ((high >> 6) << 4)], dim=-1)
    d, dmin = _f16(raw[..., 0:2]), _f16(raw[..., 2:4])
    return d * sc.float(), -(dmin * m.float())


def q4_k_values(raw: torch.Tensor) -> torch.Tensor:
    """Q4_K blocks uint8 ``[..., 144]`` to their 4-bit values, uint8 ``[..., 8, 32]``."""
    import torch

    qs = raw[..., 16:].reshape(*raw.shape[:-1], 4, 1, 32)
    both = torch.cat([qs & 15, qs >> 4], dim=-2)  # sub-block 2i: low nibbles, 2i + 1: high
    return both.reshape(*raw.shape[:-1], 8, 32)


def _decode_q4_k(raw: torch.Tensor) -> torch.Tensor:
    scale, minimum = q4_k_scales_mins(raw)
    weights = scale.unsqueeze(-1) * q4_k_values(raw).float() + minimum.unsqueeze(-1)
    return weights.reshape(*raw.shape[:-1], 256)


__all__ = [
    "BLOCK",
    "FORMATS",
    "GGUF_BLOCK_BYTES",
    "GGUF_BLOCK_WEIGHTS",
    "QuantizedWeight",
    "q4_k_scales_mins",
    "q4_k_values",
]
