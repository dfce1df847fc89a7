"""Heron's Google TPU backend: the ``heron.backends`` entry point of the heron-tpu distribution.

Importing this package must stay cheap, because core imports every installed backend to probe it:
only the hook implementation lives here. jax, torch and the device are reached through the lazy
platform reference, which core resolves only in the worker of the selected backend.
"""

from __future__ import annotations

from heron_interfaces import BackendRegistry, BackendSpec, hookimpl
from heron_tpu.availability import interpret_requested, probe, unavailable_reason

API_VERSION: tuple[int, int] = (1, 6)
"""The heron_interfaces API this backend implements (1.6: static shapes and padding buckets)."""

__all__ = ["API_VERSION", "heron_register_backends"]


@hookimpl
def heron_register_backends(registry: BackendRegistry) -> None:
    """Register the ``tpu`` backend; interpreter mode swaps in a platform of CPU tensors."""
    platform = (
        "heron_tpu.platform:TpuInterpretPlatform"
        if interpret_requested()
        else "heron_tpu.platform:TpuPlatform"
    )
    registry.register(
        BackendSpec(
            name="tpu",
            api_version=API_VERSION,
            platform=platform,
            probe=probe,
            unavailable_reason=unavailable_reason,
            dist_name="heron-tpu",
        )
    )
