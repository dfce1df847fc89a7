"""The non-attention compute of a decoder layer that a backend may replace with its own kernels.

A decode step of a small model is dominated by many small operations: each RMSNorm, rotary
embedding or SiLU gate is half a dozen torch calls, and at a few rows per call their dispatch
costs more than their arithmetic. A backend that ships fused kernels subclasses :class:`KernelOps`
and returns it from ``Platform.kernel_ops()``; core's layers call these methods and nothing else.

The methods of this base class are the plain-torch reference: they round exactly where
Hugging Face ``transformers`` rounds (its Llama modules, in the model dtype), so that greedy
outputs match ``generate()``. An override must keep those rounding points; the conformance suite
(``heron_interfaces.testing``) compares every override with this class.

Step graphs (API 1.4): a backend whose every launch in a decode step goes through its own
kernels (no torch op in between) can record those launches once and replay them on later steps,
the CPU counterpart of CUDA graphs: the per-op Python of ~300 calls per step is what a small
model's single-stream decode spends a quarter of its time on. See :meth:`KernelOps.capture_graph`.
Since API 1.5 a recorder may instead capture every device operation of the pass (CUDA graphs,
hipGraph): it says so with ``StepGraph.records_torch_ops``.

Quantized weights (API 1.8): :meth:`KernelOps.prepare_quantized_linear` (see
:mod:`heron_interfaces.quantization`; API 1.10 adds the ``q4_k`` format).

Mixture of experts (API 1.11): :meth:`KernelOps.prepare_moe` / :meth:`KernelOps.fused_moe`, the
experts of a MoE layer in the backend's kernels; :func:`moe_reference` is what they compute.

Tensor-parallel step graphs (API 1.12): :meth:`KernelOps.embedding_shard` (the vocabulary-parallel
lookup as one call) and ``Communicator.records_in_step_graphs`` (an all-reduce a recording keeps)
let a backend record decode steps of tensor-parallel ranks too.

Encoder attention (API 1.13): :meth:`KernelOps.encoder_attention`, the bidirectional attention of
a pooling step's whole prompts read straight from the fused q/k/v projection, with no KV cache;
:func:`encoder_attention_reference` is what it computes.

Encoder layers (API 1.14): :meth:`KernelOps.layer_norm` (with the post-norm residual add) and
:meth:`KernelOps.gelu`, the rest of a BERT-style layer outside its matmuls; each may write into its
input, which core passes only where nothing reads it again.

Pooling (API 1.15): :meth:`KernelOps.mean_pool`, the float32 mean of each sequence's rows of a
pooling step; :func:`mean_pool_reference` is what it computes.

Importing this module imports torch, so ``heron_interfaces`` itself only names it lazily.
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from heron_interfaces.quantization import QuantizedWeight


class StepGraph(Protocol):
    """The kernel launches of one forward pass, recorded while the context is entered.

    Entering starts recording every launch of the backend's kernels (which still run, so the pass
    being recorded computes its result as usual); :meth:`replay` launches the same kernels again
    with the same arguments: the same addresses, so the caller keeps every tensor of the recorded
    pass alive and writes each step's inputs into the recorded input tensors before replaying.
    """

    records_torch_ops: bool
    """API 1.5, optional (absent means False): True when the recorder captures every device
    operation issued while entered, torch's own included, as a CUDA graph does. Core then
    accepts passes in which torch ran matmuls or copies; otherwise it refuses such a pass, since
    a replay of the backend's launches alone would skip that work."""

    def __enter__(self) -> StepGraph: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def replay(self) -> None:
        """Launch the recorded kernels again, in order."""
        ...


