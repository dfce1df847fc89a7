"""heron-cuda's MoE kernel sources, compiled for the host and run on the CPU, against torch.

There is no GPU where these kernels are written, so this test compiles the very files
``plugins/cuda/csrc/moe_align.cu``, ``moe_routing.cu`` and ``moe_experts.cu`` with g++ through
``host_shim/`` (CUDA's runtime names as host code: each block's threads are host threads, and
``__syncthreads()`` a barrier) and calls their host entry points, ``heron::fused_moe`` and
``heron::moe_topk_softmax``, from ``moe_kernels_host.cpp``. What it checks: the launch grids,
every index and bound of the grouping, the grouped GEMMs and the per-token sum, the phases and
barriers, and the rounding to float16/bfloat16 (the shim's conversions are the GPU's: IEEE
round-to-nearest-even). What it cannot check: anything about the hardware (speed, coalescing,
real concurrency between blocks, nvcc's own code generation); test_cuda_moe_kernels.py does that
on a GPU.

Compared with ``heron_interfaces.kernel_ops.moe_reference``: in float32 (rtol 1e-5), and in the
half-precision dtypes with the reference run in the same dtype by torch on the CPU, where most
elements must be equal bit for bit (the same rounding points; only the GEMMs' summation order
differs) and the rest within a rounding step. A second build runs under AddressSanitizer and
UndefinedBehaviorSanitizer: the driver sizes every buffer exactly, so an access past one fails.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from heron.layers.moe import route_top_k
from heron_interfaces.kernel_ops import moe_reference

ROOT = Path(__file__).resolve().parents[3]
CSRC = ROOT / "plugins" / "cuda" / "csrc"
HERE = Path(__file__).parent
KERNEL_SOURCES = ("moe_align.cu", "moe_routing.cu", "moe_experts.cu")
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _build(tmp_path_factory: pytest.TempPathFactory, *extra_flags: str) -> Path:
    """The kernel sources and moe_kernels_host.cpp built for the host (C++20: std::barrier)."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no host C++ compiler (g++ or c++) on PATH")
    binary = tmp_path_factory.mktemp("moe_emulated") / "moe_kernels_host"
    command = [
        compiler,
        "-std=c++20",
        "-O1",
        *extra_flags,
        "-pthread",
        "-Wall",
        "-Wno-unknown-pragmas",
        "-Werror",
        f"-I{HERE / 'host_shim'}",
        f"-I{CSRC}",
        "-x",
        "c++",
        *(str(CSRC / name) for name in KERNEL_SOURCES),
        "-x",
        "none",
        str(HERE / "moe_kernels_host.cpp"),
        "-o",
        str(binary),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 and "barrier" in result.stderr and "No such file" in result.stderr:
        pytest.skip(f"{compiler} has no C++20 <barrier>")
    assert result.returncode == 0, result.stderr
    return binary


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory)


