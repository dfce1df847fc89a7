"""heron-cpu's recorded launches (step graphs) and the embedding kernel they need."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from heron_cpu import gemv
from heron_cpu.kernel_ops import CpuKernelOps, onednn_bf16_available
from heron_cpu.launch import LaunchGraph
from heron_interfaces.kernel_ops import KernelOps


def test_replay_reads_the_inputs_as_they_are_now() -> None:
    ops, reference = CpuKernelOps(), KernelOps()
    x = torch.randn(3, 64).bfloat16()
    residual = torch.randn(3, 64).bfloat16()
    weight = torch.randn(64).bfloat16()
    graph = LaunchGraph()
    with graph:
        out, summed = ops.add_rms_norm(x, residual, weight, 1e-6)
        gated = ops.silu_and_mul(out)
    assert len(graph) == 2
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        x.copy_(torch.randn(3, 64, generator=gen))
        residual.copy_(torch.randn(3, 64, generator=gen))
        graph.replay()
        want_out, want_sum = reference.add_rms_norm(x, residual, weight, 1e-6)
        assert torch.equal(summed, want_sum)
        torch.testing.assert_close(out, want_out, rtol=8e-3, atol=8e-3)
        assert torch.equal(gated, ops.silu_and_mul(out))


def test_recording_is_per_thread_and_not_nested() -> None:
    ops = CpuKernelOps()
    x, weight = torch.randn(2, 64).bfloat16(), torch.ones(64).bfloat16()
    graph = LaunchGraph()
    with graph:
        worker = threading.Thread(target=ops.rms_norm, args=(x, weight, 1e-6))
        worker.start()
        worker.join()
        with pytest.raises(RuntimeError, match="already recording"):
            LaunchGraph().__enter__()
    assert len(graph) == 0
    ops.rms_norm(x, weight, 1e-6)  # after the context: not recorded either
    assert len(graph) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embedding_matches_torch(dtype: torch.dtype) -> None:
    table = torch.randn(50, 24).to(dtype)
    ids = torch.tensor([0, 49, 7, 7, 31])
    assert torch.equal(CpuKernelOps().embedding(ids, table), F.embedding(ids, table))


@pytest.mark.parametrize("bad", [-1, 50])
def test_embedding_names_an_id_outside_the_vocabulary(bad: int) -> None:
    table = torch.randn(50, 24)
    with pytest.raises(ValueError, match=rf"token id {bad} at position 1 .*\[0, 50\)"):
        CpuKernelOps().embedding(torch.tensor([3, bad]), table)


def test_graphs_offered_when_every_matmul_is_recordable() -> None:
    ops = CpuKernelOps()
    if not (gemv.available() or onednn_bf16_available()):
        assert ops.capture_graph(1) is None
        return
    assert isinstance(ops.capture_graph(1), LaunchGraph)
    assert isinstance(ops.capture_graph(64), LaunchGraph)


@pytest.mark.skipif(not onednn_bf16_available(), reason="oneDNN bf16 is not available on this CPU")
def test_onednn_linear_replays_into_the_recorded_output() -> None:
    """Past the GEMV's rows the matmul is oneDNN's, a torch op: replayed and copied in place."""
    ops = CpuKernelOps()
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=gen).bfloat16()
    prepared = ops.prepare_linear(weight)
    x = torch.randn(gemv.MAX_ROWS + 4, 64, generator=gen).bfloat16()
    norm_weight = torch.ones(96).bfloat16()  # kept alive: the graph holds only its address
    graph = LaunchGraph()
    with graph:
        out = ops.linear(x, prepared, None)
        normed = ops.rms_norm(out, norm_weight, 1e-6)
    assert len(graph) == 2
    x.copy_(torch.randn(x.shape, generator=gen))
    graph.replay()
    assert torch.equal(out, ops.linear(x, prepared, None))
    assert torch.equal(normed, ops.rms_norm(out, norm_weight, 1e-6))
