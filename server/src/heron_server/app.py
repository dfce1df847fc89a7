"""The FastAPI application: routes, error handlers, API keys and the body size limit.

:func:`build_app` takes a running engine rather than building one, so the CLI owns the engine's
lifetime (load before listening, shut down after the last connection) and tests can build an app
around any engine.

Nothing slow runs on the event loop, which serves every client: a request's JSON gets its cheap
checks (the number of prompts, lone surrogates) before pydantic validates it, and tokenization
runs in worker threads. The OpenAPI schema documents what the server really sends: the error
statuses of each route with OpenAI's error body, never FastAPI's 422.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

import heron
from heron.engine.async_llm import AsyncLLM
from heron_server.errors import APIError, error_responses, install_error_handlers
from heron_server.metrics import CONTENT_TYPE
from heron_server.middleware import APIKeyMiddleware, BodySizeLimitMiddleware
from heron_server.protocol import (
    DEFAULT_MAX_PROMPTS,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)
from heron_server.serving import ServerState
from heron_server.serving_chat import ChatHandler
from heron_server.serving_completion import CompletionHandler
from heron_server.serving_embedding import EmbeddingHandler
from heron_server.streaming import ClientDisconnectedError

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
"""Large enough for a long context sent as token ids (~8 bytes per token as JSON)."""


def positive_int(text: str) -> int:
    """argparse type of the server's count limits: a clear usage error, not a traceback."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_app(
    engine: AsyncLLM,
    *,
    served_model_names: Sequence[str] = (),
    api_keys: Sequence[str] = (),
    chat_template: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_prompts_per_request: int = DEFAULT_MAX_PROMPTS,
) -> FastAPI:
    """An app serving ``engine``; the first served name (default: the engine's) is the one
    responses carry, and any of them is accepted as ``model``."""
    if max_prompts_per_request < 1:
        raise ValueError(f"max_prompts_per_request must be >= 1, got {max_prompts_per_request}")
    state = ServerState(
        engine,
        list(served_model_names),
        chat_template,
        max_prompts_per_request=max_prompts_per_request,
    )
    app = FastAPI(
        title="Heron",
        version=heron.__version__,
        description="OpenAI-compatible API of the Heron inference engine.",
    )
    app.state.heron = state
    app.router.route_class = _CheckedBodyRoute
    install_error_handlers(app)
    _document_only_sent_errors(app)

    @app.exception_handler(ClientDisconnectedError)
    async def _gone(_request: Request, _exc: ClientDisconnectedError) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's code for "client closed"

    _add_routes(app, state)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    if api_keys:  # added last, so it runs first: no body is read for an unauthorized request
        app.add_middleware(APIKeyMiddleware, api_keys=list(api_keys))
    return app


_NO_BODY = {"description": "An empty body.", "content": {}}
_GENERATION = {
    "description": "The result as JSON, or with `stream: true` Server-Sent Events: one "
    "`data: {chunk}` line per chunk, then `data: [DONE]`.",
    "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}},
}
_KEYED = (401,)
"""Statuses of routes behind the API key (sent only when the server has ``--api-key``)."""
_BODY = (400, 401, 413, 500)
"""Statuses of every route that takes a JSON body."""


def _add_routes(app: FastAPI, state: ServerState) -> None:
    completions = CompletionHandler(state)
    chat = ChatHandler(state)
    engine = state.engine

    async def health() -> Response:
        """200 while the engine loop runs; 503 once it died, so orchestrators restart us."""
        state.check_running()
        return Response(status_code=200)

    liveness = {200: _NO_BODY, **error_responses(503)}
    app.get("/health", response_class=Response, responses=liveness)(health)
    # vLLM's /ping (SageMaker's health route): open like /health and answering the same way.
    for method in ("get", "post"):
        register = getattr(app, method)
        register(
            "/ping", response_class=Response, responses=liveness, operation_id=f"ping_{method}"
        )(health)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": heron.__version__}

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus' text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **error_responses(500),
        },
    )
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

    @app.get("/v1/models", responses=error_responses(*_KEYED))
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n) for n in state.served_model_names]}

    @app.get("/v1/models/{model_id:path}", responses=error_responses(*_KEYED, 404))
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        state.check_model(model_id)
        return model_card(model_id)

    generation = {200: _GENERATION, **error_responses(*_BODY, 404, 503)}

    @app.post("/v1/completions", responses=generation)
    async def create_completion(body: CompletionRequest, raw: Request) -> Response:
        return await completions.create(body, raw)

    @app.post("/v1/chat/completions", responses=generation)
    async def create_chat_completion(body: ChatCompletionRequest, raw: Request) -> Response:
        return await chat.create(body, raw)

    embeddings = EmbeddingHandler(state)

    @app.post("/v1/embeddings", responses=error_responses(*_BODY, 404, 503))
    async def create_embedding(body: EmbeddingRequest) -> JSONResponse:
        return await embeddings.create(body)

    @app.post("/tokenize", responses=error_responses(*_BODY, 404))
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        state.check_model(body.model)
        body.check_fields("/tokenize")
        return JSONResponse(await asyncio.to_thread(_tokenize, state, body))

    @app.post("/detokenize", responses=error_responses(*_BODY, 404))
    async def detokenize(body: DetokenizeRequest) -> JSONResponse:
        state.check_model(body.model)
        body.check_fields("/detokenize")
        return JSONResponse({"prompt": await asyncio.to_thread(_detokenize, state, body)})


def _detokenize(state: ServerState, body: DetokenizeRequest) -> str:
    """The text of token ids; 400 for an id outside the vocabulary (blocking)."""
    tokenizer = state.engine.tokenizer
    size = len(tokenizer)
    bad = [t for t in body.tokens if not 0 <= t < size]
    if bad:
        raise APIError(
            400,
            f"token id {bad[0]} is outside the tokenizer's vocabulary [0, {size})",
            param="tokens",
            code="invalid_value",
        )
    return tokenizer.decode(body.tokens)


class _CheckedBodyRoute(APIRoute):
    """A route that parses a POST body's JSON once, itself, and runs the server's cheap checks
    on it (:meth:`ServerState.check_body`) before FastAPI's pydantic validation, which is slow
    for huge bodies and runs on the event loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            if request.method == "POST":
                await _check_body(request)
            return await handler(request)

        return checked


async def _check_body(request: Request) -> None:
    """Parse the body and apply the checks that must precede validation. json.loads holds the
    GIL throughout (a thread would not free the loop), so it must be fast: see :func:`_parse`."""
    raw = await request.body()
    if not raw:
        return
    try:
        data = _parse(raw)
    except (ValueError, RecursionError):
        return  # FastAPI parses it again and answers its 400 (in OpenAI's shape)
    request._json = data  # Starlette's cache: FastAPI validates this instead of parsing again
    state: ServerState = request.app.state.heron
    state.check_body(request.url.path, raw, data)


def _parse(raw: bytes) -> Any:
    """json.loads with the cyclic garbage collector paused. Parsing creates one container per
    JSON array: 500,000 prompts as token lists triggered full collections over the server's
    whole heap (~400,000 objects once torch is loaded), and the parse took 1.7 s instead of
    0.07 s, all of it on the event loop. Nothing that json.loads builds can form a cycle."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(raw)
    finally:
        if was_enabled:
            gc.enable()


def _document_only_sent_errors(app: FastAPI) -> None:
    """Drop FastAPI's generated 422 responses and their schemas from /openapi.json: validation
    errors are sent as 400 with OpenAI's body (see errors.py), so a 422 never leaves the server."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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
