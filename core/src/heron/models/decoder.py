"""The pre-norm decoder shared by the Llama family (Llama, Mistral, Qwen2, Qwen3).

These architectures differ only in a few switches (q/k/v biases, per-head q/k RMSNorm, how the
head size is chosen), so one implementation is parameterised by :class:`DecoderOptions` instead of
keeping near-identical copies that drift apart. Every module works on flattened tokens: hidden
states are ``[num_tokens, hidden_size]`` for all sequences of a step together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heron.distributed.tensor_parallel import ShardingError, TensorParallel
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
        heads = tp.split(num_heads, "the number of attention heads")
        if num_kv_heads >= tp.size:
            kv_heads = tp.split(num_kv_heads, "the number of KV heads")
            return cls(heads, kv_heads, tp.rank * heads, tp.rank * kv_heads)
        if tp.size % num_kv_heads:
            raise ShardingError(
                f"tensor_parallel_size ({tp.size}) is larger than the number of KV heads "
                f"({num_kv_heads}) and not a multiple of it, so the KV heads cannot be replicated"
            )
        return cls(heads, 1, tp.rank * heads, tp.rank // (tp.size // num_kv_heads))


class Attention(nn.Module):
    """Fused q/k/v projection, optional q/k norm, rotary embedding, paged attention, output."""

    def __init__(
        self, opts: DecoderOptions, ctx: ModelContext, rotary_emb: RotaryEmbedding
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
            scale=opts.head_size**-0.5,
            block_size=ctx.block_size,
            dtype=_dtype_name(ctx.dtype),
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
        self.input_layernorm = RMSNorm(
            opts.hidden_size, opts.rms_norm_eps, dtype=ctx.dtype, ops=ctx.ops
        )
        self.self_attn = Attention(opts, ctx, rotary_emb)
        self.post_attention_layernorm = RMSNorm(
            opts.hidden_size, opts.rms_norm_eps, dtype=ctx.dtype, ops=ctx.ops
        )
        self.mlp = MLP(opts, ctx)

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
        hidden = self.self_attn(positions, hidden, kv_caches[self.layer_index], metadata)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class DecoderModel(nn.Module):
    """Embedding, decoder layers and final norm: HF's ``model.*`` sub-tree."""

    def __init__(self, opts: DecoderOptions, ctx: ModelContext) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(
            opts.vocab_size, opts.hidden_size, dtype=ctx.dtype, ops=ctx.ops, tp=ctx.tp
        )
        # One cos/sin table shared by every layer (a shared submodule, stored once).
        rotary_emb = RotaryEmbedding(
            head_size=opts.head_size,
            rotary_dim=opts.head_size,
            max_position=opts.max_position,
            params=opts.rope,
            dtype=ctx.dtype,
            ops=ctx.ops,
        )
        self.layers = nn.ModuleList(
            DecoderLayer(opts, ctx, i, rotary_emb) for i in range(opts.num_layers)
        )
        self.norm = RMSNorm(opts.hidden_size, opts.rms_norm_eps, dtype=ctx.dtype, ops=ctx.ops)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, kv_caches, metadata)
        if residual is None:
            return self.norm(hidden)
        hidden, _ = self.norm(hidden, residual)
        return hidden
