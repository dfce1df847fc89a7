"""``POST /v1/chat/completions``: render the chat template, generate, answer in OpenAI's shape.

Streams follow OpenAI's chunk sequence: one chunk per choice carrying ``role`` first, then
``content`` deltas, then a chunk with ``finish_reason``; with ``stream_options.include_usage``
a last chunk with ``choices: []`` and the totals, then ``data: [DONE]``.

Tool calls (see :mod:`heron_server.structured_request`) arrive as ``delta.tool_calls`` entries in
OpenAI's shape: first ``index``, ``id``, ``type`` and ``function.name`` (arguments ``""``), then
``function.arguments`` pieces; the last chunk's ``finish_reason`` is ``tool_calls``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from jinja2 import TemplateError

from heron.engine.detokenizer import decode_token
from heron.engine.input_processor import ProcessedPrompt
from heron.engine.output_processor import RequestOutputKind
from heron.outputs import CompletionOutput, Logprob
from heron.sampling_params import SamplingParams
from heron_server.errors import APIError, from_engine_exception
from heron_server.metrics import RequestRecorder
from heron_server.protocol import ChatCompletionRequest
from heron_server.reasoning_parsers import ReasoningParser, ReasoningStream
from heron_server.serving import (
    DeltaMerger,
    ServerState,
    clamp,
    make_sampling_params,
    new_id,
    ranked,
    usage,
)
from heron_server.streaming import SSE_DONE, Generations, cancel_on_disconnect, sse_event
from heron_server.structured_request import ToolPlan, plan_tools
from heron_server.tool_parsers import ToolCall, ToolCallStream


def _message(
    plan: ToolPlan, seq: CompletionOutput, reasoning_parser: ReasoningParser | None
) -> tuple[dict[str, Any], str | None]:
    """The whole answer's message (reasoning, content, tool calls) and its finish reason."""
    text: str | None = seq.text
    reasoning = None
    if reasoning_parser is not None:
        reasoning, text = reasoning_parser.extract(seq.text)
    content, calls = plan.calls_of(text or "")
    message: dict[str, Any] = {"role": "assistant", "content": None if text is None else content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [call.to_openai() for call in calls]
    return message, _finish_reason(seq.finish_reason, calls)


def _finish_reason(reason: str | None, calls: list[ToolCall]) -> str | None:
    return "tool_calls" if calls and reason == "stop" else reason


def _call_deltas(calls: list[ToolCall], first: int) -> list[dict[str, Any]]:
    """Each call as OpenAI streams it: the header (id, type, name), then its arguments."""
    deltas = []
    for offset, call in enumerate(calls):
        index = first + offset
        header = {"name": call.name, "arguments": ""}
        deltas.append({"index": index, "id": call.id, "type": "function", "function": header})
        deltas.append({"index": index, "function": {"arguments": call.arguments}})
    return deltas


def _token_info(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": clamp(logprob), "bytes": list(token.encode("utf-8"))}


class ChatHandler:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def _logprobs(self, seq: CompletionOutput, top: int) -> list[dict[str, Any]]:
        """OpenAI's ``logprobs.content``: each chosen token with its ``top`` alternatives."""
        content = []
        for token_id, entry in zip(seq.token_ids, seq.logprobs or []):
            chosen = entry.get(token_id)
            if chosen is None:
                continue
            item = _token_info(self._text(token_id, chosen), chosen.logprob)
            item["top_logprobs"] = [
                _token_info(self._text(t, lp), lp.logprob) for t, lp in ranked(entry)[:top]
            ]
            content.append(item)
        return content

    def _text(self, token_id: int, logprob: Logprob) -> str:
        if logprob.decoded_token is not None:
            return logprob.decoded_token
        return decode_token(self.state.engine.tokenizer, token_id)

    def _prepare(
        self, body: ChatCompletionRequest
    ) -> tuple[ProcessedPrompt, SamplingParams, ToolPlan]:
        engine = self.state.engine
        messages = body.template_messages()
        plan = plan_tools(body.tools, body.tool_choice, self.state.tool_calling)
        try:
            processed = engine.render_chat(
                messages,
                chat_template=self.state.chat_template,
                add_generation_prompt=body.add_generation_prompt,
                continue_final_message=body.continue_final_message,
                tools=plan.template_tools,
            )
        except TemplateError as exc:
            raise APIError(
                400,
                f"the chat template could not render these messages: {exc}",
                param="messages",
                code="invalid_messages",
            ) from None
        except Exception as exc:
            raise from_engine_exception(exc, "messages") from None
        values = body.sampling_values()
        constraint = plan.constraint(body.parallel_tool_calls)
        if constraint is not None:
            if "structured_outputs" in values:
                raise APIError(
                    400,
                    "response_format/structured_outputs cannot be combined with tool_choice "
                    "'required' or a named function (both constrain the answer)",
                    param="tool_choice",
                    code="invalid_value",
                )
            values["structured_outputs"] = constraint
        if plan.parser is not None and plan.parser.keeps_special_tokens:
            values.setdefault("skip_special_tokens", False)  # the markers are special tokens
        params = make_sampling_params(
            values,
            max_tokens=body.requested_max_tokens,
            prompt=processed,
            max_model_len=engine.max_model_len,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            aliases={
                "logprobs": "top_logprobs",
                "max_tokens": "max_completion_tokens"
                if body.max_completion_tokens is not None
                else "max_tokens",
            },
        )
        return processed, params, plan

    async def create(self, body: ChatCompletionRequest, raw: Request) -> Response:
        state = self.state
        state.check_running()
        state.check_model(body.model)
        body.check_fields("/v1/chat/completions")
        # Rendering the template and tokenizing a long conversation is Python work: in a thread,
        # so that the event loop keeps serving everybody else meanwhile.
        processed, params, plan = await asyncio.to_thread(self._prepare, body)
        request_id = new_id("chatcmpl")
        # DELTA even without streaming: the metrics then count tokens as they are generated,
        # those of a request aborted before its end included (DeltaMerger builds the result).
        generations = Generations(
            [
                state.engine.generate(
                    processed, params, request_id, output_kind=RequestOutputKind.DELTA
                )
            ]
        )
        try:
            await generations.start()
        except Exception as exc:
            raise from_engine_exception(exc, "messages") from None
        recorder = state.metrics.recorder(params.n)
        if body.stream:
            return StreamingResponse(
                self._stream(body, request_id, processed, params, plan, generations, recorder),
                media_type="text/event-stream",
            )
        work = self._collect(body, request_id, processed, plan, generations, recorder)
        return JSONResponse(await cancel_on_disconnect(raw, work))

    async def _collect(
        self,
        body: ChatCompletionRequest,
        request_id: str,
        processed: ProcessedPrompt,
        plan: ToolPlan,
        generations: Generations,
        recorder: RequestRecorder,
    ) -> dict[str, Any]:
        merger = DeltaMerger()
        try:
            async for _, output in generations:
                recorder.observe(output)
                merger.add(output)
        except Exception as exc:
            raise from_engine_exception(exc) from None
        finally:
            recorder.close()
        final = merger.final()
        if final is None:
            raise APIError(500, "the engine ended the request without a result")
        choices = []
        for seq in final.outputs:
            logprobs = None
            if body.logprobs:
                logprobs = {"content": self._logprobs(seq, body.top_logprobs or 0)}
            message, finish_reason = _message(plan, seq, self.state.tool_calling.reasoning())
            choices.append(
                {
                    "index": seq.index,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason,
                    "stop_reason": seq.stop_reason,
                }
            )
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.state.model_name,
            "choices": choices,
            "usage": usage(
                len(processed.prompt_token_ids),
                sum(len(s.token_ids) for s in final.outputs),
                final.num_cached_tokens,
            ),
            "system_fingerprint": None,
        }

    async def _stream(
        self,
        body: ChatCompletionRequest,
        request_id: str,
        processed: ProcessedPrompt,
        params: SamplingParams,
        plan: ToolPlan,
        generations: Generations,
        recorder: RequestRecorder,
    ) -> AsyncIterator[str]:
        created = int(time.time())
        base = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": self.state.model_name,
        }

        def chunk(choice: dict[str, Any]) -> str:
            payload = {**base, "choices": [choice]}
            if body.include_usage:
                payload["usage"] = None
            return sse_event(payload)

        completion_tokens = 0
        cached_tokens = 0
        tools = _StreamedTools(plan, self.state.tool_calling.reasoning())
        try:
            for index in range(params.n):
                yield chunk(
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
            async for _, output in generations:
                recorder.observe(output)
                for seq in output.outputs:
                    completion_tokens += len(seq.token_ids)
                    if not (seq.text or seq.token_ids or seq.finish_reason):
                        continue
                    logprobs = None
                    if body.logprobs:
                        logprobs = {"content": self._logprobs(seq, body.top_logprobs or 0)}
                    delta, finish_reason = tools.delta(seq)
                    yield chunk(
                        {
                            "index": seq.index,
                            "delta": delta,
                            "logprobs": logprobs,
                            "finish_reason": finish_reason,
                            "stop_reason": seq.stop_reason,
                        }
                    )
                if output.finished:
                    cached_tokens = output.num_cached_tokens
            if body.include_usage:
                totals = usage(len(processed.prompt_token_ids), completion_tokens, cached_tokens)
                yield sse_event({**base, "choices": [], "usage": totals})
        except Exception as exc:
            yield from_engine_exception(exc).sse_data()
        finally:
            recorder.close()
            await generations.aclose()
        yield SSE_DONE


class _StreamedTools:
    """Per choice of a stream: which part of each text delta is content and which tool calls.

    Without tools a delta is its text. With a parser (``auto``) content streams until a tool-call
    section starts and the calls follow when the answer ends; a named function streams its
    arguments as they are generated; ``required`` sends the calls when the answer ends.
    """

    def __init__(self, plan: ToolPlan, reasoning_parser: ReasoningParser | None) -> None:
        self.plan = plan
        self.reasoning_parser = reasoning_parser
        self.raw: dict[int, str] = {}
        self.reasoning: dict[int, ReasoningStream] = {}
        self.texts: dict[int, str] = {}
        self.streams: dict[int, ToolCallStream] = {}
        self.headers: set[int] = set()
        """Choices whose named-function call header was sent."""

    def delta(self, seq: CompletionOutput) -> tuple[dict[str, Any], str | None]:
        """The chunk's delta for this output: reasoning first (``--reasoning-parser``), then
        the rest as content or tool calls."""
        piece = seq.text
        reasoning = ""
        if self.reasoning_parser is not None:
            raw = self.raw[seq.index] = self.raw.get(seq.index, "") + seq.text
            stream = self.reasoning.setdefault(seq.index, ReasoningStream(self.reasoning_parser))
            reasoning, piece = stream.feed(raw, final=seq.finish_reason is not None)
        delta, finish_reason = self._answer_delta(seq.index, piece, seq.finish_reason)
        if reasoning:
            delta = {"reasoning_content": reasoning, **delta}
        return delta, finish_reason

    def _answer_delta(
        self, index: int, piece: str, reason: str | None
    ) -> tuple[dict[str, Any], str | None]:
        plan = self.plan
        if plan.mode == "none":
            return ({"content": piece} if piece else {}), reason
        text = self.texts[index] = self.texts.get(index, "") + piece
        finished = reason is not None
        if plan.mode == "named":
            calls = [ToolCall(name=plan.named or "", arguments="")]
            pieces = [] if index in self.headers else _call_deltas(calls, 0)[:1]
            self.headers.add(index)
            if piece:
                pieces.append({"index": 0, "function": {"arguments": piece}})
            delta = {"tool_calls": pieces} if pieces else {}
            return delta, _finish_reason(reason, calls)
        if plan.mode == "required":
            if not finished:
                return {}, None
            content, calls = plan.calls_of(text)
            return _delta(content or "", calls), _finish_reason(reason, calls)
        stream = self.streams.setdefault(index, ToolCallStream(plan.parser))  # type: ignore[arg-type]
        content = stream.feed(text)
        calls: list[ToolCall] = []
        if finished:
            rest, calls = stream.finish(text)
            content += rest
        return _delta(content, calls), _finish_reason(reason, calls)


def _delta(content: str, calls: list[ToolCall]) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if content:
        delta["content"] = content
    if calls:
        delta["tool_calls"] = _call_deltas(calls, 0)
    return delta
