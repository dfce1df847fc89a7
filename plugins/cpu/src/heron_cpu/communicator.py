"""Collectives of the CPU backend: gloo through ``torch.distributed``.

The interface's default implementation already speaks gloo; this subclass exists to be explicit
about the backend and to reject tensors on another device with a clear message, where gloo would
fail deep inside ``torch.distributed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from heron_interfaces import Communicator

if TYPE_CHECKING:
    import torch


def _on_cpu(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor for gloo collectives, got device {x.device}")
    return x


class CpuCommunicator(Communicator):
    """Gloo collectives over ``ctx.device_group`` (the world group when ``None``)."""

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return super().all_reduce(_on_cpu("x", x))

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return super().all_gather(_on_cpu("x", x), dim)

    def reduce_scatter(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return super().reduce_scatter(_on_cpu("x", x), dim)

    def gather(self, x: torch.Tensor, dst: int = 0, dim: int = -1) -> torch.Tensor | None:
        return super().gather(_on_cpu("x", x), dst, dim)

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        return super().broadcast(_on_cpu("x", x), src)

    def send(self, x: torch.Tensor, dst: int) -> None:
        super().send(_on_cpu("x", x), dst)
