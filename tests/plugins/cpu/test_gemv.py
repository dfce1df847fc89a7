"""The bf16 linear kernels against a plain fp32 torch reference, on every path this CPU runs.

``heron_cpu.gemv.linear_small`` (plain weight; its auto, AVX512-BF16, AMX and portable loops) and
``heron_cpu.gemm.linear_packed`` (the ``packed`` path here: the weight packed into panels first).

The kernels accumulate in fp32 and round once, so they may differ from the reference only by the
order of the fp32 sums: at most one bf16 ulp, and on almost no elements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

gemv = pytest.importorskip("heron_cpu.gemv", reason="heron-cpu is not installed")
from heron_cpu import gemm  # noqa: E402 - after the skip

PATHS = gemv.available_paths() + (["packed"] if gemm.available() else [])
BF16 = torch.bfloat16


@pytest.fixture(params=["auto", *PATHS])
def path(request: pytest.FixtureRequest) -> str:
    return request.param


def _linear(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    out: torch.Tensor | None = None,
    *,
    path: str,
) -> torch.Tensor:
    if path == "packed":
        packed = gemm.pack(w)
        assert torch.equal(packed.unpack(), w)
        return gemm.linear_packed(x, packed, b, out)
    return gemv.linear_small(x, w, b, out, path=path)


@pytest.fixture
def threads() -> Iterator[None]:
    """Restores torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x.float() @ w.float().T
    if b is not None:
        y = y + b.float()
    return y.to(BF16)


def _inputs(
    m: int, n: int, k: int, bias: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(BF16)
    w = (torch.randn(n, k, generator=gen) * max(k, 1) ** -0.5).to(BF16)
    b = torch.randn(n, generator=gen).to(BF16) if bias else None
    return x, w, b


def _assert_matches(y: torch.Tensor, ref: torch.Tensor) -> None:
    assert y.dtype == BF16 and y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-2, atol=1e-3)
    if ref.numel() >= 100:
        exact = (y == ref).float().mean().item()
        assert exact >= 0.99, f"only {exact:.2%} of elements equal the reference"


# Rows: each count up to MAX_ROWS, then the pass boundaries of the kernels (4 rows per dpbf16
# pass, 8 per packed pass, 16 per AMX pass, 64 per packed chunk) and past them. K: a tail of 8 columns, SmolLM2's 576 and 1536.
ROWS = sorted({*range(1, gemv.MAX_ROWS + 1), 9, 16, 17, 33, 64, 71})


@pytest.mark.parametrize("k", [40, 576, 1536])
@pytest.mark.parametrize("m", ROWS)
def test_matches_reference(path: str, m: int, k: int) -> None:
    # N = 1000 splits over threads, into 32-row AMX blocks and 4-row dpbf16 blocks with tails.
    x, w, b = _inputs(m, 1000, k, bias=m % 2 == 1, seed=m * 7 + k)
    _assert_matches(_linear(x, w, b, path=path), _reference(x, w, b))


@pytest.mark.parametrize("n", [1, 3, 7, 15, 16, 17, 31, 33, 47, 48, 49, 100])
@pytest.mark.parametrize("m", [1, 3, 8])
def test_row_tails(path: str, m: int, n: int) -> None:
    """Weight-row counts that leave partial 4-row, 16-row and 48-column blocks; odd K."""
    for bias in (False, True):
        x, w, b = _inputs(m, n, 576 + m % 2, bias=bias, seed=n)
        _assert_matches(_linear(x, w, b, path=path), _reference(x, w, b))


@pytest.mark.parametrize("m", [1, 2, 5])
def test_strided_rows_and_out(path: str, m: int) -> None:
    """x as a column slice of a wider tensor (row stride > K), out given and returned."""
    base = torch.randn(m, 640 + 40).to(BF16)
    x = base[:, 24 : 24 + 640]
    assert x.stride() == (680, 1)
    _, w, b = _inputs(m, 96, 640, bias=True)
    out = torch.full((m, 96), float("nan"), dtype=BF16)
    y = _linear(x, w, b, out, path=path)
    assert y is out
    _assert_matches(y, _reference(x, w, b))


def test_paths_and_threads_agree(threads: None) -> None:
    """Each path splits the rows of the weight, never a dot product: thread counts agree exactly."""
    x, w, b = _inputs(3, 3072, 576, bias=True)
    torch.set_num_threads(1)
    serial = {p: _linear(x, w, b, path=p) for p in PATHS}
    torch.set_num_threads(2)
    for p in PATHS:
        assert torch.equal(_linear(x, w, b, path=p), serial[p]), p


def test_interleaves_with_onednn(path: str) -> None:
    """oneDNN's bf16 matmul also uses AMX tiles: each side must configure its own, every call."""
    x, w, _ = _inputs(5, 960, 576, bias=False)
    big = torch.randn(64, 576).to(BF16)
    expected_big = torch.nn.functional.linear(big, w)
    ref = _reference(x, w, None)
    for _ in range(10):
        assert torch.equal(torch.nn.functional.linear(big, w), expected_big)
        _assert_matches(_linear(x, w, None, path=path), ref)


