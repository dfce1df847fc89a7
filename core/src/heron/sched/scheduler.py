"""Continuous batching under a per-step token budget, prefix caching, preemption by recompute.

There are no prefill and decode phases (vLLM V1's design): every request has
``num_computed_tokens``, which catches up with ``num_tokens`` under a budget of
``max_num_batched_tokens`` per step. Running requests go first, so decodes are never starved by a
burst of long prompts; waiting requests fill what is left, a long prompt in chunks, and a burst of
prompts in steps shorter than the budget when bursts are split (see ``_step_budget``). When the KV
cache runs out, the newest running request is preempted: its blocks are freed and it is recomputed
later (its own blocks often survive in the prefix cache). The scheduler knows tokens and blocks,
never tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from heron.kv.kv_cache_manager import KVCacheManager
from heron.request import Request, RequestStatus
from heron.sched.output import (
    RequestUpdate,
    RunnerOutput,
    ScheduledRequest,
    SchedulerOutput,
    TokenLogprobs,
)
from heron.sched.queue import RequestQueue
from heron.spec_decode.proposer import DraftPlanner


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 2048
    block_size: int = 16
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    split_prompt_bursts: bool = True
    """Prefill a burst of prompts in shorter steps, so first tokens come sooner: ``_step_budget``."""
    max_batches_in_flight: int = 1
    """Steps that may be scheduled before the oldest one's results are in: the number of pipeline
    stages, so that every stage has a batch to work on. With more than one, a request in flight is
    not scheduled again (its next token is not known yet) and each step takes its share of the
    requests (``_step_seq_cap``), so that the batches in flight are of about equal size."""

    def __post_init__(self) -> None:
        for name in (
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_model_len",
            "block_size",
            "max_batches_in_flight",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            # A preempted request is recomputed in one piece (prompt and outputs so far); without
            # chunking it could then outgrow the budget and never be scheduled again.
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) is smaller than "
                f"max_model_len ({self.max_model_len}) with chunked prefill disabled; enable "
                "chunked prefill or raise max_num_batched_tokens"
            )


@dataclass
class SchedulerStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The limits every request is checked against; a data-parallel front checks them for its
    replicas (which are configured alike) before it places a request on one."""

    max_model_len: int
    enable_chunked_prefill: bool
    max_num_batched_tokens: int
    block_size: int
    num_blocks: int


