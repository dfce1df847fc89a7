"""Heron's CPU backend (``HERON_BACKEND=cpu``).

This module is the ``heron.backends`` entry point, so core imports it in every process just to ask
what it offers: it holds only the hookimpl and imports neither torch nor the compiled kernels.
``probe()`` looks the extension up without loading it; everything else loads lazily through the
``"heron_cpu.platform:CpuPlatform"`` reference.
"""

from __future__ import annotations

import importlib.util

from heron_interfaces import API_VERSION, BackendRegistry, BackendSpec, hookimpl

__all__ = ["heron_register_backends", "probe", "unavailable_reason"]

PROBE_SCORE = 100
"""Above core's pure-torch reference backend, below any accelerator backend."""


def _extension_found() -> bool:
    try:
        return importlib.util.find_spec("heron_cpu._C") is not None
    except (ImportError, ValueError):
        return False


def probe() -> int:
    """Usable wherever the compiled kernels were installed: a CPU is always there."""
    return PROBE_SCORE if _extension_found() else 0


def unavailable_reason() -> str:
    return (
        "the compiled kernels heron_cpu._C are missing; reinstall with "
        "`pip install heron-cpu` (building from source needs a C++17 compiler with OpenMP)"
    )


@hookimpl
def heron_register_backends(registry: BackendRegistry) -> None:
    """Register the ``cpu`` backend; its platform class is resolved only if it is selected."""
    registry.register(
        BackendSpec(
            name="cpu",
            api_version=API_VERSION,
            platform="heron_cpu.platform:CpuPlatform",
            probe=probe,
            unavailable_reason=unavailable_reason,
        )
    )
