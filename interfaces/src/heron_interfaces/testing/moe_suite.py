"""Conformance of fused mixture-of-experts (API 1.11): ``KernelOps.prepare_moe`` / ``fused_moe``.

A backend may have no fused experts (``prepare_moe`` returns None, the default): core then runs
:func:`~heron_interfaces.kernel_ops.moe_reference` itself. A backend that prepares them must
compute that reference with them: for one token (decode) and many (prefill), experts that get no
token, routing weights in float32 (Mixtral) or the activations' dtype (Qwen-MoE), in every dtype
it declares, up to accumulation order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from heron_interfaces.kernel_ops import KernelOps
    from heron_interfaces.platform import Capabilities

EXPERTS, HIDDEN, INTERMEDIATE, TOP_K = 6, 64, 96, 2


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("tokens", [1, 5, 40])
@pytest.mark.parametrize("weights_in_x_dtype", [False, True])
def test_fused_moe_matches_reference(
    kernel_ops: KernelOps,
    capabilities: Capabilities,
    backend_device,
    dtype_name: str,
    tokens: int,
    weights_in_x_dtype: bool,
) -> None:
    import torch

    from heron_interfaces.kernel_ops import moe_reference

    if dtype_name not in capabilities.dtypes:
        pytest.skip(f"the platform does not declare dtype {dtype_name}")
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(tokens)
    w13 = (torch.randn(EXPERTS, 2 * INTERMEDIATE, HIDDEN, generator=gen) * 0.1).to(dtype)
    w2 = (torch.randn(EXPERTS, HIDDEN, INTERMEDIATE, generator=gen) * 0.1).to(dtype)
    prepared = kernel_ops.prepare_moe(w13.to(backend_device), w2.to(backend_device))
    if prepared is None:
        pytest.skip(f"{kernel_ops.name} has no fused experts (core runs the reference)")
    x = torch.randn(tokens, HIDDEN, generator=gen).to(dtype)
    logits = torch.randn(tokens, EXPERTS - 1, generator=gen)  # the last expert gets no token
    weights, ids = torch.topk(torch.softmax(logits, dim=-1), TOP_K, dim=-1)
    if weights_in_x_dtype:
        weights = weights.to(dtype)
    expected = moe_reference(x.float(), w13.float(), w2.float(), ids, weights.float())
    actual = kernel_ops.fused_moe(
        x.to(backend_device), prepared, ids.to(backend_device), weights.to(backend_device)
    ).cpu()
    assert actual.shape == (tokens, HIDDEN) and actual.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(actual.float(), expected, rtol=tol, atol=tol)


def test_default_has_no_fused_experts(reference_ops: KernelOps) -> None:
    """The base class declines (core runs the reference) and its fused_moe is the reference."""
    import torch

    from heron_interfaces.kernel_ops import moe_reference

    w13, w2 = torch.randn(2, 8, 4), torch.randn(2, 4, 4)
    assert reference_ops.prepare_moe(w13, w2) is None
    x, ids, weights = torch.randn(3, 4), torch.tensor([[0, 1], [1, 0], [1, 1]]), torch.rand(3, 2)
    assert torch.equal(
        reference_ops.fused_moe(x, (w13, w2), ids, weights), moe_reference(x, w13, w2, ids, weights)
    )
