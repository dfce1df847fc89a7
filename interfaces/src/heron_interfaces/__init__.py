"""The contract between Heron's core and its hardware backends.

Importing this package is cheap on purpose: it imports neither torch nor any device runtime, so that
core can discover and probe every installed backend before any of them touches a device. Torch appears
only in annotations (under ``TYPE_CHECKING``) and inside :mod:`heron_interfaces.reference`, which a
backend imports when it actually computes something.

Versioning: :data:`API_VERSION` is ``(major, minor)``. Core refuses a backend that declares another
major; a newer minor than core knows only earns a warning. Backends depend on
``heron-interfaces>=1.k,<2`` and never on ``heron`` itself.
"""

from __future__ import annotations

from heron_interfaces.attention import AttentionBackend, AttentionLayerSpec, AttentionMetadata
from heron_interfaces.communicator import CommContext, Communicator
from heron_interfaces.hookspecs import hookimpl, hookspec
from heron_interfaces.memory import MemoryProfiler, MemorySnapshot
from heron_interfaces.platform import Capabilities, ConfigChange, Platform
from heron_interfaces.registries import BackendRegistry, BackendSpec, ModelRegistry

API_VERSION: tuple[int, int] = (1, 15)
PROJECT_NAME = "heron"
BACKENDS_ENTRY_POINT_GROUP = "heron.backends"
PLUGINS_ENTRY_POINT_GROUP = "heron.plugins"

__all__ = [
    "API_VERSION",
    "BACKENDS_ENTRY_POINT_GROUP",
    "PLUGINS_ENTRY_POINT_GROUP",
    "PROJECT_NAME",
    "AttentionBackend",
    "AttentionLayerSpec",
    "AttentionMetadata",
    "BackendRegistry",
    "BackendSpec",
    "Capabilities",
    "CommContext",
    "Communicator",
    "ConfigChange",
    "MemoryProfiler",
    "MemorySnapshot",
    "ModelRegistry",
    "Platform",
    "hookimpl",
    "hookspec",
]
