"""Maps ``config.architectures`` names to model classes, built-in and from plugins.

Entries may be lazy ``"package.module:Class"`` strings so that registering an out-of-tree model
costs nothing until a checkpoint of that architecture is actually loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

_BUILTIN: dict[str, str] = {
    "BertModel": "heron.models.bert:BertModel",
    "RobertaModel": "heron.models.bert:BertModel",
    "XLMRobertaModel": "heron.models.bert:BertModel",
    "LlamaForCausalLM": "heron.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "heron.models.llama:MistralForCausalLM",
    "Qwen2ForCausalLM": "heron.models.llama:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "heron.models.llama:Qwen3ForCausalLM",
    "Phi3ForCausalLM": "heron.models.phi3:Phi3ForCausalLM",
    "Gemma2ForCausalLM": "heron.models.gemma:Gemma2ForCausalLM",
    "Gemma3ForCausalLM": "heron.models.gemma:Gemma3ForCausalLM",
    "MixtralForCausalLM": "heron.models.mixtral:MixtralForCausalLM",
    "Qwen2MoeForCausalLM": "heron.models.qwen_moe:Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM": "heron.models.qwen_moe:Qwen3MoeForCausalLM",
}


class UnsupportedModelError(ValueError):
    """No registered model class implements any of a checkpoint's architectures."""


def _import_lazy(reference: str) -> type:
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"lazy model reference {reference!r} is not of the form 'pkg.mod:Class'")
    module = importlib.import_module(module_name)
    try:
        cls = getattr(module, attr)
    except AttributeError as exc:
        raise ImportError(f"{module_name!r} has no attribute {attr!r} ({reference!r})") from exc
    if not isinstance(cls, type):
        raise TypeError(f"{reference!r} is not a class")
    return cls


class ModelRegistry:
    """Implements :class:`heron_interfaces.ModelRegistry`; a later registration overrides."""

    def __init__(self) -> None:
        self._entries: dict[str, type | str] = {}

    def register(self, architecture: str, model_cls: type | str) -> None:
        """Map ``architecture`` to a class or a lazy ``"pkg.mod:Class"`` string."""
        if not isinstance(model_cls, (type, str)):
            raise TypeError(
                f"model for {architecture!r} must be a class or a 'pkg.mod:Class' string, "
                f"got {type(model_cls).__name__}"
            )
        self._entries[architecture] = model_cls

    def supported(self) -> list[str]:
        """Registered architecture names, sorted."""
        return sorted(self._entries)

    def resolve(self, architectures: Sequence[str] | None) -> type:
        """The class of the first supported entry of ``architectures``, importing it if lazy."""
        for arch in architectures or ():
            entry = self._entries.get(arch)
            if entry is None:
                continue
            if isinstance(entry, str):
                entry = _import_lazy(entry)
                self._entries[arch] = entry
            return entry
        raise UnsupportedModelError(
            f"model architecture(s) {list(architectures or [])} are not supported; "
            f"supported architectures: {', '.join(self.supported())}"
        )


MODEL_IMPLS = ("auto", "heron", "transformers")
TRANSFORMERS_FALLBACK = "heron.models.transformers_backend:TransformersForCausalLM"


def resolve_model_impl(
    registry: ModelRegistry,
    architectures: Sequence[str] | None,
    model_impl: str,
    hf_config: Any = None,
) -> tuple[type, str]:
    """The class that runs a checkpoint and, in words, how: ``"native"`` or ``"transformers"``.

    ``heron``: the registered class (raises :class:`UnsupportedModelError` when there is none);
    ``transformers``: the Transformers fallback; ``auto``: native when registered, else the
    fallback when transformers implements the config's model type, else the native error.
    """
    if model_impl not in MODEL_IMPLS:
        raise ValueError(f"model_impl must be one of {list(MODEL_IMPLS)}, got {model_impl!r}")
    if model_impl == "transformers":
        return _import_lazy(TRANSFORMERS_FALLBACK), "transformers"
    try:
        return registry.resolve(architectures), "native"
    except UnsupportedModelError:
        if model_impl == "heron" or hf_config is None:
            raise
        from heron.models.transformers_backend import transformers_implements

        if not transformers_implements(hf_config):
            raise
        return _import_lazy(TRANSFORMERS_FALLBACK), "transformers"


def support_lines(registry: ModelRegistry) -> list[str]:
    """How each architecture runs, in words, for ``heron plugins``: native classes (built in or
    from a plugin) and the Transformers fallback for the rest. Imports no model code and not
    transformers itself (its version comes from the package metadata), so the listing is quick."""
    from importlib.metadata import PackageNotFoundError, version

    builtin = set(_BUILTIN)
    names = registry.supported()
    lines = [f"  native (--model-impl heron): {', '.join(n for n in names if n in builtin)}"]
    plugin = [n for n in names if n not in builtin]
    if plugin:
        lines.append(f"  native, from plugins: {', '.join(plugin)}")
    try:
        transformers = f"transformers {version('transformers')}"
    except PackageNotFoundError:
        transformers = "transformers (not installed)"
    lines.append(
        "  Transformers fallback (--model-impl transformers; auto when there is no native "
        f"class): any other decoder-only architecture {transformers} implements, with Heron's "
        "paged attention"
    )
    return lines


def builtin_registry() -> ModelRegistry:
    """A fresh registry holding Heron's own architectures (plugins add theirs after)."""
    registry = ModelRegistry()
    for arch, reference in _BUILTIN.items():
        registry.register(arch, reference)
    return registry
