"""Every heron-cpu kernel launch goes through :func:`launch`, so a forward pass can be recorded.

The compiled kernels take only addresses, sizes and strides, and read every per-step value
(token ids, positions, slots, sequence lengths, block tables) from memory. A decode step's ~300
launches with the same shapes therefore repeat with the same arguments, once their tensors stay
put: :class:`LaunchGraph` records them during one pass and replays them, without the Python that
checked and prepared each call (core's ``heron.runner.step_graphs`` keeps the tensors alive and
refreshes the inputs in place). It is the host counterpart of a CUDA graph.

The compiled kernels also have raw entries (``raw_entries`` of ``heron_cpu._C`` and ``_quant``,
see ``csrc/replay.h``): at the end of recording, every run of consecutive calls that have one is
packed into a ``_C.ReplayProgram`` and replayed by one pybind11 call that releases the GIL once,
instead of ~300 Python iterations, argument conversions and GIL releases per decode step. Calls
without one (``launch_torch``'s ops, ``_C.shm_all_reduce``, any Python callable) stay Python
calls between those programs, in recorded order. ``HERON_CPU_NATIVE_REPLAY=0`` replays every call from Python instead
(the per-call loop, for comparisons).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

import torch

try:  # private torch API: without it, core's capture guard sees the op and refuses the graph
    from torch.utils._python_dispatch import _disable_current_modes
except ImportError:  # pragma: no cover - depends on the torch version
    from contextlib import nullcontext as _disable_current_modes

__all__ = ["NATIVE_REPLAY_ENV", "LaunchGraph", "launch", "launch_torch"]

NATIVE_REPLAY_ENV = "HERON_CPU_NATIVE_REPLAY"

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

    Implements ``heron_interfaces.kernel_ops.StepGraph``. ``native`` (default: unless
    ``HERON_CPU_NATIVE_REPLAY=0``) packs the calls that have raw entries into C++ programs when
    recording ends; :meth:`replay_python` is the plain loop over every call either way.
    """

    def __init__(self, native: bool | None = None) -> None:
        self._calls: list[tuple[Callable[..., Any], tuple[int | float, ...]]] = []
        self._steps: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        if native is None:
            native = os.environ.get(NATIVE_REPLAY_ENV, "1").strip() != "0"
        self.native = native

    def __enter__(self) -> LaunchGraph:
        if getattr(_local, "calls", None) is not None:
            raise RuntimeError("a LaunchGraph is already recording on this thread")
        self._calls.clear()
        self._steps = []
        _local.calls = self._calls
        return self

    def __exit__(self, *exc_info: object) -> None:
        _local.calls = None
        self._steps = _compile(self._calls) if self.native else list(self._calls)

    def __len__(self) -> int:
        return len(self._calls)

    @property
    def segments(self) -> list[str]:
        """What a replay runs, in order: ``"native:N"`` for a C++ program of N calls, else the
        name of a call made from Python (for tests and benchmarks)."""
        return [
            f"native:{len(call.__self__)}"
            if isinstance(getattr(call, "__self__", None), _native_program_type())
            else getattr(call, "__name__", type(call).__name__)
            for call, _ in self._steps
        ]

    def replay(self) -> None:
        for call, args in self._steps:
            call(*args)

    def replay_python(self) -> None:
        """Every recorded call from Python, one pybind11 call each (the replay before C++ programs)."""
        for kernel, args in self._calls:
            kernel(*args)


def _native_program_type() -> type:
    from heron_cpu import _C

    return _C.ReplayProgram


@functools.cache
def _raw_entries() -> dict[Any, Any]:
    """Each compiled kernel of ``_C`` and ``_quant`` that has a raw entry -> that entry."""
    from heron_cpu import _C, _quant

    return {
        getattr(module, name): entry
        for module in (_C, _quant)
        for name, entry in getattr(module, "raw_entries", {}).items()
    }


def _raw_entry(kernel: Callable[..., Any]) -> Any:
    """The raw entry (a capsule) of a compiled kernel, or None."""
    try:
        return _raw_entries().get(kernel)
    except TypeError:  # an unhashable callable
        return None


def _compile(
    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]],
) -> list[tuple[Callable[..., Any], tuple[Any, ...]]]:
    """The recorded calls as replay steps: each run of raw-capable calls one C++ program."""
    from heron_cpu import _C

    steps: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
    program = None
    for kernel, args in calls:
        entry = _raw_entry(kernel)
        if entry is not None:
            program = program if program is not None else _C.ReplayProgram()
            if program.append(entry, args):
                continue
        if program is not None and len(program):
            steps.append((program.run, ()))
        program = None
        steps.append((kernel, args))
    if program is not None and len(program):
        steps.append((program.run, ()))
    return steps