@pytest.mark.parametrize("k", [3, 32])
def test_rounds_to_nearest_even(path: str, k: int) -> None:
    """Sums exactly halfway between two bf16 values round to the even one (bf16 ulp at 1 is 2^-7)."""
    x = torch.zeros(1, k, dtype=BF16)
    x[0, :3] = 1.0
    w = torch.zeros(32, k, dtype=BF16)
    w[:, 0] = 1.0
    w[0, 1] = 2.0**-8  # 1 + 2^-8: halfway between 1 and 1 + 2^-7 -> 1 (even)
    w[1, 1] = 3 * 2.0**-8  # halfway between 1 + 2^-7 and 1 + 2^-6 -> 1 + 2^-6 (even)
    w[2, 1] = 2.0**-8  # with w[2, 2], just above halfway -> 1 + 2^-7
    w[2, 2] = 2.0**-16
    y = _linear(x, w, None, path=path)
    assert y[0, :3].tolist() == [1.0, 1.0 + 2.0**-6, 1.0 + 2.0**-7]


def test_non_finite_propagates(path: str) -> None:
    x, w, _ = _inputs(3, 40, 64, bias=False)
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    y = _linear(x, w, None, path=path)
    ref = _reference(x, w, None)
    assert torch.equal(y.isnan(), ref.isnan()) and y[1].isnan().all()
    assert torch.equal(y.isinf(), ref.isinf())


def test_empty(path: str) -> None:
    x, w, b = _inputs(0, 8, 64, bias=True)
    assert _linear(x, w, b, path=path).shape == (0, 8)
    # K = 0: the products are empty sums, so out is the bias (or zeros).
    x, w, b = _inputs(4, 40, 0, bias=True)
    assert torch.equal(_linear(x, w, b, path=path), b.expand(4, 40))
    assert torch.equal(_linear(x, w, None, path=path), torch.zeros(4, 40, dtype=BF16))


def test_available() -> None:
    assert isinstance(gemv.available(), bool)
    assert gemv.available() == ("avx512_bf16" in PATHS)
    assert "portable" in PATHS
    assert gemv.MAX_ROWS >= 1


# ---- Argument checks: each names the bad argument --------------------------------------------


def _good() -> dict:
    x, w, b = _inputs(2, 16, 64, bias=True)
    return {"x": x, "weight": w, "bias": b, "out": torch.empty(2, 16, dtype=BF16)}


@pytest.fixture(params=["gemv", *(["packed"] if gemm.available() else [])])
def checked(request: pytest.FixtureRequest) -> Callable[..., torch.Tensor]:
    """The function whose checks a test exercises; the packed one packs ``weight`` first."""
    if request.param == "gemv":
        return gemv.linear_small

    def packed(x: object, weight: object, bias: object, out: object) -> torch.Tensor:
        return gemm.linear_packed(x, gemm.pack(weight), bias, out)

    return packed


@pytest.mark.parametrize("name", ["x", "weight", "bias", "out"])
def test_rejects_wrong_dtype(checked: Callable[..., torch.Tensor], name: str) -> None:
    args = _good()
    args[name] = args[name].float()
    with pytest.raises(ValueError, match=f"{name} must be bfloat16"):
        checked(**args)


@pytest.mark.parametrize("name", ["x", "weight", "bias", "out"])
def test_rejects_wrong_device(checked: Callable[..., torch.Tensor], name: str) -> None:
    args = _good()
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=f"{name} must be on the CPU"):
        checked(**args)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("x", torch.zeros(64, dtype=BF16), "x must have 2 dimensions"),
        ("x", [[1.0]], "x must be a tensor"),
        ("weight", torch.zeros(1, 16, 64, dtype=BF16), "weight must have 2 dimensions"),
        ("weight", torch.zeros(16, 48, dtype=BF16), "the weight has K = 48"),
        ("bias", torch.zeros(15, dtype=BF16), r"bias must have shape \(16,\)"),
        ("bias", torch.zeros(32, dtype=BF16)[::2], "bias must be contiguous"),
        ("out", torch.zeros(2, 15, dtype=BF16), r"out must have shape \(2, 16\)"),
        ("out", torch.zeros(16, 2, dtype=BF16).T, "out must be contiguous"),
        ("x", torch.zeros(64, 2, dtype=BF16).T, "x must have a contiguous last dimension"),
        ("x", torch.zeros(1, 64, dtype=BF16).expand(2, 64), "x rows must not overlap"),
    ],
)
def test_rejects_bad_shapes(
    checked: Callable[..., torch.Tensor], name: str, value: object, message: str
) -> None:
    args = _good()
    args[name] = value
    with pytest.raises(ValueError, match=message):
        checked(**args)


def test_rejects_strided_weight() -> None:
    """The GEMV streams the weight in place (packing copies it, so any layout packs)."""
    args = _good()
    args["weight"] = torch.zeros(64, 16, dtype=BF16).T
    with pytest.raises(ValueError, match="weight must be contiguous"):
        gemv.linear_small(**args)


def test_rejects_unknown_path() -> None:
    with pytest.raises(ValueError, match="path must be one of"):
        gemv.linear_small(**_good(), path="avx9000")
