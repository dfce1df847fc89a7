"""The backend conformance suite on the cpu backend, with the best ISA variant this CPU runs.

The same suite runs from the command line with
``pytest --pyargs heron_interfaces.testing.conformance --heron-backend cpu``.
"""

from __future__ import annotations

import pytest

from heron_interfaces import BackendSpec, Platform
from heron_interfaces.testing import load_platform
from heron_interfaces.testing.conformance import *  # noqa: F403


@pytest.fixture(scope="session")
def _cpu_backend() -> tuple[type[Platform], BackendSpec | None]:
    """Loaded through the ``heron.backends`` entry point, exactly as a user's run would."""
    return load_platform(name="cpu")


@pytest.fixture(scope="session")
def backend_platform(_cpu_backend: tuple[type[Platform], BackendSpec | None]) -> type[Platform]:
    return _cpu_backend[0]


@pytest.fixture(scope="session")
def backend_spec(_cpu_backend: tuple[type[Platform], BackendSpec | None]) -> BackendSpec | None:
    return _cpu_backend[1]
