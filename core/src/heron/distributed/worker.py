"""One rank of an engine: its platform, its process group, its shard of the model and its runner.

The driver's rank runs in the engine process (as the uniprocess executor's only rank does); every
other rank runs :func:`worker_main` in a process of its own and does what the driver asks over a
pipe: the set-up calls once, then one :class:`~heron.distributed.step_sync.StepMessage` per step.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

import torch

from heron.config import EngineArgs
from heron.distributed.cpu_binding import bind_to_cores
from heron.distributed.pipeline import SINGLE_STAGE, PipelineStage
from heron.distributed.step_sync import StepDecoder, StepMessage
from heron.distributed.tensor_parallel import SINGLE, TensorParallel
from heron.engine.kv_sizing import KVPlan, plan_kv_cache
from heron.loader import ModelSource, load_model_source
from heron.models.registry import builtin_registry, resolve_model_impl
from heron.pooling.runner import runner_class
from heron.sched.output import RunnerOutput, SchedulerOutput
from heron_interfaces import CommContext, Platform

logger = logging.getLogger(__name__)

INIT_TIMEOUT_ENV = "HERON_DIST_TIMEOUT"
"""Seconds a rank waits for the others at a collective (start-up included); default 300."""


@dataclass(slots=True, kw_only=True)
class WorkerSpec:
    """Everything a rank needs to build itself; decided once by the driver, picklable."""

    engine_args: EngineArgs
    platform_name: str
    dtype: str
    block_size: int
    max_model_len: int
    rank: int
    world_size: int
    tp_size: int = 1
    """Ranks per pipeline stage; ``world_size // tp_size`` stages."""
    init_method: str | None = None
    """``tcp://host:port`` of the group's store; ``None`` for a single rank."""
    cores: list[int] | None = None
    """CPU cores for this rank's threads; ``None`` leaves them alone."""


def dist_timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get(INIT_TIMEOUT_ENV, "300")))


class Worker:
    """A rank. The driver builds its own from objects it already has (platform, source)."""

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        platform: type[Platform] | None = None,
        source: ModelSource | None = None,
        model_cls: type[torch.nn.Module] | None = None,
    ) -> None:
        self.spec = spec
        args = spec.engine_args
        if spec.cores is not None:
            bind_to_cores(spec.cores)
        self.platform = platform or _platform_named(spec.platform_name)
        self.platform.set_device(spec.rank)
        self.source = source or load_model_source(
            args.model,
            revision=args.revision,
            trust_remote_code=args.trust_remote_code,
            quantization=args.quantization,
            ranks=args.tensor_parallel_size * args.pipeline_parallel_size,
        )
        if model_cls is None:
            model_cls = _model_class(self.source, args.model_impl)
        self.tp, self.pp = self._join_groups()
        runner_cls, runner_kwargs = runner_class(args)
        self.runner = runner_cls(
            **runner_kwargs,
            platform=self.platform,
            model_cls=model_cls,
            hf_config=self.source.hf_config,
            dtype=getattr(torch, spec.dtype),
            block_size=spec.block_size,
            tp=self.tp,
            pp=self.pp,
        )
        self.decoder = StepDecoder()
        torch.manual_seed(args.seed)
        self.platform.seed(args.seed)

    @property
    def is_output_rank(self) -> bool:
        """The rank whose runner output the driver uses: the last stage's first rank."""
        return self.spec.rank == self.spec.world_size - self.spec.tp_size

    def _join_groups(self) -> tuple[TensorParallel, PipelineStage]:
        """Join the world group, then this stage's tensor-parallel group.

        Every rank creates every stage's group, in the same order, as ``torch.distributed``
        requires; with one stage the world group is the tensor-parallel group.
        """
        spec = self.spec
        if spec.world_size == 1:
            return SINGLE, SINGLE_STAGE
        import torch.distributed as dist

        if dist.is_initialized():  # left by an engine of this process that was not shut down
            dist.destroy_process_group()
        dist.init_process_group(
            backend=self.platform.dist_backend,
            init_method=spec.init_method,
            rank=spec.rank,
            world_size=spec.world_size,
            timeout=dist_timeout(),
        )
        tp_size = spec.tp_size
        num_stages = spec.world_size // tp_size
        stage, tp_rank = divmod(spec.rank, tp_size)
        tp_group = None
        if num_stages > 1:
            for s in range(num_stages):
                group = dist.new_group(ranks=list(range(s * tp_size, (s + 1) * tp_size)))
                if s == stage:
                    tp_group = group
        device = self.platform.device_type
        tp = SINGLE
        if tp_size > 1:
            comm = self.platform.communicator(
                CommContext(
                    world_size=tp_size,
                    rank=tp_rank,
                    device=device,
                    device_group=tp_group,
                    unique_name=f"tp{stage}",
                )
            )
            tp = TensorParallel(rank=tp_rank, size=tp_size, comm=comm)
        pp = SINGLE_STAGE
        if num_stages > 1:
            world = self.platform.communicator(
                CommContext(
                    world_size=spec.world_size, rank=spec.rank, device=device, unique_name="pp"
                )
            )
            pp = PipelineStage(
                rank=stage, size=num_stages, tp_size=tp_size, global_rank=spec.rank, comm=world
            )
        return tp, pp

    # -- set-up calls ----------------------------------------------------------------------------
    def load_weights(self) -> float:
        """Load this rank's shard; returns the seconds it took (for the driver's log)."""
        started = time.monotonic()
        # Several ranks: each reads only what it keeps (its slices, its stage's layers).
        lazy = self.spec.world_size > 1
        self.runner.load_weights(self.source.weights(lazy=True) if lazy else self.source.weights())
        return time.monotonic() - started

    def plan_kv_cache(self, max_step_tokens: int) -> KVPlan:
        """This rank's KV plan, from its own memory profiler (a profile run where the platform
        grants no explicit KV space; under tensor parallelism every rank runs it together)."""
        args = self.spec.engine_args
        profiler = self.platform.memory_profiler()
        snapshot = profiler.snapshot()
        scratch = 0
        if snapshot.kv_budget is None and args.num_gpu_blocks_override is None:
            profiler.reset_peak()
            started = time.monotonic()
            scratch = self.runner.profile_run(
                max_step_tokens, args.max_num_seqs, self.spec.max_model_len
            )
            snapshot = profiler.snapshot()
            logger.info(
                "Profiled a %d-token step in %.2f s: %.2f GiB of activations at peak",
                max_step_tokens,
                time.monotonic() - started,
                max(0, snapshot.peak - snapshot.allocated - scratch) / 2**30,
            )
        return plan_kv_cache(
            snapshot=snapshot,
            bytes_per_block=self.runner.kv_bytes_per_block(),
            block_size=self.spec.block_size,
            weights_bytes=self.runner.weights_bytes(),
            peak_activation_bytes=max(0, snapshot.peak - snapshot.allocated - scratch),
            memory_utilization=args.gpu_memory_utilization,
            max_model_len=self.spec.max_model_len,
            max_num_seqs=args.max_num_seqs,
            override=args.num_gpu_blocks_override,
            hint=self.platform.memory_budget_hint(),
        )

    def init_kv_cache(self, num_blocks: int) -> None:
        self.runner.init_kv_cache(num_blocks)

    def enable_step_graphs(self, max_model_len: int) -> str:
        return self.runner.enable_step_graphs(max_model_len)

    # -- steps -----------------------------------------------------------------------------------
    def execute_message(self, message: StepMessage) -> RunnerOutput:
        """A worker rank's step: rebuild the scheduler's output from the message, then run it."""
        out: SchedulerOutput = self.decoder.decode(message)
        if message.released_ids:
            self.runner.release(message.released_ids)
        return self.runner.execute(out)

    def close(self) -> None:
        if self.spec.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _platform_named(name: str) -> type[Platform]:
    from heron.plugins import load_plugins, resolve_platform

    host = load_plugins()
    return resolve_platform(host.select_backend(name))


