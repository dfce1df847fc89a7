"""Collectives of the CPU backend: gloo through ``torch.distributed``, and all-reduce through
shared memory when every rank of the group runs on this host (:mod:`heron_cpu.shm_allreduce`).

Tensors on another device are rejected with a clear message, where gloo would fail deep inside
``torch.distributed``.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from heron_cpu.launch import launch_torch
from heron_cpu.shm_allreduce import ShmAllReduce
from heron_interfaces import CommContext, Communicator

if TYPE_CHECKING:
    import torch


def _on_cpu(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor for gloo collectives, got device {x.device}")
    return x


class CpuCommunicator(Communicator):
    """Gloo collectives over ``ctx.device_group`` (the world group when ``None``); all-reduce
    and all-gather through shared memory between ranks of one host (``HERON_CPU_SHM_ALLREDUCE=0``:
    gloo for everything)."""

    def __init__(self, ctx: CommContext) -> None:
        super().__init__(ctx)
        self._shm: ShmAllReduce | None = None
        if ctx.world_size > 1 and os.environ.get("HERON_CPU_SHM_ALLREDUCE", "1") != "0":
            self._shm = self._join_shared_memory()

    def _join_shared_memory(self) -> ShmAllReduce | None:
        """Agree on one segment with the group (a collective: every rank constructs its
        communicator at the same point), or None when the ranks are on several hosts."""
        import torch.distributed as dist

        group = self.ctx.device_group
        peers: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(peers, (socket.gethostname(), os.getpid()), group=group)
        if len({host for host, _pid in peers}) > 1:
            return None
        pids = [pid for _host, pid in peers]
        name = [ShmAllReduce.new_name() if self.ctx.rank == 0 else None]
        dist.broadcast_object_list(name, src=self._global_rank(0), group=group)
        shm = None
        if self.ctx.rank == 0:
            shm = ShmAllReduce(name[0], 0, self.ctx.world_size, create=True, pids=pids)
        dist.barrier(group=group)  # the segment exists before the others attach
        if self.ctx.rank != 0:
            shm = ShmAllReduce(name[0], self.ctx.rank, self.ctx.world_size, create=False, pids=pids)
        dist.barrier(group=group)  # everyone attached: the name can go
        assert shm is not None
        shm.unlink()
        return shm

    records_in_step_graphs = True
    """The all-reduce is a recordable call (heron_cpu.launch.launch_torch): tensor-parallel
    ranks replay their decode steps from graphs too, the all-reduce run again at its place."""

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        _on_cpu("x", x)
        if self._shm is not None and self._shm.compiled(x):
            return self._shm.all_reduce(x)  # one compiled launch, recorded as such
        return launch_torch(self._all_reduce, x)

    def _all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self._shm is not None:
            return self._shm.all_reduce(x)
        return super().all_reduce(x)

    def destroy(self) -> None:
        self._shm = None  # the mapping is released with its last view

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        _on_cpu("x", x)
        if self._shm is not None:
            gathered = self._shm.all_gather(x, dim)
            if gathered is not None:
                return gathered
        return super().all_gather(x, dim)

    def reduce_scatter(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return super().reduce_scatter(_on_cpu("x", x), dim)

    def gather(self, x: torch.Tensor, dst: int = 0, dim: int = -1) -> torch.Tensor | None:
        return super().gather(_on_cpu("x", x), dst, dim)

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        return super().broadcast(_on_cpu("x", x), src)

    def send(self, x: torch.Tensor, dst: int) -> None:
        super().send(_on_cpu("x", x), dst)
