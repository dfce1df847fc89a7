"""Conformance of quantized linear layers (API 1.8): ``KernelOps.prepare_quantized_linear``.

A backend may decline a format (None): core then dequantizes, which is always correct. A backend
that accepts one must compute ``x @ weight.dequantize()^T + bias`` with it, for one row (decode)
and many (prefill), in every activation dtype it declares, up to accumulation order (float32:
1e-4; bfloat16: 2e-2, which also admits int8 activations per 32-block as llama.cpp's Q8 ones).
API 1.10 adds ``q4_k`` (256-weight super-blocks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from heron_interfaces.kernel_ops import KernelOps
    from heron_interfaces.platform import Capabilities
    from heron_interfaces.quantization import QuantizedWeight


def random_quantized_weight(fmt: str, rows: int, cols: int, seed: int) -> QuantizedWeight:
    """A weight of ``fmt`` with random values and scales of a trained model's size (~0.01)."""
    import torch

    from heron_interfaces.quantization import GGUF_BLOCK_BYTES, GGUF_BLOCK_WEIGHTS, QuantizedWeight

    gen = torch.Generator().manual_seed(seed)
    if fmt == "int8":
        q = torch.randint(-127, 128, (rows, cols), generator=gen, dtype=torch.int8)
        scales = torch.rand(rows, generator=gen) * 1e-3 + 1e-4
        return QuantizedWeight(format=fmt, shape=(rows, cols), data=q, scales=scales)
    blocks = rows * cols // GGUF_BLOCK_WEIGHTS[fmt]
    raw = torch.randint(0, 256, (blocks, GGUF_BLOCK_BYTES[fmt]), generator=gen, dtype=torch.uint8)
    scale = (torch.rand(blocks, 1, generator=gen) * 2e-3 + 1e-4).half().view(torch.uint8)
    raw[:, :2] = scale.view(blocks, 2)
    if fmt == "q4_1":
        minimum = (-torch.rand(blocks, 1, generator=gen) * 1e-2).half().view(torch.uint8)
        raw[:, 2:4] = minimum.view(blocks, 2)
    if fmt == "q4_k":  # d ~ 2e-3 / 63 per scale step, dmin ~ 1e-2 / 63; 6-bit sc, m random
        raw[:, :2] = (torch.rand(blocks, 1, generator=gen) * 3e-5 + 2e-6).half().view(torch.uint8)
        raw[:, 2:4] = (torch.rand(blocks, 1, generator=gen) * 1.5e-4).half().view(torch.uint8)
    return QuantizedWeight(format=fmt, shape=(rows, cols), data=raw.reshape(rows, -1))


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1", "q4_k", "int8"])
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_quantized_linear_matches_dequantized(
    kernel_ops: KernelOps,
    capabilities: Capabilities,
    backend_device,
    fmt: str,
    dtype_name: str,
    rows: int,
) -> None:
    import torch
    import torch.nn.functional as F

    if dtype_name not in capabilities.dtypes:
        pytest.skip(f"the platform does not declare dtype {dtype_name}")
    dtype = getattr(torch, dtype_name)
    cols = 256 if fmt == "q4_k" else 96  # Q4_K: whole 256-weight super-blocks (API 1.10)
    weight = random_quantized_weight(fmt, 72, cols, seed=rows)
    prepared = kernel_ops.prepare_quantized_linear(weight)
    if prepared is None:
        pytest.skip(f"{kernel_ops.name} keeps no {fmt} weights quantized (core dequantizes them)")
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(rows, cols, generator=gen).to(dtype)
    bias = torch.randn(72, generator=gen).to(dtype)
    expected = F.linear(x.float(), weight.dequantize(), bias.float())
    actual = kernel_ops.linear(x.to(backend_device), prepared, bias.to(backend_device)).cpu()
    assert actual.shape == (rows, 72) and actual.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(actual.float(), expected, rtol=tol, atol=tol)
