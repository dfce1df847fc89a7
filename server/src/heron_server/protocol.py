"""Request bodies of the OpenAI-compatible API, as pydantic models.

Unknown fields: accepted and ignored, with one warning per request naming them (vLLM's behaviour,
adopted after its ``extra="forbid"`` broke clients that send newer OpenAI fields, vLLM PR #10463).
Known fields of features Heron does not have yet (tools, structured output, beam search, images,
...) are different: a request that sets them gets a 400 naming the field, because silently ignoring
them would return a plausible but wrong answer.

Ranges of sampling values are checked by :class:`heron.SamplingParams` (one place for the Python
API and HTTP); the models here check types and the limits that protect the server (``n``).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from heron_server.errors import APIError
from heron_server.structured_request import constraint_from_fields, template_tool_calls

logger = logging.getLogger(__name__)

MAX_CHOICES = 128
"""OpenAI's limit on ``n``; also bounds ``best_of`` so one request cannot fan out unboundedly."""

DEFAULT_MAX_PROMPTS = 2048
"""Default limit on the prompts of one completions request (OpenAI's limit on input arrays).
Each prompt costs tokenization and an engine request; 500,000 of them stalled the server."""

_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
"""How a lone surrogate can enter a body: a JSON escape ``\\ud800``, or its bytes (json.loads
decodes bytes with ``surrogatepass``). A hit is only a hint: escaped pairs are valid characters."""

# Fields of features Heron does not implement yet, with the value that means "not used".
_UNSUPPORTED: dict[str, Any] = {
    "suffix": None,
    "use_beam_search": False,
    "length_penalty": 1.0,
    "prompt_logprobs": None,
    "allowed_token_ids": None,
    "bad_words": None,
    "truncate_prompt_tokens": None,
    "guided_json": None,
    "guided_regex": None,
    "guided_choice": None,
    "guided_grammar": None,
    "guided_decoding_backend": None,
    "logits_processors": None,
    "chat_template": None,
    "chat_template_kwargs": None,
    "documents": None,
    "mm_processor_kwargs": None,
    "return_tokens_as_token_ids": False,
    "priority": 0,
    "functions": None,
    "function_call": None,
    "audio": None,
    "prediction": None,
    "web_search_options": None,
    "thinking_token_budget": None,
}


class OpenAIModel(BaseModel):
    """Base of request models: unknown fields are kept in ``model_extra`` for the checks below."""

    model_config = ConfigDict(extra="allow")

    def check_fields(self, endpoint: str) -> None:
        """400 for fields of missing features; a warning for fields we do not know at all."""
        extra = self.model_extra or {}
        for name, unused in _UNSUPPORTED.items():
            value = extra.get(name, unused)
            if value not in (unused, None, [], {}):
                raise APIError(
                    400,
                    f"`{name}` is not supported by Heron yet; remove it from the request",
                    param=name,
                    code="unsupported_parameter",
                )
        unknown = sorted(k for k in extra if k not in _UNSUPPORTED)
        if unknown:
            logger.warning("%s: ignoring unknown request fields %s", endpoint, unknown)


def count_prompts(prompt: Any) -> int:
    """How many prompts a raw, not yet validated ``prompt`` value holds, by the rule of
    :meth:`CompletionRequest.prompts`; cheap, so the limit is enforced before validation (which
    took ~1 s for 500,000 prompts, on the event loop)."""
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


def check_prompt_count(prompt: Any, limit: int) -> None:
    """400 when a request holds more prompts than the server's limit."""
    count = count_prompts(prompt)
    if count > limit:
        raise APIError(
            400,
            f"this request has {count} prompts; the server accepts at most {limit} per request "
            "(--max-prompts-per-request): send them in several requests",
            param="prompt",
            code="too_many_prompts",
        )


