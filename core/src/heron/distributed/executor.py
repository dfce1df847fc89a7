"""Executors: how the engine's ranks run. One shape for all (DESIGN.md 3b): the driver's rank in
the engine process, the other ranks wherever the executor puts them, every set-up call made on all
ranks together, and one message per step.

``UniprocExecutor`` is today's single rank. ``MultiprocExecutor`` adds one worker process per extra
rank on this machine (:mod:`heron.distributed.processes`), joined by the platform's
``torch.distributed`` backend over a TCP store on loopback, and driven over one connection each.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import socket
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from heron.distributed.processes import WorkerProcess, launch_workers
from heron.distributed.step_sync import StepEncoder
from heron.distributed.worker import Worker, WorkerSpec, dist_timeout
from heron.engine.kv_sizing import KVPlan
from heron.sched.output import RunnerOutput, SchedulerOutput

logger = logging.getLogger(__name__)


class WorkerFailedError(RuntimeError):
    """A worker rank died or raised; the message names the rank and what it reported."""


class UniprocExecutor:
    """The driver's rank is the only one."""

    world_size = 1
    pipelines_steps = False
    """Whether ``submit``/``collect`` keep several steps in flight (pipeline parallelism)."""

    def __init__(self, driver: Worker) -> None:
        self.driver = driver

    def load_weights(self) -> list[float]:
        return [self.driver.load_weights()]

    def plan_kv_cache(self, max_step_tokens: int) -> KVPlan:
        return self.driver.plan_kv_cache(max_step_tokens)

    def init_kv_cache(self, num_blocks: int) -> None:
        self.driver.init_kv_cache(num_blocks)

    def enable_step_graphs(self, max_model_len: int) -> str:
        """Step graphs on every rank (each records the same steps); says what the driver did."""
        return self.driver.runner.enable_step_graphs(max_model_len)

    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        return self.driver.runner.execute(out)

    def submit(self, out: SchedulerOutput) -> None:
        """Start a step without waiting for its results; ``collect`` returns them, in order."""
        raise NotImplementedError(f"{type(self).__name__} runs one step at a time")

    def collect(self) -> RunnerOutput:
        raise NotImplementedError(f"{type(self).__name__} runs one step at a time")

    def release(self, request_ids: list[str]) -> None:
        self.driver.runner.release(request_ids)

    def check_health(self) -> None:
        """Raise :class:`WorkerFailedError` if a rank is gone; one rank never is."""

    def shutdown(self) -> None:
        self.driver.close()


