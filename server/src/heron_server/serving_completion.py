"""``POST /v1/completions``: one engine request per prompt, merged into one OpenAI response.

Choices are numbered as OpenAI and vLLM number them: ``prompt_index * n + sequence_index``.
``echo`` prepends the prompt's text, and with ``logprobs`` the prompt's logprobs too (the first
prompt token has none: nothing predicts it), the way lm-eval style clients score prompts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from heron.engine.detokenizer import decode_token
from heron.engine.input_processor import ProcessedPrompt
from heron.engine.output_processor import RequestOutputKind
from heron.outputs import CompletionOutput, Logprob, RequestOutput
from heron.sampling_params import SamplingParams
from heron_server.errors import APIError, from_engine_exception
from heron_server.metrics import RequestRecorder
from heron_server.protocol import CompletionRequest
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


@dataclass
class _Prompt:
    processed: ProcessedPrompt
    params: SamplingParams
    text: str
    recorder: RequestRecorder
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    """Gathered from the outputs (a DELTA stream sends them once, with the first tokens)."""

    def observe(self, output: RequestOutput) -> None:
        self.recorder.observe(output)
        if output.prompt_logprobs:
            self.prompt_logprobs = (self.prompt_logprobs or []) + list(output.prompt_logprobs)

    def echoed_entries(self) -> list[dict[int, Logprob] | None]:
        """One entry per prompt token (None where the engine has none, as for the first)."""
        ids = self.processed.prompt_token_ids
        entries = list(self.prompt_logprobs or [])[: len(ids)]
        return entries + [None] * (len(ids) - len(entries))


class _LogprobsBuilder:
    """OpenAI's legacy logprobs object (tokens, token_logprobs, top_logprobs, text_offset)."""

    def __init__(self, tokenizer: Any, offset: int = 0) -> None:
        self.tokenizer = tokenizer
        self.offset = offset

    def build(self, token_ids: list[int], entries: list[dict[int, Logprob] | None]) -> dict:
        result: dict[str, list] = {
            "text_offset": [],
            "token_logprobs": [],
            "tokens": [],
            "top_logprobs": [],
        }
        for token_id, entry in zip(token_ids, entries):
            chosen = entry.get(token_id) if entry else None
            token = self._text(token_id, chosen)
            result["tokens"].append(token)
            result["token_logprobs"].append(None if chosen is None else clamp(chosen.logprob))
            result["top_logprobs"].append(None if entry is None else self._top(entry))
            result["text_offset"].append(self.offset)
            self.offset += len(token)
        return result

    def _top(self, entry: dict[int, Logprob]) -> dict[str, float]:
        """Keyed by text, most likely first; tokens with the same text (byte fragments all
        print as U+FFFD) keep the likeliest one's value."""
        top: dict[str, float] = {}
        for token_id, logprob in ranked(entry):
            top.setdefault(self._text(token_id, logprob), clamp(logprob.logprob))
        return top

    def _text(self, token_id: int, logprob: Logprob | None) -> str:
        if logprob is not None and logprob.decoded_token is not None:
            return logprob.decoded_token
        return decode_token(self.tokenizer, token_id)


