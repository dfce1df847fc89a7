"""Linear layers whose weights load from Hugging Face checkpoints, fused or not.

Fusing q/k/v (and gate/up) into one matmul reads the activations once instead of three times;
the checkpoint still stores them separately, so a fused layer knows the row range of each part
and copies each checkpoint tensor into its slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Rows per matmul the packed layout is tuned for: a decode step of a busy batch.
PACK_BATCH_HINT = 64


def copy_weight(param: torch.Tensor, loaded: torch.Tensor, name: str) -> None:
    """Copy ``loaded`` into ``param`` (casting dtype and device), refusing a shape mismatch."""
    if tuple(param.shape) != tuple(loaded.shape):
        raise ValueError(
            f"weight {name!r} has shape {tuple(loaded.shape)} in the checkpoint but the model "
            f"expects {tuple(param.shape)}; the config does not match the weights"
        )
    with torch.no_grad():
        param.copy_(loaded)


def cpu_packed_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """The oneDNN-prepacked copy of a bfloat16 CPU weight, or ``None`` where it does not apply.

    oneDNN's bf16 GEMM reorders the weight into a blocked layout on every call; doing it once at
    load makes decode-sized matmuls ~1.5x faster with bit-identical results.
    """
    if (
        weight.device.type != "cpu"
        or weight.dtype != torch.bfloat16
        or not torch.backends.mkldnn.is_available()
        or not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    ):
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_BATCH_HINT)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def pack_linear_weights(model: nn.Module) -> int:
    """Prepack every :class:`Linear` of ``model`` that benefits; returns how many were packed."""
    count = 0
    for module in model.modules():
        if isinstance(module, Linear):
            module.pack_for_inference()
            count += "_packed" in module.__dict__
    return count


class Linear(nn.Module):
    """``y = x W^T + b`` with weight ``[out_features, in_features]`` like ``torch.nn.Linear``.

    Parameters are created uninitialised in ``dtype`` (and on the ambient device) because the
    checkpoint overwrites them; initialising random weights first would only cost time.
    """

    def __init__(
        self, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype
    ) -> None:
        super().__init__()
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.__dict__.get("_packed")
        if packed is not None:
            return packed_linear(x, packed, self.bias)
        return F.linear(x, self.weight, self.bias)

    def pack_for_inference(self) -> None:
        """Swap the weight for the CPU GEMM library's prepacked layout, once, after loading.

        Packing is what the matmul would otherwise redo on every call; the original weight is
        dropped so the model does not hold two copies. Only where :func:`cpu_packed_weight` says
        the layout helps; otherwise nothing changes.
        """
        packed = cpu_packed_weight(self.weight)
        if packed is None:
            return
        del self.weight
        self.register_buffer("packed_weight", packed, persistent=False)
        self.__dict__["_packed"] = packed


class FusedLinear(Linear):
    """Several linear layers over the same input stacked into one matmul.

    ``output_sizes[i]`` rows of the weight belong to part ``i`` (q, k, v or gate, up), in order.
    """

    def __init__(
        self,
        in_features: int,
        output_sizes: Sequence[int],
        *,
        bias: bool,
        dtype: torch.dtype,
    ) -> None:
        super().__init__(in_features, sum(output_sizes), bias=bias, dtype=dtype)
        self.output_sizes = tuple(output_sizes)
        offsets = [0]
        for size in self.output_sizes:
            offsets.append(offsets[-1] + size)
        self.offsets = tuple(offsets)

    def load_part(self, part: int, kind: str, loaded: torch.Tensor, name: str) -> None:
        """Copy checkpoint tensor ``loaded`` (``kind`` is "weight" or "bias") into part ``part``."""
        param = self.weight if kind == "weight" else self.bias
        if param is None:
            raise ValueError(f"checkpoint has {name!r} but the model was built without a bias")
        start, end = self.offsets[part], self.offsets[part + 1]
        copy_weight(param[start:end], loaded, name)
