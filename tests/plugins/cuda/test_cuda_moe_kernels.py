"""heron-cuda's (and heron-rocm's) fused mixture-of-experts kernels on a GPU, against torch.

* ``fused_moe`` equals ``heron_interfaces.kernel_ops.moe_reference`` (float32, on the host) over
  decode and prefill token counts, 1 to 8 experts per token of 3 to 128 experts, sizes that are no
  multiple of the tiles, experts with no token, routing weights in float32 or the model dtype,
  and strided activations; against the same reference run in the model dtype on the GPU most
  elements are equal bit for bit (the kernels round where it rounds; only the GEMMs'
  accumulation order differs).
* The expert grouping (``moe_align``) equals a stable sort by expert (moe_align_reference.py).
* The router kernel equals core's ``route_top_k``.
* The ops pass ``torch.library.opcheck`` and replay from a captured device graph.

Without a GPU (and a torch built for it) every test skips, naming why. The bookkeeping parts are
also checked without a GPU by test_moe_logic_host.py. Run on a GPU machine with
``python -m pytest tests/plugins/cuda/test_cuda_moe_kernels.py -q`` (or
``bash benchmarks/gpu/check_moe.sh``, which also builds and installs heron-cuda).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest
import torch
from moe_align_reference import torch_alignment

from heron_interfaces.kernel_ops import moe_reference

BACKENDS = ("cuda", "rocm")


@pytest.fixture(params=BACKENDS, scope="module")
def moe_ops(request: pytest.FixtureRequest) -> ModuleType:
    """``heron_<backend>.moe_ops`` where that backend's GPU is usable here; a skip otherwise."""
    name = request.param
    try:
        importlib.import_module(f"heron_{name}")
    except ImportError as err:
        pytest.skip(f"heron-{name} is not installed ({err})")
    if not torch.cuda.is_available():
        pytest.skip("no GPU: torch.cuda.is_available() is False")
    if (name == "cuda" and torch.version.cuda is None) or (
        name == "rocm" and torch.version.hip is None
    ):
        pytest.skip(f"torch {torch.__version__} is not a {name} build")
    return importlib.import_module(f"heron_{name}.moe_ops")


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


def _run(moe_ops: ModuleType, x, w13, w2, ids, weights) -> torch.Tensor:
    dev = torch.device("cuda", 0)
    x_d = x.to(dev)
    out = torch.empty_like(x_d)
    moe_ops.fused_moe(out, x_d, w13.to(dev), w2.to(dev), ids.to(dev), weights.to(dev))
    return out.cpu()


SHAPES = [
    # tokens, experts, top_k, hidden, intermediate
    (1, 8, 2, 64, 128),  # one decode token, Mixtral-like routing
    (3, 4, 1, 96, 48),
    (7, 3, 3, 100, 72),  # sizes no multiple of the tiles; three experts summed per token
    (33, 8, 2, 128, 256),
    (40, 6, 2, 64, 96),  # the conformance suite's shape
    (64, 128, 8, 64, 32),  # Qwen3-MoE's routing width: many experts with 0-2 rows
    (300, 16, 4, 160, 200),  # several chunks of the align kernels
    (1000, 8, 2, 256, 512),  # a prefill chunk
]
TOLERANCES = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("weights_in_x_dtype", [False, True])
def test_fused_moe_equals_the_reference(moe_ops, shape, dtype, weights_in_x_dtype) -> None:
    x, w13, w2, ids, weights = _case(*shape, dtype, sum(shape), weights_in_x_dtype)
    got = _run(moe_ops, x, w13, w2, ids, weights)
    assert got.dtype == dtype and got.shape == x.shape
    want = moe_reference(x.float(), w13.float(), w2.float(), ids, weights.float())
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fused_moe_rounds_where_the_reference_rounds(moe_ops, dtype) -> None:
    """Against ``moe_reference`` in the model dtype on the GPU (cuBLAS GEMMs, float32
    accumulation): the outputs differ only where the two accumulation orders round a GEMM
    output differently, which is rare; a missing or extra rounding step would change most."""
    dev = torch.device("cuda", 0)
    x, w13, w2, ids, weights = _case(256, 8, 2, 512, 1024, dtype, seed=5)
    got = _run(moe_ops, x, w13, w2, ids, weights)
    matmul = torch.backends.cuda.matmul
    saved = (
        matmul.allow_fp16_reduced_precision_reduction,
        matmul.allow_bf16_reduced_precision_reduction,
    )
    # cuBLAS may otherwise reduce split-K partial sums in half precision: float32 accumulation,
    # as the kernels do, is what the comparison is about.
    matmul.allow_fp16_reduced_precision_reduction = False
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        same_dtype = moe_reference(x.to(dev), w13.to(dev), w2.to(dev), ids.to(dev), weights.to(dev))
    finally:
        (
            matmul.allow_fp16_reduced_precision_reduction,
            matmul.allow_bf16_reduced_precision_reduction,
        ) = saved
    equal = (got == same_dtype.cpu()).float().mean().item()
    assert equal >= 0.9, f"only {equal:.1%} of the elements equal the reference in {dtype}"


def test_fused_moe_takes_strided_activations_and_output(moe_ops) -> None:
    dev = torch.device("cuda", 0)
    x, w13, w2, ids, weights = _case(9, 4, 2, 64, 64, torch.bfloat16, seed=1)
    wide = torch.zeros(9, 3 * 64, dtype=torch.bfloat16, device=dev)
    wide[:, 64:128] = x.to(dev)
    out_wide = torch.full((9, 2 * 64), 7.0, dtype=torch.bfloat16, device=dev)
    args = (w13.to(dev), w2.to(dev), ids.to(dev), weights.to(dev))
    moe_ops.fused_moe(out_wide[:, 64:], wide[:, 64:128], *args)
    assert torch.equal(out_wide[:, 64:].cpu(), _run(moe_ops, x, w13, w2, ids, weights))
    assert torch.all(out_wide[:, :64] == 7.0), "wrote outside out's view"


