"""``POST /v1/embeddings``: one engine request per input, answered in OpenAI's shape.

The model must run the pooling runner (``heron serve`` picks it for a sentence-transformers
folder). ``encoding_format: "base64"`` sends each vector as the base64 of its little-endian
float32 bytes, which is what OpenAI sends and what the official client asks for by default.
``dimensions`` keeps a prefix of a Matryoshka model's vector (a 400 for other models); an input
longer than ``max_model_len`` is a 400 naming both numbers unless ``truncate_prompt_tokens``
(vLLM's field) asks for truncation.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse

from heron.engine.input_processor import ProcessedPrompt
from heron.pooling import EmbeddingRequestOutput, PoolingParams, PoolingParamsError
from heron_server.errors import APIError, from_engine_exception
from heron_server.protocol import EmbeddingRequest
from heron_server.serving import ServerState, new_id


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """The ``embedding`` field: floats, or base64 of little-endian float32 (OpenAI's)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


class EmbeddingHandler:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def create(self, body: EmbeddingRequest) -> JSONResponse:
        state = self.state
        state.check_running()
        state.check_model(body.model)
        body.check_fields("/v1/embeddings")
        inputs = body.inputs()
        limit = state.max_prompts_per_request
        if len(inputs) > limit:
            raise APIError(
                400,
                f"this request has {len(inputs)} inputs; the server accepts at most {limit} per "
                "request (--max-prompts-per-request): send them in several requests",
                param="input",
                code="too_many_prompts",
            )
        params = PoolingParams(
            dimensions=body.dimensions, truncate_prompt_tokens=body.truncate_prompt_tokens
        )
        # Tokenizing up to --max-prompts-per-request inputs is Python work: off the event loop.
        processed = await asyncio.to_thread(self._prepare, inputs, params)
        request_id = new_id("embd")
        try:
            outputs = await asyncio.gather(
                *(
                    self._recorded(state.engine.embed(p, params, f"{request_id}-{i}"))
                    for i, p in enumerate(processed)
                )
            )
        except Exception as exc:
            raise _api_error(exc) from None
        return JSONResponse(self._response(outputs, body))

    async def _recorded(
        self, embedding: Awaitable[EmbeddingRequestOutput]
    ) -> EmbeddingRequestOutput:
        """One input's embedding, counted in the server's metrics (/metrics) as it finishes:
        prompt tokens, a finished request, the latency from submission to its vector."""
        started = time.monotonic()
        try:
            output = await embedding
        except BaseException:
            self.state.metrics.embedding_finished(None, 0.0)
            raise
        done = output.outputs is not None
        tokens = len(output.prompt_token_ids) if done else None
        self.state.metrics.embedding_finished(tokens, time.monotonic() - started)
        return output

    def _prepare(
        self, inputs: list[str | list[int]], params: PoolingParams
    ) -> list[ProcessedPrompt]:
        try:
            return [self.state.engine.process_pooling_prompt(p, params) for p in inputs]
        except Exception as exc:
            raise _api_error(exc) from None

    def _response(self, outputs: list[EmbeddingRequestOutput], body: EmbeddingRequest) -> dict:
        data: list[dict[str, Any]] = []
        prompt_tokens = 0
        for index, output in enumerate(outputs):
            if output.outputs is None:
                raise APIError(503, "the request was aborted (the server is shutting down)")
            data.append(
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": encode_vector(output.outputs.embedding, body.encoding_format),
                }
            )
            prompt_tokens += len(output.prompt_token_ids)
        return {
            "object": "list",
            "data": data,
            "model": self.state.model_name,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }


def _api_error(exc: BaseException) -> APIError:
    if isinstance(exc, PoolingParamsError):
        return APIError(400, str(exc), param=exc.param, code="invalid_value")
    return from_engine_exception(exc, prompt_param="input")
