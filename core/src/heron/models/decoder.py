"""The pre-norm decoder shared by the Llama family (Llama, Mistral, Qwen2, Qwen3).

These architectures differ only in a few switches (q/k/v biases, per-head q/k RMSNorm, how the
head size is chosen), so one implementation is parameterised by :class:`DecoderOptions` instead of
keeping near-identical copies that drift apart. Every module works on flattened tokens: hidden
states are ``[num_tokens, hidden_size]`` for all sequences of a step together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heron.distributed.tensor_parallel import ShardingError, TensorParallel, split_evenly
from heron.layers import (
    FusedLinear,
    RMSNorm,
    RotaryEmbedding,
    RowParallelLinear,
    SiluAndMul,
    VocabParallelEmbedding,
)
from heron.models.context import ModelContext
from heron_interfaces import AttentionLayerSpec, AttentionMetadata


@dataclass(frozen=True, slots=True, kw_only=True)
class DecoderOptions:
    """Per-architecture switches of the shared decoder, read from the HF config."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    vocab_size: int
    rms_norm_eps: float
    max_position: int
    rope: dict[str, Any]
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    rotary_dim: int | None = None
    """Channels of each head that rotate (Phi-3's partial rotary); None: all of them."""
    mlp_factory: Callable[[DecoderOptions, ModelContext, int], nn.Module] | None = None
    """Builds layer ``i``'s feed-forward block instead of the dense SwiGLU (mixture of experts)."""
    sliding_windows: tuple[int | None, ...] = ()
    """Each layer's sliding window (``None``: full attention; empty: no layer is windowed), as
    :func:`heron.models.sliding_window.layer_windows` reads the config."""
    attn_scale: float | None = None
    """Scores' scale; ``None``: ``head_size ** -0.5`` (Gemma: ``query_pre_attn_scalar ** -0.5``)."""
    attn_logit_softcap: float | None = None
    """Gemma 2's ``attn_logit_softcapping``: scores pass through ``cap * tanh(s / cap)``."""


class UnsupportedAttentionError(ValueError):
    """The platform's attention kernels cannot run a layer of this model (head size, dtype, ...)."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True, slots=True)
class HeadShard:
    """The attention heads one tensor-parallel rank computes.

    Query heads split evenly. KV heads split evenly when there are at least as many as ranks;
    otherwise each rank keeps the one KV head its query heads read, replicated on the ranks that
    share it (as vLLM does), so grouped-query attention stays local to the rank.
    """

    num_heads: int
    num_kv_heads: int
    first_head: int
    first_kv_head: int

    @classmethod
    def of(cls, num_heads: int, num_kv_heads: int, tp: TensorParallel) -> HeadShard:
        return cls.for_rank(num_heads, num_kv_heads, tp.rank, tp.size)

    @classmethod
    def for_rank(cls, num_heads: int, num_kv_heads: int, rank: int, size: int) -> HeadShard:
        """Rank ``rank`` of ``size``'s heads; raises ShardingError when they cannot be split."""
        heads = split_evenly(num_heads, size, "the number of attention heads")
        if num_kv_heads >= size:
            kv_heads = split_evenly(num_kv_heads, size, "the number of KV heads")
            return cls(heads, kv_heads, rank * heads, rank * kv_heads)
        if size % num_kv_heads:
            raise ShardingError(
                f"tensor_parallel_size ({size}) is larger than the number of KV heads "
                f"({num_kv_heads}) and not a multiple of it, so the KV heads cannot be replicated"
            )
        return cls(heads, 1, rank * heads, rank // (size // num_kv_heads))


class Attention(nn.Module):
    """Fused q/k/v projection, optional q/k norm, rotary embedding, paged attention, output."""

    def __init__(
        self,
        opts: DecoderOptions,
        ctx: ModelContext,
        rotary_emb: RotaryEmbedding,
        layer_index: int = 0,
    ) -> None:
        super().__init__()
        shard = HeadShard.of(opts.num_heads, opts.num_kv_heads, ctx.tp)
        hs = opts.head_size
        self.num_heads = shard.num_heads
        self.num_kv_heads = shard.num_kv_heads
        self.head_size = hs
        self.q_size = shard.num_heads * hs
        self.kv_size = shard.num_kv_heads * hs
        self.qkv_proj = FusedLinear(
            opts.hidden_size,
            [self.q_size, self.kv_size, self.kv_size],
            bias=opts.qkv_bias,
            dtype=ctx.dtype,
            ops=ctx.ops,
            shard_offsets=[
                shard.first_head * hs,
                shard.first_kv_head * hs,
                shard.first_kv_head * hs,
            ],
        )
        self.o_proj = RowParallelLinear(
            opts.num_heads * hs,
            opts.hidden_size,
            bias=opts.o_bias,
            dtype=ctx.dtype,
            ops=ctx.ops,
            tp=ctx.tp,
        )
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if opts.qk_norm:
            self.q_norm = RMSNorm(opts.head_size, opts.rms_norm_eps, dtype=ctx.dtype, ops=ctx.ops)
            self.k_norm = RMSNorm(opts.head_size, opts.rms_norm_eps, dtype=ctx.dtype, ops=ctx.ops)
        self.rotary_emb = rotary_emb
        spec = AttentionLayerSpec(
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_size=opts.head_size,
            scale=opts.attn_scale if opts.attn_scale is not None else opts.head_size**-0.5,
            block_size=ctx.block_size,
            dtype=_dtype_name(ctx.dtype),
            sliding_window=opts.sliding_windows[layer_index] if opts.sliding_windows else None,
            logits_soft_cap=opts.attn_logit_softcap,
        )
        reasons = ctx.attention_cls.check_support(spec)
        if reasons:
            raise UnsupportedAttentionError(
                f"attention backend {ctx.attention_cls.name!r} cannot run this model: "
                + "; ".join(reasons)
            )
        # A plain attribute, not a submodule: backends hold no parameters.
        self.attn = ctx.attention_cls(spec)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)
        # A strided view: backends take column slices of the fused projection (conformance
        # suite), and a copy here would be a torch op inside a recorded step graph.
        v = qkv[:, self.q_size + self.kv_size :].view(num_tokens, self.num_kv_heads, self.head_size)
        if self.q_norm is not None and self.k_norm is not None:
            q, k, _ = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = self.q_norm(q.view(num_tokens, self.num_heads, self.head_size))
            k = self.k_norm(k.view(num_tokens, self.num_kv_heads, self.head_size))
            q, k = self.rotary_emb(positions, q, k)
        else:
            # q and k are adjacent in the fused projection: rotate them as one set of heads.
            qk = qkv[:, : self.q_size + self.kv_size].view(
                num_tokens, self.num_heads + self.num_kv_heads, self.head_size
            )
            qk = self.rotary_emb.rotate_heads(positions, qk)
            q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
        out = q.new_empty((num_tokens, self.num_heads, self.head_size))
        self.attn.forward(q, k, v, kv_cache, metadata, out)
        return self.o_proj(out.view(num_tokens, self.q_size))


