"""The backend conformance suite on the rocm backend; skipped where no usable AMD GPU is present.

The same suite runs from the command line with
``pytest --pyargs heron_interfaces.testing.conformance --heron-backend rocm``. Kernel-level tests of
this backend (every head size, partitioned decode, opcheck) are in tests/plugins/gpu.
"""

from __future__ import annotations

import pytest

from heron_interfaces import BackendSpec, Platform
from heron_interfaces.testing.conformance import *  # noqa: F403


@pytest.fixture(scope="session")
def _rocm_backend() -> tuple[type[Platform], BackendSpec | None]:
    """Loaded through the ``heron.backends`` entry point, as a user's run would, when usable."""
    pytest.importorskip("heron_rocm", reason="heron-rocm is not installed")
    from heron_rocm.availability import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"the rocm backend cannot run here: {reason}")
    from heron_interfaces.testing import load_platform

    return load_platform(name="rocm")


@pytest.fixture(scope="session")
def backend_platform(_rocm_backend: tuple[type[Platform], BackendSpec | None]) -> type[Platform]:
    return _rocm_backend[0]


@pytest.fixture(scope="session")
def backend_spec(_rocm_backend: tuple[type[Platform], BackendSpec | None]) -> BackendSpec | None:
    return _rocm_backend[1]
