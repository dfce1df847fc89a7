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
        return APIError(503, f"the engine has stopped: {exc}", code="engine_dead")
    if isinstance(exc, ValueError):
        # The engine raises ValueError only for requests it can never serve (KV capacity, ...).
        return APIError(400, str(exc), code="invalid_value")
    logger.exception("Internal error while serving a request", exc_info=exc)
    return APIError(500, f"internal server error: {type(exc).__name__}: {exc}")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One line per invalid field, pydantic's wording; ``param`` is the first field's path."""
    lines = []
    param = None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        name = ".".join(loc)
        if err.get("type") == "json_invalid":
            lines.append(f"the request body is not valid JSON: {err.get('msg')}")
            continue
        if param is None and name:
            param = name
        got = err.get("input")
        shown = repr(got) if not isinstance(got, dict) else "an object"
        lines.append(f"{name or 'body'}: {err.get('msg')} (got {shown[:100]})")
    return "; ".join(lines) or "invalid request", param


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
