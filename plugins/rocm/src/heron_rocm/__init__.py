"""Heron's AMD GPU backend: the ``heron.backends`` entry point of the heron-rocm distribution.

Importing this package must stay cheap, because core imports every installed backend to probe it:
only the hook implementation lives here. torch, the compiled kernels and the device are reached
through the lazy ``"heron_rocm.platform:RocmPlatform"`` reference, which core resolves only in the
worker of the selected backend.
"""

from __future__ import annotations

from heron_interfaces import BackendRegistry, BackendSpec, hookimpl
from heron_rocm.availability import probe, unavailable_reason

API_VERSION: tuple[int, int] = (1, 11)
"""The heron_interfaces API this backend implements."""


@hookimpl
def heron_register_backends(registry: BackendRegistry) -> None:
    """Register the ``rocm`` backend."""
    registry.register(
        BackendSpec(
            name="rocm",
            api_version=API_VERSION,
            platform="heron_rocm.platform:RocmPlatform",
            probe=probe,
            unavailable_reason=unavailable_reason,
            dist_name="heron-rocm",
        )
    )
