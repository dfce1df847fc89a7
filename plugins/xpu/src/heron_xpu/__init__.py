"""Heron's Intel GPU backend (``xpu``): Triton kernels on ``torch.xpu``.

This module is the ``heron.backends`` entry point, so core imports it in every process only to
ask what it offers: it holds the hook implementation and imports neither torch nor triton.
``probe()`` answers from files and environment variables alone; the platform, the kernels and the
device load lazily through a ``"heron_xpu...:Class"`` reference, only in the worker of the
selected backend.

``HERON_XPU_INTERPRET=1`` runs the same kernels in Triton's interpreter on the CPU (development and
CI on hosts without an Intel GPU). The switch must take effect before triton decorates the
kernels, so it is applied here, at package import (see :mod:`heron_xpu.mode`).
"""

from __future__ import annotations

from heron_xpu.mode import enable_interpreter_if_requested

enable_interpreter_if_requested()

from heron_interfaces import BackendRegistry, BackendSpec, hookimpl  # noqa: E402
from heron_xpu.availability import platform_ref, probe, unavailable_reason  # noqa: E402

API_VERSION: tuple[int, int] = (1, 5)
"""The heron_interfaces API this backend implements."""

__all__ = ["API_VERSION", "heron_register_backends", "probe", "unavailable_reason"]


@hookimpl
def heron_register_backends(registry: BackendRegistry) -> None:
    """Register the ``xpu`` backend (its interpreter-mode platform when that mode is on)."""
    registry.register(
        BackendSpec(
            name="xpu",
            api_version=API_VERSION,
            platform=platform_ref(),
            probe=probe,
            unavailable_reason=unavailable_reason,
            dist_name="heron-xpu",
        )
    )
