"""pytest plugin of the Heron backend conformance suite, loaded through a ``pytest11`` entry point.

Run the suite against an installed backend (found through its ``heron.backends`` entry point, the
way core finds it, without importing core)::

    pytest --pyargs heron_interfaces.testing.conformance --heron-backend cpu
    python -m heron_interfaces.testing cpu              # shorthand for the line above

or against a platform class that is not registered through an entry point (yet)::

    pytest --pyargs heron_interfaces.testing.conformance \
        --heron-backend-platform my_backend.platform:MyPlatform

Inside a backend's own test tree, star-import the suite into a test module and override the
``backend_platform`` fixture there, so that a plain ``pytest tests/`` runs it::

    from heron_interfaces.testing.conformance import *  # noqa: F403

    @pytest.fixture(scope="session")
    def backend_platform():
        from my_backend.platform import MyPlatform
        return MyPlatform

This module is imported by every pytest run in any environment that has ``heron-interfaces``
installed, so it imports nothing heavy: torch and the backend load only when a test asks for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch

    from heron_interfaces.platform import Platform
    from heron_interfaces.registries import BackendSpec


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("heron", "Heron backend conformance suite")
    group.addoption(
        "--heron-backend",
        metavar="NAME",
        default=None,
        help="run the conformance suite against the installed backend registered as NAME",
    )
    group.addoption(
        "--heron-backend-platform",
        metavar="PKG.MOD:CLASS",
        default=None,
        help="run the conformance suite against this Platform class directly",
    )


def _selection(config: pytest.Config) -> tuple[str | None, str | None]:
    return config.getoption("heron_backend"), config.getoption("heron_backend_platform")


def pytest_configure(config: pytest.Config) -> None:
    name, platform = _selection(config)
    if name is not None and platform is not None:
        raise pytest.UsageError("give --heron-backend or --heron-backend-platform, not both")


def pytest_report_header(config: pytest.Config) -> str | None:
    name, platform = _selection(config)
    if name is None and platform is None:
        return None
    return f"heron conformance: backend {name}" if name else f"heron conformance: {platform}"


_SELECTED = pytest.StashKey["tuple[type[Platform], BackendSpec | None]"]()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Load the selected backend once, before any test runs.

    A selection that cannot load (not installed, its device absent, an import error) is a broken
    setup, not a skipped or failed test: pytest stops with its usage-error status and this one
    message, instead of the same error repeated at the setup of every test of the suite.
    """
    name, platform = _selection(session.config)
    if name is None and platform is None:
        return
    from heron_interfaces.testing.loader import BackendLoadError, load_platform

    try:
        session.config.stash[_SELECTED] = load_platform(name=name, platform=platform)
    except BackendLoadError as exc:
        raise pytest.UsageError(str(exc)) from exc


@pytest.fixture(scope="session")
def _heron_selected_backend(
    request: pytest.FixtureRequest,
) -> tuple[type[Platform], BackendSpec | None]:
    selected = request.config.stash.get(_SELECTED, None)
    if selected is None:
        pytest.skip("no backend selected: pass --heron-backend NAME or --heron-backend-platform")
    return selected


@pytest.fixture(scope="session")
def backend_platform(_heron_selected_backend: tuple[Any, Any]) -> type[Platform]:
    """The :class:`~heron_interfaces.Platform` class under test; backends may override this."""
    return _heron_selected_backend[0]


@pytest.fixture(scope="session")
def backend_device(backend_platform: type[Platform]) -> torch.device:
    """Device 0 of the platform under test, made the current device of this process.

    Batches and reference results are built on the CPU; the backend runs on this device and its
    results are copied back to the CPU to be compared. Follows an overridden ``backend_platform``.
    """
    import torch

    backend_platform.set_device(0)
    return torch.device(backend_platform.device_type, 0)


@pytest.fixture(scope="session")
def backend_spec(request: pytest.FixtureRequest) -> BackendSpec | None:
    """The registered :class:`~heron_interfaces.BackendSpec`; ``None`` when selected otherwise."""
    if request.config.getoption("heron_backend") is None:
        return None
    return request.getfixturevalue("_heron_selected_backend")[1]
