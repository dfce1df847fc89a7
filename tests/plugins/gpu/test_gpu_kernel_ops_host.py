"""``GpuKernelOps`` without a GPU: what it hands to torch, and its cached rotary table.

These run wherever the GPU backends are installed (CI installs heron-cuda when nvcc is present),
because the decisions they check are made on the host: tensors the kernels cannot take go to the
plain-torch reference unchanged, no graph is offered without a device, and the float32 copy of the
model's rotary table follows the table object, not its address. The kernels themselves are
checked on a GPU by test_gpu_kernels.py and the conformance suite.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from gpu_backends import BACKENDS, import_backend

from heron_interfaces.kernel_ops import KernelOps


@pytest.fixture(params=BACKENDS)
def ops(request: pytest.FixtureRequest) -> KernelOps:
    import_backend(request.param)
    try:
        module = importlib.import_module(f"heron_{request.param}.gpu_kernel_ops")
        return module.GpuKernelOps()
    except ImportError as err:  # heron-rocm's module needs libamdhip64 to load
        pytest.skip(f"heron_{request.param}'s kernels cannot load here: {err}")


def test_named_after_its_backend(ops: KernelOps) -> None:
    assert ops.name in BACKENDS


def test_no_graph_offered_without_a_device(ops: KernelOps) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: graphs are offered (tests/plugins/gpu covers them)")
    assert ops.capture_graph(1) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_host_tensors_go_to_the_reference(ops: KernelOps, dtype: torch.dtype) -> None:
    reference = KernelOps()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 64, generator=gen).to(dtype)
    residual = torch.randn(5, 64, generator=gen).to(dtype)
    weight = torch.rand(64, generator=gen).to(dtype) + 0.5
    assert torch.equal(ops.rms_norm(x, weight, 1e-6), reference.rms_norm(x, weight, 1e-6))
    got, summed = ops.add_rms_norm(x, residual, weight, 1e-6)
    want, want_summed = reference.add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(got, want) and torch.equal(summed, want_summed)
    assert torch.equal(ops.silu_and_mul(x), reference.silu_and_mul(x))
    heads = torch.randn(5, 3, 64, generator=gen).to(dtype)
    cache = torch.randn(32, 64, generator=gen).to(dtype)
    positions = torch.tensor([0, 4, 9, 31, 2])
    before = heads.clone()
    rotated = ops.rotary(positions, heads, cache)
    assert torch.equal(rotated, reference.rotary(positions, heads, cache))
    assert torch.equal(heads, before), "rotary must not modify its input"


def test_widened_rotary_table_follows_the_table_object(ops: KernelOps) -> None:
    table = torch.randn(16, 8).to(torch.bfloat16)
    widened = ops._float_cache(table)
    assert widened.dtype == torch.float32 and torch.equal(widened, table.float())
    assert ops._float_cache(table) is widened  # made once per table
    # A new table, even one that reuses a freed table's memory, gets its own copy.
    del table, widened
    other = torch.randn(16, 8).to(torch.bfloat16)
    assert torch.equal(ops._float_cache(other), other.float())
    as_float = torch.randn(16, 8)
    assert ops._float_cache(as_float) is as_float  # float32 already: used as it is
