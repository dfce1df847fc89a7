"""A fast index of the tensors in a GGUF file (names, types, shapes, memory-mapped data).

``gguf.GGUFReader`` materialises every metadata value as numpy views, which for a tokenizer of
50k tokens and merges takes about two seconds before the first tensor is touched. Loading weights
needs only the tensor table, so this reader walks the metadata without building it (string arrays
are skipped by their lengths) and exposes each tensor's data exactly as ``GGUFReader`` does
(same dtype and shape), so both feed the same dequantizer. Big-endian or otherwise unusual files
fall back to ``GGUFReader``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quant_shape_to_byte_shape

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# GGUF metadata value types -> struct format (fixed-size scalars)
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_NUMPY_TYPES = {
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F64: np.float64,
    GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}


@dataclass(frozen=True, slots=True)
class GGUFTensor:
    """One tensor: ``data`` is a read-only memory map shaped like ``GGUFReader``'s."""

    name: str
    tensor_type: GGMLQuantizationType
    data: np.ndarray


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize("<" + fmt)
        return value

    def string(self) -> str:
        length = self.unpack("Q")
        text = bytes(self.buf[self.pos : self.pos + length]).decode("utf-8", errors="replace")
        self.pos += length
        return text

    def skip_value(self, value_type: int) -> Any:
        """Read a scalar or string; skip arrays (returns ``None`` for them)."""
        if value_type in _SCALARS:
            return self.unpack(_SCALARS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type != _ARRAY:
            raise ValueError(f"unknown GGUF metadata type {value_type}")
        item_type, count = self.unpack("I"), self.unpack("Q")
        if item_type in _SCALARS:
            self.pos += count * struct.calcsize("<" + _SCALARS[item_type])
        else:
            for _ in range(count):
                self.skip_value(item_type)
        return None


def _tensor_data(mm: np.memmap, offset: int, qtype: GGMLQuantizationType, dims: list[int]):
    np_dims = tuple(reversed(dims))
    if qtype in _NUMPY_TYPES:
        item = np.dtype(_NUMPY_TYPES[qtype])
        count = int(np.prod(np_dims))
        return mm[offset : offset + count * item.itemsize].view(item).reshape(np_dims)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    byte_shape = quant_shape_to_byte_shape(np_dims, qtype)
    nbytes = int(np.prod(dims)) // block_size * type_size
    return mm[offset : offset + nbytes].reshape(byte_shape)


def _read_fast(path: str) -> tuple[dict[str, Any], list[GGUFTensor]] | None:
    mm = np.memmap(path, mode="r", dtype=np.uint8)
    cur = _Cursor(memoryview(mm))
    if bytes(cur.buf[:4]) != _MAGIC:
        raise ValueError(f"{path} is not a GGUF file")
    cur.pos = 4
    version = cur.unpack("I")
    if version not in (2, 3):  # also catches big-endian files (byte-swapped version)
        return None
    tensor_count, kv_count = cur.unpack("Q"), cur.unpack("Q")
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cur.string()
        value = cur.skip_value(cur.unpack("I"))
        if value is not None:
            metadata[key] = value
    infos = []
    for _ in range(tensor_count):
        name = cur.string()
        dims = [cur.unpack("Q") for _ in range(cur.unpack("I"))]
        infos.append((name, GGMLQuantizationType(cur.unpack("I")), dims, cur.unpack("Q")))
    alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
    start = -(-cur.pos // alignment) * alignment
    tensors = [
        GGUFTensor(name, qtype, _tensor_data(mm, start + offset, qtype, dims))
        for name, qtype, dims, offset in infos
    ]
    return metadata, tensors


def read_gguf(path: str) -> tuple[dict[str, Any], list[GGUFTensor]]:
    """Scalar/string metadata (arrays omitted) and the tensors of the GGUF file at ``path``."""
    fast = _read_fast(path)
    if fast is not None:
        return fast
    from gguf import GGUFReader

    reader = GGUFReader(path)
    metadata = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0].name != "ARRAY":
            metadata[key] = field.contents()
    tensors = [GGUFTensor(t.name, t.tensor_type, t.data) for t in reader.tensors]
    return metadata, tensors
