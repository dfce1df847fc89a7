"""Conformance of encoder attention (API 1.13): ``KernelOps.encoder_attention``.

A backend may have no such kernel (``encoder_attention`` returns None, the default): core then
attends through the backend's non-causal attention or its own SDPA. A backend that returns a
tensor must compute :func:`~heron_interfaces.kernel_ops.encoder_attention_reference`: for the head
sizes of common encoders (MiniLM 32, BERT-base 64), ragged steps with empty and one-token
prompts, prompts past a few hundred tokens, q/k/v read from strided projection rows, in every
dtype it declares. Where it declines a case, the case is skipped with its shape named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from heron_interfaces.kernel_ops import KernelOps
    from heron_interfaces.platform import Capabilities

STEPS = ((1,), (5, 0, 17, 1), (130, 64, 3), (300,))
"""Prompt lengths of one step each: a lone token, ragged with an empty prompt, a long prompt."""


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("head_size", [32, 64])
@pytest.mark.parametrize("lengths", STEPS)
def test_encoder_attention_matches_reference(
    kernel_ops: KernelOps,
    capabilities: Capabilities,
    backend_device,
    dtype_name: str,
    head_size: int,
    lengths: tuple[int, ...],
) -> None:
    import torch

    from heron_interfaces.kernel_ops import encoder_attention_reference

    if dtype_name not in capabilities.dtypes:
        pytest.skip(f"the platform does not declare dtype {dtype_name}")
    dtype = getattr(torch, dtype_name)
    heads = 3
    width = heads * head_size
    gen = torch.Generator().manual_seed(head_size + len(lengths))
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    # Two spare columns per row: q, k and v are read from strided rows, as from a projection.
    qkv = torch.randn(bounds[-1], 3 * width + 2, generator=gen).to(dtype)
    starts = torch.tensor(bounds, dtype=torch.int32)
    scale = head_size**-0.5
    actual = kernel_ops.encoder_attention(
        qkv.to(backend_device)[:, : 3 * width], starts.to(backend_device), heads, head_size, scale
    )
    if actual is None:
        pytest.skip(f"{kernel_ops.name} has no encoder attention for head size {head_size}")
    expected = encoder_attention_reference(qkv.double(), starts, heads, head_size, scale)
    assert actual.shape == (bounds[-1], width) and actual.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(actual.cpu().double(), expected, rtol=tol, atol=tol)


def test_default_has_no_encoder_attention(reference_ops: KernelOps) -> None:
    """The base class declines (core attends itself); the reference attends each prompt alone."""
    import torch
    import torch.nn.functional as F

    from heron_interfaces.kernel_ops import encoder_attention_reference

    qkv = torch.randn(7, 3 * 2 * 4, dtype=torch.float64)
    starts = torch.tensor([0, 3, 3, 7], dtype=torch.int32)
    assert reference_ops.encoder_attention(qkv, starts, 2, 4, 0.5) is None
    out = encoder_attention_reference(qkv, starts, 2, 4, 0.5)
    heads = qkv[3:7].view(4, 3, 2, 4)
    q, k, v = (heads[:, i].transpose(0, 1) for i in range(3))
    alone = F.scaled_dot_product_attention(q, k, v, scale=0.5).transpose(0, 1).reshape(4, 8)
    torch.testing.assert_close(out[3:7], alone)
    assert not torch.allclose(out[:3], encoder_attention_reference(qkv[:3], starts[:2], 2, 4, 2.0))
