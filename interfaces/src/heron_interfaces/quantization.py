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
- ``int8``: weight-only int8 with one float32 scale per output channel (w = scale[row] q), what
  core makes from a Hugging Face checkpoint with ``--quantization int8``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BLOCK = 32
"""Weights per block of the GGUF formats."""

GGUF_BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}
"""Bytes per block of 32 weights, scales included, of each GGUF format."""

FORMATS = (*GGUF_BLOCK_BYTES, "int8")


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantizedWeight:
    """A linear layer's weight ``[out_features, in_features]`` in one of :data:`FORMATS`.

    ``data`` is uint8 ``[out_features, in_features / 32 * block_bytes]`` for the GGUF formats
    (rows of blocks) and int8 ``[out_features, in_features]`` for ``int8``, whose ``scales`` is
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
        if cols % BLOCK:
            raise ValueError(f"{self.format}: in_features {cols} is not a multiple of {BLOCK}")
        expected = (rows, cols // BLOCK * GGUF_BLOCK_BYTES[self.format])
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
    """uint8 ``[..., blocks, block_bytes]`` to float32 ``[..., blocks, 32]``."""
    import torch

    if fmt == "q8_0":
        return _f16(raw[..., :2]) * raw[..., 2:].contiguous().view(torch.int8).float()
    offset = 4 if fmt == "q4_1" else 2
    qs = raw[..., offset:]
    q = torch.cat([qs & 0x0F, qs >> 4], dim=-1)
    if fmt == "q4_0":
        return _f16(raw[..., :2]) * (q.to(torch.int8) - 8).float()
    return _f16(raw[..., :2]) * q.float() + _f16(raw[..., 2:4])


__all__ = ["BLOCK", "FORMATS", "GGUF_BLOCK_BYTES", "QuantizedWeight"]
