"""heron-cpu's int8-activation quantized loops (AVX-512 VNNI, AVX-VNNI) on every one this CPU runs.

These loops quantize ``x`` to int8 per 32-block (``dx = max|x| / 127``, ``qx = round(x / dx)``,
half to even) and take integer dot products with the weight's blocks. Two checks per loop, over
many shapes (K with odd and even block counts, N across every tile, 1..300 rows):

- exactness: the result equals a float64 emulation of exactly that arithmetic (the same int8
  activations, the weight's integer values, the scales and, for Q4, the fp32 block sums of x) up
  to fp32 accumulation, so a wrong lane order, scale or tail is caught at ~1e-5, not hidden in
  the quantization error;
- llama.cpp's tolerance: against dequantize-then-matmul with unquantized x, the dot product
  error per element ``|out - ref| / k`` stays below ``MAX_DOT_PRODUCT_ERROR`` (0.02) of
  llama.cpp's ``tests/test-quantize-fns.cpp`` on its test data (``0.1 + 2 cos(i + offset)``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

quant = pytest.importorskip("heron_cpu.quant", reason="heron-cpu is not installed")
from heron_interfaces.testing.quantized_suite import random_quantized_weight  # noqa: E402

INT8_PATHS = [p for p in quant.INT8_PATHS if p in quant.available_paths()]
pytestmark = pytest.mark.skipif(not INT8_PATHS, reason="this CPU has no VNNI")

FORMATS = ["q8_0", "q4_0", "q4_1", "q4_k", "int8"]
# (rows of x, K, N): K/32 = 1, 3, 5, 7, 11 (odd: a half pair at the end) and 2, 18, 48.
SHAPES = [(1, 32, 1), (1, 64, 5), (1, 96, 45), (2, 224, 7), (3, 352, 130), (4, 96, 130),
          (5, 160, 45), (1, 576, 77), (8, 224, 33), (13, 96, 7), (16, 32, 45), (2, 1536, 9),
          (6, 576, 131), (16, 160, 64), (33, 96, 45), (300, 160, 7)]  # fmt: skip
Q4K_SHAPES = [(1, 256, 1), (1, 256, 45), (2, 512, 7), (3, 768, 130), (5, 256, 45), (16, 1536, 33),
              (64, 256, 9)]  # fmt: skip
MAX_DOT_PRODUCT_ERROR = 0.02  # llama.cpp tests/test-quantize-fns.cpp


@pytest.fixture(params=INT8_PATHS)
def path(request: pytest.FixtureRequest) -> str:
    return request.param


def _weight_ints(packed: quant.PackedQuant) -> torch.Tensor:
    """The weight's integer values ``[n, k / 32, 32]`` (Q4: 0..15, Q8: -128..127)."""
    nb = packed.k // 32
    if packed.mins is None:
        return packed.qs.view(torch.int8).reshape(packed.n, nb, 32).double()
    raw = packed.qs.reshape(packed.n, nb, 16)
    return torch.cat([raw & 15, raw >> 4], dim=-1).double()


def _emulate(x: torch.Tensor, packed: quant.PackedQuant, bias: torch.Tensor | None) -> torch.Tensor:
    """float64 of exactly what the int8 loops compute, from fp32 ``x`` ``[m, k]``."""
    m, nb = x.shape[0], packed.k // 32
    xb = x.float().reshape(m, nb, 32)
    dx = xb.abs().amax(dim=-1) / 127.0
    inv = torch.where(dx != 0, 1.0 / dx, torch.zeros_like(dx))
    qx = torch.round(xb * inv.unsqueeze(-1)).double()
    dots = torch.einsum("mbt,nbt->mnb", qx, _weight_ints(packed))
    out = (dots * packed.d.double().unsqueeze(0) * dx.double().unsqueeze(1)).sum(-1)
    if packed.mins is not None:
        out += xb.sum(-1).double() @ packed.mins.double().T
    if bias is not None:
        out += bias.double()
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_loops_equal_their_emulation(path: str, fmt: str) -> None:
    for i, (rows, k, n) in enumerate(Q4K_SHAPES if fmt == "q4_k" else SHAPES):
        packed = quant.pack(random_quantized_weight(fmt, n, k, seed=i))
        gen = torch.Generator().manual_seed(100 + i)
        x = torch.randn(rows, k, generator=gen)
        if i % 3 == 0:
            x[:, :32] = 0.0  # an all-zero block: dx = 0
        bias = torch.randn(n, generator=gen) if i % 2 else None
        out = quant.linear(x, packed, bias, path=path)
        expected = _emulate(x, packed, bias)
        scale = expected.abs().max().item() + 1e-3
        torch.testing.assert_close(
            out.double(), expected, rtol=2e-5, atol=2e-5 * scale, msg=f"{fmt} {rows, k, n}"
        )


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1"])
def test_f16_scales_give_the_same_bits(path: str, fmt: str) -> None:
    """The VNNI loop reading the f16 scales and minimums (GGUF formats) computes exactly what it
    computes from the fp32 ones: the same values, fewer bytes."""
    for i, (rows, k, n) in enumerate(SHAPES):
        packed = quant.pack(random_quantized_weight(fmt, n, k, seed=i))
        assert packed.d16 is not None
        fp32_only = dataclasses.replace(packed, d16=None, mins16=None)
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(rows, k, generator=torch.Generator().manual_seed(i)).to(dtype)
            out = quant.linear(x, packed, path=path)
            assert torch.equal(out, quant.linear(x, fp32_only, path=path)), (fmt, rows, k, n)


