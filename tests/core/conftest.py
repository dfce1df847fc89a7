"""Shared fixtures for core tests: tiny random models and the backends to run them on."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def installed_backends() -> list[str]:
    names = ["reference"]
    if importlib.util.find_spec("heron_cpu") is not None:
        names.append("cpu")
    return names


@pytest.fixture(params=installed_backends())
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on every installed backend, each forced through HERON_BACKEND."""
    monkeypatch.setenv("HERON_BACKEND", request.param)
    monkeypatch.setenv("HERON_CPU_KVCACHE_SPACE", "0.25")
    monkeypatch.setenv("HERON_KVCACHE_SPACE", "0.25")
    return request.param


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HERON_PLUGINS", raising=False)
    if "HERON_BACKEND" in os.environ and not os.environ["HERON_BACKEND"]:
        monkeypatch.delenv("HERON_BACKEND")
