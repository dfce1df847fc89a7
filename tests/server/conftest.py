"""Fixtures: a tiny random model and the shared server process (session-scoped: starting one
costs a few seconds of torch import and model load; every test after that is cheap)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from server_utils import (
    API_KEYS,
    SERVED_NAME,
    TINY_ARGS,
    RemoteServer,
    make_tiny_model,
    start_server,
)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with head size 64 (every backend's kernels accept it)."""
    return make_tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[RemoteServer]:
    """The shared server: tiny model, two API keys, a served name."""
    remote = start_server(
        tmp_path_factory.mktemp("server"),
        str(tiny_model),
        *TINY_ARGS,
        "--served-model-name",
        SERVED_NAME,
        "other-name",
        *(arg for key in API_KEYS for arg in ("--api-key", key)),  # one key per flag
        "--max-request-body-bytes",
        "200000",
        api_key=API_KEYS[0],
    )
    yield remote
    code = remote.stop()
    assert code == 0, remote.log()


@pytest.fixture
def client(server: RemoteServer) -> Iterator[openai.OpenAI]:
    with server.client() as c:
        yield c
