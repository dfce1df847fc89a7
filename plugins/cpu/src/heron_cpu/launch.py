"""Every heron-cpu kernel launch goes through :func:`launch`, so a forward pass can be recorded.

The compiled kernels take only addresses, sizes and strides, and read every per-step value
(token ids, positions, slots, sequence lengths, block tables) from memory. A decode step's ~300
launches with the same shapes therefore repeat with the same arguments, once their tensors stay
put: :class:`LaunchGraph` records them during one pass and replays them in a loop, without the
Python that checked and prepared each call (core's ``heron.runner.step_graphs`` keeps the
tensors alive and refreshes the inputs in place). It is the host counterpart of a CUDA graph.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

try:  # private torch API: without it, core's capture guard sees the op and refuses the graph
    from torch.utils._python_dispatch import _disable_current_modes
except ImportError:  # pragma: no cover - depends on the torch version
    from contextlib import nullcontext as _disable_current_modes

__all__ = ["LaunchGraph", "launch", "launch_torch"]

_local = threading.local()
"""``_local.calls``: the list being recorded on this thread, if any (engines in other threads
of the same process keep launching without being recorded)."""


def launch(kernel: Callable[..., Any], *args: int | float) -> None:
    """Run ``kernel(*args)`` and, while a :class:`LaunchGraph` records on this thread, keep it."""
    kernel(*args)
    calls = getattr(_local, "calls", None)
    if calls is not None:
        calls.append((kernel, args))


def launch_torch(op: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """``op(*args)`` (a torch op that returns a new tensor, e.g. oneDNN's GEMM), recordable.

    A replay calls ``op`` again and copies its result into the tensor the recorded pass returned,
    which is where the recorded launches after it read. While recording, the op runs with the
    torch dispatch modes set aside: it is part of the graph, so the capture guard of core (a
    dispatch mode that refuses torch work a replay would skip) must not count it.
    """
    calls = getattr(_local, "calls", None)
    if calls is None:
        return op(*args)
    # The op is one recorded call: launches it makes itself are not recorded on their own (their
    # temporaries are the op's, freed when it returns; its replay makes them again).
    _local.calls = None
    try:
        with _disable_current_modes():
            out = op(*args)
    finally:
        _local.calls = calls
    calls.append((_ReplayInto(op, args, out), ()))
    return out


class _ReplayInto:
    __slots__ = ("args", "op", "out")

    def __init__(self, op: Callable[..., torch.Tensor], args: tuple, out: torch.Tensor) -> None:
        self.op, self.args, self.out = op, args, out

    def __call__(self) -> None:
        self.out.copy_(self.op(*self.args))


class LaunchGraph:
    """The launches made on this thread while the context is entered; :meth:`replay` repeats them.

    Implements ``heron_interfaces.kernel_ops.StepGraph``.
    """

    def __init__(self) -> None:
        self._calls: list[tuple[Callable[..., Any], tuple[int | float, ...]]] = []

    def __enter__(self) -> LaunchGraph:
        if getattr(_local, "calls", None) is not None:
            raise RuntimeError("a LaunchGraph is already recording on this thread")
        self._calls.clear()
        _local.calls = self._calls
        return self

    def __exit__(self, *exc_info: object) -> None:
        _local.calls = None

    def __len__(self) -> int:
        return len(self._calls)

    def replay(self) -> None:
        for kernel, args in self._calls:
            kernel(*args)
