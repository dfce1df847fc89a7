"""heron-cuda's MoE entry points without a GPU: what goes to the kernels, what to torch, and the
errors bad input gets.

These run wherever heron-cuda is installed (CI installs it when nvcc is present): the decisions
are made on the host. Arguments are checked for dtype and shape before device, so every message
about a bad argument can be checked here with host tensors. The kernels run in
test_cuda_moe_kernels.py and the conformance ``moe_suite`` on a GPU.
"""

from __future__ import annotations

import importlib
import re

import pytest
import torch

from heron_interfaces.kernel_ops import moe_reference


@pytest.fixture(scope="module")
def moe_ops():
    pytest.importorskip("heron_cuda", reason="heron-cuda is not installed")
    return importlib.import_module("heron_cuda.moe_ops")


@pytest.fixture
def kernel_ops():
    pytest.importorskip("heron_cuda", reason="heron-cuda is not installed")
    from heron_cuda.gpu_kernel_ops import GpuKernelOps

    return GpuKernelOps()


def _case(tokens=5, experts=4, top_k=2, hidden=32, inter=16, dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=gen) * 0.2).to(dtype)
    w2 = (torch.randn(experts, hidden, inter, generator=gen) * 0.2).to(dtype)
    weights, ids = torch.topk(torch.rand(tokens, experts, generator=gen), top_k, dim=-1)
    return x, w13, w2, ids, weights


def test_host_weights_are_not_prepared(kernel_ops) -> None:
    """Experts on the host stay with core's reference: prepare_moe declines."""
    _, w13, w2, _, _ = _case()
    assert kernel_ops.prepare_moe(w13, w2) is None


def test_host_activations_run_the_reference(kernel_ops, moe_ops) -> None:
    x, w13, w2, ids, weights = _case()
    experts = moe_ops.GpuExperts(w13=w13, w2=w2)
    assert torch.equal(
        kernel_ops.fused_moe(x, experts, ids, weights), moe_reference(x, w13, w2, ids, weights)
    )
    # Something the base class prepared (the (w13, w2) pair) keeps the base behaviour.
    assert torch.equal(
        kernel_ops.fused_moe(x, (w13, w2), ids, weights), moe_reference(x, w13, w2, ids, weights)
    )


def _bad(name: str):
    x, w13, w2, ids, weights = _case()
    args = {"x": x, "w13": w13, "w2": w2, "topk_ids": ids, "topk_weights": weights}
    changes = {
        "ids_int32": ("topk_ids", ids.int(), "topk_ids must have dtype int64"),
        "ids_rows": ("topk_ids", ids[:3], "topk_ids has 3 rows but x has 5 tokens"),
        "ids_1d": ("topk_ids", ids[:, 0], "topk_ids must be"),
        "top_k_past_experts": ("topk_ids", torch.zeros(5, 5, dtype=torch.long), "top_k=5"),
        "weights_float16": ("topk_weights", weights.half(), "topk_weights must be float32 or"),
        "weights_shape": ("topk_weights", weights[:, :1], "topk_weights has shape"),
        "x_dtype": ("x", x.float(), "x has dtype torch.float32 but the experts' weights"),
        "x_hidden": ("x", x[:, :16], "x has 16 features; the experts take hidden=32"),
        "x_3d": ("x", x[None], "x must be"),
        "w2_shape": ("w2", w2[:, :, :8], "w2 has shape (4, 32, 8); expected (4, 32, 16)"),
        "w2_dtype": ("w2", w2.float(), "w2 has dtype torch.float32 but must match"),
        "w13_odd": ("w13", w13[:, :31], "w13 must be [num_experts, 2 * intermediate, hidden]"),
        "w13_int": ("w13", w13.to(torch.int8), "w13 must have dtype"),
        "host_tensors": (None, None, "x must be a GPU ('cuda') tensor"),
    }
    key, value, message = changes[name]
    if key is not None:
        args[key] = value
    return args, message


@pytest.mark.parametrize(
    "name",
    [
        "ids_int32",
        "ids_rows",
        "ids_1d",
        "top_k_past_experts",
        "weights_float16",
        "weights_shape",
        "x_dtype",
        "x_hidden",
        "x_3d",
        "w2_shape",
        "w2_dtype",
        "w13_odd",
        "w13_int",
        "host_tensors",
    ],
)
def test_bad_arguments_are_named(moe_ops, name: str) -> None:
    args, message = _bad(name)
    with pytest.raises(ValueError, match=re.escape(message)):
        moe_ops.check_moe_inputs(**args)


def test_expert_count_is_bounded(moe_ops) -> None:
    w13 = torch.zeros(moe_ops.MAX_EXPERTS + 1, 2, 1)
    w2 = torch.zeros(moe_ops.MAX_EXPERTS + 1, 1, 1)
    with pytest.raises(ValueError, match="the kernels take 1 to"):
        moe_ops.check_expert_weights(w13, w2)


def test_workspace_size_matches_the_layout(moe_ops) -> None:
    from heron_cuda import _C

    block, chunk = moe_ops.BLOCK_M, 256
    for slots, experts in ((1, 8), (2, 8), (80, 6), (700, 16), (512, 128), (0, 4)):
        total, tiles = _C.moe_workspace_size(slots, experts)
        used = min(slots, experts)
        assert tiles == (slots + used * (block - 1)) // block
        chunks = -(-slots // chunk)
        assert total == chunks * experts + experts + 1 + tiles * block + tiles
    with pytest.raises(ValueError, match="num_experts must be in"):
        _C.moe_workspace_size(4, 0)
    with pytest.raises(ValueError, match="num_experts must be in"):
        _C.moe_workspace_size(4, moe_ops.MAX_EXPERTS + 1)