def _lone_surrogate_path(value: Any) -> str | None:
    """The dotted path (``messages.0.content``) of the first string holding a lone UTF-16
    surrogate, which tokenizers reject with a TypeError; None if there is none. Iterative, since
    JSON nests as deep as the parser allowed."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and not _encodes(item):
                return path
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                child_path = f"{path}.{key}" if path else str(key)
                if not _encodes(str(key)):
                    return path or "body"
                stack.append((child_path, child))
        elif isinstance(item, list):
            stack.extend(
                (f"{path}.{i}" if path else str(i), c) for i, c in reversed(list(enumerate(item)))
            )
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_no_lone_surrogates(raw: bytes, data: Any) -> None:
    """400 naming the field when a string of the body is not valid Unicode (a lone surrogate
    such as ``"\\ud800"``); walks the body only when its bytes hint at one."""
    if not _SURROGATE_HINT.search(raw):
        return
    path = _lone_surrogate_path(data)
    if path is not None:
        raise APIError(
            400,
            f"{path or 'body'}: the string holds a lone UTF-16 surrogate (such as \\ud800), "
            "which is not valid Unicode text",
            param=path or None,
            code="invalid_unicode",
        )


class StreamOptions(OpenAIModel):
    include_usage: bool | None = False


class SamplingFields(OpenAIModel):
    """Fields shared by completions and chat completions (OpenAI's, then vLLM's extras)."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # vLLM's extra sampling parameters (clients send them through ``extra_body``).
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    # Structured outputs: OpenAI's response_format, or vLLM's structured_outputs extra field.
    response_format: ResponseFormat | None = None
    structured_outputs: dict[str, Any] | None = None

    def check_fields(self, endpoint: str) -> None:
        super().check_fields(endpoint)
        if self.stream_options is not None and not self.stream:
            raise APIError(
                400, "stream_options can only be set when stream is true", param="stream_options"
            )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_values(self) -> dict[str, Any]:
        """The fields the client set, as SamplingParams keywords; unset ones stay unset so that
        the model's generation_config supplies its defaults (as vLLM does)."""
        names = (
            "n",
            "best_of",
            "temperature",
            "top_p",
            "stop",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "top_k",
            "min_p",
            "repetition_penalty",
            "min_tokens",
            "ignore_eos",
            "stop_token_ids",
            "skip_special_tokens",
            "spaces_between_special_tokens",
            "include_stop_str_in_output",
        )
        values = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.logit_bias:
            values["logit_bias"] = _token_bias(self.logit_bias)
        constraint = constraint_from_fields(self.response_format, self.structured_outputs)
        if constraint is not None:
            values["structured_outputs"] = constraint
        return values


def _token_bias(bias: dict[str, float]) -> dict[int, float]:
    """JSON object keys are strings; OpenAI's ``logit_bias`` keys are token ids."""
    result = {}
    for key, value in bias.items():
        try:
            result[int(key)] = value
        except ValueError:
            raise APIError(
                400,
                f"logit_bias keys must be token ids (integers), got {key!r}",
                param="logit_bias",
                code="invalid_value",
            ) from None
    return result


PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: PromptInput
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool | None = False

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts: a string or a token-id list is one prompt, a list many."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise APIError(400, "prompt must not be empty", param="prompt", code="invalid_prompt")
        if isinstance(prompt[0], int):
            return [prompt]  # type: ignore[list-item]
        return list(prompt)  # type: ignore[arg-type]


class ContentPart(OpenAIModel):
    type: str
    text: str | None = None


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None

    def to_template_dict(self, index: int) -> dict[str, Any]:
        """The message as chat templates expect it: role and a plain string content; a tool
        result keeps its ``tool_call_id``, an assistant message its ``tool_calls``."""
        where = f"messages[{index}]"
        if self.role == "function":
            raise APIError(
                400,
                f"{where}: role 'function' (OpenAI's deprecated form) is not supported; "
                "send role 'tool' with tool_call_id",
                param=where,
                code="unsupported_parameter",
            )
        if isinstance(self.content, list):
            texts = []
            for part in self.content:
                if part.type != "text":
                    raise APIError(
                        400,
                        f"{where}: content parts of type {part.type!r} are not supported "
                        "(Heron accepts text only; images and audio are not supported yet)",
                        param=f"{where}.content",
                        code="unsupported_parameter",
                    )
                if part.text is None:
                    raise APIError(400, f"{where}: a text part needs `text`", param=where)
                texts.append(part.text)
            content = "\n".join(texts)
        elif self.content is None:
            if self.role != "assistant":
                raise APIError(400, f"{where}: content is required", param=f"{where}.content")
            content = ""
        else:
            content = self.content
        role = "system" if self.role == "developer" else self.role
        message: dict[str, Any] = {"role": role, "content": content}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            message["tool_calls"] = template_tool_calls(self.tool_calls, where)
        return message


class JsonSchemaFormat(OpenAIModel):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    echo: bool | None = False

    def check_fields(self, endpoint: str) -> None:
        super().check_fields(endpoint)
        if self.echo:
            raise APIError(400, "echo is not supported for chat completions", param="echo")
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs")

    @property
    def requested_max_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else (self.max_tokens)
        )

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.to_template_dict(i) for i, m in enumerate(self.messages)]


class TokenizeRequest(OpenAIModel):
    """vLLM's ``/tokenize``: either ``prompt`` or chat ``messages``."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False


class DetokenizeRequest(OpenAIModel):
    model: str | None = None
    tokens: list[int]


class EmbeddingRequest(OpenAIModel):
    """OpenAI's ``/v1/embeddings`` body, plus vLLM's ``truncate_prompt_tokens``.

    ``input`` is a string, a list of strings, a list of token ids (one input) or a list of such
    lists, as in OpenAI's API.
    """

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=-1)

    def inputs(self) -> list[str | list[int]]:
        """One entry per input; a 400 for an empty list (OpenAI's rule)."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if not value:
            raise APIError(400, "input must not be an empty list", param="input")
        if isinstance(value[0], int):
            return [list(value)]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]