class KernelOps:
    """Plain-torch implementations; every method is a per-step call, so overrides stay cheap.

    Inputs are flattened tokens: ``[num_tokens, features]`` (or ``[num_tokens, heads, head_size]``
    for rotary). Methods return new tensors and never modify their inputs.
    """

    name = "torch"
    """Shown in the start-up log next to the attention backend."""

    # -- step graphs (API 1.4) -------------------------------------------------------------------
    def capture_graph(self, num_tokens: int) -> StepGraph | None:
        """A recorder for a forward pass of ``num_tokens`` tokens, or None where there is none.

        Only a backend whose recorded kernels read every per-step value (token ids, positions,
        slots, sequence lengths, block tables) from tensors, never from Python numbers, may
        return one; its attention backend must also declare ``supports_step_graphs``. Core runs
        the recorded pass under a guard that refuses the graph if any torch operation other than
        an allocation or a view ran (that work would be lost on replay), so returning a recorder
        for sizes where some op falls back to torch is safe, only wasted.
        """
        return None

    # -- embedding --------------------------------------------------------------------------------
    def embedding(self, token_ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Rows of ``table`` ``[vocab, hidden]`` for ``token_ids`` (API 1.4)."""
        return F.embedding(token_ids, table)

    def embedding_shard(
        self, token_ids: torch.Tensor, table: torch.Tensor, row_start: int
    ) -> torch.Tensor:
        """API 1.12: a tensor-parallel rank's part of a vocabulary-parallel lookup: ``table`` holds
        rows ``[row_start, row_start + len(table))`` of the vocabulary; an id in that range gets
        its row, any other id a row of zeros (the group's all-reduce then sums one row per id).
        A backend whose step graphs record it lets tensor-parallel decode steps be recorded."""
        import torch

        local = token_ids - row_start
        mine = (local >= 0) & (local < table.shape[0])
        rows = self.embedding(torch.where(mine, local, 0), table)
        return rows * mine.unsqueeze(-1).to(rows.dtype)

    # -- matmuls ---------------------------------------------------------------------------------
    def prepare_linear(self, weight: torch.Tensor) -> Any:
        """Called once per weight after loading: return whatever :meth:`linear` wants to get.

        Backends prepack into their GEMM library's blocked layout here (doing it per call costs
        more than the matmul at decode sizes) and may drop ``weight``; the default keeps it. A
        backend may also move ``weight``'s storage (``weight.data = ...``, same values), as
        heron-cpu does to put the weights its GEMV streams on huge pages.
        """
        return weight

    def prepare_quantized_linear(self, weight: QuantizedWeight) -> Any | None:
        """API 1.8: a weight kept in its quantized blocks, prepared once for :meth:`linear`.

        Return whatever :meth:`linear` wants to get (a backend repacks the blocks into the layout
        its kernels read), or None where this backend has no kernel for ``weight.format`` (or
        the shape): core then dequantizes it and calls :meth:`prepare_linear` as for any
        weight. The default has none. :meth:`linear` must then compute
        ``x @ weight.dequantize(x.dtype)^T + bias`` up to accumulation order.
        """
        return None

    def linear(self, x: torch.Tensor, prepared: Any, bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ W^T + bias`` with ``prepared`` from :meth:`prepare_linear` (or, API 1.8,
        :meth:`prepare_quantized_linear`)."""
        return F.linear(x, prepared, bias)

    # -- mixture of experts ----------------------------------------------------------------------
    def prepare_moe(self, w13: torch.Tensor, w2: torch.Tensor) -> Any | None:
        """API 1.11: one MoE layer's experts, prepared once for :meth:`fused_moe`, or None.

        ``w13`` ``[experts, 2 * intermediate, hidden]`` (each expert's gate rows, then its up
        rows) and ``w2`` ``[experts, hidden, intermediate]``. None (the default) means this
        backend has no fused experts: core then runs :func:`moe_reference` itself. A backend that
        returns something must compute :func:`moe_reference` with it in :meth:`fused_moe`, up to
        accumulation order (the conformance suite's ``moe_suite``).
        """
        return None

    def fused_moe(
        self, x: torch.Tensor, prepared: Any, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> torch.Tensor:
        """API 1.11: ``sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t])`` for each token.

        ``x`` ``[tokens, hidden]``, ``topk_ids`` int64 and ``topk_weights`` (float32, or
        ``x``'s dtype) ``[tokens, k]``; ``prepared`` from :meth:`prepare_moe`. This default
        takes ``prepared`` as the ``(w13, w2)`` pair and runs :func:`moe_reference`.
        """
        w13, w2 = prepared
        return moe_reference(x, w13, w2, topk_ids, topk_weights)

    # -- encoder attention (API 1.13) --------------------------------------------------------------
    def encoder_attention(
        self,
        qkv: torch.Tensor,
        query_start_loc: torch.Tensor,
        num_heads: int,
        head_size: int,
        scale: float,
    ) -> torch.Tensor | None:
        """API 1.13: every prompt attending to all of itself, or None where there is no kernel.

        ``qkv`` ``[tokens, 3 * num_heads * head_size]`` is an encoder layer's fused projection
        (q, then k, then v; heads inside each; rows may be strided); ``query_start_loc`` int32
        ``[num_prompts + 1]`` on ``qkv``'s device covers every row, each prompt whole (a pooling
        step: nothing is cached, so no KV cache is read or written). Returns ``[tokens, num_heads
        * head_size]`` in ``qkv``'s dtype: :func:`encoder_attention_reference` up to accumulation
        order and the rounding of probabilities. None (the default, or a shape or dtype the
        backend has no kernel for) means core attends through its own path.
        """
        return None

    # -- encoder layers (API 1.14) ----------------------------------------------------------------
    def layer_norm(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        eps: float,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """API 1.14: LayerNorm over the last dimension of ``x``, or of ``x + residual``.

        HF's BERT-style post-norm (``LayerNorm(dense(h) + h)``): the sum is rounded to ``x``'s
        dtype first, as torch's add rounds, and normalised with statistics in float32, as torch's
        kernels compute them. ``x``'s storage may receive the sum or the result (the reference
        adds in place: at a step of thousands of rows a second activation tensor costs more than
        the norm), so callers pass a tensor nothing reads afterwards.
        """
        if residual is not None:
            x = x.add_(residual)
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)

    def gelu(self, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        """API 1.14: GELU, torch's ``approximate`` ``"none"`` (erf) or ``"tanh"``, into ``x``.

        In place like the reference (a MiniLM step's intermediate activation is 6 MB; a fresh
        output costs a fifth of the activation), so ``x``'s old values are gone afterwards.
        """
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        return torch.ops.aten.gelu_(x, approximate=approximate)

    # -- pooling (API 1.15) -------------------------------------------------------------------------
    def mean_pool(self, hidden: torch.Tensor, query_start_loc: torch.Tensor) -> torch.Tensor:
        """API 1.15: the float32 mean of each sequence's rows of a pooling step.

        ``hidden`` ``[tokens, width]`` (rows may be strided; rows past the last sequence are
        padding and ignored), ``query_start_loc`` int32 ``[num_seqs + 1]`` on ``hidden``'s device,
        each sequence non-empty. Returns ``[num_seqs, width]`` float32: each sum accumulated in
        float32 from the rows as they are (no rounding to ``hidden``'s dtype), then divided by the
        row count. This default is :func:`mean_pool_reference`.
        """
        return mean_pool_reference(hidden, query_start_loc)

    # -- normalisation ---------------------------------------------------------------------------
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """Statistics in float32, cast back to ``x``'s dtype before the weight multiply (as HF)."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return weight * x32.to(x.dtype)

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rms_norm(x + residual), x + residual)``: a decoder layer's residual add and norm."""
        summed = x + residual
        return self.rms_norm(summed, weight, eps), summed

    # -- activation ------------------------------------------------------------------------------
    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` where ``x = [gate | up]`` along the last dimension."""
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up

    # -- rotary embedding ------------------------------------------------------------------------
    def rotary(
        self, positions: torch.Tensor, heads: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> torch.Tensor:
        """GPT-NeoX-style rotation of ``heads`` ``[tokens, n, head_size]`` by token position.

        ``cos_sin_cache`` is ``[max_position, rotary_dim]``: cos in the first half of each row,
        sin in the second. Channels past ``rotary_dim`` pass through unchanged.
        """
        rotary_dim = cos_sin_cache.shape[-1]
        cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        rot, rest = heads[..., :rotary_dim], heads[..., rotary_dim:]
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        if rest.shape[-1] == 0:
            return rotated
        return torch.cat([rotated, rest], dim=-1)


def moe_reference(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
) -> torch.Tensor:
    """The experts of every token, weighted and summed, in plain torch (as transformers' MoE).

    Each expert's tokens are gathered, run through ``silu(x W_gate^T) * (x W_up^T)`` and
    ``W_down`` in ``x``'s dtype, scaled by their routing weight (in the wider of the two dtypes)
    and added into the output in expert order.
    """
    out = torch.zeros_like(x)
    intermediate = w2.shape[-1]
    for expert in torch.unique(topk_ids).tolist():
        tokens, slots = torch.where(topk_ids == expert)
        h = F.linear(x[tokens], w13[expert])
        act = F.silu(h[:, :intermediate]) * h[:, intermediate:]
        y = F.linear(act, w2[expert]) * topk_weights[tokens, slots, None]
        out.index_add_(0, tokens, y.to(out.dtype))
    return out


def mean_pool_reference(hidden: torch.Tensor, query_start_loc: torch.Tensor) -> torch.Tensor:
    """:meth:`KernelOps.mean_pool`'s definition: one segment sum over the step in float32."""
    starts = query_start_loc[:-1].long()
    ends = query_start_loc[1:].long()
    lengths = ends - starts
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
    sums = torch.zeros(len(lengths), hidden.shape[-1], dtype=torch.float32, device=hidden.device)
    if len(lengths):
        sums.index_add_(0, segment, hidden[: int(ends[-1])].float())
    return sums / lengths.unsqueeze(1).to(torch.float32)


def encoder_attention_reference(
    qkv: torch.Tensor, query_start_loc: torch.Tensor, num_heads: int, head_size: int, scale: float
) -> torch.Tensor:
    """:meth:`KernelOps.encoder_attention` in plain torch: SDPA over each prompt, no mask."""
    width = num_heads * head_size
    out = qkv.new_zeros((qkv.shape[0], width))
    bounds = query_start_loc.tolist()
    for start, end in itertools.pairwise(bounds):
        if end == start:
            continue
        heads = qkv[start:end, : 3 * width].reshape(end - start, 3, num_heads, head_size)
        q, k, v = (heads[:, i].transpose(0, 1) for i in range(3))
        attended = F.scaled_dot_product_attention(q, k, v, scale=scale)
        out[start:end] = attended.transpose(0, 1).reshape(end - start, width)
    return out


__all__ = [
    "KernelOps",
    "StepGraph",
    "encoder_attention_reference",
    "mean_pool_reference",
    "moe_reference",
]
