"""The tensor-parallel group a model is built for: this rank, the group's size, its collectives.

Passed to the model through :class:`~heron.models.context.ModelContext` (no module-global state),
so the same layer classes serve one process (``size == 1``: no collective ever runs) and ``size``
processes, each holding its shard of every sharded weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from heron_interfaces import Communicator


class ShardingError(ValueError):
    """The model's shape cannot be split over the requested tensor-parallel size."""


@dataclass(frozen=True, slots=True)
class TensorParallel:
    """This process's place in its tensor-parallel group."""

    rank: int = 0
    size: int = 1
    comm: Communicator | None = None
    """The platform's communicator over the group; ``None`` only when ``size == 1``."""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"tensor-parallel rank {self.rank} is outside [0, {self.size})")
        if self.size > 1 and self.comm is None:
            raise ValueError("a tensor-parallel group of several ranks needs a communicator")

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of ``x`` over the group (``x`` itself on one rank)."""
        if self.size == 1:
            return x
        assert self.comm is not None  # checked in __post_init__
        return self.comm.all_reduce(x)

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's ``x`` concatenated along ``dim``, in rank order."""
        if self.size == 1:
            return x
        assert self.comm is not None
        return self.comm.all_gather(x, dim=dim)

    def split(self, total: int, what: str) -> int:
        """This rank's share of ``total`` units that must divide evenly (heads, MLP columns)."""
        return split_evenly(total, self.size, what)

    def padded_split(self, total: int) -> tuple[int, int]:
        """``(start, rows per rank)`` of a dimension split with padding (a vocabulary)."""
        per_rank = -(-total // self.size)
        return self.rank * per_rank, per_rank


def split_evenly(total: int, size: int, what: str) -> int:
    """``total / size``, or a :class:`ShardingError` that names ``what`` and both numbers."""
    if total % size:
        raise ShardingError(
            f"{what} ({total}) is not divisible by tensor_parallel_size ({size}); "
            "choose a size that divides it"
        )
    return total // size


SINGLE = TensorParallel()
"""The group of one: every layer behaves as an unsharded layer."""
