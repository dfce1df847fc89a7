"""The backend conformance suite: a pytest plugin plus the tests every Heron backend must pass.

Importing this package stays cheap (no torch): pytest loads :mod:`heron_interfaces.testing.plugin`
through the ``pytest11`` entry point in every test run of every project that has
``heron-interfaces`` installed, so only the test modules themselves import torch.

Run it against an installed backend::

    pytest --pyargs heron_interfaces.testing.conformance --heron-backend cpu
    python -m heron_interfaces.testing cpu          # the same, shorter

See :mod:`heron_interfaces.testing.plugin` for the other ways to select a backend.
"""

from __future__ import annotations

from heron_interfaces.testing.loader import (
    BackendLoadError,
    discover_backends,
    load_platform,
    platform_ref,
    resolve_ref,
)

__all__ = ["BackendLoadError", "discover_backends", "load_platform", "platform_ref", "resolve_ref"]
