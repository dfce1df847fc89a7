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
from heron.outputs import Logprob
from heron.sampling_params import SamplingParams, SamplingParamsError
from heron_server.errors import APIError
from heron_server.metrics import ServerMetrics

LOGPROB_FLOOR = -9999.0
"""JSON has no -inf; OpenAI and vLLM clamp impossible tokens' logprobs to this value."""


@dataclass
class ServerState:
    engine: AsyncLLM
    served_model_names: list[str]
    chat_template: str | None = None
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
