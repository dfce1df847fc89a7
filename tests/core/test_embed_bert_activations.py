"""The BERT encoders' intermediate activations (run in place on the matmul's output) equal
transformers' ``ACT2FN`` of the same name, in float32 and bfloat16, and write into their input."""

from __future__ import annotations

import pytest
import torch
from transformers.activations import ACT2FN

from heron.models import bert


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(bert._ACTIVATIONS))
def test_activation_in_place_equals_transformers(name: str, dtype: torch.dtype) -> None:
    x = (torch.randn(64, 96, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    want = ACT2FN[name](x.clone())
    buffer = x.clone()
    got = bert._ACTIVATIONS[name](buffer)
    assert got.data_ptr() == buffer.data_ptr()  # in place: no second intermediate tensor
    if name != "gelu_new":
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        return
    # gelu_new is transformers' explicit tanh formula (rounded at each step in bfloat16), torch's
    # fused tanh GELU here: both against the formula in float64, to the dtype's last place.
    exact = ACT2FN[name](x.double())
    tol = 2**-7 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(got.double(), exact, rtol=tol, atol=1e-6)


def test_dense_norm_adds_the_residual_in_place_and_equals_the_plain_sum() -> None:
    from types import SimpleNamespace

    cfg = SimpleNamespace(hidden_size=32, layer_norm_eps=1e-12)
    ctx = SimpleNamespace(dtype=torch.float32, ops=None)
    layer = bert.DenseNorm(48, cfg, ctx)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        x, residual = torch.randn(5, 48, generator=gen), torch.randn(5, 32, generator=gen)
        kept = residual.clone()
        want = torch.nn.functional.layer_norm(
            x @ layer.dense.weight.T + layer.dense.bias + residual,
            (32,),
            layer.LayerNorm.weight,
            layer.LayerNorm.bias,
            1e-12,
        )
        torch.testing.assert_close(layer(x, residual), want)
    assert torch.equal(residual, kept)  # the residual itself is left as it was
