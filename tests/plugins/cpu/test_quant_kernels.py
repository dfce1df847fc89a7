"""heron-cpu's quantized linear loops against dequantize-then-matmul, on every path this CPU runs.

``heron_cpu.quant`` keeps GGUF Q8_0/Q4_0/Q4_1 and int8 weights in blocks; each loop (AVX-512,
AVX2, portable, ``dequant``, and auto, which picks a loop by rows) must
give ``x @ W^T + b`` for ``W = QuantizedWeight.dequantize()`` (the reference decode of
heron_interfaces) up to the order of the fp32 sums, over rows 1..300, K odd multiples of the
block and N not a multiple of any tile. The int8-activation loops (VNNI, the default for a few
rows of bfloat16 activations where the CPU has it) are tested in test_quant_int8.py, the
many-row AMX loop in test_quant_amx.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

quant = pytest.importorskip("heron_cpu.quant", reason="heron-cpu is not installed")
from heron_interfaces.quantization import QuantizedWeight  # noqa: E402
from heron_interfaces.testing.quantized_suite import random_quantized_weight  # noqa: E402

FORMATS = ["q8_0", "q4_0", "q4_1", "q4_k", "int8"]
# (rows of x, K, N): K = 32 x odd; N = 1, 7, 45, 130 cross every tile boundary.
SHAPES = [(1, 32, 1), (1, 96, 45), (2, 224, 7), (3, 352, 130), (4, 96, 130), (5, 160, 45),
          (8, 224, 33), (13, 96, 7), (16, 32, 45), (17, 160, 130), (33, 96, 45), (64, 224, 130),
          (300, 160, 7)]  # fmt: skip
# Q4_K: K in whole 256-weight super-blocks (1, 2, 3 and 6 of them).
Q4K_SHAPES = [(1, 256, 1), (1, 256, 45), (2, 512, 7), (3, 768, 130), (5, 256, 45), (16, 1536, 33),
              (17, 512, 130), (33, 256, 45)]  # fmt: skip
COLS = {"q4_k": 256}  # the single-shape tests' K (else 96 / 224)


def _shapes(fmt: str) -> list[tuple[int, int, int]]:
    return Q4K_SHAPES if fmt == "q4_k" else SHAPES


FP32_PATHS = [
    p for p in quant.available_paths() if p not in quant.INT8_PATHS + quant.BF16_WEIGHT_PATHS
]


@pytest.fixture(params=["auto", "dequant", *FP32_PATHS])
def path(request: pytest.FixtureRequest) -> str:
    return request.param


def _reference(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.float(), weight.dequantize(), None if bias is None else bias.float())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loops_match_dequantized_matmul(path: str, fmt: str, dtype: torch.dtype) -> None:
    for i, (rows, k, n) in enumerate(_shapes(fmt)):
        weight = random_quantized_weight(fmt, n, k, seed=i)
        packed = quant.pack(weight)
        gen = torch.Generator().manual_seed(i)
        x = torch.randn(rows, k, generator=gen).to(dtype)
        bias = torch.randn(n, generator=gen).to(dtype) if i % 2 else None
        runs = quant.select_path(dtype, rows) if path == "auto" else path
        if runs in quant.INT8_PATHS or runs == "amx":
            continue  # int8 activations: test_quant_int8.py; AMX: test_quant_amx.py
        out = quant.linear(x, packed, bias, path=path)
        expected = _reference(x, weight, bias)
        assert out.dtype == dtype and out.shape == (rows, n)
        if dtype == torch.float32:
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5, msg=f"{rows, k, n}")
        elif runs == "dequant":
            # The GEMM path multiplies the weight dequantized to bf16, as --quantization none.
            plain = F.linear(x, weight.dequantize(dtype), bias)
            torch.testing.assert_close(out, plain, rtol=8e-3, atol=1e-3)
        else:  # one rounding of the fp32 sum to bf16, ± one ulp for the summation order
            torch.testing.assert_close(out, expected.to(dtype), rtol=8e-3, atol=1e-3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_strided_rows_and_batched_shape(path: str, fmt: str) -> None:
    k = COLS.get(fmt, 96)
    weight = random_quantized_weight(fmt, 45, k, seed=3)
    packed = quant.pack(weight)
    wide = torch.randn(3, 2, k + 32, generator=torch.Generator().manual_seed(0))
    x = wide[..., 16 : k + 16]  # rows at stride k + 32, a 3-D batch
    out = quant.linear(x, packed, path=path)
    expected = _reference(x.reshape(-1, k), weight, None).view(3, 2, 45)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_compiled_dequantize_is_exact(fmt: str) -> None:
    """The prefill path's decoder rounds exactly as the reference (and core's loader) does."""
    weight = random_quantized_weight(fmt, 37, COLS.get(fmt, 224), seed=5)
    packed = quant.pack(weight)
    assert torch.equal(packed.dequantize(torch.float32), weight.dequantize())
    assert torch.equal(packed.dequantize(torch.bfloat16), weight.dequantize(torch.bfloat16))


def test_four_bit_layout_reads_fewer_bytes() -> None:
    """The one-row loop streams a GGUF Q4 weight at 0.625 bytes per weight and Q8_0 at 1.0625
    (the file's f16 scales: 20 and 34 bytes per block), what makes decode faster; formats whose
    scales are not f16 (Q4_K's products, int8's per-channel fp32) stream fp32 ones (24, 36)."""
    for fmt in ("q4_0", "q4_1"):
        assert quant.pack(random_quantized_weight(fmt, 64, 576, seed=0)).nbytes == 64 * 576 * 5 // 8
    q8 = quant.pack(random_quantized_weight("q8_0", 64, 576, seed=0))
    assert q8.nbytes == 64 * 576 * 17 // 16
    q4_k = quant.pack(random_quantized_weight("q4_k", 64, 512, seed=0))
    assert q4_k.d16 is None and q4_k.nbytes == 64 * 512 * 3 // 4


def test_f16_scales_equal_the_fp32_ones() -> None:
    """The f16 copies hold exactly the fp32 scales and minimums; a Q4_0 block whose -8 d leaves
    float16's range keeps fp32 only."""
    for fmt in ("q8_0", "q4_0", "q4_1"):
        packed = quant.pack(random_quantized_weight(fmt, 45, 224, seed=1))
        assert packed.d16 is not None and torch.equal(packed.d16.float(), packed.d)
        if packed.mins is not None:
            assert torch.equal(packed.mins16.float(), packed.mins)
    weight = random_quantized_weight("q4_0", 3, 64, seed=2)
    data = weight.data.clone().view(torch.uint8).reshape(3, 2, 18)
    data[0, 0, :2] = torch.tensor([60000.0], dtype=torch.float16).view(torch.uint8)
    big = QuantizedWeight(format="q4_0", shape=(3, 64), data=data.reshape(weight.data.shape))
    packed = quant.pack(big)
    assert packed.d16 is None and packed.mins16 is None and packed.mins[0, 0].item() == -480000.0


def test_bad_arguments_are_named() -> None:
    packed = quant.pack(random_quantized_weight("q8_0", 8, 64, seed=0))
    with pytest.raises(ValueError, match="K = 32"):
        quant.linear(torch.randn(1, 32), packed)
    with pytest.raises(ValueError, match="bias must have shape"):
        quant.linear(torch.randn(1, 64), packed, torch.randn(3))
    with pytest.raises(ValueError, match="path must be one of"):
        quant.linear(torch.randn(1, 64), packed, path="sse9")
    assert quant.pack(QuantizedWeight(format="int8", shape=(2, 40), data=torch.zeros(2, 40, dtype=torch.int8), scales=torch.ones(2))) is None  # fmt: skip
