"""heron-cpu's encoder attention kernel against plain torch, on every loop this CPU runs.

``heron_cpu.encoder_attention`` reads q, k and v in place from a fused projection (strided rows,
extra columns after v) and attends each prompt to all of itself. The reference is torch's SDPA in
float64, one prompt at a time. Shapes: head sizes 16, 32, 64, 128 (AVX-512; 32, 64 and 128 also on
AMX tiles in bfloat16) and 24, 40 (portable only), prompt lengths 1..600 (past the kernel's 256-key softmax block, so the online rescaling
runs), ragged batches with empty prompts, one and two threads.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

ea = pytest.importorskip("heron_cpu.encoder_attention", reason="heron-cpu is not installed")

PATHS = ea.kernel_paths()
TOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2}


def expected_path(path: str, dtype: torch.dtype, head_size: int) -> str:
    """The loop a ``path=`` request runs: ``amx`` only for bfloat16 with head sizes that are
    multiples of 32 (else as ``auto``), ``avx512`` only for multiples of 16."""
    if path == "amx" and dtype == torch.bfloat16 and head_size % 32 == 0:
        return "amx"
    if path in ("amx", "avx512") and head_size % 16 == 0:
        return "avx512"
    return "portable"


def _starts(lengths: list[int]) -> torch.Tensor:
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    return torch.tensor(starts, dtype=torch.int32)


def _reference(
    qkv: torch.Tensor, starts: torch.Tensor, heads: int, head_size: int, scale: float
) -> torch.Tensor:
    width = heads * head_size
    out = torch.zeros(qkv.shape[0], width, dtype=torch.float64)
    bounds = starts.tolist()
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        x = qkv[a:b, : 3 * width].double().view(b - a, 3, heads, head_size)
        q, k, v = (x[:, i].transpose(0, 1) for i in range(3))
        attended = F.scaled_dot_product_attention(q, k, v, scale=scale)
        out[a:b] = attended.transpose(0, 1).reshape(b - a, width)
    return out


def _run(lengths, heads, head_size, dtype, path, *, extra_cols=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    starts = _starts(lengths)
    tokens = int(starts[-1])
    width = heads * head_size
    qkv = (torch.randn(tokens, 3 * width + extra_cols, generator=gen) * 2).to(dtype)
    scale = head_size**-0.5
    out = torch.full((tokens, width), float("nan"), dtype=dtype)
    ran = ea.encoder_attention_eager(out, qkv, starts, heads, head_size, scale, path=path)
    return out, _reference(qkv, starts, heads, head_size, scale), ran


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_size", [16, 24, 32, 40, 64, 128])
@pytest.mark.parametrize(
    "lengths", [[1], [7], [1, 2, 3], [33, 0, 90, 17], [256], [257, 5], [600], [0, 512, 1, 0]]
)
def test_matches_torch(path: str, dtype: torch.dtype, head_size: int, lengths: list[int]) -> None:
    out, expected, ran = _run(lengths, 3, head_size, dtype, path, extra_cols=5)
    assert ran == expected_path(path, dtype, head_size)
    torch.testing.assert_close(out.double(), expected, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("threads", [1, 2])
def test_ragged_batch_many_prompts(threads: int) -> None:
    """MiniLM's shape (12 heads of 32) over a step of many prompts, in both thread counts."""
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 200, (40,), generator=gen).tolist()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for path in PATHS:
            out, expected, _ = _run(lengths, 12, 32, torch.bfloat16, path, seed=2)
            torch.testing.assert_close(out.double(), expected, rtol=1.6e-2, atol=1.6e-2)
    finally:
        torch.set_num_threads(before)


