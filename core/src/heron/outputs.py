"""What ``LLM.generate`` and ``AsyncLLM`` return, shaped like vLLM's outputs so user code ports.

Logprobs use vLLM's layout: one ``dict[token_id, Logprob]`` per position, holding the chosen token
(first) and the requested top-k alternatives, so the dict has k or k + 1 entries.
"""

from __future__ import annotations

from dataclasses import dataclass

FinishReason = str
""""stop" (EOS, a stop token or a stop string), "length" (max_tokens or the context limit), or
"abort"."""


@dataclass(slots=True)
class Logprob:
    logprob: float
    rank: int | None = None
    """1-based rank among the vocabulary (1 + the number of more likely tokens)."""
    decoded_token: str | None = None


SampleLogprobs = list[dict[int, Logprob]]
PromptLogprobs = list[dict[int, Logprob] | None]
"""One entry per prompt token; the first is None (nothing predicts it)."""


@dataclass(slots=True)
class CompletionOutput:
    """One generated sequence of a request (``n > 1`` gives several, by ``index``)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    """Sum of the chosen tokens' logprobs; None when they were not computed (logprobs not
    requested, and no ``best_of`` ranking)."""
    logprobs: SampleLogprobs | None
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    """The stop string or stop token id that ended the sequence; None for EOS, length, abort."""

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestMetrics:
    """Times from ``time.monotonic()``; for latency metrics (TTFT, end-to-end)."""

    arrival_time: float
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None


@dataclass(slots=True)
class RequestOutput:
    """A user request's state: a snapshot, a delta, or the final result depending on output kind."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    """Prompt tokens served from the prefix cache."""
    metrics: RequestMetrics | None = None
