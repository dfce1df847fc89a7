"""The FastAPI application: routes, error handlers, API keys and the body size limit.

:func:`build_app` takes a running engine rather than building one, so the CLI owns the engine's
lifetime (load before listening, shut down after the last connection) and tests can build an app
around any engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

import heron
from heron.engine.async_llm import AsyncLLM
from heron_server.errors import APIError, install_error_handlers
from heron_server.metrics import CONTENT_TYPE
from heron_server.middleware import APIKeyMiddleware, BodySizeLimitMiddleware
from heron_server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from heron_server.serving import ServerState
from heron_server.serving_chat import ChatHandler
from heron_server.serving_completion import CompletionHandler
from heron_server.streaming import ClientDisconnectedError

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
"""Large enough for a long context sent as token ids (~8 bytes per token as JSON)."""


def build_app(
    engine: AsyncLLM,
    *,
    served_model_names: Sequence[str] = (),
    api_keys: Sequence[str] = (),
    chat_template: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """An app serving ``engine``; the first served name (default: the engine's) is the one
    responses carry, and any of them is accepted as ``model``."""
    state = ServerState(engine, list(served_model_names), chat_template)
    app = FastAPI(
        title="Heron",
        version=heron.__version__,
        description="OpenAI-compatible API of the Heron inference engine.",
    )
    app.state.heron = state
    install_error_handlers(app)

    @app.exception_handler(ClientDisconnectedError)
    async def _gone(_request: Request, _exc: ClientDisconnectedError) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's code for "client closed"

    _add_routes(app, state)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    if api_keys:  # added last, so it runs first: no body is read for an unauthorized request
        app.add_middleware(APIKeyMiddleware, api_keys=list(api_keys))
    return app


def _add_routes(app: FastAPI, state: ServerState) -> None:
    completions = CompletionHandler(state)
    chat = ChatHandler(state)
    engine = state.engine

    @app.get("/health")
    async def health() -> Response:
        """200 while the engine loop runs; 503 once it died, so orchestrators restart us."""
        state.check_running()
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": heron.__version__}

    @app.get("/metrics")
    async def metrics() -> Response:
        # engine.stats() waits for the engine's lock (held during a step): keep the loop free.
        body = await asyncio.to_thread(state.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    def model_card(name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": state.created,
            "owned_by": "heron",
            "root": engine.model_name,
            "parent": None,
            "max_model_len": engine.max_model_len,
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n) for n in state.served_model_names]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        state.check_model(model_id)
        return model_card(model_id)

    @app.post("/v1/completions")
    async def create_completion(body: CompletionRequest, raw: Request) -> Response:
        return await completions.create(body, raw)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(body: ChatCompletionRequest, raw: Request) -> Response:
        return await chat.create(body, raw)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        state.check_model(body.model)
        body.check_fields("/tokenize")
        return JSONResponse(_tokenize(state, body))

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> JSONResponse:
        state.check_model(body.model)
        body.check_fields("/detokenize")
        tokenizer = engine.tokenizer
        size = len(tokenizer)
        bad = [t for t in body.tokens if not 0 <= t < size]
        if bad:
            raise APIError(
                400,
                f"token id {bad[0]} is outside the tokenizer's vocabulary [0, {size})",
                param="tokens",
                code="invalid_value",
            )
        return JSONResponse({"prompt": tokenizer.decode(body.tokens)})


def _tokenize(state: ServerState, body: TokenizeRequest) -> dict[str, Any]:
    """Token ids of a prompt or a conversation; unlike generation, never refused for length
    (clients call this to find out whether a prompt fits)."""
    tokenizer = state.engine.tokenizer
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of `prompt` and `messages`", param="prompt")
    if body.messages is not None:
        messages = [m.to_template_dict(i) for i, m in enumerate(body.messages)]
        template = state.chat_template or getattr(tokenizer, "chat_template", None)
        if not template:
            raise APIError(400, "this model has no chat template", param="messages")
        try:
            text = tokenizer.apply_chat_template(
                messages,
                chat_template=template,
                add_generation_prompt=body.add_generation_prompt
                and not body.continue_final_message,
                continue_final_message=body.continue_final_message,
                tokenize=False,
            )
        except Exception as exc:  # jinja errors: the messages do not fit the template
            raise APIError(400, f"the chat template failed: {exc}", param="messages") from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)["input_ids"]
    result: dict[str, Any] = {
        "count": len(ids),
        "max_model_len": state.engine.max_model_len,
        "tokens": list(ids),
    }
    if body.return_token_strs:
        result["token_strs"] = tokenizer.convert_ids_to_tokens(list(ids))
    return result
