"""Prepacked bfloat16 CPU weights give the same numbers as the plain matmul, for any row count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from heron.layers import Linear
from heron.layers.linear import cpu_packed_weight, pack_linear_weights

pytestmark = pytest.mark.skipif(
    cpu_packed_weight(torch.zeros(2, 2, dtype=torch.bfloat16)) is None,
    reason="this CPU or torch build has no oneDNN bfloat16 GEMM to pack for",
)


@pytest.mark.parametrize("rows", [1, 5, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_plain(rows: int, bias: bool) -> None:
    torch.manual_seed(rows)
    layer = Linear(96, 80, bias=bias, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.normal_()
        if bias:
            layer.bias.normal_()
    weight = layer.weight.detach().clone()
    x = torch.randn(rows, 96, dtype=torch.bfloat16)
    expected = F.linear(x, weight, layer.bias)
    assert pack_linear_weights(layer) == 1
    assert not hasattr(layer, "weight") or "weight" not in layer._parameters
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_float32_layers_stay_unpacked() -> None:
    layer = Linear(16, 16, bias=False, dtype=torch.float32)
    assert pack_linear_weights(layer) == 0
    assert "weight" in layer._parameters


@pytest.mark.parametrize("tied", [True, False])
def test_packed_model_logits_match_unpacked(tmp_path, tied: bool) -> None:
    """A whole bfloat16 model, tied or untied output projection, packed or not: same logits."""
    from model_utils import KERNEL_FRIENDLY, Harness, make_context, make_tiny_model_dir

    from heron.loader import build_model, load_model_source

    folder = make_tiny_model_dir(tmp_path, "llama", tie_word_embeddings=tied, **KERNEL_FRIENDLY)
    source = load_model_source(str(folder))
    ctx = make_context(dtype=torch.bfloat16, block_size=16)
    plain = build_model(source, ctx)
    packed = build_model(source, ctx)
    packed.prepare_for_inference()
    ids = list(range(3, 40))
    logits = []
    for model in (plain, packed):
        harness = Harness(model, ctx)
        seq = harness.add(len(ids) + 1)
        logits.append(harness.step({seq: ids})[seq])
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
