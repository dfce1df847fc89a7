"""The backend conformance suite on the xpu backend, wherever it is usable.

That is an Intel GPU, or any host with ``HERON_XPU_INTERPRET=1`` (Triton's interpreter); without
either every test skips with the reason. CI runs the suite in interpreter mode through the command
line instead (``HERON_XPU_INTERPRET=1 python -m heron_interfaces.testing xpu``), so that the plain
``pytest tests`` run does not pay for it twice.
"""

from __future__ import annotations

import pytest

from heron_interfaces import BackendSpec, Platform
from heron_interfaces.testing.conformance import *  # noqa: F403


@pytest.fixture(scope="session")
def _xpu_backend() -> tuple[type[Platform], BackendSpec | None]:
    """Loaded through the ``heron.backends`` entry point, as a user's run would, when usable."""
    pytest.importorskip("heron_xpu", reason="heron-xpu is not installed")
    from heron_xpu.availability import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"the xpu backend cannot run here: {reason}")
    from heron_interfaces.testing import load_platform

    return load_platform(name="xpu")


@pytest.fixture(scope="session")
def backend_platform(_xpu_backend: tuple[type[Platform], BackendSpec | None]) -> type[Platform]:
    return _xpu_backend[0]


@pytest.fixture(scope="session")
def backend_spec(_xpu_backend: tuple[type[Platform], BackendSpec | None]) -> BackendSpec | None:
    return _xpu_backend[1]
