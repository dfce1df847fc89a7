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


def copy_weight(param: torch.Tensor, loaded: torch.Tensor, name: str) -> None:
    """Copy ``loaded`` into ``param`` (casting dtype and device), refusing a shape mismatch."""
    if tuple(param.shape) != tuple(loaded.shape):
        raise ValueError(
            f"weight {name!r} has shape {tuple(loaded.shape)} in the checkpoint but the model "
            f"expects {tuple(param.shape)}; the config does not match the weights"
        )
    with torch.no_grad():
        param.copy_(loaded)


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
        return F.linear(x, self.weight, self.bias)


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
