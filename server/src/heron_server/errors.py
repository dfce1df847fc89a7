"""Errors in OpenAI's shape, and the mapping from engine exceptions to HTTP status codes.

Clients parse ``{"error": {"message", "type", "param", "code"}}`` (openai-python reads
``body["error"]``) and retry every status >= 500, so anything the caller got wrong must be a 4xx:
a 500 for a bad parameter would be retried forever. ``type`` and ``code`` follow OpenAI's own
values (``invalid_request_error``, ``context_length_exceeded``, ...).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from heron.engine.async_llm import EngineDeadError
from heron.engine.input_processor import InvalidPromptError, PromptTooLongError
from heron.sampling_params import SamplingParamsError

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "service_unavailable",
}


class ErrorInfo(BaseModel):
    """OpenAI's error object; described in the OpenAPI schema so client generators parse it."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx the server sends: ``{"error": {...}}``."""

    error: ErrorInfo


_MEANING = {
    400: "Invalid request: a malformed body or field (`param` names it), a prompt too long "
    "for the model, or a feature Heron does not support.",
    401: "Missing or wrong API key (only when the server runs with `--api-key`).",
    404: "The requested model is not served here.",
    413: "The request body is larger than `--max-request-body-bytes`.",
    500: "An internal error (a bug): the message says what failed.",
    503: "The engine has stopped; see the server log.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route really sends, with the
    OpenAI error body (FastAPI would otherwise document a 422 this server never sends)."""
    return {
        status: {"model": ErrorResponse, "description": _MEANING[status]} for status in statuses
    }


class APIError(Exception):
    """An error the client should see as-is: status, message and the OpenAI fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,  # OpenAI's field name
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)

    def sse_data(self) -> str:
        """The error as one SSE event: openai-python raises ``APIError`` when it reads it."""
        return f"data: {json.dumps(self.body())}\n\n"


def error_body(status: int, message: str, **kwargs: Any) -> dict[str, Any]:
    return APIError(status, message, **kwargs).body()


def from_engine_exception(exc: BaseException, prompt_param: str = "prompt") -> APIError:
    """What an exception raised while validating or running a request means for the client.

    ``prompt_param`` names the request field that held the prompt ("prompt" or "messages").
    """
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PromptTooLongError):
        return APIError(400, str(exc), param=prompt_param, code="context_length_exceeded")
    if isinstance(exc, SamplingParamsError):
        return APIError(400, str(exc), param=exc.param, code="invalid_value")
    if isinstance(exc, InvalidPromptError):
        return APIError(400, str(exc), param=prompt_param, code="invalid_prompt")
    if isinstance(exc, EngineDeadError):
        if exc.in_flight:  # this request was running: it failed, and the error says why
            return APIError(500, f"the engine failed while serving this request: {exc}")
        return APIError(503, f"the engine has stopped: {exc}", code="engine_dead")
    if isinstance(exc, ValueError):
        # The engine raises ValueError only for requests it can never serve (KV capacity, ...).
        return APIError(400, str(exc), code="invalid_value")
    logger.exception("Internal error while serving a request", exc_info=exc)
    return APIError(500, f"internal server error: {type(exc).__name__}: {exc}")


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _field_path(loc: tuple) -> str:
    """``messages.0.role`` from pydantic's location, without ``body`` and the union-member tags
    pydantic inserts (``prompt.list[int]`` is the field ``prompt``)."""
    parts = [
        str(p)
        for p in loc
        if p != "body" and not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))
    ]
    return ".".join(parts)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One clause per invalid field, pydantic's wording; ``param`` is the first field's path."""
    by_field: dict[str, list[str]] = {}
    inputs: dict[str, Any] = {}
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return f"the request body is not valid JSON: {err.get('ctx', {}).get('error')}", None
        name = _field_path(tuple(err.get("loc", ())))
        messages = by_field.setdefault(name, [])
        if err.get("msg") not in messages:
            messages.append(str(err.get("msg")))
        inputs.setdefault(name, err.get("input"))
    clauses = []
    for name, messages in by_field.items():
        got = inputs[name]
        shown = "an object" if isinstance(got, dict) else repr(got)[:100]
        clauses.append(f"{name or 'body'}: {' or '.join(messages)} (got {shown})")
    param = next((name for name in by_field if name), None)
    return "; ".join(clauses) or "invalid request", param


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the server in OpenAI's shape, FastAPI's 422 included (as a 400)."""

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return APIError(400, message, param=param, code="invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return from_engine_exception(exc).response()
