"""``--quantization``: which checkpoint weights reach the model still quantized.

- ``gguf`` (the default for a GGUF file on one rank): Q8_0, Q4_0, Q4_1 and Q4_K tensors come as
  :class:`QuantizedTensor` s holding the file's blocks. A linear layer keeps them and hands them
  to its kernels' ``prepare_quantized_linear`` (heron_interfaces 1.8); a backend without such
  kernels, and every other consumer (embedding lookups, norms), reads the tensor, which
  dequantizes it exactly as ``none`` does. Other quantized types (Q6_K, Q5_K, ...) are
  dequantized at load, with a log line naming them.
- ``int8``: a Hugging Face checkpoint's 2-D float weights come as QuantizedTensors that a linear
  layer quantizes to int8 with one scale per output row (``w ~= scale[row] * q``, ``q`` in
  -127..127, ``scale = max|w_row| / 127``); the rest of the model reads them unchanged.
- ``none``: every weight dequantized at load (what Heron always did for GGUF).

Tensor and pipeline parallelism read each rank's slice lazily (:mod:`heron.loader.lazy`) as
dequantized rows, so ``gguf``/``int8`` are refused there with an error naming the flag, and the
default falls back to ``none``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType

from heron.loader.lazy import LazyTensor
from heron_interfaces.quantization import QuantizedWeight

QUANTIZATION_CHOICES = ("gguf", "none", "int8")
"""Values of ``EngineArgs.quantization`` (None: gguf for GGUF files, none otherwise)."""

GGUF_FORMATS = {
    GGMLQuantizationType.Q8_0: "q8_0",
    GGMLQuantizationType.Q4_0: "q4_0",
    GGMLQuantizationType.Q4_1: "q4_1",
    GGMLQuantizationType.Q4_K: "q4_k",
}
"""GGUF tensor types a linear layer may keep quantized, by their format name."""


class QuantizedTensor(LazyTensor):
    """A checkpoint tensor whose quantized form a linear layer may keep (:meth:`quantized`);
    used as a tensor, it reads (dequantizes) the whole of it like any :class:`LazyTensor`."""

    __slots__ = ("_make",)

    def __init__(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        read: Callable[[Any], Any],
        make: Callable[[], QuantizedWeight],
    ) -> None:
        super().__init__(name, shape, dtype, read)
        self._make = make

    def quantized(self) -> QuantizedWeight:
        """The weight in its quantized form (GGUF blocks as stored, or int8 made now)."""
        return self._make()


def resolve_quantization(requested: str | None, source_quantization: str | None, ranks: int) -> str:
    """The mode for a checkpoint, or a ValueError naming ``--quantization``.

    ``source_quantization`` is the :class:`~heron.loader.source.ModelSource`'s (``"gguf"`` for
    GGUF files); ``ranks`` is tensor x pipeline parallel size.
    """
    if requested is not None and requested not in QUANTIZATION_CHOICES:
        raise ValueError(
            f"--quantization must be one of {', '.join(QUANTIZATION_CHOICES)}, got {requested!r}"
        )
    is_gguf = source_quantization == "gguf"
    if requested is None:
        return "gguf" if is_gguf and ranks == 1 else "none"
    if requested == "gguf" and not is_gguf:
        raise ValueError("--quantization gguf needs a .gguf model file; use int8 or none")
    if requested == "int8" and is_gguf:
        raise ValueError(
            "--quantization int8 is for Hugging Face checkpoints; a GGUF file is already "
            "quantized: use --quantization gguf (keep its blocks) or none (dequantize)"
        )
    if requested != "none" and ranks > 1:
        raise ValueError(
            f"--quantization {requested} is not supported with tensor or pipeline parallelism "
            "(each rank reads its slice dequantized); use --quantization none"
        )
    return requested


def gguf_quantized_tensor(
    name: str, data: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, int],
    read: Callable[[Any], Any], unpermute: Callable[[torch.Tensor], torch.Tensor] | None,
) -> QuantizedTensor:  # fmt: skip
    """A 2-D GGUF tensor of a :data:`GGUF_FORMATS` type whose blocks a linear layer may keep.

    ``unpermute`` un-permutes rows (llama.cpp's Q/K permutation); rows are whole blocks, so it
    applies to the raw bytes as to the decoded weight.
    """

    def make() -> QuantizedWeight:
        raw = torch.from_numpy(np.array(data, dtype=np.uint8))
        if unpermute is not None:
            raw = unpermute(raw).contiguous()
        return QuantizedWeight(format=GGUF_FORMATS[qtype], shape=shape, data=raw)

    return QuantizedTensor(name, shape, torch.float32, read, make)


def quantize_int8(weight: torch.Tensor) -> QuantizedWeight:
    """Per-output-channel symmetric int8 of a 2-D float weight (all-zero rows get scale 1)."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(w / scales.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return QuantizedWeight(format="int8", shape=tuple(w.shape), data=q.contiguous(), scales=scales)


def _int8_candidates(
    weights: Iterator[tuple[str, Any]],
) -> Iterator[tuple[str, Any]]:
    """Wrap every 2-D floating-point ``*.weight`` so that a linear layer may quantize it."""
    for name, tensor in weights:
        if (
            name.endswith(".weight")
            and isinstance(tensor, torch.Tensor)
            and tensor.dim() == 2
            and tensor.is_floating_point()
        ):
            whole = tensor
            yield (
                name,
                QuantizedTensor(
                    name,
                    tuple(whole.shape),
                    whole.dtype,
                    lambda index, t=whole: t[index],
                    functools.partial(quantize_int8, whole),
                ),
            )
        else:
            yield name, tensor


def with_quantization(weights: Callable[..., Iterator[tuple[str, Any]]], mode: str) -> Callable[..., Iterator[tuple[str, Any]]]:  # fmt: skip
    """``weights`` (a ModelSource's iterator factory) yielding what ``mode`` keeps quantized."""
    if mode == "gguf":
        return functools.partial(weights, keep_quantized=True)
    if mode == "int8":

        def int8_weights(**kwargs: Any) -> Iterator[tuple[str, Any]]:
            return _int8_candidates(weights(**kwargs))

        return int8_weights
    return weights


__all__ = [
    "GGUF_FORMATS",
    "QUANTIZATION_CHOICES",
    "QuantizedTensor",
    "gguf_quantized_tensor",
    "quantize_int8",
    "resolve_quantization",
    "with_quantization",
]
