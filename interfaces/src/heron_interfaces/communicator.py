"""Collectives for tensor and pipeline parallelism.

The defaults go through ``torch.distributed`` on ``ctx.device_group``; a backend overrides only what
it accelerates (a custom all-reduce, say). Methods return new tensors unless their name says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(slots=True, kw_only=True)
class CommContext:
    """The process group a communicator serves; a single argument so fields can be added later."""

    world_size: int
    rank: int
    device: Any = "cpu"
    device_group: Any = None
    """A ``torch.distributed`` ProcessGroup; ``None`` means the default (world) group."""
    cpu_group: Any = None
    unique_name: str = "world"


class Communicator:
    """Default collectives over ``torch.distributed``; usable as is by any torch device."""

    records_in_step_graphs: bool = False
    """API 1.12, optional (absent means False): True when :meth:`all_reduce` may run while the
    platform's ``KernelOps.capture_graph`` records a forward pass, and is then part of the
    recording: a replay runs the all-reduce again, in order with the kernels, on the recorded
    input tensor's new contents, and writes the recorded output tensor. Core then records decode
    steps under tensor parallelism too (each rank records the same steps, so the ranks' replays
    meet at the same collectives)."""

    def __init__(self, ctx: CommContext) -> None:
        self.ctx = ctx

    @property
    def _group(self) -> Any:
        return self.ctx.device_group

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if self.ctx.world_size == 1:
            return x
        out = x.clone()
        dist.all_reduce(out, group=self._group)
        return out

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        import torch
        import torch.distributed as dist

        if self.ctx.world_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.ctx.world_size)]
        dist.all_gather(parts, x.contiguous(), group=self._group)
        return torch.cat(parts, dim=dim)

    def reduce_scatter(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Sum across ranks, then keep this rank's slice of ``dim``."""
        import torch

        if self.ctx.world_size == 1:
            return x
        total = self.all_reduce(x)
        return torch.chunk(total, self.ctx.world_size, dim=dim)[self.ctx.rank].contiguous()

    def gather(self, x: torch.Tensor, dst: int = 0, dim: int = -1) -> torch.Tensor | None:
        """Concatenation of every rank's ``x`` along ``dim`` on ``dst``; ``None`` elsewhere."""
        import torch
        import torch.distributed as dist

        if self.ctx.world_size == 1:
            return x
        parts = (
            [torch.empty_like(x) for _ in range(self.ctx.world_size)]
            if self.ctx.rank == dst
            else None
        )
        dist.gather(x.contiguous(), parts, dst=self._global_rank(dst), group=self._group)
        return torch.cat(parts, dim=dim) if parts is not None else None

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Every rank receives ``src``'s ``x`` (in place on the receivers, which also get it back)."""
        import torch.distributed as dist

        if self.ctx.world_size > 1:
            dist.broadcast(x, src=self._global_rank(src), group=self._group)
        return x

    def send(self, x: torch.Tensor, dst: int) -> None:
        import torch.distributed as dist

        dist.send(x.contiguous(), dst=self._global_rank(dst), group=self._group)

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src: int) -> torch.Tensor:
        import torch
        import torch.distributed as dist

        out = torch.empty(shape, dtype=dtype, device=self.ctx.device)
        dist.recv(out, src=self._global_rank(src), group=self._group)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.ctx.world_size > 1:
            dist.barrier(group=self._group)

    def destroy(self) -> None:
        """Release backend resources; the process group itself belongs to the caller."""

    def _global_rank(self, group_rank: int) -> int:
        import torch.distributed as dist

        if self._group is None:
            return group_rank
        return dist.get_global_rank(self._group, group_rank)
