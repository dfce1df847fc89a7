"""Checkpoint tensors that are read when, and only as far as, a layer needs them.

A rank of a tensor-parallel group keeps a slice of most tensors, and a pipeline stage skips the
other stages' tensors entirely; reading every tensor whole on every rank costs each rank the whole
checkpoint's reads (and, for GGUF, its dequantization). A :class:`LazyTensor` knows its shape and
dtype up front and reads on demand:

- indexing (``t[a:b]``, ``t[:, a:b]``, ``t[e]``) reads only what the index selects where the file
  format allows it (safetensors slices; GGUF rows, which are whole quantization blocks);
- anything else (``param.copy_(t)``, ``t.split(...)``, ``t.to(...)``) reads the whole tensor and
  goes on as with a real one, so code written for tensors keeps working.

A tensor that is skipped is never read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Index = Any
"""What ``tensor[...]`` takes: an int, a slice or a tuple of them."""


class LazyTensor:
    """A tensor of ``shape`` and ``dtype`` that ``read(index)`` reads from its file."""

    __slots__ = ("_read", "dtype", "name", "shape")

    def __init__(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, read: Callable[[Index], Any]
    ) -> None:
        self.name = name
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self._read = read

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return self.shape.numel()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Index) -> torch.Tensor:
        return self._read(index)

    def materialize(self) -> torch.Tensor:
        """The whole tensor."""
        return self._read(slice(None))

    def __getattr__(self, attribute: str) -> Any:
        # Any other tensor method or attribute: on the whole tensor.
        return getattr(self.materialize(), attribute)

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        # torch functions and tensor methods given a LazyTensor (``param.copy_(lazy)``).
        named = {key: materialize(value) for key, value in (kwargs or {}).items()}
        return func(*_materialized(args), **named)

    def __repr__(self) -> str:
        return f"LazyTensor({self.name!r}, shape={tuple(self.shape)}, dtype={self.dtype})"


def _materialized(values: Any) -> list[Any]:
    out = []
    for value in values:
        if isinstance(value, LazyTensor):
            value = value.materialize()
        elif isinstance(value, (list, tuple)):
            value = type(value)(_materialized(value))
        out.append(value)
    return out


def materialize(tensor: Any) -> torch.Tensor:
    """``tensor`` itself, or the whole of a :class:`LazyTensor`."""
    return tensor.materialize() if isinstance(tensor, LazyTensor) else tensor


def leading_rows(index: Index, num_rows: int) -> tuple[slice, Index] | None:
    """Split ``index`` into a step-1 slice of rows and the index of the remaining dimensions, or
    None where the rows are not such a slice (an int, a stepped slice)."""
    first, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
    if not isinstance(first, slice) or first.step not in (None, 1):
        return None
    start, stop, _ = first.indices(num_rows)
    return slice(start, max(start, stop)), (slice(None), *rest)
