"""Worker processes of the multiprocess executor (and the data-parallel front's engine replicas):
started, connected, watched, stopped.

Each worker is a fresh interpreter (``python -m heron.distributed.worker_process``) rather than a
``multiprocessing`` child: ``spawn`` would re-import the user's main script in every worker (a
script without an ``if __name__ == "__main__"`` guard would start engines recursively), and
``fork`` would copy a process whose OpenMP and engine threads are already running. The worker
connects back to the driver over an authenticated loopback connection and receives its
:class:`~heron.distributed.worker.WorkerSpec` as the first message.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Client, Connection, Listener
from typing import Protocol

from heron.distributed.worker import dist_timeout

ADDRESS_ENV = "HERON_WORKER_ADDRESS"
AUTHKEY_ENV = "HERON_WORKER_AUTHKEY"


class WorkerProcess:
    """One worker's process: its exit is a readable file descriptor (``sentinel``), so the driver
    waits on replies and deaths together."""

    def __init__(self, popen: subprocess.Popen[bytes], rank: int) -> None:
        self.popen = popen
        self.rank = rank
        self.pid = popen.pid
        self.sentinel = os.pidfd_open(popen.pid)

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def stop(self, grace: float) -> None:
        """Wait ``grace`` seconds for a clean exit, then kill; always reaps the process."""
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


class RankedSpec(Protocol):
    """What a started process receives first: anything picklable with its ``rank``."""

    rank: int


def launch_workers(
    specs: Sequence[RankedSpec],
    *,
    module: str = "heron.distributed.worker_process",
    what: str = "worker rank",
) -> tuple[list[WorkerProcess], list[Connection]]:
    """Start ``python -m MODULE RANK`` per spec and return the processes with their connections,
    in rank order; ``what`` names one of them in errors (a data-parallel replica, a worker rank)."""
    authkey = secrets.token_bytes(32)
    listener = Listener(("127.0.0.1", 0), authkey=authkey)
    env = dict(os.environ)
    host, port = listener.address
    env[ADDRESS_ENV] = f"{host}:{port}"
    env[AUTHKEY_ENV] = authkey.hex()
    procs = [
        WorkerProcess(
            subprocess.Popen(
                [sys.executable, "-m", module, str(spec.rank)],
                env=env,
            ),
            spec.rank,
        )
        for spec in specs
    ]
    try:
        conns = _accept_all(listener, procs, what)
    except BaseException:
        for proc in procs:
            proc.popen.kill()
            proc.stop(grace=1.0)
        raise
    finally:
        listener.close()
    for spec, conn in zip(specs, conns):
        conn.send(spec)
    return procs, conns


def _accept_all(listener: Listener, procs: list[WorkerProcess], what: str) -> list[Connection]:
    """Each process's connection, by rank; fails if one exits or the timeout passes first."""
    by_rank: dict[int, Connection] = {}
    errors: list[BaseException] = []

    def accept() -> None:
        try:
            while len(by_rank) < len(procs):
                conn = listener.accept()
                by_rank[int(conn.recv())] = conn
        except (OSError, EOFError) as exc:  # the listener closed under us: we gave up
            errors.append(exc)

    thread = threading.Thread(target=accept, name="heron-accept-workers", daemon=True)
    thread.start()
    deadline = time.monotonic() + dist_timeout().total_seconds()
    while thread.is_alive():
        thread.join(timeout=0.2)
        for proc in procs:
            if proc.exitcode is not None and proc.rank not in by_rank:
                raise RuntimeError(
                    f"{what} {proc.rank} exited with status {proc.exitcode} "
                    "before connecting (its error is printed above)"
                )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} processes did not connect within HERON_DIST_TIMEOUT")
    if errors:
        raise RuntimeError(f"accepting worker connections failed: {errors[0]}")
    return [by_rank[proc.rank] for proc in procs]


def connect_to_driver(rank: int) -> Connection:
    """Worker side: the connection to the driver, announced with this worker's rank."""
    host, _, port = os.environ[ADDRESS_ENV].rpartition(":")
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ[AUTHKEY_ENV]))
    conn.send(rank)
    return conn
