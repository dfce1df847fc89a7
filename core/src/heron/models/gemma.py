"""Gemma 2 and Gemma 3 (text): the shared attention with Gemma's own layer around it.

What differs from the Llama-style decoder, all read from the config:

* four RMSNorms per layer (before and after attention, before and after the MLP), each scaling by
  ``1 + weight`` in float32 and rounding to the model dtype once (:class:`GemmaRMSNorm`: Llama's
  norm, which the platform's kernel computes, rounds before its weight multiply, so bfloat16
  results would drift from transformers');
* embeddings scaled by ``sqrt(hidden_size)`` (rounded to the model dtype, as transformers does);
* a GELU (tanh approximation) gated MLP;
* scores scaled by ``query_pre_attn_scalar ** -0.5``;
* alternating sliding-window and full layers (``layer_types``), the window applied by the
  backend's attention (heron_interfaces 1.9);
* Gemma 2: attention logits soft-capped (``attn_logit_softcapping``) and final logits too
  (``final_logit_softcapping``);
* Gemma 3: per-head q/k RMSNorm, and its local layers rotate with their own rope base
  (``rope_parameters["sliding_attention"]``, older configs' ``rope_local_base_freq``).

Tensor parallelism comes from the shared layers: heads split in the attention, MLP columns split
(gate/up column-parallel, down row-parallel), vocabulary split in the embedding and the logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from heron.layers import (
    FusedLinear,
    RotaryEmbedding,
    RowParallelLinear,
    VocabParallelEmbedding,
    rope_parameters,
)
from heron.models.causal_lm import DecoderForCausalLM
from heron.models.context import ModelContext
from heron.models.decoder import Attention, DecoderOptions, MissingLayer
from heron.models.registry import UnsupportedModelError
from heron.models.sliding_window import SLIDING, layer_windows
from heron_interfaces import AttentionMetadata

GELU_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_tanh", "gelu")


class GemmaRMSNorm(nn.Module):
    """``x / rms(x) * (1 + weight)`` in float32, rounded to ``x``'s dtype once, as transformers'
    Gemma norms do; with ``residual``, ``x + residual`` (in the model dtype) is normed and
    returned as the next residual, like :class:`heron.layers.RMSNorm`'s fused form."""

    def __init__(self, hidden_size: int, eps: float, *, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(hidden_size, dtype=dtype), requires_grad=False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is not None:
            x = x + residual
            residual = x
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        out = (normed * (1.0 + self.weight.float())).to(x.dtype)
        return out if residual is None else (out, residual)


class GemmaMLP(nn.Module):
    """``down(gelu_tanh(gate(x)) * up(x))`` with gate and up fused into one matmul."""

    def __init__(self, opts: DecoderOptions, ctx: ModelContext) -> None:
        super().__init__()
        columns = ctx.tp.split(opts.intermediate_size, "intermediate_size")
        self.columns = columns
        self.gate_up_proj = FusedLinear(
            opts.hidden_size,
            [columns, columns],
            bias=False,
            dtype=ctx.dtype,
            ops=ctx.ops,
            shard_offsets=[ctx.tp.rank * columns] * 2,
        )
        self.down_proj = RowParallelLinear(
            opts.intermediate_size,
            opts.hidden_size,
            bias=False,
            dtype=ctx.dtype,
            ops=ctx.ops,
            tp=ctx.tp,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split([self.columns, self.columns], dim=-1)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class GemmaDecoderLayer(nn.Module):
    """Norms around both the attention and the MLP; residual adds fused into the next norm."""

    def __init__(
        self,
        opts: DecoderOptions,
        ctx: ModelContext,
        layer_index: int,
        rotary_emb: RotaryEmbedding,
    ) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.cache_index = layer_index - ctx.pp.layer_range(opts.num_layers)[0]
        """Index of this layer's KV cache among its pipeline stage's."""

        def norm(size: int = opts.hidden_size) -> GemmaRMSNorm:
            return GemmaRMSNorm(size, opts.rms_norm_eps, dtype=ctx.dtype)

        self.input_layernorm = norm()
        self.self_attn = Attention(opts, ctx, rotary_emb, layer_index)
        if opts.qk_norm:  # Gemma 3's per-head q/k norms scale by 1 + weight too
            self.self_attn.q_norm = norm(opts.head_size)  # type: ignore[assignment]
            self.self_attn.k_norm = norm(opts.head_size)  # type: ignore[assignment]
        self.post_attention_layernorm = norm()
        self.pre_feedforward_layernorm = norm()
        self.mlp = GemmaMLP(opts, ctx)
        self.post_feedforward_layernorm = norm()

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        kv_caches: list[torch.Tensor],
        metadata: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_caches[self.cache_index], metadata)
        hidden = self.post_attention_layernorm(hidden)
        hidden, residual = self.pre_feedforward_layernorm(hidden, residual)
        hidden = self.post_feedforward_layernorm(self.mlp(hidden))
        return hidden, residual


class GemmaModel(nn.Module):
    """HF's ``model.*`` sub-tree of Gemma 2/3 (this pipeline stage's part of it)."""

    def __init__(
        self, opts: DecoderOptions, ctx: ModelContext, ropes: dict[str, dict[str, Any]]
    ) -> None:
        super().__init__()
        self.pp = ctx.pp
        self.hidden_size = opts.hidden_size
        self.dtype = ctx.dtype
        self.first_layer, self.end_layer = ctx.pp.layer_range(opts.num_layers)
        self.embed_tokens: VocabParallelEmbedding | None = None
        if ctx.pp.is_first or (ctx.pp.is_last and opts.tie_word_embeddings):
            self.embed_tokens = VocabParallelEmbedding(
                opts.vocab_size, opts.hidden_size, dtype=ctx.dtype, ops=ctx.ops, tp=ctx.tp
            )
        # One cos/sin table per rope setting (Gemma 3: local and global), shared by its layers.
        rotary = {
            kind: RotaryEmbedding(
                head_size=opts.head_size,
                rotary_dim=opts.head_size,
                max_position=opts.max_position,
                params=params,
                dtype=ctx.dtype,
                ops=ctx.ops,
            )
            for kind, params in ropes.items()
        }
        self.rotary_embs = nn.ModuleDict(rotary)
        windows = opts.sliding_windows or (None,) * opts.num_layers
        self.layers = nn.ModuleList(
            GemmaDecoderLayer(
                opts, ctx, i, rotary[SLIDING if windows[i] is not None else "full_attention"]
            )
            if self.first_layer <= i < self.end_layer
            else MissingLayer()
            for i in range(opts.num_layers)
        )
        self.norm: GemmaRMSNorm | None = None
        if ctx.pp.is_last:
            self.norm = GemmaRMSNorm(opts.hidden_size, opts.rms_norm_eps, dtype=ctx.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """The final hidden states on the last stage; on the others, what was sent onwards."""
        residual: torch.Tensor | None = None
        if self.pp.is_first:
            assert self.embed_tokens is not None  # built on the first stage
            hidden = self.embed_tokens(input_ids)
            hidden = hidden * torch.tensor(self.hidden_size**0.5, dtype=hidden.dtype)
        else:
            hidden, residual = self.pp.recv_forward(
                input_ids.shape[0], self.hidden_size, self.dtype
            )
        for layer in self.layers[self.first_layer : self.end_layer]:
            hidden, residual = layer(positions, hidden, residual, kv_caches, metadata)
        if not self.pp.is_last:
            assert residual is not None  # every stage runs at least one layer
            self.pp.send_forward(hidden, residual)
            return hidden
        assert self.norm is not None and residual is not None
        hidden, _ = self.norm(hidden, residual)
        return hidden


def _rope_settings(hf_config: Any) -> dict[str, dict[str, Any]]:
    """Rope parameters of full and sliding layers: transformers 5 nests them per layer type;
    older Gemma 3 configs give the local base as ``rope_local_base_freq``."""
    nested = getattr(hf_config, "rope_parameters", None)
    if isinstance(nested, dict) and "full_attention" in nested:
        ropes = {kind: dict(params) for kind, params in nested.items()}
        for params in ropes.values():
            params.setdefault("rope_type", "default")
        ropes.setdefault(SLIDING, ropes["full_attention"])
        return ropes
    full = rope_parameters(hf_config)
    local_base = getattr(hf_config, "rope_local_base_freq", None)
    local = {"rope_type": "default", "rope_theta": local_base} if local_base else full
    return {"full_attention": full, SLIDING: local}


class Gemma2ForCausalLM(DecoderForCausalLM):
    """Gemma 2 checkpoints: soft-capped attention and logits, alternating local/global layers."""

    qk_norm = False

    def __init__(self, hf_config: Any, ctx: ModelContext) -> None:
        self._check_config(hf_config)
        super().__init__(hf_config, ctx)
        cap = getattr(hf_config, "final_logit_softcapping", None)
        self.final_logit_softcap: float | None = float(cap) if cap else None

    @staticmethod
    def _check_config(hf_config: Any) -> None:
        act = getattr(hf_config, "hidden_activation", None) or getattr(
            hf_config, "hidden_act", "gelu_pytorch_tanh"
        )
        if act not in GELU_ACTIVATIONS:
            raise UnsupportedModelError(
                f"{hf_config.model_type}: hidden activation {act!r} is not supported "
                f"(supported: {', '.join(GELU_ACTIVATIONS)})"
            )
        if getattr(hf_config, "use_bidirectional_attention", False):
            raise UnsupportedModelError(
                f"{hf_config.model_type}: use_bidirectional_attention (the embedding variant) "
                "is not supported by the causal-LM implementation"
            )

    @classmethod
    def options(cls, hf_config: Any) -> DecoderOptions:
        opts = super().options(hf_config)
        scalar = getattr(hf_config, "query_pre_attn_scalar", None) or opts.head_size
        cap = getattr(hf_config, "attn_logit_softcapping", None)
        return dataclasses.replace(
            opts,
            qkv_bias=bool(getattr(hf_config, "attention_bias", False)),
            o_bias=bool(getattr(hf_config, "attention_bias", False)),
            mlp_bias=False,
            qk_norm=cls.qk_norm,
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)),
            sliding_windows=tuple(layer_windows(hf_config)),
            attn_scale=float(scalar) ** -0.5,
            attn_logit_softcap=float(cap) if cap else None,
        )

    def build_decoder(self, ctx: ModelContext) -> nn.Module:
        return GemmaModel(self.opts, ctx, _rope_settings(self.config))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().compute_logits(hidden)
        cap = self.final_logit_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    """Gemma 3 text checkpoints (``Gemma3ForCausalLM``): adds q/k norms and local rope."""

    qk_norm = True
