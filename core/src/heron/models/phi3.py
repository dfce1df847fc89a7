"""Phi-3 (and Phi-3.5 / Phi-4-mini, which share ``Phi3ForCausalLM``): the shared decoder.

Phi-3 is a Llama-style decoder whose checkpoints store q/k/v as one ``qkv_proj`` and gate/up as
one ``gate_up_proj`` (gate first). Heron's layers are fused the same way, but under tensor
parallelism each rank keeps a slice of *each part*, so the fused tensors are split back into
their parts on the way in and loaded like any Llama checkpoint. Partial rotary
(``partial_rotary_factor``, Phi-4-mini) and LongRoPE scaling (the 128k variants) come from the
rope parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from heron.models.causal_lm import DecoderForCausalLM
from heron.models.decoder import DecoderOptions


class Phi3ForCausalLM(DecoderForCausalLM):
    """Microsoft Phi-3 family checkpoints."""

    @classmethod
    def options(cls, hf_config: Any) -> DecoderOptions:
        opts = super().options(hf_config)
        factor = opts.rope.get("partial_rotary_factor")
        if factor is None:
            factor = getattr(hf_config, "partial_rotary_factor", None) or 1.0
        return dataclasses.replace(opts, rotary_dim=int(opts.head_size * float(factor)))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights(self._split_fused(weights))

    def _split_fused(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """``qkv_proj`` -> ``q_proj``/``k_proj``/``v_proj`` and ``gate_up_proj`` ->
        ``gate_proj``/``up_proj`` (row views, no copies), everything else unchanged."""
        opts = self.opts
        q_rows = opts.num_heads * opts.head_size
        kv_rows = opts.num_kv_heads * opts.head_size
        for name, tensor in weights:
            prefix, _, kind = name.rpartition(".")
            parent, _, leaf = prefix.rpartition(".")
            if leaf == "qkv_proj":
                if tensor.shape[0] != q_rows + 2 * kv_rows:
                    raise ValueError(
                        f"weight {name!r} has {tensor.shape[0]} rows, the config gives "
                        f"{q_rows} + 2 x {kv_rows}: the config does not match the weights"
                    )
                parts = tensor.split([q_rows, kv_rows, kv_rows], dim=0)
                for part_name, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                    yield f"{parent}.{part_name}.{kind}", part
            elif leaf == "gate_up_proj":
                if tensor.shape[0] % 2:
                    raise ValueError(f"weight {name!r} has an odd number of rows")
                gate, up = tensor.chunk(2, dim=0)
                yield f"{parent}.gate_proj.{kind}", gate
                yield f"{parent}.up_proj.{kind}", up
            else:
                yield name, tensor
