"""The scheduler of the pooling runner: whole prompts batched by tokens, KV freed after the step.

A pooled request is one prompt and no generated token. It is computed in one step (chunked
prefill is off in pooling mode: mean pooling and bidirectional attention need every position
at once, and a prefix from the cache would be causal KV), then finished at once, so its KV
blocks go back to the pool before the next step; no request ever stays running, so none is
ever preempted. Admission, budget and FIFO order are the generation scheduler's, which batches
waiting prompts by tokens.
"""

from __future__ import annotations

from heron.request import Request, RequestStatus
from heron.sched.output import RequestUpdate, RunnerOutput, SchedulerOutput
from heron.sched.scheduler import RequestLimits, Scheduler


def check_pooling_limits(request: Request, limits: RequestLimits) -> None:
    """Raise ValueError if the pooled ``request`` could never run within ``limits``: it must be
    computed whole in one step. A data-parallel front checks its replicas' limits with it."""
    n = request.num_prompt_tokens
    if n == 0:
        raise ValueError("the input is empty: at least one token is needed")
    if n > limits.max_model_len:
        raise ValueError(
            f"the input has {n} tokens, but max_model_len is {limits.max_model_len}; shorten "
            "it or ask for truncation (truncate_prompt_tokens)"
        )
    if n > limits.max_num_batched_tokens:
        raise ValueError(
            f"the input has {n} tokens, more than max_num_batched_tokens "
            f"({limits.max_num_batched_tokens}), which one step computes at most"
        )
    blocks = -(-n // limits.block_size)
    if blocks > limits.num_blocks:
        raise ValueError(
            f"the input needs {blocks} KV blocks during its step, but the cache has "
            f"{limits.num_blocks}; give the KV cache more memory"
        )


class PoolingScheduler(Scheduler):
    def add_request(self, request: Request) -> None:
        """Queue an embedding request after :meth:`check_pooling_request`."""
        self.check_pooling_request(request)
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def check_request(self, request: Request) -> None:
        """Generation requests are refused: this engine computes embeddings."""
        raise ValueError(
            "this model runs the pooling runner: it computes embeddings (LLM.embed, "
            "/v1/embeddings), not text; start it with runner='generate' to generate"
        )

    def check_pooling_request(self, request: Request) -> None:
        """A prompt may use all of ``max_model_len`` (nothing is generated after it)."""
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        check_pooling_limits(request, self.limits())

    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: RunnerOutput
    ) -> list[RequestUpdate]:
        """Every scheduled request is finished with its pooled vector, and its blocks freed."""
        updates: list[RequestUpdate] = []
        for item in scheduler_output.scheduled:
            request = item.request
            if request.is_finished:
                continue  # aborted while the step ran
            request.num_computed_tokens += item.num_new_tokens
            pooled = runner_output.pooled.get(request.request_id)
            if pooled is None or request.num_computed_tokens != request.num_prompt_tokens:
                raise RuntimeError(
                    f"request {request.request_id!r}: the pooling step computed "
                    f"{request.num_computed_tokens} of {request.num_prompt_tokens} tokens and "
                    f"{'no' if pooled is None else 'a'} pooled vector; a pooled prompt must be "
                    "computed whole in one step"
                )
            self._finish(request, RequestStatus.FINISHED_STOPPED)
            updates.append(RequestUpdate(request=request, finished=True, pooled=pooled))
        self.running = [r for r in self.running if not r.is_finished]
        return updates
