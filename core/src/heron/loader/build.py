"""From a :class:`ModelSource` to a model with its weights loaded, ready for inference."""

from __future__ import annotations

from torch import nn

from heron.loader.source import ModelSource
from heron.models.context import ModelContext
from heron.models.registry import ModelRegistry, builtin_registry


def build_model(
    source: ModelSource, ctx: ModelContext, registry: ModelRegistry | None = None
) -> nn.Module:
    """Resolve the architecture, build the model on ``ctx.device`` and load its weights.

    ``registry`` defaults to the built-in architectures; the engine passes the one plugins
    extended through ``heron_register_models``.
    """
    if source.quantization not in (None, "gguf"):
        raise ValueError(
            f"{source.name}: {source.quantization!r}-quantized checkpoints are not supported; "
            "use an unquantized checkpoint or a GGUF file"
        )
    registry = registry or builtin_registry()
    model_cls = registry.resolve(getattr(source.hf_config, "architectures", None) or [])
    model = model_cls(source.hf_config, ctx)
    model.load_weights(source.weights())
    return model.eval()