class MultiprocExecutor(UniprocExecutor):
    """Ranks 1..N-1 in worker processes on this machine; rank 0 (the driver) in this one."""

    pipelines_steps = True

    def __init__(
        self,
        specs: list[WorkerSpec],
        make_driver: Callable[[WorkerSpec], Worker],
        *,
        on_failure: Callable[[WorkerFailedError], None] | None = None,
    ) -> None:
        self.world_size = len(specs)
        self._encoder = StepEncoder()
        self._failure: WorkerFailedError | None = None
        self._closing = False
        self._stopping = threading.Event()
        """Set by whoever stops the workers, the finalizer included (it runs at interpreter exit
        while the executor still exists): their exits are then expected, not failures."""
        self._on_failure = on_failure
        specs = self._launch(specs)
        try:
            driver = make_driver(specs[0])  # joins the group: waits for every worker to join
            self._collect("start-up")
        except BaseException:
            self._kill_all()
            raise
        super().__init__(driver)
        self._start_monitor()

    def _launch(self, specs: list[WorkerSpec]) -> list[WorkerSpec]:
        """Start ranks 1..N-1; returns the specs (an executor may fill in placement)."""
        self._procs, self._conns = launch_workers(specs[1:])
        return specs

    def _start_monitor(self) -> None:
        # An engine dropped without shutdown() still takes its workers with it.
        self._finalizer = weakref.finalize(
            self, _stop_processes, self._procs, self._conns, self._stopping
        )
        self._monitor = threading.Thread(
            target=_watch, args=(weakref.ref(self),), name="heron-rank-monitor", daemon=True
        )
        self._monitor.start()

    # -- set-up: every rank, together --------------------------------------------------------------
    def _call(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every rank (workers first, so collectives inside can meet)."""
        self._send(("call", (method, args)))
        mine = getattr(self.driver, method)(*args)
        return [mine, *self._collect(method)]

    def load_weights(self) -> list[float]:
        return self._call("load_weights")

    def plan_kv_cache(self, max_step_tokens: int) -> KVPlan:
        """The plan of the rank with the fewest blocks: every rank must hold the same blocks."""
        plans = self._call("plan_kv_cache", max_step_tokens)
        return min(plans, key=lambda p: p.num_blocks)

    def init_kv_cache(self, num_blocks: int) -> None:
        self._call("init_kv_cache", num_blocks)

    def enable_step_graphs(self, max_model_len: int) -> str:
        return self._call("enable_step_graphs", max_model_len)[0]

    # -- steps -----------------------------------------------------------------------------------
    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        self.check_health()
        self._send(("step", self._encoder.encode(out)))
        try:
            result = self.driver.runner.execute(out)
        except RuntimeError as exc:  # a collective failed: a peer is gone
            self._collect("step", timeout=5.0)
            raise WorkerFailedError(f"a parallel step failed: {exc}") from exc
        replies = self._collect("step")
        if self.driver.is_output_rank:
            return result
        return self._output_of(replies)

    def submit(self, out: SchedulerOutput) -> None:
        """Send the step to the workers and run the driver's stage (the first: it never samples
        with several stages); its results are read later by ``collect``. Each rank runs its
        steps in the order they were sent, so a block freed (an abort) while an older step is in
        flight is written by that step before a newer one reuses it, on every rank."""
        if self.driver.is_output_rank:
            raise RuntimeError("submit needs several pipeline stages: the driver's rank samples")
        self.check_health()
        self._send(("step", self._encoder.encode(out)))
        try:
            self.driver.runner.execute(out)
        except RuntimeError as exc:  # a collective failed: a peer is gone
            self._collect("step", timeout=5.0)  # names the rank that died, when it can
            raise WorkerFailedError(f"a parallel step failed: {exc}") from exc

    def collect(self) -> RunnerOutput:
        """The results of the oldest step submitted and not yet collected."""
        return self._output_of(self._collect("step"))

    def _output_of(self, replies: list[Any]) -> RunnerOutput:
        # With several pipeline stages the last stage sampled; its first rank sent the result.
        return replies[self.world_size - self.driver.spec.tp_size - 1]

    def release(self, request_ids: list[str]) -> None:
        self._encoder.release(request_ids)
        self.driver.runner.release(request_ids)

    def check_health(self) -> None:
        if self._failure is not None:
            raise self._failure
        for rank, proc in enumerate(self._procs, start=1):
            if proc.exitcode is not None:
                self._fail(rank, f"exited with status {proc.exitcode}")

    def shutdown(self) -> None:
        """Stop every worker (politely, then by force) and leave the process group."""
        if self._closing:
            return
        self._closing = True
        if self._failure is None:
            try:
                self._send(("stop", None))
                self._collect("shutdown", timeout=10.0)
            except WorkerFailedError:
                pass
        self._kill_all()
        self.driver.close()

    # -- plumbing ----------------------------------------------------------------------------------
    def _send(self, message: tuple[str, Any]) -> None:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        for rank, conn in enumerate(self._conns, start=1):
            try:
                conn.send_bytes(payload)
            except OSError:
                self._fail(rank, "its pipe is closed")

    def _collect(self, what: str, timeout: float | None = None) -> list[Any]:
        """One reply per worker, in rank order; a worker's error or death raises."""
        deadline = None if timeout is None else time.monotonic() + timeout
        limit = dist_timeout().total_seconds()
        results: list[Any] = []
        for rank, (conn, proc) in enumerate(zip(self._conns, self._procs), start=1):
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready = wait([conn, proc.sentinel], timeout=min(left or limit, limit))
                if conn in ready:
                    try:
                        status, value = conn.recv()
                    except (EOFError, OSError):
                        self._fail(rank, f"closed its pipe during {what}")
                    if status == "error":
                        self._fail(rank, f"failed during {what}: {value}")
                    results.append(value)
                    break
                if proc.sentinel in ready:
                    self._fail(rank, f"exited with status {proc.exitcode} during {what}")
                if not ready:
                    self._fail(rank, f"did not answer within the timeout during {what}")
        return results

    def _fail(self, rank: int, detail: str) -> None:
        if self._failure is None:
            self._failure = WorkerFailedError(f"worker rank {rank} {detail}")
            logger.error("%s", self._failure)
            if self._on_failure is not None:
                self._on_failure(self._failure)
        raise self._failure

    def _notice_exit(self, rank: int) -> None:
        if self._closing or self._stopping.is_set() or self._failure is not None:
            return
        with contextlib.suppress(WorkerFailedError):
            self._fail(rank, f"exited with status {self._procs[rank - 1].exitcode}")

    def _kill_all(self) -> None:
        self._closing = True
        _stop_processes(self._procs, self._conns, self._stopping)


def _watch(executor_ref: weakref.ref[MultiprocExecutor]) -> None:
    """Notice a dead worker within a second, even while the engine is idle. Holds the executor
    only weakly, so that an engine dropped without shutdown() is still collected."""
    executor = executor_ref()
    if executor is None:
        return
    sentinels = {proc.sentinel: rank for rank, proc in enumerate(executor._procs, start=1)}
    del executor
    while True:
        ready = wait(list(sentinels), timeout=1.0)
        executor = executor_ref()
        if executor is None or executor._closing or executor._failure is not None:
            return
        for sentinel in ready:
            executor._notice_exit(sentinels[sentinel])
        del executor


def _stop_processes(
    procs: list[WorkerProcess], conns: list[Connection], stopping: threading.Event
) -> None:
    """Close the connections (a waiting worker exits on EOF), then kill whoever is still there."""
    stopping.set()
    for conn in conns:
        conn.close()
    for proc in procs:
        proc.stop(grace=2.0)


Executor = UniprocExecutor
"""The executor interface: every executor is a ``UniprocExecutor`` or extends it."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
