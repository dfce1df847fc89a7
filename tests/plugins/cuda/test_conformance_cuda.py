"""The backend conformance suite on the cuda backend; skipped where no usable NVIDIA GPU is present.

The same suite runs from the command line with
``pytest --pyargs heron_interfaces.testing.conformance --heron-backend cuda``. Kernel-level tests of
this backend (every head size, partitioned decode, opcheck) are in tests/plugins/gpu.
"""

from __future__ import annotations

import pytest

from heron_interfaces import BackendSpec, Platform
from heron_interfaces.testing.conformance import *  # noqa: F403


@pytest.fixture(scope="session")
def _cuda_backend() -> tuple[type[Platform], BackendSpec | None]:
    """Loaded through the ``heron.backends`` entry point, as a user's run would, when usable."""
    pytest.importorskip("heron_cuda", reason="heron-cuda is not installed")
    from heron_cuda.availability import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"the cuda backend cannot run here: {reason}")
    from heron_interfaces.testing import load_platform

    return load_platform(name="cuda")


@pytest.fixture(scope="session")
def backend_platform(_cuda_backend: tuple[type[Platform], BackendSpec | None]) -> type[Platform]:
    return _cuda_backend[0]


@pytest.fixture(scope="session")
def backend_spec(_cuda_backend: tuple[type[Platform], BackendSpec | None]) -> BackendSpec | None:
    return _cuda_backend[1]
