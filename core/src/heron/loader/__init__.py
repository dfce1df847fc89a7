"""Finding models (local folders, the Hub, GGUF files) and building them with their weights."""

from heron.loader.build import build_model
from heron.loader.source import (
    ModelNotFoundError,
    ModelSource,
    default_model_path,
    load_model_source,
)

__all__ = [
    "ModelNotFoundError",
    "ModelSource",
    "build_model",
    "default_model_path",
    "load_model_source",
]