def test_ids_naming_no_expert_contribute_nothing(moe_ops) -> None:
    x, w13, w2, ids, weights = _case(6, 4, 2, 64, 64, torch.float32, seed=2)
    bad = ids.clone()
    bad[1, 0], bad[4, 1] = -1, 4
    got = _run(moe_ops, x, w13, w2, bad, weights)
    keep = (bad >= 0) & (bad < 4)
    want = moe_reference(x, w13, w2, bad.clamp(0, 3), weights * keep)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("tokens", "experts", "top_k"), [(1, 8, 2), (40, 6, 2), (700, 16, 4), (64, 128, 8)]
)
def test_alignment_equals_a_stable_sort_by_expert(moe_ops, tokens, experts, top_k) -> None:
    gen = torch.Generator().manual_seed(tokens + experts)
    _, ids = torch.topk(torch.randn(tokens, experts, generator=gen), top_k, dim=-1)
    got = moe_ops.moe_align(ids.cuda(), experts)
    max_tiles = got["tile_experts"].numel()
    offsets, slots, tiles, _ = torch_alignment(ids.reshape(-1), experts, max_tiles)
    assert torch.equal(got["offsets"].cpu(), offsets)
    assert torch.equal(got["sorted_slots"].cpu(), slots)
    assert torch.equal(got["tile_experts"].cpu(), tiles)


@pytest.mark.parametrize(("experts", "top_k"), [(8, 2), (60, 4), (128, 8)])
@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_router_equals_core_route_top_k(moe_ops, experts, top_k, renormalize, dtype) -> None:
    from heron.layers.moe import route_top_k

    gen = torch.Generator().manual_seed(experts)
    logits = (torch.randn(200, experts, generator=gen) * 3).to(dtype).cuda()
    weights = torch.empty(200, top_k, device="cuda")
    ids = torch.empty(200, top_k, dtype=torch.int64, device="cuda")
    moe_ops.moe_topk_softmax(weights, ids, logits, renormalize)
    want_weights, want_ids = route_top_k(logits, top_k, renormalize)
    torch.testing.assert_close(weights, want_weights, rtol=1e-5, atol=1e-6)
    if dtype == torch.float32:
        assert torch.equal(ids, want_ids)
    else:
        # bfloat16 logits can tie exactly, and torch.topk orders ties as it likes (the kernel
        # takes the lower expert id): the chosen experts must have the same logits, in order.
        values = logits.float()
        assert torch.equal(values.gather(1, ids), values.gather(1, want_ids))


def test_kernel_ops_route_the_layer_to_the_kernels(moe_ops, monkeypatch) -> None:
    """GpuKernelOps prepares GPU experts and runs them on the kernels; a top-k past what the
    kernels order (MAX_TOP_K) keeps the contract's reference instead."""
    gpu_kernel_ops = importlib.import_module(f"{moe_ops.__package__}.gpu_kernel_ops")
    ops = gpu_kernel_ops.GpuKernelOps()
    x, w13, w2, ids, weights = (t.cuda() for t in _case(16, 8, 2, 64, 64, torch.bfloat16, 6))
    prepared = ops.prepare_moe(w13, w2)
    assert isinstance(prepared, moe_ops.GpuExperts)
    out = torch.empty_like(x)
    moe_ops.fused_moe(out, x, w13, w2, ids, weights)
    assert torch.equal(ops.fused_moe(x, prepared, ids, weights), out)
    monkeypatch.setattr(moe_ops, "MAX_TOP_K", 1)
    assert torch.equal(
        ops.fused_moe(x, prepared, ids, weights), moe_reference(x, w13, w2, ids, weights)
    )


def test_ops_pass_opcheck(moe_ops) -> None:
    x, w13, w2, ids, weights = _case(5, 4, 2, 64, 32, torch.bfloat16, seed=3)
    dev = torch.device("cuda", 0)
    args = [t.to(dev) for t in (x, w13, w2, ids, weights)]
    namespace = getattr(torch.ops, moe_ops.__package__)
    torch.library.opcheck(namespace.fused_moe.default, (torch.empty_like(args[0]), *args))
    logits = torch.randn(5, 4, device=dev)
    routed = (torch.empty(5, 2, device=dev), torch.empty(5, 2, dtype=torch.int64, device=dev))
    torch.library.opcheck(namespace.moe_topk_softmax.default, (*routed, logits, True))


def test_fused_moe_replays_from_a_device_graph(moe_ops) -> None:
    """No host sync inside: a captured call replays with new routing in the same buffers."""
    dev = torch.device("cuda", 0)
    x, w13, w2, ids, weights = _case(12, 8, 2, 128, 64, torch.bfloat16, seed=4)
    static = [t.to(dev) for t in (x, w13, w2, ids, weights)]
    out = torch.empty_like(static[0])
    moe_ops.fused_moe(out, *static)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        moe_ops.fused_moe(out, *static)
    x2, _, _, ids2, weights2 = _case(12, 8, 2, 128, 64, torch.bfloat16, seed=9)
    static[0].copy_(x2.to(dev))
    static[3].copy_(ids2.to(dev))
    static[4].copy_(weights2.to(dev))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), _run(moe_ops, x2, w13, w2, ids2, weights2))
