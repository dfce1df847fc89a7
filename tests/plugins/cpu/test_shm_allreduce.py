"""The CPU communicator's shared-memory all-reduce and all-gather against gloo's, on two
processes: pieces smaller than a tensor (a tiny slot), both dtypes, odd shapes, many rounds in a
row (the double-buffered halves), the compiled all-reduce against the Python one, the gloo
fallback for a gather too big for a slot, and no file left in /dev/shm. Three ranks sum in rank
order; a rank that exits makes its peer's all-reduce raise, naming it."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from heron_cpu.shm_allreduce import SHM_DIR


def _run(rank: int, port: int, results: Path) -> None:
    os.environ["HERON_CPU_SHM_ALLREDUCE_MB"] = "0.001"  # 1 KiB slots: 512-byte pieces
    try:
        import torch.distributed as dist

        from heron_cpu.communicator import CpuCommunicator
        from heron_interfaces import CommContext

        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
        )
        comm = CpuCommunicator(CommContext(world_size=2, rank=rank))
        assert comm._shm is not None, "ranks of one host must use shared memory"
        gen = torch.Generator().manual_seed(rank)
        for round_ in range(20):
            for dtype in (torch.float32, torch.bfloat16):
                shape = (3 + round_, 37)
                x = torch.randn(shape, generator=gen).to(dtype)
                expected = x.clone()
                dist.all_reduce(expected)
                assert comm._shm.compiled(x)
                got = comm.all_reduce(x)
                torch.testing.assert_close(
                    got, expected, rtol=0, atol=0 if dtype == torch.float32 else 1e-2
                )
                # The Python path (a non-contiguous input) follows the same protocol in the
                # same round sequence and sums in the same order: the same bits.
                strided = torch.empty(shape[::-1], dtype=dtype).t()
                strided.copy_(x)
                assert not comm._shm.compiled(strided)
                assert torch.equal(comm.all_reduce(strided), got)
                both = [torch.empty_like(x) for _ in range(2)]
                dist.all_gather(both, x)
                torch.testing.assert_close(comm.all_gather(x, dim=-1), torch.cat(both, dim=-1))
        big = torch.full((600,), float(rank))  # 2400 bytes: more than half a slot -> gloo
        torch.testing.assert_close(comm.all_gather(big, dim=0), torch.cat([big * 0, big * 0 + 1]))
        comm.destroy()
        dist.destroy_process_group()
        (results / f"{rank}.ok").write_text("ok")
    except BaseException:
        (results / f"{rank}.err").write_text(traceback.format_exc())
        raise


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shared_memory_collectives_equal_gloo(tmp_path: Path) -> None:
    before = set(os.listdir(SHM_DIR))
    try:
        mp.spawn(_run, args=(_free_port(), tmp_path), nprocs=2)
    except Exception:
        errors = "\n".join(p.read_text() for p in tmp_path.glob("*.err"))
        pytest.fail(f"a rank failed:\n{errors}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.ok", "1.ok"]
    assert not {f for f in set(os.listdir(SHM_DIR)) - before if f.startswith("heron_ar_")}


def _run_three(rank: int, port: int, results: Path) -> None:
    try:
        import torch.distributed as dist

        from heron_cpu.communicator import CpuCommunicator
        from heron_interfaces import CommContext

        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=3
        )
        comm = CpuCommunicator(CommContext(world_size=3, rank=rank))
        parts = [torch.randn(5, 129, generator=torch.Generator().manual_seed(r)) for r in range(3)]
        for dtype in (torch.float32, torch.bfloat16):
            got = comm.all_reduce(parts[rank].to(dtype))
            mine = [p.to(dtype).float() for p in parts]
            assert torch.equal(got, (mine[0] + mine[1] + mine[2]).to(dtype))
        comm.destroy()
        dist.destroy_process_group()
        (results / f"{rank}.ok").write_text("ok")
    except BaseException:
        (results / f"{rank}.err").write_text(traceback.format_exc())
        raise


def test_three_ranks_sum_in_rank_order(tmp_path: Path) -> None:
    try:
        mp.spawn(_run_three, args=(_free_port(), tmp_path), nprocs=3)
    except Exception:
        errors = "\n".join(p.read_text() for p in tmp_path.glob("*.err"))
        pytest.fail(f"a rank failed:\n{errors}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.ok", "1.ok", "2.ok"]


def _run_and_lose_a_peer(rank: int, port: int, results: Path) -> None:
    import torch.distributed as dist

    from heron_cpu.communicator import CpuCommunicator
    from heron_interfaces import CommContext

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    comm = CpuCommunicator(CommContext(world_size=2, rank=rank))
    comm.all_reduce(torch.ones(8))
    if rank == 1:
        os._exit(0)  # gone without a word, as a killed worker
    try:
        comm.all_reduce(torch.ones(8))
    except RuntimeError as exc:
        (results / "0.raised").write_text(str(exc))
    os._exit(0)


def test_a_peer_that_exits_is_named(tmp_path: Path) -> None:
    context = mp.start_processes(
        _run_and_lose_a_peer, args=(_free_port(), tmp_path), nprocs=2, join=False
    )
    for proc in reversed(context.processes):  # rank 1 is reaped first: a zombie looks alive
        proc.join(60)
    raised = (tmp_path / "0.raised").read_text()
    pid = context.processes[1].pid
    assert f"rank 1 (pid {pid}) exited" in raised, raised
