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

from heron_interfaces.kernel_ops import KernelOps


def copy_weight(param: torch.Tensor, loaded: torch.Tensor, name: str) -> None:
    """Copy ``loaded`` into ``param`` (casting dtype and device), refusing a shape mismatch."""
    if tuple(param.shape) != tuple(loaded.shape):
        raise ValueError(
            f"weight {name!r} has shape {tuple(loaded.shape)} in the checkpoint but the model "
            f"expects {tuple(param.shape)}; the config does not match the weights"
        )
    with torch.no_grad():
        param.copy_(loaded)


def prepare_linear_weights(model: nn.Module) -> int:
    """Hand every :class:`Linear` of ``model`` to its kernels' ``prepare_linear``; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, Linear):
            module.prepare_for_inference()
            count += 1
    return count


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prepared = self.__dict__.get("_prepared")
        if prepared is None:
            return F.linear(x, self.weight, self.bias)
        return self.ops.linear(x, prepared, self.bias)

    def prepare_for_inference(self) -> None:
        """Let the platform's kernels lay the loaded weight out for their GEMM, once.

        Doing it per call (what a GEMM library does for an unprepared weight) costs more than the
        matmul itself at decode sizes. Until this runs, the layer is a plain ``F.linear``.
        """
        self.__dict__["_prepared"] = self.ops.prepare_linear(self.weight)


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
        ops: KernelOps | None = None,
    ) -> None:
        super().__init__(in_features, sum(output_sizes), bias=bias, dtype=dtype, ops=ops)
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
