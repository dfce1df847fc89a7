"""The engine loop: schedule → execute → update, over one model on one platform.

Built once from :class:`~heron.config.EngineArgs`. Everything it decides at start-up (backend, dtype,
block size, KV blocks) is logged, so a user can see what was chosen and why.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from pydantic import ValidationError

from heron.config import EngineArgs
from heron.distributed.cpu_binding import CoreBindingError, cores_per_rank
from heron.distributed.executor import (
    Executor,
    MultiprocExecutor,
    UniprocExecutor,
    free_port,
)
from heron.distributed.pipeline import stage_layer_range
from heron.distributed.tensor_parallel import ShardingError, split_evenly
from heron.distributed.worker import Worker, WorkerSpec
from heron.engine.stats_logger import EngineStats
from heron.kv.kv_cache_manager import KVCacheManager
from heron.loader import ModelSource, load_model_source
from heron.models.decoder import HeadShard, UnsupportedAttentionError
from heron.models.registry import builtin_registry, resolve_model_impl
from heron.models.sliding_window import uniform_window
from heron.plugins import PluginHost, load_plugins, select_platform
from heron.pooling.config import pooling_engine_changes, pooling_kv_plan, resolve_runner
from heron.pooling.scheduler import PoolingScheduler
from heron.request import Request, RequestStatus
from heron.sched.output import RequestUpdate, RunnerOutput, SchedulerOutput
from heron.sched.scheduler import Scheduler, SchedulerConfig
from heron.spec_decode.enable import attach_speculation, check_speculation
from heron.structured_outputs.manager import StructuredOutputManager

logger = logging.getLogger(__name__)

DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048


class EngineConfigError(ValueError):
    """An engine argument does not fit the model or the platform; the message names it."""


class EngineCore:
    def __init__(self, args: EngineArgs, *, host: PluginHost | None = None) -> None:
        started = time.monotonic()
        host = host or load_plugins()
        if args.backend:
            os.environ["HERON_BACKEND"] = args.backend
        self.platform, self.backend = select_platform(host)
        self.args = args = self._apply_platform_changes(args)
        self.source: ModelSource = load_model_source(
            args.model,
            revision=args.revision,
            trust_remote_code=args.trust_remote_code,
            quantization=args.quantization,
            ranks=args.tensor_parallel_size * args.pipeline_parallel_size,
        )
        hf_config = self.source.hf_config
        _, self.pooler = resolve_runner(
            args.runner, self.source.path, hf_config, args.pooler_config
        )
        """The pooling recipe when the engine runs the pooling runner (embeddings), else None."""
        if self.pooler is not None:
            self.args = args = args.model_copy(update=pooling_engine_changes(args, self.pooler))
        spec_config = check_speculation(args, pooling=self.pooler is not None)
        self.dtype = self._resolve_dtype(args.dtype)
        self.block_size = self._resolve_block_size(args.block_size)
        self.max_model_len = self._resolve_max_model_len(args.max_model_len, hf_config)
        if self.pooler and self.pooler.max_seq_length and args.max_model_len is None:
            # sentence-transformers truncates to max_seq_length: the length it was trained for.
            self.max_model_len = min(self.max_model_len, self.pooler.max_seq_length)
        registry = builtin_registry()
        host.register_models(registry)
        architectures = list(getattr(hf_config, "architectures", None) or [])
        model_cls, impl = resolve_model_impl(registry, architectures, args.model_impl, hf_config)
        logger.info(
            "Model implementation: %s (--model-impl %s)",
            f"native {model_cls.__name__}"
            if impl == "native"
            else f"transformers fallback: transformers' {'/'.join(architectures) or '?'} "
            "modules with the backend's paged attention",
            args.model_impl,
        )

        self.failure: Exception | None = None
        """Set when a worker rank fails; every later step raises it."""
        self.on_failure: Callable[[Exception], None] | None = None
        """Told of a worker's failure as it is noticed (AsyncLLM wakes its loop with it)."""
        try:
            self.executor = self._start_executor(self.backend.name, model_cls)
        except (UnsupportedAttentionError, ShardingError, CoreBindingError) as exc:
            raise EngineConfigError(
                f"backend {self.platform.name!r}: {exc}"
                + (
                    ". Choose another backend with HERON_BACKEND (e.g. HERON_BACKEND=reference)."
                    if isinstance(exc, UnsupportedAttentionError)
                    else ""
                )
            ) from exc
        self.runner = self.executor.driver.runner
        """Rank 0's runner (the only one without tensor parallelism)."""
        load_times = self.executor.load_weights()
        if self.executor.world_size > 1:
            logger.info(
                "Weights loaded on %d ranks in %s s",
                len(load_times),
                "/".join(f"{t:.1f}" for t in load_times),
            )
        budget = args.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS
        if not args.enable_chunked_prefill:
            budget = max(budget, self.max_model_len)
        self.kv_plan = self.executor.plan_kv_cache(budget)
        if self.pooler is not None:
            self.kv_plan = pooling_kv_plan(self.kv_plan, budget, args.max_num_seqs)
        self.executor.init_kv_cache(self.kv_plan.num_blocks)
        step_graphs = (
            "off (--enforce-eager)"
            if args.enforce_eager
            else self.executor.enable_step_graphs(self.max_model_len)
        )

        self._pipeline_depth = self._batches_to_keep_in_flight()
        self._batches_in_flight: deque[SchedulerOutput] = deque()
        """Submitted steps whose results are not in yet, oldest first (pipeline parallelism)."""
        self.scheduler_config = SchedulerConfig(
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=budget,
            max_model_len=self.max_model_len,
            block_size=self.block_size,
            enable_prefix_caching=args.enable_prefix_caching,
            enable_chunked_prefill=args.enable_chunked_prefill,
            split_prompt_bursts=args.split_prompt_bursts is not False,
            max_batches_in_flight=self._pipeline_depth,
        )
        kv_window = uniform_window(hf_config)
        self.kv_manager = KVCacheManager(
            self.kv_plan.num_blocks,
            self.block_size,
            args.enable_prefix_caching,
            sliding_window=kv_window,
        )
        if kv_window is not None:
            logger.info(
                "Sliding window of %d tokens on every layer: KV blocks that fall out of it are "
                "freed as requests advance",
                kv_window,
            )
        scheduler_cls = Scheduler if self.pooler is None else PoolingScheduler
        self.scheduler = scheduler_cls(self.scheduler_config, self.kv_manager)
        self.spec_decode = attach_speculation(spec_config, self)
        """Speculative decoding's acceptance counters, or None when it is off."""
        self.structured: StructuredOutputManager | None = None
        """Grammar state of constrained requests; made on the first one (xgrammar's tokenizer
        info takes a moment to build, so engines that never constrain never pay it)."""
        self._awaiting_grammar: dict[str, Request] = {}
        """Constrained requests whose grammar is still compiling: not yet in the scheduler."""
        self.num_prompt_tokens = 0
        """Prompt tokens computed since start-up (the stats logger's prompt throughput)."""
        self.num_generation_tokens = 0
        """Tokens sampled since start-up (the stats logger's generation throughput)."""
        torch.manual_seed(args.seed)
        self.platform.seed(args.seed)
        logger.info(
            "Model %s (%s) on %s (kernels: attention %s, other %s): dtype %s, max_model_len %d, "
            "block size %d, prefix caching %s, token budget %d per step, up to %d sequences, "
            "prompt bursts %s, step graphs %s",
            self.source.name,
            model_cls.__name__,
            self.platform.name,
            self.runner.attention_cls.name,
            self.runner.kernel_ops.name,
            _dtype_name(self.dtype),
            self.max_model_len,
            self.block_size,
            "on" if args.enable_prefix_caching else "off",
            budget,
            args.max_num_seqs,
            "split" if self.scheduler_config.split_prompt_bursts else "admitted whole",
            step_graphs,
        )
        logger.info(
            "KV cache: %d blocks = %d tokens, %.2f GiB (%s)",
            self.kv_plan.num_blocks,
            self.kv_plan.num_tokens,
            self.kv_plan.num_bytes / 2**30,
            self.kv_plan.source,
        )
        logger.info("Engine ready in %.2f s", time.monotonic() - started)

    # -- start-up decisions ----------------------------------------------------------------------
    def _apply_platform_changes(self, args: EngineArgs) -> EngineArgs:
        """The platform's ``check_config`` changes, applied to a copy and each logged with its reason,
        so a user sees every value the backend chose instead of finding it silently mutated."""
        changes = self.platform.check_config(args)
        if not changes:
            return args
        changed = args.model_copy()
        for change in changes:
            if change.field not in EngineArgs.model_fields:
                raise EngineConfigError(
                    f"backend {self.platform.name!r} asked to change {change.field!r}, which is "
                    "not an engine argument"
                )
            try:
                setattr(changed, change.field, change.value)
            except ValidationError as exc:
                raise EngineConfigError(
                    f"backend {self.platform.name!r} asked for {change.field}={change.value!r}, "
                    f"which is not allowed: {exc.errors()[0]['msg']}"
                ) from exc
            logger.info(
                "Backend %s sets %s = %r: %s",
                self.platform.name,
                change.field,
                change.value,
                change.reason,
            )
        return changed

    def _resolve_dtype(self, requested: str) -> torch.dtype:
        caps = self.platform.capabilities()
        name = caps.default_dtype if requested == "auto" else requested
        if name not in caps.dtypes:
            raise EngineConfigError(
                f"dtype {name!r} is not supported by backend {self.platform.name!r}; "
                f"choose one of {list(caps.dtypes)}"
            )
        return getattr(torch, name)

    def _resolve_block_size(self, requested: int | None) -> int:
        caps = self.platform.capabilities()
        size = requested or caps.block_sizes[0]
        if size not in caps.block_sizes:
            raise EngineConfigError(
                f"block_size {size} is not supported by backend {self.platform.name!r}; "
                f"choose one of {sorted(caps.block_sizes)}"
            )
        return size

    @staticmethod
    def _resolve_max_model_len(requested: int | None, hf_config: Any) -> int:
        limit = getattr(hf_config, "max_position_embeddings", None) or 2048
        if requested is None:
            return int(limit)
        if requested > limit:
            raise EngineConfigError(
                f"max_model_len {requested} exceeds the model's limit of {limit} tokens "
                "(max_position_embeddings); choose a value <= that"
            )
        return requested

    def _start_executor(self, platform_name: str, model_cls: type[torch.nn.Module]) -> Executor:
        """Rank 0 here; with several ranks, one worker process per other rank (logged)."""
        args = self.args
        tp, pp = args.tensor_parallel_size, args.pipeline_parallel_size
        size = tp * pp
        backend = args.distributed_executor_backend or ("mp" if size > 1 else "uni")
        if backend == "uni" and size > 1:
            raise EngineConfigError(
                f"distributed_executor_backend 'uni' runs one rank, but tensor_parallel_size x "
                f"pipeline_parallel_size is {size}; use 'mp'"
            )
        self._check_layout(model_cls, tp, pp)  # before any worker process starts
        cores: list[list[int]] | list[None] = [None] * size
        if size > 1 and self.platform.device_type == "cpu" and backend == "mp":
            cores = cores_per_rank(size)
        init_method = f"tcp://127.0.0.1:{free_port()}" if size > 1 else None
        specs = [
            WorkerSpec(
                engine_args=args,
                platform_name=platform_name,
                dtype=_dtype_name(self.dtype),
                block_size=self.block_size,
                max_model_len=self.max_model_len,
                rank=rank,
                world_size=size,
                tp_size=tp,
                init_method=init_method,
                cores=cores[rank],
            )
            for rank in range(size)
        ]

        def make_driver(spec: WorkerSpec) -> Worker:
            return Worker(spec, platform=self.platform, source=self.source, model_cls=model_cls)

        if size == 1:
            return UniprocExecutor(make_driver(specs[0]))
        started = time.monotonic()
        executor_cls = MultiprocExecutor
        if backend == "ray":
            from heron.distributed.ray_executor import RayExecutor

            executor_cls = RayExecutor
        executor = executor_cls(specs, make_driver, on_failure=self._worker_failed)
        driver = executor.driver
        comm = driver.tp.comm or driver.pp.comm
        num_layers = int(self.source.hf_config.num_hidden_layers)
        stage_ranges = [stage_layer_range(num_layers, s, pp) for s in range(pp)]
        logger.info(
            "Parallel layout: %d rank(s) = tensor parallel %d x pipeline parallel %d (executor "
            "%s: rank 0 in this process, ranks 1-%d in %s; stages own layers %s), "
            "%s communicator, %s; ranks joined in %.2f s",
            size,
            tp,
            pp,
            backend,
            size - 1,
            "Ray actors" if backend == "ray" else "worker processes",
            ", ".join(f"{first}-{end - 1}" for first, end in stage_ranges),
            type(comm).__name__,
            "cores " + " | ".join(",".join(map(str, c)) for c in cores if c)
            if cores[0] is not None
            else "devices " + ", ".join(self.platform.device_name(r) for r in range(size))
            if backend == "mp"
            else "cores as Ray's placement group grants them",
            time.monotonic() - started,
        )
        return executor

    def _batches_to_keep_in_flight(self) -> int:
        """One batch per pipeline stage where the executor can keep several in flight."""
        stages = self.args.pipeline_parallel_size
        if stages == 1 or self.pooler is not None or not self.executor.pipelines_steps:
            return 1
        logger.info("Pipeline parallel: up to %d batches in flight, one per stage", stages)
        return stages

    def _check_layout(self, model_cls: type[torch.nn.Module], tp: int, pp: int) -> None:
        """Refuse a layout the model cannot be split into, naming the sizes that do not fit."""
        check_layout = getattr(model_cls, "check_layout", None)
        if check_layout is not None:  # a model with its own rule (the Transformers fallback)
            check_layout(self.source.hf_config, tp, pp)
        options = getattr(model_cls, "options", None)
        if options is None:  # an out-of-tree model: its own constructor will say
            return
        opts = options(self.source.hf_config)
        stage_layer_range(opts.num_layers, 0, pp)
        HeadShard.for_rank(opts.num_heads, opts.num_kv_heads, 0, tp)
        split_evenly(opts.intermediate_size, tp, "intermediate_size")

    def _worker_failed(self, error: Exception) -> None:
        """Called from the executor's monitor thread: remember it; the loop raises it."""
        self.failure = error
        if self.on_failure is not None:
            self.on_failure(error)

    def shutdown(self) -> None:
        """Stop the executor's worker processes; a no-op for one rank."""
        if self.structured is not None:
            self.structured.shutdown()
        self.executor.shutdown()

    # -- the loop --------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        constraint = request.sampling_params.structured_outputs
        if constraint is None:
            self.scheduler.add_request(request)
            return
        # It joins the scheduler once its grammar is compiled (see _admit_compiled_grammars).
        self.scheduler.check_request(request)
        if request.request_id in self._awaiting_grammar:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self._structured_manager(request).add(request.request_id, constraint)
        self._awaiting_grammar[request.request_id] = request

    def _structured_manager(self, request: Request) -> StructuredOutputManager:
        if self.structured is None:
            self.structured = StructuredOutputManager(
                self.source.tokenizer,
                vocab_size=self.runner.vocab_size,
                stop_token_ids=request.eos_token_ids,
            )
        return self.structured

    def abort_requests(self, request_ids: list[str]) -> None:
        self.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> None:
        if request_ids:
            for request_id in request_ids:
                waiting = self._awaiting_grammar.pop(request_id, None)
                if waiting is not None:
                    waiting.status = status
            self.scheduler.finish_requests(request_ids, status)
            self.executor.release(request_ids)
            if self.structured is not None:
                self.structured.release(request_ids)

    def step(self) -> list[RequestUpdate]:
        failed = self._admit_compiled_grammars()
        if self._pipeline_depth > 1:
            return failed + self._step_pipelined()
        out = self.scheduler.schedule()
        if out.is_empty:
            if not failed and self.structured is not None:
                self.structured.wait(0.02)  # only grammars compiling: do not spin
            return failed
        self._before_execute(out)
        return failed + self._apply(out, self.executor.execute(out))

    def _step_pipelined(self) -> list[RequestUpdate]:
        """One step with several batches in flight (pipeline parallelism).

        A step schedules and submits a new batch while there is room for one, and takes in the
        results of the oldest batch once every stage has one (or nothing more can be scheduled
        until results come back). So while the last stage computes batch k, the first computes
        batch k+1, instead of each stage idling while the others work.
        """
        if len(self._batches_in_flight) < self._pipeline_depth:
            out = self.scheduler.schedule()
            if not out.is_empty:
                self._before_execute(out)
                self.executor.submit(out)
                self._batches_in_flight.append(out)
                if len(self._batches_in_flight) < self._pipeline_depth:
                    return []
        if not self._batches_in_flight:
            if self.structured is not None:
                self.structured.wait(0.02)  # only grammars compiling: do not spin
            return []
        out = self._batches_in_flight.popleft()
        return self._apply(out, self.executor.collect())

    def _before_execute(self, out: SchedulerOutput) -> None:
        self.num_prompt_tokens += _prompt_tokens(out)
        if self.structured is not None:
            out.grammar = self.structured.bitmask(
                [s.request.request_id for s in out.scheduled if s.samples]
            )

    def _apply(self, out: SchedulerOutput, runner_out: RunnerOutput) -> list[RequestUpdate]:
        """The step's results into the scheduler and the grammars; finished requests released."""
        updates = self.scheduler.update_from_output(out, runner_out)
        if self.spec_decode is not None:
            self.spec_decode.observe(out, runner_out)
        self.num_generation_tokens += sum(len(u.new_token_ids) for u in updates)
        if self.structured is not None:
            for update in updates:
                if update.new_token_ids and not update.finished:
                    self.structured.accept(update.request.request_id, update.new_token_ids)
        finished = [u.request.request_id for u in updates if u.finished]
        if finished:
            self.executor.release(finished)
            if self.structured is not None:
                self.structured.release(finished)
        return updates

    def _admit_compiled_grammars(self) -> list[RequestUpdate]:
        """Queue the requests whose grammar is ready; finish those whose compile failed (an
        error for that request alone, reported as an aborted finish)."""
        if not self._awaiting_grammar or self.structured is None:
            return []
        ready, failed = self.structured.poll()
        for request_id in ready:
            request = self._awaiting_grammar.pop(request_id, None)
            if request is not None:
                self.scheduler.add_request(request)
        updates = []
        for request_id, error in failed:
            request = self._awaiting_grammar.pop(request_id, None)
            if request is None:
                continue
            logger.error("request %s: its grammar did not compile: %s", request_id, error)
            request.status = RequestStatus.FINISHED_ABORTED
            request.stop_reason = f"grammar error: {error}"
            updates.append(RequestUpdate(request=request, finished=True))
        return updates

    def has_unfinished_requests(self) -> bool:
        """Also true while batches are in flight: their results must be taken in (in order)
        even when every request in them was aborted meanwhile."""
        return (
            bool(self._awaiting_grammar)
            or bool(self._batches_in_flight)
            or self.scheduler.has_unfinished_requests()
        )

    def unfinished_requests(self) -> list[Request]:
        """Every request not finished yet: scheduled, waiting, or waiting for its grammar."""
        return [*self.scheduler.requests.values(), *self._awaiting_grammar.values()]

    def stats(self) -> EngineStats:
        """The scheduler's state plus the token counters: what /metrics and the stats log read."""
        sched = self.scheduler.stats()
        return EngineStats(
            num_running=sched.num_running,
            num_waiting=sched.num_waiting,
            kv_cache_usage=sched.kv_cache_usage,
            prefix_cache_queries=sched.prefix_cache_queries,
            prefix_cache_hits=sched.prefix_cache_hits,
            num_preemptions=sched.num_preemptions,
            prompt_tokens=self.num_prompt_tokens,
            generation_tokens=self.num_generation_tokens,
            spec_decode=None if self.spec_decode is None else self.spec_decode.snapshot(),
        )


def _prompt_tokens(out: SchedulerOutput) -> int:
    """Prompt positions among the tokens a step computes (before the scheduler advances them);
    a preempted request's recomputed outputs are not prompt tokens."""
    total = 0
    for scheduled in out.scheduled:
        end = min(scheduled.start + scheduled.num_new_tokens, scheduled.request.num_prompt_tokens)
        total += max(0, end - scheduled.start)
    return total


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
