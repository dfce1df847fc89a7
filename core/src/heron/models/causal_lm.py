"""The causal-LM wrapper every built-in architecture shares: decoder, LM head, weight loading."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from heron.layers import ColumnParallelLinear, rope_parameters
from heron.layers.linear import prepare_linear_weights, prepare_tied_logits
from heron.models.context import ModelContext
from heron.models.decoder import DecoderModel, DecoderOptions, HeadShard
from heron.models.sliding_window import layer_windows
from heron.models.weights import load_checkpoint
from heron_interfaces import AttentionMetadata

logger = logging.getLogger(__name__)


class DecoderForCausalLM(nn.Module):
    """A decoder-only LM over flattened tokens; subclasses set the architecture switches.

    Subclasses override :meth:`qkv_bias` / :attr:`qk_norm` (and anything else in
    :meth:`options`) rather than re-implementing layers.
    """

    qk_norm: bool = False

    def __init__(self, hf_config: Any, ctx: ModelContext) -> None:
        super().__init__()
        self.config = hf_config
        self.ctx = ctx
        self.opts = self.options(hf_config)
        shard = HeadShard.of(self.opts.num_heads, self.opts.num_kv_heads, ctx.tp)
        first, end = ctx.pp.layer_range(self.opts.num_layers)
        self.num_layers = end - first
        """Layers of this pipeline stage: the runner allocates one KV cache per layer it runs."""
        self.num_kv_heads = shard.num_kv_heads
        """KV heads of this tensor-parallel rank: the runner sizes its KV cache with them."""
        self.head_size = self.opts.head_size
        self.num_heads = shard.num_heads
        self.vocab_size = self.opts.vocab_size
        self.hidden_size = self.opts.hidden_size
        self._logits_weight: Any = None
        with torch.device(ctx.device):
            self.model = self.build_decoder(ctx)
            self.lm_head: ColumnParallelLinear | None = None
            if not self.opts.tie_word_embeddings and ctx.pp.is_last:
                self.lm_head = ColumnParallelLinear(
                    self.opts.hidden_size,
                    self.opts.vocab_size,
                    bias=False,
                    dtype=ctx.dtype,
                    ops=ctx.ops,
                    tp=ctx.tp,
                )

    def build_decoder(self, ctx: ModelContext) -> nn.Module:
        """HF's ``model.*`` sub-tree; architectures with other layers (Gemma) return their own,
        with the same attributes (``embed_tokens``, ``layers``, ``norm``, stage bounds)."""
        return DecoderModel(self.opts, ctx)

    @classmethod
    def qkv_bias(cls, hf_config: Any) -> bool:
        """Whether q/k/v projections carry a bias (``attention_bias`` in Llama-style configs)."""
        return bool(getattr(hf_config, "attention_bias", False))

    @classmethod
    def options(cls, hf_config: Any) -> DecoderOptions:
        """Read the switches of the shared decoder from ``hf_config``."""
        num_heads = hf_config.num_attention_heads
        num_kv_heads = getattr(hf_config, "num_key_value_heads", None) or num_heads
        head_size = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
        return DecoderOptions(
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_size=head_size,
            vocab_size=hf_config.vocab_size,
            rms_norm_eps=hf_config.rms_norm_eps,
            max_position=getattr(hf_config, "max_position_embeddings", None) or 4096,
            rope=rope_parameters(hf_config),
            qkv_bias=cls.qkv_bias(hf_config),
            o_bias=bool(getattr(hf_config, "attention_bias", False)),
            mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
            qk_norm=cls.qk_norm,
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            sliding_windows=tuple(layer_windows(hf_config)),
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Final hidden states ``[num_tokens, hidden_size]`` of the flattened batch."""
        return self.model(input_ids, positions, kv_caches, metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits ``[N, vocab_size]`` of the rows of ``hidden`` the sampler needs.

        Under tensor parallelism each rank computes its vocabulary columns and the group gathers
        them (every rank gets all of them, so every rank's sampler sees the same batch).
        """
        logits = self._local_logits(hidden)
        if self.ctx.tp.size == 1:
            return logits.float()
        # Gathered in the model's dtype (half the bytes of float32; concatenation changes no value).
        return self.ctx.tp.all_gather(logits, dim=-1)[:, : self.vocab_size].float()

    def greedy_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """The argmax token of each row of ``hidden`` (long ``[N]``), equal to
        ``compute_logits(hidden).max(-1).indices`` without the float32 ``[N, V]`` logits.

        The model dtype's order is float32's (widening is exact), so the first maximal index is
        the same. Under tensor parallelism each rank takes the winner of its own vocabulary
        columns and the group exchanges ``[N, 2]`` (value, index) pairs instead of gathering every
        column: the earliest rank among the largest values holds the first maximal index. A
        subclass that transforms the logits (Gemma's soft-cap) computes them in full instead.
        """
        if type(self).compute_logits is not DecoderForCausalLM.compute_logits:
            return self.compute_logits(hidden).max(dim=-1).indices
        logits = self._local_logits(hidden)
        tp = self.ctx.tp
        if tp.size == 1:
            return logits[:, : self.vocab_size].max(dim=-1).indices
        start, per_rank = tp.padded_split(self.vocab_size)
        own = min(per_rank, self.vocab_size - start)  # the last rank's columns include padding
        pairs = torch.zeros(hidden.shape[0], 2, dtype=torch.float32, device=hidden.device)
        pairs[:, 0] = float("-inf")
        if own > 0:
            best = logits[:, :own].max(dim=-1)
            pairs[:, 0] = best.values.float()
            pairs[:, 1] = (best.indices + start).float()  # exact: vocabularies are < 2**24
        everyone = tp.all_gather(pairs, dim=-1)  # [N, 2 * ranks], in rank order
        winner = everyone[:, 0::2].max(dim=-1).indices
        return everyone[:, 1::2].gather(1, winner.unsqueeze(1)).squeeze(1).long()

    def _local_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            return self.lm_head(hidden)
        if self._logits_weight is not None:
            return self.ctx.ops.linear(hidden, self._logits_weight, None)
        embed = self.model.embed_tokens
        if embed is None:
            raise RuntimeError("logits are computed on the last pipeline stage only")
        return F.linear(hidden, embed.weight)

    def prepare_for_inference(self) -> None:
        """After loading: let the platform's kernels prepare every matmul weight (prepacking).

        A tied output projection keeps the embedding table for lookups and prepares it a second
        time for the logits matmul (the vocabulary-sized GEMM of every step).
        """
        prepare_linear_weights(self)
        embed = self.model.embed_tokens
        if self.lm_head is None and embed is not None and self.ctx.pp.is_last:
            self._logits_weight = prepare_tied_logits(self.ctx.ops, embed)
        if embed is not None:
            embed.__dict__.pop("quantized_source", None)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors; a tied model ignores a checkpoint's ``lm_head.weight``, and a
        pipeline stage the tensors of the parts other stages hold."""
        skip = frozenset({"lm_head.weight"}) if self.opts.tie_word_embeddings else frozenset()
        load_checkpoint(self, weights, skip=skip, skip_prefixes=self._other_stages_prefixes())

    def _other_stages_prefixes(self) -> tuple[str, ...]:
        pp = self.ctx.pp
        if pp.size == 1:
            return ()
        model = self.model
        prefixes = [
            f"model.layers.{i}."
            for i in range(self.opts.num_layers)
            if not model.first_layer <= i < model.end_layer
        ]
        if model.embed_tokens is None:
            prefixes.append("model.embed_tokens.")
        if not pp.is_last:
            prefixes += ["model.norm.", "lm_head."]
        return tuple(prefixes)
