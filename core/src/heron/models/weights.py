"""Mapping Hugging Face checkpoint names onto Heron's (partly fused) parameters.

Checkpoints store ``q_proj``/``k_proj``/``v_proj`` and ``gate_proj``/``up_proj`` separately; Heron
stacks them into ``qkv_proj`` and ``gate_up_proj``. Loading tracks every checkpoint name it
consumed so that a missing or unexpected tensor fails loudly, naming the tensors, instead of
leaving uninitialised memory in the model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from heron.layers import FusedLinear, copy_weight

# checkpoint module name -> (fused module name, part index)
STACKED: dict[str, tuple[str, int]] = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
UNSTACKED: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}
# Buffers some checkpoints carry that Heron recomputes.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")
_SHOWN = 8


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model built from its config."""


def _show(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def expected_checkpoint_names(model: nn.Module) -> set[str]:
    """The checkpoint names that together initialise every parameter of ``model``."""
    names: set[str] = set()
    for param_name, _ in model.named_parameters():
        prefix, _, kind = param_name.rpartition(".")
        parent, _, leaf = prefix.rpartition(".")
        if leaf in UNSTACKED:
            names.update(f"{parent}.{part}.{kind}" for part in UNSTACKED[leaf])
        else:
            names.add(param_name)
    return names


def load_checkpoint(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    *,
    skip: frozenset[str] = frozenset(),
    skip_prefixes: tuple[str, ...] = (),
) -> None:
    """Copy HF-named ``weights`` into ``model``, casting to each parameter's dtype and device.

    ``skip`` names tensors to ignore when present (e.g. ``lm_head.weight`` of a tied model), and
    ``skip_prefixes`` whole parts of the model held elsewhere (another pipeline stage's layers).
    Raises :class:`CheckpointMismatchError` listing missing and unexpected tensors, and
    ``ValueError`` on a shape mismatch.
    """
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    loaded: set[str] = set()
    unexpected: list[str] = []
    for name, tensor in weights:
        if name in skip or name.endswith(IGNORED_SUFFIXES) or name.startswith(skip_prefixes):
            continue
        prefix, _, kind = name.rpartition(".")
        parent, _, leaf = prefix.rpartition(".")
        if leaf in STACKED:
            fused_name, part = STACKED[leaf]
            module = modules.get(f"{parent}.{fused_name}")
            if isinstance(module, FusedLinear) and getattr(module, kind, None) is not None:
                module.load_part(part, kind, tensor, name)
                loaded.add(name)
                continue
        param = params.get(name)
        if param is None:
            unexpected.append(name)
            continue
        owner = modules.get(prefix)
        if hasattr(owner, "load_tensor"):  # a layer that may hold a tensor-parallel shard
            owner.load_tensor(kind, tensor, name)
        else:
            copy_weight(param, tensor, name)
        loaded.add(name)
    missing = expected_checkpoint_names(model) - loaded
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing weight(s): {_show(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected weight(s): {_show(unexpected)}")
        raise CheckpointMismatchError(
            f"checkpoint does not match {type(model).__name__}: " + "; ".join(problems)
        )
