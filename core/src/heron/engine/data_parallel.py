"""Data parallelism: ``data_parallel_size`` independent engine replicas behind one front.

Each replica is a whole :class:`~heron.engine.llm_engine.LLMEngine` (its own scheduler, KV cache
and, with tensor or pipeline parallelism, its own worker ranks) in its own process, so that the
replicas' Python work (scheduling, sampling, detokenizing) runs in parallel instead of taking turns
on one GIL. The front, :class:`DataParallelEngine`, has the shape of an ``LLMEngine``, so ``LLM``
and ``AsyncLLM`` drive it unchanged:

- requests are validated *in the front* (same tokenizer, same limits as every replica), so bad input
  raises at the call as it does with one engine, and a refused request never reaches a replica;
- each accepted request goes to the replica with the fewest unfinished sequences (vLLM's DP
  coordinator balances on the same count), and its aborts follow it there;
- replicas send their finished step's outputs (already detokenized) with their stats; ``step`` waits
  for any replica, or for :meth:`DataParallelEngine.wakeup`, which ``AsyncLLM`` calls when a request
  arrives, so that a replica that is idle never waits behind another one's long step.

On a CPU backend the machine's cores are split between the replicas as between tensor-parallel
ranks (:mod:`heron.distributed.cpu_binding`); ``HERON_CPU_OMP_THREADS_BIND`` then lists one core
group per rank of every replica, replica by replica.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from heron.config import EngineArgs
from heron.distributed.cpu_binding import BIND_ENV, CoreBindingError, cores_per_rank
from heron.distributed.executor import WorkerFailedError
from heron.distributed.processes import WorkerProcess, launch_workers
from heron.engine.input_processor import InputProcessor, ProcessedPrompt, PromptType
from heron.engine.llm_engine import LLMEngine, PreparedRequest, prepare_request
from heron.engine.output_processor import RequestOutputKind
from heron.engine.stats_logger import EngineStats
from heron.outputs import RequestOutput
from heron.pooling.frontend import (
    PackedEmbedding,
    PoolingFrontend,
    PreparedPooling,
    to_wire,
    unpack_embedding,
)
from heron.pooling.outputs import EmbeddingRequestOutput
from heron.pooling.params import PoolingParams
from heron.pooling.scheduler import check_pooling_limits
from heron.request import Request
from heron.sampling_params import SamplingParams
from heron.sched.scheduler import RequestLimits, check_request_limits
from heron.spec_decode.metrics import sum_counters

logger = logging.getLogger(__name__)

REPLICA_MODULE = "heron.engine.replica_process"
STOP_GRACE_S = 10.0


def build_engine(args: EngineArgs) -> LLMEngine | DataParallelEngine:
    """One engine in this process, or a front over ``data_parallel_size`` replica processes."""
    if args.data_parallel_size > 1:
        return DataParallelEngine(args)
    return LLMEngine(args)


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """The first message a replica process receives."""

    rank: int
    """This replica's index (the launch machinery's name for it)."""
    engine_args: EngineArgs
    """The front's arguments with ``data_parallel_size`` 1."""
    cores: list[int] | None
    """The cores its threads (and its tensor-parallel ranks) run on; None: no binding."""
    bind_spec: str | None
    """Its ranks' share of ``HERON_CPU_OMP_THREADS_BIND``, when the user set it."""
    log_level: int


@dataclass(frozen=True, slots=True)
class ReplicaFacts:
    """What a replica reports once its model is loaded: all the front needs to check requests."""

    model_name: str
    input_processor: InputProcessor
    limits: RequestLimits
    stats: EngineStats
    pooling: PoolingFrontend | None = None
    """Its embedding frontend when it runs the pooling runner (the front tokenizes with it)."""


@dataclass(slots=True)
class _Placed:
    replica: int
    sequences: int
    prompt: ProcessedPrompt | None = None
    """An embedding request's prompt: its output is built here from the replica's vector."""


@dataclass(slots=True)
class _Replica:
    process: WorkerProcess
    conn: Connection
    load: int = 0
    """Unfinished sequences placed on it."""
    stats: EngineStats | None = None
    pending_abort_all: bool = False
    aborted: list[RequestOutput] = field(default_factory=list)


