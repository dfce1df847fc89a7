"""Linear layers whose weights load from Hugging Face checkpoints, fused or not, sharded or not.

Fusing q/k/v (and gate/up) into one matmul reads the activations once instead of three times;
the checkpoint still stores them separately, so a fused layer knows the row range of each part
and copies each checkpoint tensor into its slice.

Under tensor parallelism (Megatron's layout, as vLLM does it) a layer holds one rank's shard:
column-parallel layers (q/k/v, gate/up, the vocabulary) keep some output rows and need no
collective; a row-parallel layer (o_proj, down_proj) keeps the matching input columns and sums the
ranks' partial outputs with one all-reduce. Every layer slices its shard out of the checkpoint
tensor itself (:meth:`Linear.load_tensor`), so the loader stays unaware of sharding.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from heron.distributed.tensor_parallel import SINGLE, TensorParallel
from heron_interfaces.kernel_ops import KernelOps
from heron_interfaces.quantization import QuantizedWeight

logger = logging.getLogger(__name__)


def copy_weight(param: torch.Tensor, loaded: torch.Tensor, name: str) -> None:
    """Copy ``loaded`` into ``param`` (casting dtype and device), refusing a shape mismatch."""
    if tuple(param.shape) != tuple(loaded.shape):
        raise ValueError(
            f"weight {name!r} has shape {tuple(loaded.shape)} in the checkpoint but the model "
            f"expects {tuple(param.shape)}; the config does not match the weights"
        )
    with torch.no_grad():
        param.copy_(loaded)


def copy_padded_rows(
    param: torch.Tensor, loaded: torch.Tensor, row_start: int, full_rows: int, name: str
) -> None:
    """Copy rows ``[row_start, row_start + len(param))`` of ``loaded`` into ``param``; rows past
    the end of ``loaded`` (a padded last shard) are zero."""
    if loaded.shape[0] != full_rows:
        raise ValueError(
            f"weight {name!r} has {loaded.shape[0]} rows in the checkpoint, the model expects "
            f"{full_rows}: the config does not match the weights"
        )
    shard = loaded[row_start : row_start + param.shape[0]]
    with torch.no_grad():
        param.zero_()
    copy_weight(param[: shard.shape[0]], shard, name)


def prepare_linear_weights(model: nn.Module) -> int:
    """Hand every :class:`Linear` of ``model`` to its kernels' ``prepare_linear``; returns how many.

    Logs which weights stayed quantized (``--quantization gguf``/``int8``) and which kernels
    multiply them, and how many were dequantized because the kernels had none for them.
    """
    count = 0
    kept: Counter[str] = Counter()
    dequantized: Counter[str] = Counter()
    ops_name = ""
    for module in model.modules():
        if isinstance(module, Linear):
            module.prepare_for_inference()
            count += 1
            ops_name = module.ops.name
            if module.quant_format:
                kept[module.quant_format] += 1
            elif module.dequantized_format:
                dequantized[module.dequantized_format] += 1
    if kept:
        logger.info(
            "Quantized weights: %d linear layers kept quantized (%s), multiplied by %s",
            sum(kept.values()),
            _counts(kept),
            ops_name,
        )
    if dequantized:
        logger.info(
            "Quantized weights: %d linear layers dequantized at load (%s): %s has no kernel for "
            "them",
            sum(dequantized.values()),
            _counts(dequantized),
            ops_name,
        )
    return count


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{fmt}: {n}" for fmt, n in sorted(counter.items()))


def quantized_parts_weight(
    parts: list[tuple[int, QuantizedWeight]], shape: tuple[int, int]
) -> QuantizedWeight | None:
    """One QuantizedWeight of ``shape`` from row-ordered parts of one format, else None (mixed
    formats, or rows not covered: such a layer is dequantized)."""
    formats = {weight.format for _, weight in parts}
    parts = sorted(parts, key=lambda part: part[0])
    row = 0
    for start, weight in parts:
        if start != row or weight.shape[1] != shape[1]:
            return None
        row += weight.shape[0]
    if len(formats) != 1 or row != shape[0]:
        return None
    (fmt,) = formats
    if len(parts) == 1:
        return parts[0][1]
    scales = torch.cat([w.scales for _, w in parts]) if fmt == "int8" else None
    data = torch.cat([w.data for _, w in parts])
    return QuantizedWeight(format=fmt, shape=shape, data=data, scales=scales)


def prepare_tied_logits(ops: KernelOps, embedding: nn.Module) -> Any:
    """The tied output projection's prepared weight: the embedding table's quantized blocks where
    they were kept and the kernels take them, else its (dequantized) table."""
    quantized = embedding.__dict__.get("quantized_source")
    if quantized is not None:
        prepared = ops.prepare_quantized_linear(quantized)
        if prepared is not None:
            logger.info(
                "Quantized weights: the tied output projection kept quantized (%s)",
                quantized.format,
            )
            return prepared
    return ops.prepare_linear(embedding.weight)


class Linear(nn.Module):
    """``y = x W^T + b`` with weight ``[out_features, in_features]`` like ``torch.nn.Linear``.

    Parameters are created uninitialised in ``dtype`` (and on the ambient device) because the
    checkpoint overwrites them; initialising random weights first would only cost time.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        dtype: torch.dtype,
        ops: KernelOps | None = None,
    ) -> None:
        super().__init__()
        self.ops = ops or KernelOps()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=dtype), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False)
            if bias
            else None
        )
        self.quant_format: str | None = None
        """The format this layer's weight stayed in (``--quantization``), None when plain."""
        self.dequantized_format: str | None = None
        """The format of a quantized checkpoint weight the kernels had no kernel for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prepared = self.__dict__.get("_prepared")
        if prepared is None:
            self.dequantize_kept()  # a model used without prepare_for_inference
            return F.linear(x, self.weight, self.bias)
        return self.ops.linear(x, prepared, self.bias)

    def dequantize_kept(self) -> None:
        """Write weights kept quantized (and not yet prepared) into the parameter, dequantized."""
        parts = self.__dict__.pop("_quant_parts", None)
        if not parts:
            return
        self.dequantized_format = "/".join(sorted({w.format for _, w in parts}))
        for start, weight in parts:
            rows = weight.shape[0]
            copy_weight(self.weight[start : start + rows], weight.dequantize(), "weight")

    def load_tensor(self, kind: str, loaded: torch.Tensor, name: str) -> None:
        """Copy checkpoint tensor ``loaded`` ("weight" or "bias") into this layer's parameter.

        Sharded layers override it to keep their slice of the full tensor.
        """
        param = self.weight if kind == "weight" else self.bias
        if param is None:
            raise ValueError(f"checkpoint has {name!r} but the model was built without a bias")
        if kind == "weight" and self.keep_quantized(0, loaded, name):
            return
        copy_weight(param, loaded, name)

    def keep_quantized(self, row_start: int, loaded: Any, name: str) -> bool:
        """Keep ``loaded``'s quantized form as rows ``row_start..`` of the weight, if it has one.

        The parameter is then not written; :meth:`prepare_for_inference` hands the blocks to the
        kernels, or dequantizes them into it where the kernels have none.
        """
        # Imported here: heron.loader's package imports the models, which import this module.
        from heron.loader.quantized import QuantizedTensor

        if not isinstance(loaded, QuantizedTensor):
            return False
        if loaded.dim() != 2 or loaded.shape[1] != self.in_features:
            copy_weight(self.weight, loaded, name)  # names the mismatch
        end = row_start + loaded.shape[0]
        if end > self.weight.shape[0]:
            raise ValueError(
                f"weight {name!r} has {loaded.shape[0]} rows in the checkpoint; rows "
                f"{row_start}..{end} do not fit the model's {self.weight.shape[0]}: the config "
                "does not match the weights"
            )
        parts = self.__dict__.setdefault("_quant_parts", [])
        parts.append((row_start, loaded.quantized()))
        return True

    def prepare_for_inference(self) -> None:
        """Let the platform's kernels lay the loaded weight out for their GEMM, once.

        Doing it per call (what a GEMM library does for an unprepared weight) costs more than the
        matmul itself at decode sizes. Until this runs, the layer is a plain ``F.linear``. A
        weight kept quantized goes to ``prepare_quantized_linear``; where the kernels decline
        it, it is dequantized into the parameter and prepared like any other.
        """
        parts = self.__dict__.get("_quant_parts")
        if parts:
            shape = (self.weight.shape[0], self.in_features)
            whole = quantized_parts_weight(parts, shape)
            prepared = None if whole is None else self.ops.prepare_quantized_linear(whole)
            if prepared is not None:
                del self.__dict__["_quant_parts"]
                self.quant_format = whole.format
                self.__dict__["_prepared"] = prepared
                # The plain weight is never read again: keep its shape, drop its memory.
                self.weight.data = torch.zeros((), dtype=self.weight.dtype).expand(shape)
                return
        self.dequantize_kept()
        self.__dict__["_prepared"] = self.ops.prepare_linear(self.weight)


class FusedLinear(Linear):
    """Several column-parallel linear layers over the same input stacked into one matmul.

    ``output_sizes[i]`` rows of the weight belong to part ``i`` (q, k, v or gate, up), in order.
    Under tensor parallelism they are this rank's rows of each part, which start at row
    ``shard_offsets[i]`` of the part's checkpoint tensor (default: the whole tensor, unsharded).
    """

    def __init__(
        self,
        in_features: int,
        output_sizes: Sequence[int],
        *,
        bias: bool,
        dtype: torch.dtype,
        ops: KernelOps | None = None,
        shard_offsets: Sequence[int] | None = None,
    ) -> None:
        super().__init__(in_features, sum(output_sizes), bias=bias, dtype=dtype, ops=ops)
        self.output_sizes = tuple(output_sizes)
        self.shard_offsets = tuple(shard_offsets) if shard_offsets else (0,) * len(output_sizes)
        if len(self.shard_offsets) != len(self.output_sizes):
            raise ValueError("shard_offsets needs one offset per part")
        offsets = [0]
        for size in self.output_sizes:
            offsets.append(offsets[-1] + size)
        self.offsets = tuple(offsets)

    def load_part(self, part: int, kind: str, loaded: torch.Tensor, name: str) -> None:
        """Copy this rank's rows of checkpoint tensor ``loaded`` (``kind`` is "weight" or
        "bias") into part ``part``."""
        param = self.weight if kind == "weight" else self.bias
        if param is None:
            raise ValueError(f"checkpoint has {name!r} but the model was built without a bias")
        start, end = self.offsets[part], self.offsets[part + 1]
        first = self.shard_offsets[part]
        rows = end - start
        if first or rows != loaded.shape[0]:
            if first + rows > loaded.shape[0]:
                raise ValueError(
                    f"weight {name!r} has {loaded.shape[0]} rows in the checkpoint; this shard "
                    f"needs rows {first}..{first + rows}: the config does not match the weights"
                )
            loaded = loaded[first : first + rows]
        if kind == "weight" and self.keep_quantized(start, loaded, name):
            return
        copy_weight(param[start:end], loaded, name)


class ColumnParallelLinear(Linear):
    """This rank's rows of a linear layer (``y`` columns); ranks' outputs are gathered by the
    caller when it needs them all (the vocabulary-parallel logits).

    ``out_features`` is the full size; it is split with padding, so the last rank may hold rows
    past the end of the checkpoint tensor, which stay zero.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        dtype: torch.dtype,
        ops: KernelOps | None = None,
        tp: TensorParallel = SINGLE,
    ) -> None:
        self.row_start, rows = tp.padded_split(out_features)
        super().__init__(in_features, rows, bias=bias, dtype=dtype, ops=ops)
        self.full_out_features = out_features

    def load_tensor(self, kind: str, loaded: torch.Tensor, name: str) -> None:
        param = self.weight if kind == "weight" else self.bias
        if param is None:
            raise ValueError(f"checkpoint has {name!r} but the model was built without a bias")
        whole = self.row_start == 0 and param.shape[0] == self.full_out_features
        if kind == "weight" and whole and self.keep_quantized(0, loaded, name):
            return
        copy_padded_rows(param, loaded, self.row_start, self.full_out_features, name)