def check_request_limits(request: Request, limits: RequestLimits) -> None:
    """Raise ValueError if ``request`` could never be served within ``limits``.

    Like vLLM, the prompt must be shorter than ``max_model_len`` (generation then stops at
    ``max_model_len`` with finish reason "length"); and the request's longest possible KV must fit
    in the whole cache, or it would preempt itself forever.
    """
    num_prompt = request.num_prompt_tokens
    if num_prompt == 0:
        raise ValueError("the prompt is empty: at least one token is needed")
    if num_prompt >= limits.max_model_len:
        raise ValueError(
            f"the prompt has {num_prompt} tokens, but max_model_len is {limits.max_model_len}: "
            f"it must be shorter than max_model_len to leave room for output"
        )
    if not limits.enable_chunked_prefill and num_prompt > limits.max_num_batched_tokens:
        raise ValueError(
            f"the prompt has {num_prompt} tokens, more than max_num_batched_tokens "
            f"({limits.max_num_batched_tokens}) with chunked prefill disabled"
        )
    max_len = limits.max_model_len
    if request.sampling_params.max_tokens is not None:
        max_len = min(max_len, request.num_tokens + request.sampling_params.max_tokens)
    # The last sampled token is never fed back, so at most max_len - 1 tokens need KV.
    blocks_needed = -(-(max_len - 1) // limits.block_size)
    if blocks_needed > limits.num_blocks:
        raise ValueError(
            f"the request may need {max_len - 1} tokens of KV ({blocks_needed} blocks of "
            f"{limits.block_size}), but the whole KV cache has {limits.num_blocks} blocks "
            f"({limits.num_blocks * limits.block_size} tokens); give the KV cache more "
            f"memory, or lower max_model_len ({limits.max_model_len}) or max_tokens"
        )


class Scheduler:
    """Decides which requests compute how many tokens each step; applies the runner's results."""

    def __init__(self, config: SchedulerConfig, kv_manager: KVCacheManager) -> None:
        if kv_manager.block_size != config.block_size:
            raise ValueError(
                f"block_size mismatch: scheduler {config.block_size}, "
                f"KV cache manager {kv_manager.block_size}"
            )
        if kv_manager.enable_prefix_caching != config.enable_prefix_caching:
            raise ValueError(
                f"enable_prefix_caching mismatch: scheduler {config.enable_prefix_caching}, "
                f"KV cache manager {kv_manager.enable_prefix_caching}"
            )
        self.config = config
        self.kv = kv_manager
        self.requests: dict[str, Request] = {}
        """Unfinished requests by id (waiting, preempted and running)."""
        self.waiting = RequestQueue()
        self.running: list[Request] = []
        """In admission order, so the tail is the newest: the one preempted first."""
        self.num_preemptions = 0
        self._prompt_logprobs_done: dict[str, int] = {}
        """request_id -> prompt positions already reported (a recompute would repeat them)."""
        self.proposer: DraftPlanner | None = None
        """Speculative decoding: plans each decoding request's draft tokens (set by the engine)."""
        self.in_flight: set[str] = set()
        """Requests in a step whose results are not in yet (only with several batches in flight):
        they are neither scheduled nor preempted until ``update_from_output`` has their step."""

    # -- admission -------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        """Queue a request after ``check_request``; raises ValueError (and queues nothing)."""
        self.check_request(request)
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def check_request(self, request: Request) -> None:
        """Raise ValueError if the request could never be served under this configuration.

        Separate from ``add_request`` so that a caller can check every sequence of an ``n > 1``
        request before queueing any. Checked here, once, rather than discovered in ``schedule``
        where it would stall the queue (see :func:`check_request_limits`).
        """
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        check_request_limits(request, self.limits())
        if self.proposer is not None:
            self.proposer.check_request(request)

    def limits(self) -> RequestLimits:
        """What :func:`check_request_limits` needs, small enough to send to another process."""
        cfg = self.config
        return RequestLimits(
            max_model_len=cfg.max_model_len,
            enable_chunked_prefill=cfg.enable_chunked_prefill,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            block_size=self.kv.block_size,
            num_blocks=self.kv.num_blocks,
        )

    # -- one step --------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        """Pick this step's work: running requests first, then waiting ones in FIFO order.

        Each running request asks for all its uncomputed tokens, capped by the remaining budget;
        when the KV cache cannot hold them, the newest running request is preempted and the
        allocation retried. Waiting requests are admitted only in steps that preempted nothing,
        since a step short of blocks should not take on more work.

        A running prompt's chunk never takes the tokens of the decodes behind it in ``running``,
        nor, while requests wait, the share of the budget kept for them (``_waiting_reserve``):
        otherwise one long prompt holds every request admitted after it, and every request that
        arrives while it prefills, until its whole prefill is done (head-of-line blocking).
        """
        cfg = self.config
        step_budget = budget = self._step_budget()
        shortened = step_budget < cfg.max_num_batched_tokens
        decodes: list[ScheduledRequest] = []
        prefills: list[ScheduledRequest] = []
        preempted: list[str] = []
        chunking = cfg.enable_chunked_prefill
        in_flight = self.in_flight
        decodes_behind = sum(
            r.num_tokens - r.num_computed_tokens == 1 and r.request_id not in in_flight
            for r in self.running
        )
        kept = self._waiting_reserve(step_budget, shortened)
        seq_cap = self._step_seq_cap()

        index = 0
        while index < len(self.running) and budget > 0 and len(decodes) + len(prefills) < seq_cap:
            request = self.running[index]
            if request.request_id in in_flight:
                index += 1
                continue
            num_left = request.num_tokens - request.num_computed_tokens
            if num_left == 1:
                decodes_behind -= 1
            elif chunking:
                num_left = min(num_left, budget - decodes_behind - kept)
            num_new = min(num_left, budget)
            drafts = self._drafts(request, num_left, budget)
            num_new += len(drafts)
            if num_new <= 0:
                index += 1
                continue
            waits_for_results = False
            while self.kv.allocate_slots(request, num_new) is None:
                victim = self._pick_victim(request)
                if victim is None:  # only requests in flight could give way: wait for them
                    waits_for_results = True
                    break
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    break
            if waits_for_results or request.status is not RequestStatus.RUNNING:
                break  # it preempted itself: everything older is already scheduled
            (decodes if num_new == 1 else prefills).append(
                ScheduledRequest(request=request, num_new_tokens=num_new, draft_token_ids=drafts)
            )
            budget -= num_new
            index += 1

        if not preempted:
            budget = self._schedule_waiting(
                budget, decodes, prefills, whole_prompts=shortened, seq_cap=seq_cap
            )

        scheduled = decodes + prefills
        if cfg.max_batches_in_flight > 1:
            in_flight.update(s.request.request_id for s in scheduled)
        return SchedulerOutput(
            scheduled=scheduled,
            preempted_ids=preempted,
            num_scheduled_tokens=step_budget - budget,
        )

    def _schedule_waiting(
        self,
        budget: int,
        decodes: list[ScheduledRequest],
        prefills: list[ScheduledRequest],
        *,
        whole_prompts: bool = False,
        seq_cap: int | None = None,
    ) -> int:
        """Admit waiting requests while budget, sequence slots and blocks last; the budget left.

        With ``whole_prompts`` (a step shortened for a burst), a prompt that does not fit what is
        left waits for the next step unless the step has no prefill yet: starting it here would
        delay the prompts before it and still not give it a first token.
        """
        cfg = self.config
        cap = cfg.max_num_seqs if seq_cap is None else seq_cap
        while (
            self.waiting
            and budget > 0
            and len(self.running) < cfg.max_num_seqs
            and len(decodes) + len(prefills) < cap
        ):
            request = self.waiting.peek()
            computed_blocks, num_cached = self.kv.get_computed_blocks(request)
            num_new = request.num_tokens - num_cached
            if num_new > budget:
                if not cfg.enable_chunked_prefill or (whole_prompts and prefills):
                    break  # FIFO: it waits for a step with enough budget, and so do those behind it
                num_new = budget
            if self.kv.allocate_slots(request, num_new, computed_blocks, num_cached) is None:
                break
            self.waiting.popleft()
            request.num_computed_tokens = num_cached
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_cached
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            (decodes if num_new == 1 else prefills).append(
                ScheduledRequest(request=request, num_new_tokens=num_new)
            )
            budget -= num_new
        return budget

    def _waiting_reserve(self, step_budget: int, whole_prompts: bool) -> int:
        """Tokens of this step that running prompts leave to waiting requests: what the waiting
        ones need (prefix-cache hits aside), at most half of the step.

        Half, so a long prompt still advances at least at half speed while others arrive, and a
        short request that arrives during a long prefill gets its first token in the next step
        instead of after the whole prefill. Nothing is kept for what could not be admitted: with
        ``whole_prompts`` (see ``_schedule_waiting``) only the whole prompts at the head of the
        queue that fit count.
        """
        cfg = self.config
        if (
            not (cfg.enable_chunked_prefill and self.waiting)
            or len(self.running) >= cfg.max_num_seqs
        ):
            return 0
        cap = step_budget // 2
        wanted = 0
        for request in self.waiting:
            need = request.num_tokens - request.num_computed_tokens
            if whole_prompts and wanted + need > cap:
                return wanted
            wanted += need
            if wanted >= cap:
                return cap
        return wanted

    def _step_budget(self) -> int:
        """This step's token budget: all of it, unless prompt bursts are split.

        Then, while two or more prompts wait for prefill, the step computes at most a quarter of
        their tokens (but at least an eighth of the budget), plus one token per decoding request.
        A step of a whole burst makes every prompt in it wait for all the others, and anything
        arriving meanwhile waits for that long step too; shorter steps hand out first tokens
        prompt after prompt. A deep queue still gets full-budget steps, where chunking finer would
        only add steps (each re-reads the weights and the decoding requests' KV) while every
        prompt waits for most of the queue anyway. A lone prompt gets the whole budget.
        """
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        if not (cfg.split_prompt_bursts and cfg.enable_chunked_prefill):
            return budget
        decoding = 0
        prefill_left: list[int] = []
        for request in self.running:
            left = request.num_tokens - request.num_computed_tokens
            if left > 1:
                prefill_left.append(left)
            else:
                decoding += 1
        prefill_left.extend(r.num_tokens - r.num_computed_tokens for r in self.waiting)
        if len(prefill_left) < 2:
            return budget
        prefill = max(budget // 8, -(-sum(prefill_left) // 4))
        return min(budget, decoding + prefill)

    def _step_seq_cap(self) -> int:
        """The most requests one step may take: all of them, or with several batches in flight
        an equal share of the unfinished ones (at least one), so that the pipeline's stages get
        batches of about equal size instead of one full batch and empty ones."""
        depth = self.config.max_batches_in_flight
        if depth == 1:
            return self.config.max_num_seqs
        unfinished = len(self.running) + len(self.waiting)
        return max(1, -(-min(unfinished, self.config.max_num_seqs) // depth))

    def _pick_victim(self, request: Request) -> Request | None:
        """The newest running request not in flight (possibly ``request`` itself), taken out of
        ``running``; None when every newer request is in flight and ``request`` is older than
        them: it then waits for their results rather than give up its own blocks first."""
        for index in range(len(self.running) - 1, -1, -1):
            candidate = self.running[index]
            if candidate.request_id in self.in_flight:
                continue
            if candidate is request and self.in_flight:
                return None
            return self.running.pop(index)
        return None

    def _preempt(self, request: Request) -> None:
        """Free the request's KV and queue it first in line, to be recomputed from scratch."""
        self.kv.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    # -- results ---------------------------------------------------------------------------------
    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: RunnerOutput
    ) -> list[RequestUpdate]:
        """Advance each scheduled request, append its sampled token, and finish those that stop.

        Only requests that produced something (a token or prompt logprobs) get an update; a prefill
        chunk that is not the last produces nothing. Requests finished while the step ran (an abort)
        are skipped.
        """
        updates: list[RequestUpdate] = []
        any_finished = False
        for item in scheduler_output.scheduled:
            request = item.request
            self.in_flight.discard(request.request_id)
            if request.is_finished:
                continue
            samples = item.samples  # depends on num_computed_tokens: read it before advancing
            request.num_computed_tokens += item.num_new_tokens
            request_id = request.request_id
            update: RequestUpdate | None = None

            prompt_logprobs = runner_output.prompt_logprobs.get(request_id)
            if prompt_logprobs:
                new_prompt_logprobs = self._new_prompt_logprobs(request_id, item, prompt_logprobs)
                if new_prompt_logprobs:
                    update = RequestUpdate(request=request, prompt_logprobs=new_prompt_logprobs)

            if samples:
                token = runner_output.sampled.get(request_id)
                if token is None:
                    raise RuntimeError(
                        f"the runner returned no sampled token for request {request_id!r}, "
                        "whose step reached the end of its known tokens"
                    )
                request.output_token_ids.append(token)
                if update is None:
                    update = RequestUpdate(request=request)
                update.new_token_ids.append(token)
                logprobs = runner_output.logprobs.get(request_id)
                if logprobs is not None:
                    update.new_logprobs.append(logprobs)
                status = self._check_stop(request, token)
                if status is None and item.draft_token_ids:
                    status = self._append_accepted(item, runner_output, update)
                if status is not None:
                    self._finish(request, status)
                    update.finished = True
                    any_finished = True

            if update is not None:
                updates.append(update)

        if any_finished:
            self.running = [r for r in self.running if not r.is_finished]
        return updates

    def _new_prompt_logprobs(
        self, request_id: str, item: ScheduledRequest, logprobs: list[TokenLogprobs | None]
    ) -> list[TokenLogprobs | None]:
        """Drop prompt positions already reported: a preempted request recomputes its prompt."""
        start = item.request.num_computed_tokens - item.num_new_tokens
        done = self._prompt_logprobs_done.get(request_id, 0)
        self._prompt_logprobs_done[request_id] = max(done, start + len(logprobs))
        return logprobs[max(0, done - start) :]

    def _check_stop(self, request: Request, token: int) -> RequestStatus | None:
        """vLLM's order: eos, then stop token ids (both held back by min_tokens), then length.

        Unlike vLLM, min_tokens never defers the length checks, so no request outgrows
        ``max_model_len`` or ``max_tokens`` whatever its min_tokens.
        """
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and token in request.eos_token_ids:
                request.stop_reason = None
                return RequestStatus.FINISHED_STOPPED
            if token in (params.stop_token_ids or ()):
                request.stop_reason = token
                return RequestStatus.FINISHED_STOPPED
        if params.max_tokens is not None and request.num_output_tokens >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.config.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _finish(self, request: Request, status: RequestStatus) -> None:
        """Mark finished, free its blocks and forget it; the caller removes it from ``running``."""
        request.status = status
        self.kv.free(request)
        self.requests.pop(request.request_id, None)
        self._prompt_logprobs_done.pop(request.request_id, None)

    # -- speculative decoding ------------------------------------------------------------------
    def _drafts(self, request: Request, num_left: int, budget: int) -> list[int]:
        """Draft tokens for a decoding request this step (none without a proposer)."""
        if self.proposer is None or num_left != 1:
            return []
        return self.proposer.drafts(request, budget, self.kv)

    def _append_accepted(
        self, item: ScheduledRequest, runner_output: RunnerOutput, update: RequestUpdate
    ) -> RequestStatus | None:
        """Append the rest of a verified run and roll back the KV of the rejected drafts.

        The step computed the last token and every draft, but only the accepted drafts' KV is
        valid: ``num_computed_tokens`` goes back by the rejected ones (their slots are rewritten
        later), and blocks wholly past the request's tokens are freed. Prefix-cache hashes never
        covered drafts, since they are not the request's tokens. Stops are checked token by token,
        so tokens past an EOS, a stop token or a length limit are dropped.
        """
        request = item.request
        request_id = request.request_id
        tokens = runner_output.more_sampled.get(request_id, [])
        logprobs = runner_output.more_logprobs.get(request_id)
        request.num_computed_tokens -= len(item.draft_token_ids) - len(tokens)
        status = None
        for j, token in enumerate(tokens):
            request.output_token_ids.append(token)
            update.new_token_ids.append(token)
            if logprobs is not None:
                update.new_logprobs.append(logprobs[j])
            status = self._check_stop(request, token)
            if status is not None:
                break
        if status is None:
            self.kv.free_blocks_past(request, request.num_tokens)
        return status

    # -- control from outside --------------------------------------------------------------------
    def finish_requests(self, request_ids: str | Iterable[str], status: RequestStatus) -> None:
        """Finish requests from outside the step (abort, or a stop string seen by detokenization).

        Unknown and already finished ids are ignored: an abort may race with a natural finish.
        """
        if not status.is_finished:
            raise ValueError(f"finish_requests needs a finished status, got {status}")
        if isinstance(request_ids, str):
            request_ids = (request_ids,)
        any_running = False
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None:
                continue
            if request.status is RequestStatus.RUNNING:
                any_running = True
            else:
                self.waiting.remove(request_id)
            self._finish(request, status)
        if any_running:
            self.running = [r for r in self.running if not r.is_finished]

    # -- queries ---------------------------------------------------------------------------------
    def has_unfinished_requests(self) -> bool:
        return bool(self.running) or bool(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def get_request(self, request_id: str) -> Request | None:
        """The unfinished request with this id, or None."""
        return self.requests.get(request_id)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            kv_cache_usage=self.kv.usage,
            prefix_cache_queries=self.kv.prefix_cache_queries,
            prefix_cache_hits=self.kv.prefix_cache_hits,
            num_preemptions=self.num_preemptions,
        )