class DataParallelEngine:
    """An ``LLMEngine``-shaped front over one engine process per data-parallel replica."""

    def __init__(self, args: EngineArgs) -> None:
        self.args = args
        size = args.data_parallel_size
        self._ids = itertools.count()
        self._placed: dict[str, _Placed] = {}
        self._failure: Exception | None = None
        self._on_failure: Any = None
        self._closing = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        specs = self._specs(args, size)
        logger.info(
            "Data parallelism: %d engine replicas, one process each%s", size, _cores_text(specs)
        )
        procs, conns = launch_workers(specs, module=REPLICA_MODULE, what="data-parallel replica")
        self._replicas = [_Replica(p, c) for p, c in zip(procs, conns)]
        try:
            facts = [self._await_ready(i) for i in range(size)]
        except BaseException:
            self._stop_all(grace=1.0)
            raise
        first = facts[0]
        self.model_name = first.model_name
        self.input_processor = first.input_processor
        self.tokenizer = first.input_processor.tokenizer
        self.max_model_len = first.input_processor.max_model_len
        # Replicas are configured alike, but each sized its own KV cache from the memory it was
        # granted: a request must fit the smallest, since any replica may get it.
        self.limits = min(facts, key=lambda f: f.limits.num_blocks).limits
        self.pooling = first.pooling
        """Embedding inputs are tokenized and checked here, then placed like any request."""
        for replica, fact in zip(self._replicas, facts):
            replica.stats = fact.stats
        self._monitor = threading.Thread(target=self._watch, name="heron-dp-monitor", daemon=True)
        self._monitor.start()

    # -- start-up -------------------------------------------------------------------------------
    @staticmethod
    def _specs(args: EngineArgs, size: int) -> list[ReplicaSpec]:
        from heron.plugins import select_platform

        replica_args = args.model_copy(update={"data_parallel_size": 1, "disable_log_stats": True})
        ranks = args.tensor_parallel_size * args.pipeline_parallel_size
        cores: list[list[int] | None] = [None] * size
        bind_specs: list[str | None] = [None] * size
        platform, _ = select_platform()
        if platform.device_type == "cpu":
            user_spec = os.environ.get(BIND_ENV, "").strip()
            if user_spec:
                groups = user_spec.split("|")
                if len(groups) != size * ranks:
                    raise CoreBindingError(
                        f"{BIND_ENV}={user_spec!r} names {len(groups)} core lists; "
                        f"{size} data-parallel replicas of {ranks} rank(s) need {size * ranks}, "
                        f"separated by '|', replica by replica (e.g. 0-3|4-7)"
                    )
                bind_specs = ["|".join(groups[i * ranks : (i + 1) * ranks]) for i in range(size)]
            per_rank = cores_per_rank(size * ranks)
            cores = [
                sorted({c for group in per_rank[i * ranks : (i + 1) * ranks] for c in group})
                for i in range(size)
            ]
        return [
            ReplicaSpec(
                rank=i,
                engine_args=replica_args,
                cores=cores[i],
                bind_spec=bind_specs[i],
                log_level=logging.getLogger().getEffectiveLevel(),
            )
            for i in range(size)
        ]

    def _await_ready(self, index: int) -> ReplicaFacts:
        """The replica's facts once its model is loaded (however long that takes), or its error."""
        replica = self._replicas[index]
        while True:
            ready = wait([replica.conn, replica.process.sentinel])
            if replica.conn in ready:
                try:
                    kind, payload = replica.conn.recv()
                except (EOFError, OSError):
                    kind, payload = "error", (None, "it closed its connection")
                if kind == "ready":
                    return payload
                error, text = payload
                if isinstance(error, Exception):  # the same error one engine would raise
                    error.add_note(f"(raised in data-parallel replica {index})")
                    raise error
                raise RuntimeError(f"data-parallel replica {index} failed to start: {text}")
            if replica.process.exitcode is not None and not replica.conn.poll():
                raise RuntimeError(
                    f"data-parallel replica {index} exited with status "
                    f"{replica.process.exitcode} while loading (its error is printed above)"
                )

    # -- requests -------------------------------------------------------------------------------
    def next_request_id(self) -> str:
        return str(next(self._ids))

    def _check(self, request: Request) -> None:
        if request.request_id in self._placed:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        check_request_limits(request, self.limits)

    def prepare_request(
        self,
        request_id: str,
        prompt: PromptType | ProcessedPrompt,
        params: SamplingParams | None = None,
    ) -> PreparedRequest:
        return prepare_request(self.input_processor, self._check, request_id, prompt, params)

    def prepare_pooling(
        self, request_id: str, prompt: PromptType | ProcessedPrompt, params: PoolingParams | None
    ) -> PreparedPooling:
        """An embedding request's checks against the replicas' limits (safe off-thread)."""
        if self.pooling is None:
            raise ValueError(
                "this model runs the generate runner, which returns no embeddings; start it with "
                "runner='pooling' (--runner pooling)"
            )
        return self.pooling.prepare(request_id, prompt, params, self._check_pooling)

    def _check_pooling(self, request: Request) -> None:
        if request.request_id in self._placed:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        check_pooling_limits(request, self.limits)

    def add_prepared(
        self,
        prepared: PreparedRequest | PreparedPooling,
        output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY,
    ) -> None:
        """Place the request (an embedding input too) on the least-loaded replica."""
        self.add_prepared_many([prepared], output_kind)

    def add_prepared_many(
        self,
        items: list[PreparedRequest] | list[PreparedPooling],
        output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY,
    ) -> None:
        """Place each request in turn on the least-loaded replica, as :meth:`add_prepared` does;
        a replica's embedding requests travel in one message.

        One pickled message per request (a ``PreparedPooling`` with its ``Request`` and
        ``SamplingParams``) cost the front ~0.8 s and each replica ~0.35 s of a 10,000-sentence
        ``-dp 2`` run on two cores; a list of :data:`~heron.pooling.frontend.PoolingWire` values
        per replica and chunk costs a fraction. Nothing is sent when an id is already in use.
        """
        self._raise_failure()
        ids = [prepared.request_id for prepared in items]
        for request_id in ids:
            if request_id in self._placed:
                raise ValueError(f"request id {request_id!r} is already in use")
        if len(set(ids)) != len(ids):
            raise ValueError("request ids must be unique; the same id was given twice")
        pooled: dict[int, list[Any]] = {}
        for prepared in items:
            index = min(range(len(self._replicas)), key=lambda i: self._replicas[i].load)
            if isinstance(prepared, PreparedPooling):
                pooled.setdefault(index, []).append(to_wire(prepared))
                placed = _Placed(index, 1, prepared.prompt)
            else:
                self._send(index, ("add", (prepared, output_kind)))
                placed = _Placed(index, len(prepared.requests))
            self._replicas[index].load += placed.sequences
            self._placed[prepared.request_id] = placed
        for index, wires in pooled.items():
            self._send(index, ("add_pooling", wires))

    def add_request(
        self,
        request_id: str,
        prompt: PromptType | ProcessedPrompt,
        params: SamplingParams | None = None,
        output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY,
    ) -> None:
        self.add_prepared(self.prepare_request(request_id, prompt, params), output_kind)

    def abort_request(self, request_id: str) -> None:
        placed = self._placed.pop(request_id, None)
        if placed is None:
            return
        self._replicas[placed.replica].load -= placed.sequences
        self._send(placed.replica, ("abort", request_id))

    def abort_all(self) -> list[RequestOutput]:
        """Every unfinished request's last output (``finish_reason == "abort"``), from every
        replica; outputs of steps that finished meanwhile come along."""
        self._raise_failure()
        outputs: list[RequestOutput] = []
        for index, replica in enumerate(self._replicas):
            replica.pending_abort_all = True
            self._send(index, ("abort_all", None))
        while any(r.pending_abort_all for r in self._replicas):
            outputs.extend(self._receive(block=True))
        for replica in self._replicas:
            outputs.extend(self._settle(replica.aborted))
            replica.aborted = []
        return outputs

    def has_unfinished_requests(self) -> bool:
        return bool(self._placed)

    def step(self) -> list[RequestOutput]:
        """Outputs of whichever replicas finished a step; waits for one unless :meth:`wakeup`."""
        return self._receive(block=True)

    def poll(self) -> list[RequestOutput]:
        """Outputs the replicas have already sent, without waiting for any (``LLM.embed``
        collects them between chunks, so that they do not pile up in the connections)."""
        return self._receive(block=False)

    def wakeup(self) -> None:
        """Make a waiting :meth:`step` return now (from any thread), e.g. to place a new request."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    # -- facts ----------------------------------------------------------------------------------
    @property
    def failure(self) -> Exception | None:
        return self._failure

    def set_failure_callback(self, callback: Any) -> None:
        self._on_failure = callback

    def stats(self) -> EngineStats:
        """The replicas' stats added up (KV cache usage: their mean), as of their last step."""
        known = [r.stats for r in self._replicas if r.stats is not None]
        total = EngineStats(
            num_running=sum(s.num_running for s in known),
            num_waiting=sum(s.num_waiting for s in known),
            kv_cache_usage=sum(s.kv_cache_usage for s in known) / max(len(known), 1),
            prefix_cache_queries=sum(s.prefix_cache_queries for s in known),
            prefix_cache_hits=sum(s.prefix_cache_hits for s in known),
            num_preemptions=sum(s.num_preemptions for s in known),
            prompt_tokens=sum(s.prompt_tokens for s in known),
            generation_tokens=sum(s.generation_tokens for s in known),
            spec_decode=sum_counters([s.spec_decode for s in known]),
        )
        return total

    def replica_stats(self) -> list[EngineStats | None]:
        """Each replica's stats as of its last step."""
        return [r.stats for r in self._replicas]

    def replica_loads(self) -> list[int]:
        """Unfinished sequences per replica (what placement balances)."""
        return [r.load for r in self._replicas]

    # -- plumbing -------------------------------------------------------------------------------
    def _send(self, index: int, message: tuple[str, Any]) -> None:
        try:
            self._replicas[index].conn.send(message)
        except (OSError, ValueError) as exc:
            self._fail(index, f"its connection broke ({exc})")
            self._raise_failure()

    def _receive(self, *, block: bool) -> list[RequestOutput]:
        self._raise_failure()
        conns = [r.conn for r in self._replicas]
        ready = wait([*conns, self._wake_r], timeout=None if block else 0)
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        outputs: list[RequestOutput] = []
        for index, replica in enumerate(self._replicas):
            if replica.conn not in ready:
                continue
            try:
                while replica.conn.poll():
                    outputs.extend(self._handle(index, *replica.conn.recv()))
            except (EOFError, OSError):
                self._fail(index, self._exit_text(index))
        self._raise_failure()
        return outputs

    def _handle(self, index: int, kind: str, payload: Any) -> list[RequestOutput]:
        replica = self._replicas[index]
        if kind == "outputs":
            outputs, replica.stats = payload
            return self._settle(outputs)
        if kind == "pooled":
            packed, replica.stats = payload
            return self._settle_pooled(packed)
        if kind == "aborted":
            replica.aborted, replica.stats = payload
            replica.pending_abort_all = False
            return []
        if kind == "error":
            self._fail(index, payload[1])
            return []
        raise RuntimeError(f"data-parallel replica {index} sent an unknown message {kind!r}")

    def _settle(self, outputs: list[RequestOutput]) -> list[RequestOutput]:
        """Outputs of requests still placed (an aborted one's late outputs are dropped), with the
        finished ones' sequences taken off their replica's load."""
        kept = []
        for output in outputs:
            placed = self._placed.get(output.request_id)
            if placed is None:
                continue
            if output.finished:
                self._release(output.request_id, placed)
            kept.append(output)
        return kept

    def _release(self, request_id: str, placed: _Placed) -> None:
        """A finished request leaves the placement and its replica's load."""
        del self._placed[request_id]
        self._replicas[placed.replica].load -= placed.sequences

    def _settle_pooled(self, packed: list[PackedEmbedding]) -> list[EmbeddingRequestOutput]:
        """:meth:`_settle` of a replica's packed embeddings, built into outputs here, where
        each request's prompt was kept."""
        kept = []
        for request_id, data in packed:
            placed = self._placed.get(request_id)
            if placed is None or placed.prompt is None:
                continue  # aborted: its caller has gone
            self._release(request_id, placed)
            kept.append(unpack_embedding(request_id, placed.prompt, data))
        return kept

    def _exit_text(self, index: int) -> str:
        process = self._replicas[index].process
        with contextlib.suppress(Exception):
            process.popen.wait(timeout=1.0)
        status = process.exitcode
        return "it exited" + (f" with status {status}" if status is not None else "")

    def _fail(self, index: int, reason: str) -> None:
        if self._closing or self._failure is not None:
            return
        self._failure = WorkerFailedError(f"data-parallel replica {index} failed: {reason}")
        logger.error("%s", self._failure)
        if self._on_failure is not None:
            self._on_failure(self._failure)
        self.wakeup()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _watch(self) -> None:
        """Notice a replica's death while the front is idle (no step is waiting on it)."""
        sentinels = {r.process.sentinel: i for i, r in enumerate(self._replicas)}
        ready = wait(list(sentinels))
        if not self._closing:
            index = sentinels[ready[0]]
            self._fail(index, self._exit_text(index))

    def shutdown(self) -> None:
        """Stop every replica (each stops its own worker ranks); idempotent."""
        if self._closing:
            return
        self._closing = True
        self._stop_all(grace=STOP_GRACE_S)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _stop_all(self, grace: float) -> None:
        self._closing = True
        for replica in self._replicas:
            with contextlib.suppress(OSError, ValueError):
                replica.conn.send(("stop", None))
        for replica in self._replicas:
            replica.process.stop(grace=grace)
            with contextlib.suppress(OSError):
                replica.conn.close()


def _cores_text(specs: list[ReplicaSpec]) -> str:
    if specs[0].cores is None:
        return ""
    return "; cores per replica: " + ", ".join(
        _ranges(spec.cores) for spec in specs if spec.cores is not None
    )


def _ranges(cores: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5``."""
    runs: list[list[int]] = []
    for core in cores:
        if runs and runs[-1][1] == core - 1:
            runs[-1][1] = core
        else:
            runs.append([core, core])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
