"""pluggy hook specifications (project name ``heron``).

Hooks run only at start-up and configuration time; nothing here is called per step. Each hook
receives a *registrar* object so that registrars can gain optional keyword fields later without
breaking any implementation. Every hook documented here must also be described in the plugin guide
(README.md, "Plugin guide"); a test checks that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from heron_interfaces.registries import BackendRegistry, ModelRegistry

hookspec = pluggy.HookspecMarker("heron")
hookimpl = pluggy.HookimplMarker("heron")


@hookspec
def heron_register_backends(registry: BackendRegistry) -> None:
    """Add one or more :class:`~heron_interfaces.BackendSpec` with ``registry.register(spec)``.

    Called once per process, in the module named by a ``heron.backends`` entry point. The spec's
    ``probe()`` must be cheap and must not initialise the device: core calls it for every installed
    backend to choose the one with the highest score (0 means "not usable here").
    """


@hookspec
def heron_register_models(registry: ModelRegistry) -> None:
    """Add out-of-tree model architectures with ``registry.register(architecture, model_cls)``.

    ``architecture`` is the string found in a Hugging Face ``config.architectures`` list;
    ``model_cls`` is a class or a lazy ``"package.module:Class"`` reference, resolved only when a model
    of that architecture is loaded. The class is built as ``model_cls(hf_config, ctx)`` and must accept
    flattened ``input_ids`` and ``positions`` like core's own models.
    """
