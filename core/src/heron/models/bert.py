"""BERT-style encoders (BERT, RoBERTa, XLM-RoBERTa): bidirectional attention, post-norm layers.

They run only in the pooling runner. The layers mirror Hugging Face's module names so that
checkpoints load by name; q/k/v are fused into one matmul (``qkv_proj``, loaded part by part as
the decoders' are), and attention goes through the platform's backend as a non-causal layer
(``AttentionLayerSpec(causal=False)``, heron_interfaces 1.7): each prompt attends to all of
itself, computed whole in one step. A step of whole prompts skips the layer and its KV write where
the backend has an encoder attention kernel (``KernelOps.encoder_attention``, 1.13) or runs
torch's SDPA anyway (see :mod:`heron.pooling.encoder_attention`). RoBERTa and XLM-R differ from BERT only in where position
ids start (after the padding index), so one class serves the three.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from heron.layers import FusedLinear, Linear
from heron.layers.linear import prepare_linear_weights
from heron.models.context import ModelContext
from heron.models.decoder import UnsupportedAttentionError
from heron.models.weights import load_checkpoint
from heron.pooling.encoder_attention import EncoderStep, attend
from heron_interfaces import AttentionLayerSpec, AttentionMetadata
from heron_interfaces.kernel_ops import KernelOps

_GELU_FORMS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
"""HF's activation names that are GELU, and torch's ``approximate`` for each. The activation runs
through ``KernelOps.gelu`` (heron_interfaces 1.14) in place on the matmul's fresh output: no second
[tokens, intermediate] tensor (allocating one, 6 MB at a MiniLM step of 2,048 tokens, costs a
fifth of torch's activation: fresh pages from the OS each time)."""
_ACTIVATIONS = (*_GELU_FORMS, "relu")
_PREFIXES = ("bert.", "roberta.", "model.")
"""Prefixes of the encoder's tensors in checkpoints saved from a task model."""
_SDPA_BACKENDS = frozenset({"cpu"})
"""Backends whose non-causal mode is torch's SDPA over the step's rows: where their kernel ops
decline a step, the encoder runs that SDPA itself (:mod:`heron.pooling.encoder_attention`),
skipping the KV write nothing reads. Every other backend (the reference oracle, CUDA/HIP
kernels) gets the layer as usual when its kernel ops decline."""
ROW_ALIGN = 32
"""On backends where the encoder attends whole-prompt steps itself (``_SDPA_BACKENDS``), a step's
rows are padded to a multiple of this: oneDNN compiles (JITs) a new GEMM kernel for every row
count it has not seen, ~2 ms per linear shape on this Xeon, a fifth of a MiniLM step when the
count is new. Steps of 1,800-2,048 tokens would otherwise bring hundreds of counts; padded, at
most a few dozen. The padding rows belong to no prompt: the attention leaves them zero and
nothing pools them."""
_IGNORED = ("pooler.", "cls.", "lm_head.", "classifier.", "embeddings.position_ids")
"""Heads and buffers the encoder does not use (sentence-transformers pools the hidden states)."""


def _param(*shape: int, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)


class LayerNorm(nn.Module):
    """HF's ``LayerNorm`` with its tensor names (``weight``, ``bias``), through ``KernelOps``.

    In the model's dtype: the kernels accumulate a bfloat16 row in float32 themselves, and
    casting every activation to float32 and back cost more than the norm (a fifth of a bfloat16
    MiniLM step on the CPU). ``KernelOps.layer_norm`` (1.14) adds the post-norm residual in the
    same pass and may write into ``x``: callers pass a fresh tensor nothing else reads.
    """

    def __init__(self, size: int, eps: float, dtype: torch.dtype, ops: KernelOps) -> None:
        super().__init__()
        self.eps = eps
        self.weight = _param(size, dtype=dtype)
        self.bias = _param(size, dtype=dtype)
        self.ops = ops

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return self.ops.layer_norm(x, self.weight, self.bias, self.eps, residual)


class Embeddings(nn.Module):
    def __init__(self, cfg: Any, dtype: torch.dtype, position_offset: int, ops: KernelOps) -> None:
        super().__init__()
        hidden = cfg.hidden_size
        self.word_embeddings = nn.Module()
        self.word_embeddings.weight = _param(cfg.vocab_size, hidden, dtype=dtype)
        self.position_embeddings = nn.Module()
        self.position_embeddings.weight = _param(cfg.max_position_embeddings, hidden, dtype=dtype)
        self.token_type_embeddings = nn.Module()
        self.token_type_embeddings.weight = _param(
            max(1, int(getattr(cfg, "type_vocab_size", 1) or 1)), hidden, dtype=dtype
        )
        self.LayerNorm = LayerNorm(hidden, cfg.layer_norm_eps, dtype, ops)
        self.position_offset = position_offset
        self._position_rows: torch.Tensor | None = None

    def prepare_for_inference(self) -> None:
        """Every position's row plus token type 0's, once the weights are loaded, from the
        first position a prompt uses (RoBERTa's start after the padding index)."""
        positions = self.position_embeddings.weight[self.position_offset :]
        self._position_rows = (positions + self.token_type_embeddings.weight[0]).contiguous()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # Every input is one segment (token type 0), as sentence-transformers encodes a text. The
        # position and type rows come summed (prepare_for_inference) and are added in the norm's
        # pass: two [tokens, hidden] additions fewer (1 % of a MiniLM step).
        rows = self._position_rows
        if rows is None:
            self.prepare_for_inference()
            rows = self._position_rows
        x = F.embedding(input_ids, self.word_embeddings.weight)
        return self.LayerNorm(x, F.embedding(positions, rows))


class SelfAttention(nn.Module):
    def __init__(self, cfg: Any, ctx: ModelContext) -> None:
        super().__init__()
        hidden = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_size = hidden // self.num_heads
        self.qkv_proj = FusedLinear(hidden, [hidden] * 3, bias=True, dtype=ctx.dtype, ops=ctx.ops)
        spec = AttentionLayerSpec(
            num_heads=self.num_heads,
            num_kv_heads=self.num_heads,
            head_size=self.head_size,
            scale=self.head_size**-0.5,
            block_size=ctx.block_size,
            dtype=str(ctx.dtype).removeprefix("torch."),
            causal=False,
        )
        reasons = ctx.attention_cls.check_support(spec)
        if reasons:
            raise UnsupportedAttentionError(
                f"attention backend {ctx.attention_cls.name!r} cannot run this encoder: "
                + "; ".join(reasons)
            )
        self.attn = ctx.attention_cls(spec)  # a plain attribute: backends hold no parameters
        self.ops = ctx.ops

    def forward(
        self,
        hidden: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        step: EncoderStep | None = None,
    ) -> torch.Tensor:
        """For a ``step`` of whole prompts the backend's encoder kernel, else torch's SDPA where
        the backend allows it; otherwise (and for other steps) the backend's attention layer."""
        n = hidden.shape[0]
        size = self.num_heads * self.head_size
        qkv = self.qkv_proj(hidden)
        if step is not None:
            scale = self.attn.spec.scale
            out = self.ops.encoder_attention(
                qkv, step.query_start_loc, self.num_heads, self.head_size, scale
            )
            if out is None and step.sdpa:
                out = hidden.new_empty((n, size))
                attend(qkv, step.groups, self.num_heads, self.head_size, scale, out)
            if out is not None:
                if n > step.num_tokens:
                    out[step.num_tokens :].zero_()  # padding rows (see ROW_ALIGN)
                return out
        q = qkv[:, :size].view(n, self.num_heads, self.head_size)
        k = qkv[:, size : 2 * size].view(n, self.num_heads, self.head_size)
        v = qkv[:, 2 * size :].view(n, self.num_heads, self.head_size)
        out = q.new_empty((n, self.num_heads, self.head_size))
        self.attn.forward(q, k, v, kv_cache, metadata, out)
        return out.view(n, size)


class DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: HF's ``BertSelfOutput`` / ``BertOutput``."""

    def __init__(self, in_features: int, cfg: Any, ctx: ModelContext) -> None:
        super().__init__()
        self.dense = Linear(in_features, cfg.hidden_size, bias=True, dtype=ctx.dtype, ops=ctx.ops)
        self.LayerNorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, ctx.dtype, ctx.ops)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        # The residual added in the norm's pass, into the matmul's fresh output.
        return self.LayerNorm(self.dense(x), residual)