class CompletionHandler:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def create(self, body: CompletionRequest, raw: Request) -> Response:
        state = self.state
        state.check_running()
        state.check_model(body.model)
        body.check_fields("/v1/completions")
        # Tokenizing and validating up to --max-prompts-per-request prompts is Python work:
        # in a thread, so that the event loop keeps serving everybody else meanwhile.
        prompts = await asyncio.to_thread(self._prepare, body)
        request_id = new_id("cmpl")
        # DELTA even without streaming: the metrics then count tokens as they are generated,
        # those of a request aborted before its end included (DeltaMerger builds the result).
        generations = Generations(
            [
                state.engine.generate(
                    p.processed, p.params, f"{request_id}-{i}", output_kind=RequestOutputKind.DELTA
                )
                for i, p in enumerate(prompts)
            ]
        )
        try:
            await generations.start()
        except Exception as exc:
            raise from_engine_exception(exc, "prompt") from None
        if body.stream:
            return StreamingResponse(
                self._stream(body, request_id, prompts, generations),
                media_type="text/event-stream",
            )
        work = self._collect(body, request_id, prompts, generations)
        return JSONResponse(await cancel_on_disconnect(raw, work))

    def _prepare(self, body: CompletionRequest) -> list[_Prompt]:
        """Every prompt tokenized and checked, with its sampling parameters (blocking)."""
        engine = self.state.engine
        echo_logprobs = body.logprobs if body.echo and body.logprobs is not None else None
        prompts: list[_Prompt] = []
        try:
            for prompt in body.prompts():
                processed = engine.process_prompt(prompt)
                params = make_sampling_params(
                    body.sampling_values(),
                    max_tokens=body.max_tokens,
                    prompt=processed,
                    max_model_len=engine.max_model_len,
                    logprobs=body.logprobs,
                    prompt_logprobs=echo_logprobs,
                )
                text = processed.prompt
                if text is None:
                    text = engine.tokenizer.decode(processed.prompt_token_ids)
                prompts.append(
                    _Prompt(processed, params, text, self.state.metrics.recorder(params.n))
                )
        except Exception as exc:
            raise from_engine_exception(exc, "prompt") from None
        return prompts

    def _choice(
        self,
        prompt: _Prompt,
        seq: CompletionOutput,
        logprobs: _LogprobsBuilder | None,
        with_prompt: bool,
    ) -> dict[str, Any]:
        """One choice; ``with_prompt`` is true for the first chunk of an echoed sequence."""
        text = seq.text
        token_ids, entries = list(seq.token_ids), list(seq.logprobs or [])
        if with_prompt:
            text = prompt.text + text
            if logprobs is not None:
                token_ids = list(prompt.processed.prompt_token_ids) + token_ids
                entries = prompt.echoed_entries() + entries
        return {
            "index": seq.index,
            "text": text,
            "logprobs": None if logprobs is None else logprobs.build(token_ids, entries),
            "finish_reason": seq.finish_reason,
            "stop_reason": seq.stop_reason,
        }

    async def _collect(
        self,
        body: CompletionRequest,
        request_id: str,
        prompts: list[_Prompt],
        generations: Generations,
    ) -> dict[str, Any]:
        mergers = [DeltaMerger() for _ in prompts]
        try:
            async for index, output in generations:
                prompts[index].observe(output)
                mergers[index].add(output)
        except Exception as exc:
            raise from_engine_exception(exc) from None
        finally:
            for p in prompts:
                p.recorder.close()
        finals: dict[int, RequestOutput] = {}
        for index, merger in enumerate(mergers):
            final = merger.final()
            if final is None:
                raise APIError(500, "the engine ended a request without a result")
            finals[index] = final
        tokenizer = self.state.engine.tokenizer
        choices = []
        for index, prompt in enumerate(prompts):
            output = finals[index]
            for seq in output.outputs:
                logprobs = None if body.logprobs is None else _LogprobsBuilder(tokenizer)
                choice = self._choice(prompt, seq, logprobs, bool(body.echo))
                choice["index"] = index * prompt.params.n + seq.index
                choices.append(choice)
        return {
            "id": request_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.state.model_name,
            "choices": choices,
            "usage": usage(
                sum(len(p.processed.prompt_token_ids) for p in prompts),
                sum(len(s.token_ids) for o in finals.values() for s in o.outputs),
                sum(o.num_cached_tokens for o in finals.values()),
            ),
            "system_fingerprint": None,
        }

    async def _stream(
        self,
        body: CompletionRequest,
        request_id: str,
        prompts: list[_Prompt],
        generations: Generations,
    ) -> AsyncIterator[str]:
        created = int(time.time())
        tokenizer = self.state.engine.tokenizer
        builders: dict[tuple[int, int], _LogprobsBuilder] = {}
        completion_tokens = 0
        cached_tokens = 0
        try:
            async for index, output in generations:
                prompt = prompts[index]
                prompt.observe(output)
                for seq in output.outputs:
                    key = (index, seq.index)
                    first = key not in builders
                    if first:
                        builders[key] = _LogprobsBuilder(tokenizer)
                    completion_tokens += len(seq.token_ids)
                    with_prompt = bool(body.echo) and first
                    if not (seq.text or seq.token_ids or seq.finish_reason or with_prompt):
                        continue
                    logprobs = builders[key] if body.logprobs is not None else None
                    choice = self._choice(prompt, seq, logprobs, with_prompt)
                    choice["index"] = index * prompt.params.n + seq.index
                    chunk = {
                        "id": request_id,
                        "object": "text_completion",
                        "created": created,
                        "model": self.state.model_name,
                        "choices": [choice],
                    }
                    if body.include_usage:
                        chunk["usage"] = None
                    yield sse_event(chunk)
                if output.finished:
                    cached_tokens += output.num_cached_tokens
            if body.include_usage:
                prompt_tokens = sum(len(p.processed.prompt_token_ids) for p in prompts)
                yield sse_event(
                    {
                        "id": request_id,
                        "object": "text_completion",
                        "created": created,
                        "model": self.state.model_name,
                        "choices": [],
                        "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
                    }
                )
        except Exception as exc:
            yield from_engine_exception(exc).sse_data()
        finally:
            for p in prompts:
                p.recorder.close()
            await generations.aclose()
        yield SSE_DONE
