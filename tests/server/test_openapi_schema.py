"""/openapi.json describes the server truly (issue 23, item 15).

Client generators and API gateways read the schema, so every status a route really sends must be
documented for that route, with the body really sent: OpenAI's error object for 4xx and 5xx (never
FastAPI's 422, which this server never sends), an empty body for /health and /ping, Prometheus
text for /metrics. The table below sends each status of each route to an app built around the fake
engine of test_app_failures; the statuses test_errors sees to a real server are checked as well.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from test_app_failures import FakeEngine
from test_errors import BAD_REQUESTS

from heron_server.app import build_app
from heron_server.errors import ErrorResponse

KEY = "schema-key"
BODY_LIMIT = 4000
USER = [{"role": "user", "content": "hi"}]


def _fail(engine: FakeEngine) -> None:
    engine.fail = RuntimeError("kernel bug")


def _die(engine: FakeEngine) -> None:
    engine.is_running = False


@dataclass
class Case:
    method: str
    path: str
    status: int
    json: Any = None
    route: str | None = None
    """The route's path template, where it differs from ``path``."""
    key: bool = True
    setup: Callable[[FakeEngine], None] | None = None
    raw: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def template(self) -> str:
        return self.route or self.path


def _generation_cases(path: str, good: dict[str, Any]) -> list[Case]:
    return [
        Case("POST", path, 200, good),
        Case("POST", path, 200, {**good, "stream": True}),
        Case("POST", path, 400, {**good, "temperature": -1}),
        Case("POST", path, 401, good, key=False),
        Case("POST", path, 404, {**good, "model": "no-such-model"}),
        Case("POST", path, 413, {**good, "user": "u" * BODY_LIMIT}),
        Case("POST", path, 500, good, setup=_fail),
        Case("POST", path, 503, good, setup=_die),
    ]


CASES: list[Case] = [
    Case("GET", "/health", 200, key=False),
    Case("GET", "/health", 503, key=False, setup=_die),
    Case("GET", "/ping", 200, key=False),
    Case("POST", "/ping", 200, key=False),
    Case("GET", "/ping", 503, key=False, setup=_die),
    Case("POST", "/ping", 503, key=False, setup=_die),
    Case("GET", "/version", 200, key=False),
    Case("GET", "/metrics", 200, key=False),
    Case("GET", "/v1/models", 200),
    Case("GET", "/v1/models", 401, key=False),
    Case("GET", "/v1/models/fake", 200, route="/v1/models/{model_id}"),
    Case("GET", "/v1/models/nope", 404, route="/v1/models/{model_id}"),
    Case("GET", "/v1/models/fake", 401, route="/v1/models/{model_id}", key=False),
    *_generation_cases("/v1/completions", {"model": "fake", "prompt": "x"}),
    Case("POST", "/v1/completions", 400, {"prompt": ["x"] * 5}),  # over the prompt limit
    Case("POST", "/v1/completions", 400, raw=json.dumps({"prompt": "\ud800"}).encode()),
    Case("POST", "/v1/completions", 400, raw=b'{"prompt": "x",'),
    *_generation_cases("/v1/chat/completions", {"model": "fake", "messages": USER}),
    Case("POST", "/tokenize", 200, {"prompt": "x"}),
    Case("POST", "/tokenize", 400, {}),
    Case("POST", "/tokenize", 401, {"prompt": "x"}, key=False),
    Case("POST", "/tokenize", 404, {"model": "nope", "prompt": "x"}),
    Case("POST", "/tokenize", 413, {"prompt": "x" * BODY_LIMIT}),
    Case("POST", "/detokenize", 200, {"tokens": [1, 2]}),
    Case("POST", "/detokenize", 400, {"tokens": [-1]}),
    Case("POST", "/detokenize", 401, {"tokens": [1]}, key=False),
    Case("POST", "/detokenize", 404, {"model": "nope", "tokens": [1]}),
    Case("POST", "/detokenize", 413, {"tokens": [1] * BODY_LIMIT}),
]


async def _send(case: Case) -> tuple[httpx.Response, dict[str, Any]]:
    """The case's response, and the schema of the app that sent it."""
    engine = FakeEngine()
    if case.setup is not None:
        case.setup(engine)
    app = build_app(
        engine,  # type: ignore[arg-type]
        api_keys=[KEY],
        max_body_bytes=BODY_LIMIT,
        max_prompts_per_request=4,
    )
    headers = {"Authorization": f"Bearer {KEY}"} if case.key else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        if case.raw is not None:
            headers["content-type"] = "application/json"
            response = await http.request(case.method, case.path, content=case.raw, headers=headers)
        else:
            response = await http.request(case.method, case.path, json=case.json, headers=headers)
        auth = {"Authorization": f"Bearer {KEY}"}
        schema = (await http.get("/openapi.json", headers=auth)).json()
    return response, schema


def _operation(schema: dict[str, Any], route: str, method: str) -> dict[str, Any]:
    assert route in schema["paths"], f"{route} is not documented"
    operations = schema["paths"][route]
    assert method.lower() in operations, f"{method} {route} is not documented"
    return operations[method.lower()]


def _check_body_is_documented(response: httpx.Response, documented: dict[str, Any]) -> None:
    content = documented.get("content", {})
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    if not content:
        assert response.content == b"", "documented as empty, but a body was sent"
        return
    assert media_type in content, f"sent {media_type}, documented {sorted(content)}"
    if response.status_code >= 400:
        assert content[media_type]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
        ErrorResponse.model_validate(response.json())


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c.method} {c.path} {c.status} {i}" for i, c in enumerate(CASES)]
)
def test_every_status_sent_is_documented_for_its_route(case: Case) -> None:
    response, schema = asyncio.run(_send(case))
    assert response.status_code == case.status, response.text
    operation = _operation(schema, case.template, case.method)
    documented = operation["responses"].get(str(case.status))
    assert documented is not None, (
        f"{case.method} {case.template} sent {case.status}; documented: "
        f"{sorted(operation['responses'])}"
    )
    _check_body_is_documented(response, documented)


def test_statuses_the_error_tests_see_are_documented() -> None:
    _, schema = asyncio.run(_send(Case("GET", "/health", 200, key=False)))
    for path, _body, status, _param in BAD_REQUESTS:
        responses = _operation(schema, path, "POST")["responses"]
        assert str(status) in responses, (path, status, sorted(responses))
    for path in ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"):
        responses = _operation(schema, path, "POST")["responses"]
        assert {"401", "413"} <= set(responses), path  # test_api_keys, test_oversized_body


def test_no_422_and_the_error_model_is_openais() -> None:
    _, schema = asyncio.run(_send(Case("GET", "/health", 200, key=False)))
    for route, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, route)
    schemas = schema["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    error = schemas["ErrorInfo"]
    assert set(error["properties"]) == {"message", "type", "param", "code"}
    assert set(error["required"]) == {"message", "type"}
    metrics = _operation(schema, "/metrics", "GET")["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    for route in ("/health", "/ping"):
        assert _operation(schema, route, "GET")["responses"]["200"]["content"] == {}
