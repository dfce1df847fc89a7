"""Conformance tests of a platform's :class:`~heron_interfaces.Communicator` on two processes.

One pair of spawned processes runs every collective once (starting processes that import torch is
the slow part) and reports a verdict per collective; each verdict is then its own test, so a broken
``reduce_scatter`` does not hide a working ``broadcast``.

Each rank creates its tensors on the platform's device: device ``rank`` when the platform sees at
least one device per rank, else device 0 for both, which only CPU platforms may share (gloo); an
accelerator platform with fewer devices than ranks skips the two-process test.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from heron_interfaces.platform import Platform
from heron_interfaces.testing.loader import platform_ref, resolve_ref

if TYPE_CHECKING:
    import torch

WORLD_SIZE = 2
COLLECTIVES = (
    "all_reduce",
    "all_reduce_default_dtype",
    "all_gather",
    "reduce_scatter",
    "gather",
    "broadcast",
    "send_recv",
    "barrier",
    "all_reduce_in_step_graph",
)
TIMEOUT_S = 120.0


def _checks(
    comm: Any, rank: int, device: Any, default_dtype: Any, kernel_ops: Any = None
) -> dict[str, Callable[[], None]]:
    """The collective checks; every rank runs all of them in the same order."""
    import torch

    world = WORLD_SIZE
    eq = torch.testing.assert_close

    def all_reduce() -> None:
        x = torch.arange(6, dtype=torch.float32, device=device) * (rank + 1)
        before = x.clone()
        eq(comm.all_reduce(x), torch.arange(6, dtype=torch.float32, device=device) * 3)
        eq(x, before, msg="all_reduce must not modify its input")

    def all_reduce_default_dtype() -> None:
        x = torch.full((4, 8), float(rank + 1), dtype=default_dtype, device=device)
        eq(comm.all_reduce(x), torch.full((4, 8), 3.0, dtype=default_dtype, device=device))

    def all_gather() -> None:
        x = torch.full((2, 3), float(rank), device=device)
        parts = [torch.full((2, 3), float(r), device=device) for r in range(world)]
        eq(comm.all_gather(x, dim=-1), torch.cat(parts, dim=-1))
        eq(comm.all_gather(x, dim=0), torch.cat(parts, dim=0))

    def reduce_scatter() -> None:
        x = torch.arange(2 * 4 * world, dtype=torch.float32, device=device).view(2, -1) + rank
        total = torch.arange(2 * 4 * world, dtype=torch.float32, device=device).view(2, -1) * 2 + 1
        eq(comm.reduce_scatter(x, dim=-1), total.chunk(world, dim=-1)[rank])

    def gather() -> None:
        x = torch.full((3,), float(rank), device=device)
        got = comm.gather(x, dst=0, dim=0)
        if rank == 0:
            eq(got, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], device=device))
        else:
            assert got is None, "gather must return None on ranks other than dst"

    def broadcast() -> None:
        x = torch.full((5,), float(rank + 10), device=device)
        eq(comm.broadcast(x, src=1), torch.full((5,), 11.0, device=device))
        eq(x, torch.full((5,), 11.0, device=device), msg="broadcast works in place")

    def send_recv() -> None:
        payload = torch.arange(12, dtype=torch.float32, device=device).view(3, 4)
        if rank == 0:
            comm.send(payload, dst=1)
            eq(comm.recv((3, 4), torch.float32, src=1), payload * 2)
        else:
            got = comm.recv((3, 4), torch.float32, src=0)
            eq(got, payload)
            comm.send(got * 2, dst=0)

    def barrier() -> None:
        comm.barrier()

    def all_reduce_in_step_graph() -> None:
        """API 1.12: a communicator that declares ``records_in_step_graphs`` is replayed with the
        platform's kernels: the recorded all-reduce sums the input's new contents into the
        recorded output. Communicators that do not declare it are never recorded by core."""
        if not getattr(comm, "records_in_step_graphs", False):
            return
        graph = kernel_ops.capture_graph(4)
        assert graph is not None, (
            "records_in_step_graphs is declared, but the platform's KernelOps record no graph"
        )
        table = torch.arange(40, dtype=default_dtype, device=device).view(10, 4)
        ids = torch.tensor([1, 2, 3, 4], device=device)
        with graph:
            rows = kernel_ops.embedding(ids, table)
            summed = comm.all_reduce(rows)
        eq(summed.cpu(), table.cpu()[ids.cpu()] * world)
        rounds = [  # each round: every rank's ids (they differ between ranks in the second)
            [[9, 0, 5, 5]] * world,
            [[r, r, 7, 8] for r in range(world)],
        ]
        for ids_per_rank in rounds:
            ids.copy_(torch.tensor(ids_per_rank[rank], device=device))
            graph.replay()
            want = sum(table.cpu()[torch.tensor(each)] for each in ids_per_rank)
            eq(summed.cpu(), want)

    return {name: fn for name, fn in locals().items() if name in COLLECTIVES}


def _device_index(platform: type[Platform], rank: int) -> int:
    """The device index of ``rank``: its own device when there is one per rank, else device 0."""
    return rank if platform.device_count() >= WORLD_SIZE else 0


def multi_process_skip_reason(platform: type[Platform]) -> str | None:
    """Why the two-process collectives cannot run on this machine; ``None`` when they can."""
    if platform.device_type == "cpu":
        return None
    count = platform.device_count()
    if count >= WORLD_SIZE:
        return None
    return (
        f"the {WORLD_SIZE}-process collective test needs one {platform.device_type} device per "
        f"rank ({WORLD_SIZE}); platform {platform.name!r} sees {count}"
    )


def _worker(rank: int, ref: str, init_file: str, results: Any) -> None:
    """Body of one spawned rank: set up the process group, run every check, report verdicts."""
    verdicts: dict[str, str | None] = {}
    try:
        import torch
        import torch.distributed as dist

        from heron_interfaces.communicator import CommContext

        platform: type[Platform] = resolve_ref(ref)  # type: ignore[assignment]
        index = _device_index(platform, rank)
        platform.set_device(index)
        device = torch.device(platform.device_type, index)
        dist.init_process_group(
            platform.dist_backend,
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=WORLD_SIZE,
        )
        comm = platform.communicator(CommContext(world_size=WORLD_SIZE, rank=rank, device=device))
        default_dtype = getattr(torch, platform.capabilities().default_dtype)
        kernel_ops = resolve_ref(platform.kernel_ops())()
        for name, check in _checks(comm, rank, device, default_dtype, kernel_ops).items():
            try:
                check()
                verdicts[name] = None
            except Exception:
                verdicts[name] = traceback.format_exc(limit=4)
        comm.destroy()
        dist.destroy_process_group()
    except Exception:
        verdicts["setup"] = traceback.format_exc()
    results.put((rank, verdicts))


def run_collectives(platform: type[Platform]) -> dict[str, list[str]]:
    """Spawn two ranks of ``platform`` and return the errors per collective (empty: passed)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [
            ctx.Process(target=_worker, args=(r, platform_ref(platform), init_file, results))
            for r in range(WORLD_SIZE)
        ]
        for p in procs:
            p.start()
        errors: dict[str, list[str]] = {name: [] for name in (*COLLECTIVES, "setup")}
        try:
            for _ in procs:
                rank, verdicts = results.get(timeout=TIMEOUT_S)
                for name, err in verdicts.items():
                    if err is not None:
                        errors[name].append(f"rank {rank}: {err}")
                    elif name not in errors:
                        errors[name] = []
                for name in COLLECTIVES:
                    if name not in verdicts:
                        errors[name].append(f"rank {rank}: did not run")
        except Exception as exc:  # queue.Empty on a hang
            errors["setup"].append(f"a rank did not report within {TIMEOUT_S}s: {exc!r}")
        finally:
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
    return errors


