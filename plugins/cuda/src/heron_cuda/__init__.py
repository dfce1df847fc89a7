"""Heron's NVIDIA GPU backend: the ``heron.backends`` entry point of the heron-cuda distribution.

Importing this package must stay cheap, because core imports every installed backend to probe it:
only the hook implementation lives here. torch, the compiled kernels and the device are reached
through the lazy ``"heron_cuda.platform:CudaPlatform"`` reference, which core resolves only in the
worker of the selected backend.
"""

from __future__ import annotations

from heron_cuda.availability import probe, unavailable_reason
from heron_interfaces import BackendRegistry, BackendSpec, hookimpl

API_VERSION: tuple[int, int] = (1, 11)
"""The heron_interfaces API this backend implements."""


@hookimpl
def heron_register_backends(registry: BackendRegistry) -> None:
    """Register the ``cuda`` backend."""
    registry.register(
        BackendSpec(
            name="cuda",
            api_version=API_VERSION,
            platform="heron_cuda.platform:CudaPlatform",
            probe=probe,
            unavailable_reason=unavailable_reason,
            dist_name="heron-cuda",
        )
    )
