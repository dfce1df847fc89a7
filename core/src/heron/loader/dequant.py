"""GGUF tensor decoding to torch, vectorised for the common llama.cpp block formats.

``gguf.quants.dequantize`` is correct but numpy-bound and single-threaded; Q8_0, Q4_0 and Q4_1
(the formats of small bundled models) are decoded here with torch ops instead, which are
multi-threaded and several times faster. Every other type falls back to gguf-py, which stays the
reference the tests compare against.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

Q = GGMLQuantizationType
# bytes per block of 32 weights
_BLOCK_BYTES = {Q.Q8_0: 34, Q.Q4_0: 18, Q.Q4_1: 20}
_BLOCK = 32


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """Little-endian float16 stored in two uint8 columns, as float32 ``[..., 1]``."""
    return raw.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """llama.cpp packs weight ``j`` in the low nibble and ``j + 16`` in the high nibble."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _dequant_blocks(raw: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    """Decode ``raw`` uint8 ``[..., n_blocks, block_bytes]`` to float32 ``[..., n_blocks, 32]``."""
    if qtype == Q.Q8_0:
        scale = _f16(raw[..., :2])
        return scale * raw[..., 2:].contiguous().view(torch.int8).float()
    if qtype == Q.Q4_0:
        scale = _f16(raw[..., :2])
        return scale * (_nibbles(raw[..., 2:]).to(torch.int8) - 8).float()
    if qtype == Q.Q4_1:
        scale, minimum = _f16(raw[..., :2]), _f16(raw[..., 2:4])
        return scale * _nibbles(raw[..., 4:]).float() + minimum
    raise ValueError(f"no torch decoder for {qtype.name}")


def dequantize(data: np.ndarray, qtype: GGMLQuantizationType) -> torch.Tensor:
    """A GGUF tensor's ``data`` (as ``GGUFReader`` exposes it) decoded to a torch tensor.

    Float types keep their dtype (F32, F16, BF16); quantized types become float32. The result
    has the row-major shape of the original (Hugging Face) tensor and owns its memory.
    """
    if qtype == Q.F32:
        return torch.from_numpy(np.array(data, dtype=np.float32))
    if qtype == Q.F16:
        return torch.from_numpy(np.array(data, dtype=np.float16))
    if qtype == Q.BF16:
        raw = np.array(data).view(np.int16)
        return torch.from_numpy(raw).view(torch.bfloat16)
    if qtype in _BLOCK_BYTES:
        block_bytes = _BLOCK_BYTES[qtype]
        raw = torch.from_numpy(np.array(data, dtype=np.uint8))
        rows, row_bytes = raw.shape[:-1], raw.shape[-1]
        blocks = raw.view(*rows, row_bytes // block_bytes, block_bytes)
        return _dequant_blocks(blocks, qtype).reshape(*rows, row_bytes // block_bytes * _BLOCK)
    try:
        return torch.from_numpy(np.ascontiguousarray(gguf_dequantize(data, qtype)))
    except NotImplementedError as exc:
        raise ValueError(f"GGUF tensor type {qtype.name} cannot be dequantized") from exc
