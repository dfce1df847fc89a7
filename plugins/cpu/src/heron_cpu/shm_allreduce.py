"""All-reduce (and all-gather) through shared memory, for the ranks of a group on one host.

gloo goes through TCP on loopback even between processes of one machine: ~0.5-0.9 ms per
all-reduce of a decode step's activations (64 x 512 bfloat16) on the reference machine, and a
tensor-parallel decoder runs two per layer, so gloo alone cost more than the step's compute.
Here each rank copies its tensor into its own slot of a shared buffer, announces it with a
sequence number in a shared flag array, waits for every rank's number, and sums the slots in rank
order (so every rank gets bit-identical results). For float32 and bfloat16 the whole all-reduce
is one compiled call (``heron_cpu._C.shm_all_reduce``, GIL released) that a step graph records;
other dtypes take the Python path below, which follows the same protocol. Each slot has two halves used in turn, so a
half is rewritten only after every rank has passed the barrier that follows its reading. Tensors
larger than half a slot go through in pieces.

x86's store order (total store order) makes a rank's data visible before its flag; the flags are
aligned 8-byte words. Waiting spins, yielding the core to other processes, since ranks may share
cores.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import secrets
import time
from typing import Any

import torch

from heron_cpu import _C
from heron_cpu.launch import launch

_COMPILED_DTYPES = (torch.float32, torch.bfloat16)

SLOT_BYTES_ENV = "HERON_CPU_SHM_ALLREDUCE_MB"
IMPL_ENV = "HERON_CPU_SHM_ALLREDUCE_IMPL"
"""``compiled`` (the default) or ``python``: the Python path for every dtype, to measure the
compiled call against it (``benchmarks/bench_parallel.sh``)."""
DEFAULT_SLOT_MB = 8
_FLAG_BYTES = 64  # one cache line per rank's flag: ranks never write the same line
_FLAG_WORDS = _FLAG_BYTES // 8
SHM_DIR = "/dev/shm"


class ShmAllReduce:
    """One group's shared buffer. Every rank constructs it with the same ``name``; rank 0 creates
    the segment, the others attach to it, then rank 0 removes its name (:meth:`unlink`)."""

    def __init__(
        self, name: str, rank: int, world_size: int, create: bool, pids: list[int] | None = None
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.pids = pids or []
        """Each rank's process id: a wait that lasts checks that the ranks it waits for live."""
        self.timeout = float(os.environ.get("HERON_DIST_TIMEOUT", "300"))
        self.slot_bytes = int(float(os.environ.get(SLOT_BYTES_ENV, DEFAULT_SLOT_MB)) * 2**20)
        size = world_size * (_FLAG_BYTES + self.slot_bytes)
        # A file in /dev/shm mapped by hand rather than multiprocessing.shared_memory, whose
        # resource tracker (shared by processes of one multiprocessing family) would unlink the
        # segment, or complain, when a rank that merely attached to it exits.
        self.path = os.path.join(SHM_DIR, name)
        fd = os.open(self.path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.owner = create
        self.buf = memoryview(self.map)
        self.flags = self.buf[: world_size * _FLAG_BYTES].cast("q")
        """8-byte words; rank r's flag is word ``r * _FLAG_WORDS``."""
        if create:
            for r in range(world_size):
                self.flags[r * _FLAG_WORDS] = 0
        self.data_offset = world_size * _FLAG_BYTES
        self.half_bytes = self.slot_bytes // 2

        # The round counter and the ranks' pids in tensors: the compiled all-reduce reads and
        # advances the same counter as the Python path (all_gather), through their addresses.
        self._round = torch.zeros(1, dtype=torch.int64)
        self._pids = torch.tensor(
            [*self.pids, *[0] * (world_size - len(self.pids))][:world_size], dtype=torch.int64
        )
        self._address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        impl = os.environ.get(IMPL_ENV, "compiled")
        if impl not in ("compiled", "python"):
            raise ValueError(f"{IMPL_ENV}={impl!r}: expected 'compiled' or 'python'")
        self.use_compiled = impl == "compiled"

    @property
    def round(self) -> int:
        return int(self._round[0])

    @round.setter
    def round(self, value: int) -> None:
        self._round[0] = value

    @staticmethod
    def new_name() -> str:
        return f"heron_ar_{os.getpid()}_{secrets.token_hex(4)}"

    def compiled(self, x: torch.Tensor) -> bool:
        """Whether ``x`` goes through the compiled all-reduce (which step graphs record)."""
        return (
            self.use_compiled
            and self.world_size > 1
            and x.dtype in _COMPILED_DTYPES
            and x.is_contiguous()
        )

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled(x):
            out = torch.empty_like(x)
            launch(
                _C.shm_all_reduce,
                self._address,
                self.rank,
                self.world_size,
                self.slot_bytes,
                self._round.data_ptr(),
                self._pids.data_ptr(),
                self.timeout,
                x.data_ptr(),
                out.data_ptr(),
                x.numel(),
                x.element_size(),
            )
            return out
        return self.all_reduce_python(x)

    def all_reduce_python(self, x: torch.Tensor) -> torch.Tensor:
        """The same protocol step by step in Python: any dtype and layout (and the baseline of
        ``plugins/cpu/benchmarks/bench_allreduce.py``)."""
        flat = x.contiguous().view(-1)
        out = torch.empty_like(flat)
        per_piece = max(1, self.half_bytes // flat.element_size())
        for start in range(0, flat.numel(), per_piece):
            n = min(per_piece, flat.numel() - start)
            # Double buffering: this round writes the half of each slot that the round before
            # last used; every rank finished reading that one before arriving at the last
            # round's barrier, so one barrier per piece is enough.
            half = (self.round + 1) % 2
            slots = [self._slot(r, half, flat.dtype, n) for r in range(self.world_size)]
            slots[self.rank].copy_(flat[start : start + n])
            self._barrier()  # every slot holds its rank's piece
            piece = out[start : start + n]
            if self.world_size == 1:
                piece.copy_(slots[0])
                continue
            torch.add(slots[0], slots[1], out=piece)
            for r in range(2, self.world_size):
                piece += slots[r]
        return out.view(x.shape)

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor | None:
        """Every rank's ``x`` concatenated along ``dim``, or None when ``x`` does not fit in half
        a slot (the caller then uses gloo)."""

        flat = x.contiguous().view(-1)
        n = flat.numel()
        if n * flat.element_size() > self.half_bytes:
            return None
        half = (self.round + 1) % 2
        slots = [self._slot(r, half, flat.dtype, n) for r in range(self.world_size)]
        slots[self.rank].copy_(flat)
        self._barrier()
        parts = [slot.view(x.shape) for slot in slots]
        return torch.cat(parts, dim=dim)  # a copy: the slots are rewritten two rounds on

    def _slot(self, rank: int, half: int, dtype: Any, count: int) -> torch.Tensor:

        start = self.data_offset + rank * self.slot_bytes + half * self.half_bytes
        return torch.frombuffer(self.buf, dtype=dtype, count=count, offset=start)

    def _barrier(self) -> None:
        """Wait for every rank to reach this round. A rank that died never will: unlike gloo's
        sockets, shared memory does not tell, so a wait longer than a moment checks that the
        ranks it waits for still exist (and gives up after ``HERON_DIST_TIMEOUT``)."""
        self.round += 1
        target = self.round
        flags = self.flags
        flags[self.rank * _FLAG_WORDS] = target
        spins = 0
        started = 0.0
        for rank in range(self.world_size):
            word = rank * _FLAG_WORDS
            while flags[word] < target:
                spins += 1
                if spins > 64:
                    os.sched_yield()
                if spins % 4096 == 0:
                    started = started or time.monotonic()
                    self._check_alive(rank, time.monotonic() - started)

    def _check_alive(self, rank: int, waited: float) -> None:
        if rank < len(self.pids):
            try:
                os.kill(self.pids[rank], 0)
            except ProcessLookupError:
                raise RuntimeError(
                    f"shared-memory all-reduce: rank {rank} (pid {self.pids[rank]}) exited"
                ) from None
            except PermissionError:  # alive, another user's (a reused pid is not ours to judge)
                pass
        if waited > self.timeout:
            raise RuntimeError(
                f"shared-memory all-reduce: rank {rank} did not arrive within {self.timeout:g} s "
                "(HERON_DIST_TIMEOUT)"
            )

    def unlink(self) -> None:
        """Remove the segment's name once every rank has mapped it: the mappings live on, and a
        rank that dies can no longer leave a file behind in /dev/shm."""
        if self.owner and os.path.exists(self.path):
            os.unlink(self.path)