class MLP(nn.Module):
    """SwiGLU feed-forward with gate and up fused into one matmul."""

    def __init__(self, opts: DecoderOptions, ctx: ModelContext) -> None:
        super().__init__()
        columns = ctx.tp.split(opts.intermediate_size, "intermediate_size")
        self.gate_up_proj = FusedLinear(
            opts.hidden_size,
            [columns, columns],
            bias=opts.mlp_bias,
            dtype=ctx.dtype,
            ops=ctx.ops,
            shard_offsets=[ctx.tp.rank * columns] * 2,
        )
        self.down_proj = RowParallelLinear(
            opts.intermediate_size,
            opts.hidden_size,
            bias=opts.mlp_bias,
            dtype=ctx.dtype,
            ops=ctx.ops,
            tp=ctx.tp,
        )
        self.act = SiluAndMul(ctx.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    """Pre-norm block; the residual add is fused into the following norm."""

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
        self.input_layernorm = RMSNorm(
            opts.hidden_size, opts.rms_norm_eps, dtype=ctx.dtype, ops=ctx.ops
        )
        self.self_attn = Attention(opts, ctx, rotary_emb, layer_index)
        self.post_attention_layernorm = RMSNorm(
            opts.hidden_size, opts.rms_norm_eps, dtype=ctx.dtype, ops=ctx.ops
        )
        self.mlp = (
            MLP(opts, ctx) if opts.mlp_factory is None else opts.mlp_factory(opts, ctx, layer_index)
        )

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
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class MissingLayer(nn.Module):
    """Stands for a layer another pipeline stage holds, so the list keeps HF's layer numbers."""


class DecoderModel(nn.Module):
    """Embedding, decoder layers and final norm: HF's ``model.*`` sub-tree (this pipeline
    stage's part of it: the embedding on the first stage, the norm on the last)."""

    def __init__(self, opts: DecoderOptions, ctx: ModelContext) -> None:
        super().__init__()
        self.pp = ctx.pp
        self.hidden_size = opts.hidden_size
        self.dtype = ctx.dtype
        self.first_layer, self.end_layer = ctx.pp.layer_range(opts.num_layers)
        # The last stage keeps the table too when the logits reuse it (tied embeddings).
        self.embed_tokens: VocabParallelEmbedding | None = None
        if ctx.pp.is_first or (ctx.pp.is_last and opts.tie_word_embeddings):
            self.embed_tokens = VocabParallelEmbedding(
                opts.vocab_size, opts.hidden_size, dtype=ctx.dtype, ops=ctx.ops, tp=ctx.tp
            )
        # One cos/sin table shared by every layer (a shared submodule, stored once).
        rotary_emb = RotaryEmbedding(
            head_size=opts.head_size,
            rotary_dim=opts.rotary_dim or opts.head_size,
            max_position=opts.max_position,
            params=opts.rope,
            dtype=ctx.dtype,
            ops=ctx.ops,
        )
        self.layers = nn.ModuleList(
            DecoderLayer(opts, ctx, i, rotary_emb)
            if self.first_layer <= i < self.end_layer
            else MissingLayer()
            for i in range(opts.num_layers)
        )
        self.norm: RMSNorm | None = None
        if ctx.pp.is_last:
            self.norm = RMSNorm(opts.hidden_size, opts.rms_norm_eps, dtype=ctx.dtype, ops=ctx.ops)

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
        assert self.norm is not None
        if residual is None:
            return self.norm(hidden)
        hidden, _ = self.norm(hidden, residual)
        return hidden