@pytest.mark.parametrize("fmt", FORMATS)
def test_within_llama_cpp_dot_product_error(path: str, fmt: str) -> None:
    for i, (rows, k, n) in enumerate(Q4K_SHAPES if fmt == "q4_k" else SHAPES):
        weight = random_quantized_weight(fmt, n, k, seed=i)
        packed = quant.pack(weight)
        offset = torch.arange(rows).unsqueeze(1) * 0.37 + i
        x = 0.1 + 2.0 * torch.cos(torch.arange(k).float() + offset)  # llama.cpp's test data
        out = quant.linear(x, packed, path=path)
        reference = F.linear(x.double(), weight.dequantize().double())
        error = ((out.double() - reference).abs() / k).max().item()
        assert error < MAX_DOT_PRODUCT_ERROR, (fmt, rows, k, n, error)


@pytest.mark.parametrize("fmt", ["q4_1", "q8_0", "q4_k"])
def test_bfloat16_activations_round_once(path: str, fmt: str) -> None:
    packed = quant.pack(random_quantized_weight(fmt, 130, 768, seed=3))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 768, generator=gen).bfloat16()
    bias = torch.randn(130, generator=gen).bfloat16()
    out = quant.linear(x, packed, bias, path=path)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 130)
    expected = _emulate(x.float(), packed, bias.float())
    torch.testing.assert_close(out.double(), expected.bfloat16().double(), rtol=8e-3, atol=1e-3)


def test_strided_rows_and_batched_shape(path: str) -> None:
    packed = quant.pack(random_quantized_weight("q4_1", 45, 96, seed=3))
    wide = torch.randn(3, 2, 128, generator=torch.Generator().manual_seed(0))
    x = wide[..., 16:112]
    out = quant.linear(x, packed, path=path)
    expected = _emulate(x.reshape(-1, 96), packed, None).view(3, 2, 45)
    torch.testing.assert_close(out.double(), expected, rtol=2e-5, atol=2e-5)


def test_auto_picks_vnni_for_bfloat16_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """bfloat16 activations run VNNI by default, float32 ones the exact fp32 loop; the
    environment variable forces any loop, and a name this CPU lacks is refused by name."""
    monkeypatch.delenv(quant.PATH_ENV, raising=False)
    packed = quant.pack(random_quantized_weight("q4_1", 64, 576, seed=1))
    x = torch.randn(1, 576).bfloat16()
    if "vnni512" in INT8_PATHS:
        assert quant.auto_path(torch.bfloat16) == "vnni512"
        assert torch.equal(quant.linear(x, packed), quant.linear(x, packed, path="vnni512"))
    assert quant.auto_path(torch.float32) not in quant.INT8_PATHS
    monkeypatch.setenv(
        quant.PATH_ENV, "avx512" if "avx512" in quant.available_paths() else "portable"
    )
    assert quant.auto_path(torch.bfloat16) not in quant.INT8_PATHS
    forced = quant.auto_path(torch.bfloat16)
    assert torch.equal(quant.linear(x, packed), quant.linear(x, packed, path=forced))
    monkeypatch.setenv(quant.PATH_ENV, "sse9")
    with pytest.raises(ValueError, match="HERON_CPU_QUANT_PATH must be one of"):
        quant.linear(x, packed)
