"""State shared by the endpoints, and the steps every generation endpoint takes.

One :class:`ServerState` per app (no module globals): the engine, the names it is served under,
the chat template and the metrics. The helpers turn a request's fields into a validated
``SamplingParams`` with vLLM's rules for ``max_tokens``, and build OpenAI's usage objects.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from heron.engine.async_llm import AsyncLLM
from heron.engine.input_processor import ProcessedPrompt
from heron.outputs import CompletionOutput, Logprob, RequestOutput
from heron.sampling_params import SamplingParams, SamplingParamsError
from heron_server.errors import APIError
from heron_server.metrics import ServerMetrics
from heron_server.protocol import (
    DEFAULT_MAX_PROMPTS,
    check_no_lone_surrogates,
    check_prompt_count,
)
from heron_server.structured_request import ToolCallingConfig

LOGPROB_FLOOR = -9999.0
"""JSON has no -inf; OpenAI and vLLM clamp impossible tokens' logprobs to this value."""


@dataclass
class ServerState:
    engine: AsyncLLM
    served_model_names: list[str]
    chat_template: str | None = None
    max_prompts_per_request: int = DEFAULT_MAX_PROMPTS
    tool_calling: ToolCallingConfig = field(default_factory=ToolCallingConfig)
    metrics: ServerMetrics = field(init=False)
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.served_model_names:
            self.served_model_names = [self.engine.model_name]
        self.metrics = ServerMetrics(self.engine, self.model_name)

    @property
    def model_name(self) -> str:
        """The name responses carry: the first served name."""
        return self.served_model_names[0]

    def check_model(self, requested: str | None) -> None:
        """404 for a model this server does not serve (an absent ``model`` means the default)."""
        if requested and requested not in self.served_model_names:
            raise APIError(
                404,
                f"The model `{requested}` does not exist.",
                param="model",
                code="model_not_found",
            )

    def check_running(self) -> None:
        if not self.engine.is_running:
            raise APIError(503, "the engine is not running; see the server log", code="engine_dead")

    def check_body(self, path: str, raw: bytes, data: Any) -> None:
        """The checks that must run on the parsed JSON before pydantic validates it: the
        number of prompts (validating 500,000 of them blocked the event loop for a second before
        any limit could apply) and lone surrogates (tokenizers raise a TypeError, a 500)."""
        if path == "/v1/completions" and isinstance(data, dict):
            check_prompt_count(data.get("prompt"), self.max_prompts_per_request)
        check_no_lone_surrogates(raw, data)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def make_sampling_params(
    values: dict[str, Any],
    *,
    max_tokens: int | None,
    prompt: ProcessedPrompt,
    max_model_len: int,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    aliases: dict[str, str] | None = None,
) -> SamplingParams:
    """SamplingParams for one prompt, with vLLM's ``max_tokens`` rules.

    An explicit ``max_tokens`` that cannot fit beside the prompt is a 400 naming both numbers
    (vLLM's behaviour); an absent one means "up to the context limit". ``aliases`` maps
    SamplingParams names to the request's own (chat's ``top_logprobs`` is ``logprobs`` here), so
    that errors name the field the client actually sent.
    """
    aliases = aliases or {}
    num_prompt = len(prompt.prompt_token_ids)
    room = max_model_len - num_prompt
    if max_tokens is None:
        max_tokens = room
    elif max_tokens >= 1 and num_prompt + max_tokens > max_model_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {num_prompt + max_tokens} tokens ({num_prompt} in the prompt, "
            f"{max_tokens} for the completion). Please reduce the prompt or max_tokens "
            f"(at most {room} here).",
            param=aliases.get("max_tokens", "max_tokens"),
            code="context_length_exceeded",
        )
    kwargs = dict(values)
    kwargs["max_tokens"] = max_tokens
    if logprobs is not None:
        kwargs["logprobs"] = logprobs
    if prompt_logprobs is not None:
        kwargs["prompt_logprobs"] = prompt_logprobs
    try:
        return SamplingParams(**kwargs)
    except SamplingParamsError as exc:
        param = aliases.get(exc.param, exc.param)
        message = str(exc)
        if param != exc.param:
            message = f"{param}{message.removeprefix(exc.param)}"
        raise APIError(400, message, param=param, code="invalid_value") from None


class DeltaMerger:
    """Builds a request's final output from its DELTA outputs.

    Non-streaming requests ask the engine for DELTA outputs rather than FINAL_ONLY so that the
    metrics see each token when it is generated: with FINAL_ONLY, a request aborted before its end
    (the client left) delivered nothing, and its tokens were never counted.
    """

    def __init__(self) -> None:
        self.sequences: dict[int, CompletionOutput] = {}
        self.prompt_logprobs: list | None = None
        self.last: RequestOutput | None = None

    def add(self, output: RequestOutput) -> None:
        for seq in output.outputs:
            merged = self.sequences.get(seq.index)
            if merged is None:
                self.sequences[seq.index] = _copy(seq)
                continue
            merged.text += seq.text
            merged.token_ids.extend(seq.token_ids)
            if merged.logprobs is not None and seq.logprobs is not None:
                merged.logprobs.extend(seq.logprobs)
            else:  # the engine stops reporting logprobs when one is missing, as FINAL_ONLY does
                merged.logprobs = None
            merged.cumulative_logprob = seq.cumulative_logprob
            merged.finish_reason = seq.finish_reason
            merged.stop_reason = seq.stop_reason
        if output.prompt_logprobs:
            self.prompt_logprobs = (self.prompt_logprobs or []) + list(output.prompt_logprobs)
        self.last = output

    def final(self) -> RequestOutput | None:
        """What a FINAL_ONLY request would have returned; None until the request finished."""
        last = self.last
        if last is None or not last.finished:
            return None
        return RequestOutput(
            request_id=last.request_id,
            prompt=last.prompt,
            prompt_token_ids=last.prompt_token_ids,
            prompt_logprobs=self.prompt_logprobs,
            outputs=[self.sequences[i] for i in sorted(self.sequences)],
            finished=True,
            num_cached_tokens=last.num_cached_tokens,
            metrics=last.metrics,
        )


def _copy(seq: CompletionOutput) -> CompletionOutput:
    """A sequence the merger may extend without touching the engine's output object."""
    return CompletionOutput(
        index=seq.index,
        text=seq.text,
        token_ids=list(seq.token_ids),
        cumulative_logprob=seq.cumulative_logprob,
        logprobs=None if seq.logprobs is None else list(seq.logprobs),
        finish_reason=seq.finish_reason,
        stop_reason=seq.stop_reason,
    )


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def clamp(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)


def ranked(entry: dict[int, Logprob]) -> list[tuple[int, Logprob]]:
    """An engine logprob entry (chosen token first, then the top-k) in rank order."""
    return sorted(entry.items(), key=lambda item: (item[1].rank is None, item[1].rank or 0))