def _model_class(source: ModelSource, model_impl: str = "auto") -> type[torch.nn.Module]:
    from heron.plugins import load_plugins

    registry = builtin_registry()
    load_plugins().register_models(registry)
    architectures = list(getattr(source.hf_config, "architectures", None) or [])
    return resolve_model_impl(registry, architectures, model_impl, source.hf_config)[0]


# -- the worker process ----------------------------------------------------------------------------
def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Body of a worker process: build the rank, then serve the driver until told to stop.

    Any error is reported to the driver with this rank's traceback, then the process exits at
    once: its peers' next collective fails instead of waiting for a rank that will never come.
    The driver going away (the pipe closes) ends the process too, so no worker outlives it.
    """
    logging.basicConfig(
        level=os.environ.get("HERON_WORKER_LOG_LEVEL", "WARNING").upper(),
        format=f"%(asctime)s %(levelname)s (rank {spec.rank}) %(name)s: %(message)s",
    )
    replies = _ReplySender(conn)
    try:
        worker = Worker(spec)
        replies.send(("ok", None))
        while True:
            kind, payload = pickle.loads(conn.recv_bytes())
            if kind == "stop":
                worker.close()
                replies.send(("ok", None))
                replies.flush()
                return
            if kind == "step":
                with torch.inference_mode():
                    result = worker.execute_message(payload)
                replies.send(("ok", result) if worker.is_output_rank else _ACK)
                continue
            method, args = payload
            replies.send(("ok", getattr(worker, method)(*args)))
    except (EOFError, OSError, KeyboardInterrupt):
        os._exit(0)  # the driver is gone: nothing to report to
    except BaseException as exc:
        detail = "".join(traceback.format_exception(exc))
        replies.send(("error", f"rank {spec.rank}: {type(exc).__name__}: {exc}\n{detail}"))
        replies.flush(timeout=5.0)
        os._exit(1)


class _ReplySender:
    """Sends a worker's replies from a thread of their own, in order.

    With several pipeline steps in flight the driver may be sending the next step's message
    while this rank still replies to an older one; were both large enough to fill the pipe, each
    side would block in its send waiting for the other to read. A reply sent from this thread
    never blocks the rank's loop, which keeps reading messages.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="heron-replies", daemon=True)
        self._thread.start()

    def send(self, reply: tuple[str, Any] | bytes) -> None:
        if not isinstance(reply, bytes):
            reply = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        self._queue.put(reply)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued reply is sent (before the process exits)."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (payload := self._queue.get()) is not None:
            try:
                self._conn.send_bytes(payload)
            except OSError:
                os._exit(0)  # the driver is gone: nothing to report to


_ACK = pickle.dumps(("ok", None))