class RowParallelLinear(Linear):
    """This rank's input columns of a linear layer; the partial outputs are summed over the group.

    The input arrives already split (the heads or MLP columns of this rank), so the layer's one
    all-reduce is the only collective between a column-parallel layer and the next norm. The bias
    is added once, after the sum.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        dtype: torch.dtype,
        ops: KernelOps | None = None,
        tp: TensorParallel = SINGLE,
    ) -> None:
        local = tp.split(in_features, "the input features of a row-parallel layer")
        super().__init__(local, out_features, bias=bias, dtype=dtype, ops=ops)
        self.tp = tp
        self.col_start = tp.rank * local

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return super().forward(x)
        prepared = self.__dict__.get("_prepared")
        partial = (
            F.linear(x, self.weight) if prepared is None else self.ops.linear(x, prepared, None)
        )
        out = self.tp.all_reduce(partial)
        return out if self.bias is None else out + self.bias

    def load_tensor(self, kind: str, loaded: torch.Tensor, name: str) -> None:
        if kind == "weight" and self.tp.size > 1:
            if loaded.shape[-1] != self.in_features * self.tp.size:
                raise ValueError(
                    f"weight {name!r} has {loaded.shape[-1]} columns in the checkpoint, the model "
                    f"expects {self.in_features * self.tp.size}: the config does not match"
                )
            loaded = loaded[:, self.col_start : self.col_start + self.in_features]
        super().load_tensor(kind, loaded, name)