@pytest.fixture(scope="session")
def collective_errors(backend_platform: type[Platform]) -> dict[str, list[str]]:
    reason = multi_process_skip_reason(backend_platform)
    if reason is not None:
        pytest.skip(reason)
    return run_collectives(backend_platform)


@pytest.mark.parametrize("collective", COLLECTIVES)
def test_collective(collective_errors: dict[str, list[str]], collective: str) -> None:
    """Each collective gives the mathematically expected result on every rank."""
    if collective_errors["setup"]:
        pytest.fail("process group setup failed:\n" + "\n".join(collective_errors["setup"]))
    assert not collective_errors[collective], "\n".join(collective_errors[collective])


def test_single_process_communicator_is_identity(
    backend_platform: type[Platform], backend_device: torch.device
) -> None:
    """With world size 1 no process group exists; every collective must return its input."""
    import torch

    from heron_interfaces.communicator import CommContext

    ctx = CommContext(world_size=1, rank=0, device=backend_device)
    comm = backend_platform.communicator(ctx)
    x = torch.arange(4, dtype=torch.float32, device=backend_device)
    torch.testing.assert_close(comm.all_reduce(x), x)
    torch.testing.assert_close(comm.all_gather(x, dim=0), x)
    torch.testing.assert_close(comm.reduce_scatter(x, dim=0), x)
    torch.testing.assert_close(comm.broadcast(x, src=0), x)
    comm.barrier()