@pytest.fixture(scope="module")
def sanitized_kernels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same build under AddressSanitizer and UndefinedBehaviorSanitizer: every buffer the
    driver hands the kernels is sized exactly, so a read or write past one aborts the run (the
    host counterpart of compute-sanitizer's memcheck)."""
    return _build(
        tmp_path_factory, "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"
    )


def _raw(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _run_fused(kernels: Path, tmp: Path, x, w13, w2, ids, weights, x_stride=None, out_stride=None):
    tokens, hidden = x.shape
    x_stride = x_stride or hidden
    out_stride = out_stride or hidden
    padded_x = torch.zeros(tokens, x_stride, dtype=x.dtype)
    padded_x[:, :hidden] = x
    meta = [
        DTYPE_CODES[x.dtype],
        tokens,
        ids.shape[1],
        hidden,
        w2.shape[2],
        w13.shape[0],
        int(weights.dtype == torch.float32),
        x_stride,
        out_stride,
    ]
    (tmp / "meta").write_text(" ".join(map(str, meta)))
    for name, t in (("x", padded_x), ("w13", w13), ("w2", w2), ("ids", ids), ("weights", weights)):
        (tmp / name).write_bytes(_raw(t))
    subprocess.run([str(kernels), "fused", str(tmp)], check=True, capture_output=True, text=True)
    raw = bytearray((tmp / "out").read_bytes())
    if x.dtype == torch.float32:
        out = torch.frombuffer(raw, dtype=torch.float32)
    else:
        out = torch.frombuffer(raw, dtype=torch.int16).view(x.dtype)
    return out.reshape(tokens, out_stride)


def _case(tokens, experts, top_k, hidden, inter, dtype, seed, weights_in_x_dtype=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden**0.5).to(dtype)
    w2 = (torch.randn(experts, hidden, inter, generator=gen) / inter**0.5).to(dtype)
    logits = torch.randn(tokens, experts, generator=gen)
    if experts > top_k:
        logits[:, -1] = -1e9  # the last expert gets no token
    weights, ids = torch.topk(torch.softmax(logits, -1), top_k, dim=-1)
    if weights_in_x_dtype:
        weights = weights.to(dtype)
    return x, w13, w2, ids, weights


SHAPES = [
    # tokens, experts, top_k, hidden, intermediate
    (1, 8, 2, 64, 128),  # one decode token
    (7, 3, 3, 100, 72),  # no multiple of the tiles; three experts summed per token
    (40, 6, 2, 64, 96),  # the conformance suite's shape
    (20, 16, 4, 32, 40),  # experts with 0-1 rows: most tiles are padding
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_equals_the_reference(kernels, tmp_path, shape) -> None:
    x, w13, w2, ids, weights = _case(*shape, torch.float32, seed=sum(shape))
    got = _run_fused(kernels, tmp_path, x, w13, w2, ids, weights)
    torch.testing.assert_close(got, moe_reference(x, w13, w2, ids, weights), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("weights_in_x_dtype", [False, True])
@pytest.mark.parametrize("shape", [(33, 8, 2, 128, 96), (7, 3, 3, 100, 72)], ids=str)
def test_half_precision_rounds_where_the_reference_rounds(
    kernels, tmp_path, dtype, weights_in_x_dtype, shape
) -> None:
    x, w13, w2, ids, weights = _case(*shape, dtype, 11, weights_in_x_dtype)
    got = _run_fused(kernels, tmp_path, x, w13, w2, ids, weights)
    assert got.dtype == dtype
    same_dtype = moe_reference(x, w13, w2, ids, weights)
    equal = (got == same_dtype).float().mean().item()
    assert equal >= 0.97, f"only {equal:.1%} of the elements equal torch's {dtype} reference"
    # The rest: a rounding step of the output (or of an intermediate, carried through).
    torch.testing.assert_close(got.float(), same_dtype.float(), rtol=2e-2, atol=2e-2)
    exact = moe_reference(x.float(), w13.float(), w2.float(), ids, weights.float())
    torch.testing.assert_close(got.float(), exact, rtol=3e-2, atol=3e-2)


def test_strided_rows_and_ids_naming_no_expert(kernels, tmp_path) -> None:
    """Token strides of x and out are honoured (nothing written past a row's hidden features),
    and ids outside [0, experts) contribute nothing."""
    x, w13, w2, ids, weights = _case(9, 4, 2, 48, 32, torch.float32, seed=3)
    ids[2, 0], ids[5, 1] = -1, 4
    got = _run_fused(kernels, tmp_path, x, w13, w2, ids, weights, x_stride=80, out_stride=64)
    assert torch.all(got[:, 48:] == 0), "wrote past the row"
    keep = (ids >= 0) & (ids < 4)
    want = moe_reference(x, w13, w2, ids.clamp(0, 3), weights * keep)
    torch.testing.assert_close(got[:, :48], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("experts", "top_k"), [(8, 2), (60, 4)])
@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_router_kernel_equals_core_route_top_k(
    kernels, tmp_path, experts, top_k, renormalize, dtype
) -> None:
    tokens = 300  # three blocks of the routing kernel, the last one partly idle
    gen = torch.Generator().manual_seed(experts)
    logits = (torch.randn(tokens, experts, generator=gen) * 3).to(dtype)
    meta = f"{DTYPE_CODES[dtype]} {tokens} {experts} {top_k} {int(renormalize)}"
    (tmp_path / "meta").write_text(meta)
    (tmp_path / "logits").write_bytes(_raw(logits))
    subprocess.run([str(kernels), "route", str(tmp_path)], check=True)
    weights = torch.frombuffer(
        bytearray((tmp_path / "route_weights").read_bytes()), dtype=torch.float32
    )
    ids = torch.frombuffer(bytearray((tmp_path / "route_ids").read_bytes()), dtype=torch.int64)
    weights, ids = weights.reshape(tokens, top_k), ids.reshape(tokens, top_k)
    want_weights, want_ids = route_top_k(logits, top_k, renormalize)
    torch.testing.assert_close(weights, want_weights, rtol=2e-6, atol=1e-7)
    if dtype == torch.float32:
        assert torch.equal(ids, want_ids)
    else:  # bfloat16 logits tie; torch.topk orders ties freely, the kernel by expert id
        values = logits.float()
        assert torch.equal(values.gather(1, ids), values.gather(1, want_ids))


@pytest.mark.parametrize(
    "case",
    [
        ((40, 6, 2, 64, 96), torch.bfloat16, {}),
        ((7, 3, 3, 100, 72), torch.float16, {}),
        ((9, 4, 2, 48, 32), torch.float32, {"x_stride": 80, "out_stride": 64}),
    ],
    ids=["bf16", "fp16-3-experts", "fp32-strided"],
)
def test_kernels_stay_inside_their_buffers(sanitized_kernels, tmp_path, case) -> None:
    shape, dtype, strides = case
    x, w13, w2, ids, weights = _case(*shape, dtype, seed=7)
    ids[0, 0] = -1  # an entry naming no expert, too
    got = _run_fused(sanitized_kernels, tmp_path, x, w13, w2, ids, weights, **strides)
    keep = ids >= 0
    want = moe_reference(x.float(), w13.float(), w2.float(), ids.clamp(min=0), weights * keep)
    torch.testing.assert_close(got[:, : x.shape[1]].float(), want, rtol=3e-2, atol=3e-2)
