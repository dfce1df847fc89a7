"""Heron's model implementations, the context they are built with and the architecture registry."""

from heron.models.context import ModelContext
from heron.models.registry import ModelRegistry, UnsupportedModelError, builtin_registry
from heron.models.weights import CheckpointMismatchError

__all__ = [
    "CheckpointMismatchError",
    "ModelContext",
    "ModelRegistry",
    "UnsupportedModelError",
    "builtin_registry",
]
