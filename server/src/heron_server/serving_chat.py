"""``POST /v1/chat/completions``: render the chat template, generate, answer in OpenAI's shape.

Streams follow OpenAI's chunk sequence: one chunk per choice carrying ``role`` first, then
``content`` deltas, then a chunk with ``finish_reason``; with ``stream_options.include_usage``
a last chunk with ``choices: []`` and the totals, then ``data: [DONE]``.
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

    def _prepare(self, body: ChatCompletionRequest) -> tuple[ProcessedPrompt, SamplingParams]:
        engine = self.state.engine
        messages = body.template_messages()
        try:
            processed = engine.render_chat(
                messages,
                chat_template=self.state.chat_template,
                add_generation_prompt=body.add_generation_prompt,
                continue_final_message=body.continue_final_message,
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
        params = make_sampling_params(
            body.sampling_values(),
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
        return processed, params

    async def create(self, body: ChatCompletionRequest, raw: Request) -> Response:
        state = self.state
        state.check_running()
        state.check_model(body.model)
        body.check_fields("/v1/chat/completions")
        # Rendering the template and tokenizing a long conversation is Python work: in a thread,
        # so that the event loop keeps serving everybody else meanwhile.
        processed, params = await asyncio.to_thread(self._prepare, body)
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
                self._stream(body, request_id, processed, params, generations, recorder),
                media_type="text/event-stream",
            )
        work = self._collect(body, request_id, processed, generations, recorder)
        return JSONResponse(await cancel_on_disconnect(raw, work))

    async def _collect(
        self,
        body: ChatCompletionRequest,
        request_id: str,
        processed: ProcessedPrompt,
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
            choices.append(
                {
                    "index": seq.index,
                    "message": {"role": "assistant", "content": seq.text},
                    "logprobs": logprobs,
                    "finish_reason": seq.finish_reason,
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
                    yield chunk(
                        {
                            "index": seq.index,
                            "delta": {"content": seq.text} if seq.text else {},
                            "logprobs": logprobs,
                            "finish_reason": seq.finish_reason,
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
