"""heron-cpu's many-row quantized loop (AMX-BF16 over weight strips decoded in cache) and the
per-call choice of loop by rows.

The AMX loop rounds each weight to bfloat16 exactly as the dequantizer does (what
``--quantization none`` multiplies) and keeps ``x`` in bfloat16, so two references, over rows
1..300, K with odd block counts and N across every 16- and 32-row tile:

- tight: torch's fp32 product of the same bf16 ``x`` and the weight dequantized to bfloat16, to
  one bf16 rounding of the output (a wrong tile, lane order, tail or bias is off by far more);
- llama.cpp's: against dequantize-then-matmul with the exact weights and unquantized ``x`` on
  llama.cpp's test data, the error per element ``|out - ref| / k`` stays below
  ``MAX_DOT_PRODUCT_ERROR`` (0.02, ``tests/test-quantize-fns.cpp``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

quant = pytest.importorskip("heron_cpu.quant", reason="heron-cpu is not installed")
from heron_interfaces.testing.quantized_suite import random_quantized_weight  # noqa: E402

HAS_AMX = "amx" in quant.available_paths()
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="this CPU has no AMX-BF16")

FORMATS = ["q8_0", "q4_0", "q4_1", "q4_k", "int8"]
# (rows of x, K, N): rows 1..300 (odd x-tile counts, tails of every size), K / 32 odd and even,
# N across the 16-row tiles and 32-row strips; (700, 1536, 9) and (1100, 576, 5) take several
# 1 MiB chunks of x (341 and 910 rows).
SHAPES = [(1, 32, 1), (2, 96, 45), (5, 160, 7), (6, 224, 33), (9, 352, 130), (15, 32, 16),
          (16, 96, 31), (17, 160, 64), (31, 576, 45), (33, 96, 97), (64, 224, 130),
          (100, 1536, 33), (300, 160, 45), (700, 1536, 9), (1100, 576, 5)]  # fmt: skip
Q4K_SHAPES = [(1, 256, 1), (6, 256, 45), (17, 512, 7), (33, 768, 130), (300, 256, 33)]
MAX_DOT_PRODUCT_ERROR = 0.02  # llama.cpp tests/test-quantize-fns.cpp


def _shapes(fmt: str) -> list[tuple[int, int, int]]:
    return Q4K_SHAPES if fmt == "q4_k" else SHAPES


@needs_amx
@pytest.mark.parametrize("fmt", FORMATS)
def test_amx_equals_bf16_weight_product(fmt: str) -> None:
    for i, (rows, k, n) in enumerate(_shapes(fmt)):
        weight = random_quantized_weight(fmt, n, k, seed=i)
        packed = quant.pack(weight)
        gen = torch.Generator().manual_seed(200 + i)
        x = torch.randn(rows, k, generator=gen).bfloat16()
        bias = torch.randn(n, generator=gen).bfloat16() if i % 2 else None
        out = quant.linear(x, packed, bias, path="amx")
        assert out.dtype == torch.bfloat16 and out.shape == (rows, n)
        ref = F.linear(
            x.float(),
            weight.dequantize(torch.bfloat16).float(),
            None if bias is None else bias.float(),
        )
        scale = ref.abs().max().item()
        torch.testing.assert_close(
            out.float(), ref, rtol=2**-8, atol=1e-4 * scale, msg=f"{fmt} {rows, k, n}"
        )


@needs_amx
@pytest.mark.parametrize("fmt", FORMATS)
def test_amx_within_llama_cpp_tolerance(fmt: str) -> None:
    for i, (rows, k, n) in enumerate(_shapes(fmt)):
        weight = random_quantized_weight(fmt, n, k, seed=50 + i)
        packed = quant.pack(weight)
        idx = torch.arange(rows * k, dtype=torch.float64).reshape(rows, k)
        x = (0.1 + 2 * torch.cos(idx + i)).float()  # llama.cpp's test data, offset per shape
        out = quant.linear(x.bfloat16(), packed, path="amx").float()
        ref = F.linear(x, weight.dequantize())
        err = ((out - ref).abs() / k).max().item()
        assert err < MAX_DOT_PRODUCT_ERROR, f"{fmt} {rows, k, n}: {err}"


@needs_amx
def test_amx_strided_rows_batched_shape_and_empty() -> None:
    weight = random_quantized_weight("q4_1", 45, 96, seed=3)
    packed = quant.pack(weight)
    wide = torch.randn(3, 7, 128, generator=torch.Generator().manual_seed(0)).bfloat16()
    x = wide[..., 16:112]  # rows at stride 128, a 3-D batch of 21 rows
    out = quant.linear(x, packed, path="amx")
    ref = F.linear(x.float(), weight.dequantize(torch.bfloat16).float())
    torch.testing.assert_close(out.float(), ref, rtol=2**-8, atol=1e-4 * ref.abs().max().item())
    assert quant.linear(torch.empty(0, 96).bfloat16(), packed, path="amx").shape == (0, 45)


@needs_amx
def test_amx_float32_activations_run_the_exact_loop() -> None:
    """The tiles would round float32 ``x`` to bfloat16: forced ``amx`` runs the fp32 loop."""
    weight = random_quantized_weight("q8_0", 33, 160, seed=4)
    packed = quant.pack(weight)
    x = torch.randn(20, 160, generator=torch.Generator().manual_seed(1))
    out = quant.linear(x, packed, path="amx")
    torch.testing.assert_close(out, F.linear(x, weight.dequantize()), rtol=1e-5, atol=1e-5)


@needs_amx
def test_auto_takes_amx_from_its_row_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(quant.PATH_ENV, raising=False)
    few, many = quant.AMX_MIN_ROWS - 1, quant.AMX_MIN_ROWS
    if quant.auto_path(torch.bfloat16) == "vnni512":
        assert quant.select_path(torch.bfloat16, few) == "vnni512"
        assert quant.select_path(torch.bfloat16, many) == "amx"
        assert quant.select_path(torch.bfloat16, quant.AMX_MAX_ROWS) == "amx"
        assert quant.select_path(torch.bfloat16, quant.AMX_MAX_ROWS + 1) == "dequant"
    assert quant.select_path(torch.float32, 300) == "dequant"
    assert quant.select_path(torch.float32, 1) not in quant.BF16_WEIGHT_PATHS
    weight = random_quantized_weight("q4_0", 70, 96, seed=6)
    packed = quant.pack(weight)
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(2)).bfloat16()
    expected = quant.linear(x, packed, path=quant.select_path(torch.bfloat16, 64))
    assert torch.equal(quant.linear(x, packed), expected)


def test_forced_path_applies_to_every_row_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(quant.PATH_ENV, "dequant")
    assert quant.select_path(torch.bfloat16, 1) == "dequant"
    assert quant.select_path(torch.bfloat16, 300) == "dequant"
    forced = quant.available_paths()[0]
    monkeypatch.setenv(quant.PATH_ENV, forced)
    assert quant.select_path(torch.bfloat16, 64) == forced
    monkeypatch.setenv(quant.PATH_ENV, "tiles")
    with pytest.raises(ValueError, match="HERON_CPU_QUANT_PATH must be one of"):
        quant.select_path(torch.bfloat16, 64)


def test_dequant_path_is_the_bf16_gemm() -> None:
    weight = random_quantized_weight("q4_k", 9, 256, seed=8)
    packed = quant.pack(weight)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(3)).bfloat16()
    out = quant.linear(x, packed, path="dequant")
    assert torch.equal(out, F.linear(x, weight.dequantize(torch.bfloat16)))