def test_rows_outside_prompts_untouched_and_strided_out() -> None:
    """Only rows inside [qsl[0], qsl[-1]) are written; ``out`` may be a strided view."""
    qkv = torch.randn(10, 3 * 2 * 32)
    starts = torch.tensor([2, 5, 8], dtype=torch.int32)
    big = torch.full((10, 100), 7.0)
    out = big[:, :64]
    ea.encoder_attention_eager(out, qkv, starts, 2, 32, 0.3)
    expected = _reference(qkv, torch.tensor([0, 2, 5, 8, 10], dtype=torch.int32), 2, 32, 0.3)
    torch.testing.assert_close(out[2:8].double(), expected[2:8], rtol=2e-5, atol=2e-5)
    assert torch.all(out[:2] == 7.0) and torch.all(out[8:] == 7.0)
    assert torch.all(big[:, 64:] == 7.0)


def test_custom_op_opcheck() -> None:
    qkv = torch.randn(12, 3 * 64)
    out = torch.empty(12, 64)
    starts = torch.tensor([0, 5, 12], dtype=torch.int32)
    torch.library.opcheck(ea.encoder_attention_op, (out, qkv, starts, 2, 32, 0.25))


def test_bad_arguments_name_the_parameter() -> None:
    qkv = torch.randn(6, 3 * 64)
    out = torch.empty(6, 64)
    starts = torch.tensor([0, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="num_heads"):
        ea.encoder_attention_eager(out, qkv, starts, 0, 32, 1.0)
    with pytest.raises(ValueError, match="path"):
        ea.encoder_attention_eager(out, qkv, starts, 2, 32, 1.0, path="amx9")
    with pytest.raises(ValueError, match="qkv must be"):
        ea.encoder_attention_eager(out, qkv[:, :100], starts, 2, 32, 1.0)
    with pytest.raises(ValueError, match="out must have qkv's dtype"):
        ea.encoder_attention_eager(out.bfloat16(), qkv, starts, 2, 32, 1.0)
    with pytest.raises(ValueError, match="query_start_loc"):
        ea.encoder_attention_eager(out, qkv, starts.long(), 2, 32, 1.0)
    with pytest.raises(ValueError, match="outside qkv"):
        ea.encoder_attention_eager(out, qkv, torch.tensor([0, 7], dtype=torch.int32), 2, 32, 1.0)
    with pytest.raises(ValueError, match="decreases"):
        ea.encoder_attention_eager(
            out, qkv, torch.tensor([0, 4, 2, 6], dtype=torch.int32), 2, 32, 1.0
        )
    with pytest.raises(ValueError, match="contiguous last dimension"):
        ea.encoder_attention_eager(out, qkv.t().contiguous().t(), starts, 2, 32, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [1, 15, 130, 384])
@pytest.mark.parametrize("threads", [1, 2])
def test_mean_pool_loops_match_the_reference(dtype, width: int, threads: int) -> None:
    """KernelOps.mean_pool (API 1.15) on both compiled loops: widths with a tail of 16 lanes and
    more than one pass of 128 columns, strided rows, padding rows after the last sequence."""
    from heron_cpu import _C
    from heron_interfaces.kernel_ops import mean_pool_reference

    lengths = [1, 7, 130, 2, 33]
    starts = [0, *itertools.accumulate(lengths)]
    gen = torch.Generator().manual_seed(width)
    hidden = (torch.randn(starts[-1] + 3, width + 5, generator=gen) * 3).to(dtype)[:, :width]
    hidden[starts[-1] :] = 1000
    qsl = torch.tensor(starts, dtype=torch.int32)
    want = mean_pool_reference(hidden, qsl)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = ea.mean_pool(hidden, qsl)
        portable = torch.empty_like(want)
        _C.mean_pool(
            portable.data_ptr(), hidden.data_ptr(), qsl.data_ptr(), hidden.shape[0],
            len(lengths), width, hidden.stride(0), int(dtype == torch.bfloat16), threads, True,
        )  # fmt: skip
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(portable, want, rtol=1e-6, atol=1e-6)
    assert ea.mean_pool(hidden, qsl.long()) is None  # not int32: core's reference instead
