"""The BERT encoders' intermediate activations (run in place on the matmul's output) and their
post-norms (``KernelOps.layer_norm`` with the residual add) against transformers, with the
reference kernel ops and with heron-cpu's (heron_interfaces 1.14)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.activations import ACT2FN

from heron.models import bert
from heron_interfaces.kernel_ops import KernelOps


def _ops(name: str) -> KernelOps:
    if name == "reference":
        return KernelOps()
    heron_cpu_ops = pytest.importorskip("heron_cpu.kernel_ops")
    return heron_cpu_ops.CpuKernelOps()


OPS = ["reference", "heron-cpu"]


@pytest.mark.parametrize("ops_name", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(bert._ACTIVATIONS))
def test_activation_in_place_equals_transformers(
    name: str, dtype: torch.dtype, ops_name: str
) -> None:
    x = (torch.randn(64, 96, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    want = ACT2FN[name](x.clone())
    buffer = x.clone()
    got = bert.activation(name, _ops(ops_name))(buffer)
    assert got.data_ptr() == buffer.data_ptr()  # in place: no second intermediate tensor
    if name != "gelu_new" and ops_name == "reference":
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        return
    # gelu_new is transformers' explicit tanh formula (rounded at each step in bfloat16); torch's
    # fused tanh GELU and heron-cpu's kernels compute each form in float32 without its tail's
    # cancellation: all against the formula in float64, to the dtype's last place.
    exact = ACT2FN[name](x.double())
    tol = 2**-7 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got.double(), exact, rtol=tol, atol=2e-6)


def test_unknown_activation_names_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="hidden_act 'swish' is not supported; one of"):
        bert.activation("swish", KernelOps())


@pytest.mark.parametrize("ops_name", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_norm_adds_the_residual_and_equals_the_plain_sum(
    ops_name: str, dtype: torch.dtype
) -> None:
    cfg = SimpleNamespace(hidden_size=32, layer_norm_eps=1e-12)
    ctx = SimpleNamespace(dtype=dtype, ops=_ops(ops_name))
    layer = bert.DenseNorm(48, cfg, ctx)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        x = torch.randn(5, 48, generator=gen).to(dtype)
        residual = (torch.randn(5, 32, generator=gen) + 3).to(dtype)
        kept = residual.clone()
        dense = torch.nn.functional.linear(x, layer.dense.weight, layer.dense.bias)
        want = torch.nn.functional.layer_norm(
            dense + residual, (32,), layer.LayerNorm.weight, layer.LayerNorm.bias, 1e-12
        )
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(layer(x, residual), want, rtol=tol, atol=tol)
    assert torch.equal(residual, kept)  # the residual itself is left as it was