def activation(name: str, ops: KernelOps) -> Callable[[torch.Tensor], torch.Tensor]:
    """HF's ``hidden_act`` ``name`` as an in-place function of the matmul's fresh output."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"hidden_act {name!r} is not supported; one of {sorted(_ACTIVATIONS)}")
    form = _GELU_FORMS.get(name)
    if form is None:
        return torch.relu_
    return functools.partial(ops.gelu, approximate=form)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: Any, ctx: ModelContext) -> None:
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = SelfAttention(cfg, ctx)
        self.attention.output = DenseNorm(cfg.hidden_size, cfg, ctx)
        self.intermediate = nn.Module()
        self.intermediate.dense = Linear(
            cfg.hidden_size, cfg.intermediate_size, bias=True, dtype=ctx.dtype, ops=ctx.ops
        )
        self.output = DenseNorm(cfg.intermediate_size, cfg, ctx)
        act = getattr(cfg, "hidden_act", "gelu")
        self.act = activation(act, ctx.ops)

    def forward(
        self,
        hidden: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        step: EncoderStep | None = None,
    ) -> torch.Tensor:
        attended = self.attention.self(hidden, kv_cache, metadata, step)
        hidden = self.attention.output(attended, hidden)
        return self.output(self.act(self.intermediate.dense(hidden)), hidden)


class BertModel(nn.Module):
    """The encoder's last hidden states ``[num_tokens, hidden_size]`` of a flattened batch."""

    def __init__(self, hf_config: Any, ctx: ModelContext) -> None:
        super().__init__()
        if ctx.tp.size > 1 or ctx.pp.size > 1:
            raise ValueError(
                "encoder models run on one rank: tensor_parallel_size and "
                "pipeline_parallel_size must be 1"
            )
        position_embedding_type = getattr(hf_config, "position_embedding_type", "absolute")
        if position_embedding_type not in (None, "absolute"):
            raise ValueError(
                f"position_embedding_type {position_embedding_type!r} is not supported "
                "(only 'absolute')"
            )
        self.config = hf_config
        self.ctx = ctx
        self.num_layers = hf_config.num_hidden_layers
        self.num_heads = hf_config.num_attention_heads
        self.num_kv_heads = self.num_heads
        self.head_size = hf_config.hidden_size // self.num_heads
        self.hidden_size = hf_config.hidden_size
        self.vocab_size = hf_config.vocab_size
        self.sdpa_attention = ctx.attention_cls.name in _SDPA_BACKENDS
        # RoBERTa numbers positions after the padding index (HF's create_position_ids_from_input_ids).
        offset = 0
        if getattr(hf_config, "model_type", "") in ("roberta", "xlm-roberta"):
            offset = int(hf_config.pad_token_id) + 1
        with torch.device(ctx.device):
            self.embeddings = Embeddings(hf_config, ctx.dtype, offset, ctx.ops)
            self.encoder = nn.Module()
            self.encoder.layer = nn.ModuleList(
                EncoderLayer(hf_config, ctx) for _ in range(self.num_layers)
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        num_tokens = input_ids.shape[0]
        step = self._encoder_step(metadata, num_tokens)
        pad = -num_tokens % ROW_ALIGN if step is not None and step.sdpa else 0
        if pad:
            input_ids = F.pad(input_ids, (0, pad))
            positions = F.pad(positions, (0, pad))
        hidden = self.embeddings(input_ids, positions)
        for layer, kv_cache in zip(self.encoder.layer, kv_caches):
            hidden = layer(hidden, kv_cache, metadata, step)
        return hidden[:num_tokens] if pad else hidden

    def _encoder_step(self, metadata: AttentionMetadata, num_tokens: int) -> EncoderStep | None:
        """The step as whole prompts, attended without the KV cache, when it is one: every
        sequence a whole prompt (no cached prefix whose keys live in the cache) and every row in
        a prompt (no padding rows)."""
        qsl = metadata.query_start_loc_cpu
        lens = metadata.seq_lens_cpu
        starts = (qsl if qsl is not None else metadata.query_start_loc).tolist()
        seq_lens = (lens if lens is not None else metadata.seq_lens).tolist()
        starts = starts[: metadata.num_seqs + 1]
        if starts[0] != 0 or starts[-1] != num_tokens:
            return None
        if any(b - a != n for a, b, n in zip(starts[:-1], starts[1:], seq_lens)):
            return None
        query_start_loc = metadata.query_start_loc[: metadata.num_seqs + 1]
        if query_start_loc.dtype != torch.int32:
            query_start_loc = query_start_loc.to(torch.int32)
        return EncoderStep(starts, query_start_loc, self.sdpa_attention)

    def prepare_for_inference(self) -> None:
        prepare_linear_weights(self)
        self.embeddings.prepare_for_inference()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        load_checkpoint(self, _renamed(weights))


def _renamed(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """HF names onto this module's: task-model prefixes dropped, unused heads skipped, and
    ``attention.self.{query,key,value}`` as the parts of the fused ``qkv_proj``."""
    for name, tensor in weights:
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        if name.startswith(_IGNORED):
            continue
        for theirs, ours in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            name = name.replace(f".attention.self.{theirs}.", f".attention.self.{ours}.")
        yield name, tensor
