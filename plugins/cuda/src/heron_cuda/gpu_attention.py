"""Paged attention on this package's compiled kernels, shared by the CUDA and ROCm backends.

KV cache layout, one tensor per layer: ``[2, num_blocks, num_kv_heads, block_size, head_size]``.
Head-major blocks keep one head's ``block_size * head_size`` values of a block contiguous, which is
what the decode kernel streams through; :meth:`GpuAttentionBackend.kv_views` presents the same
memory in the contract's ``[num_blocks, block_size, num_kv_heads, head_size]`` order for tests and
tools.

This file is shared verbatim by heron_cuda and heron_rocm (plugins/rocm's CMake installs it);
each package subclasses :class:`GpuAttentionBackend` only to give it its name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from heron_interfaces import AttentionBackend, AttentionLayerSpec, AttentionMetadata

if TYPE_CHECKING:
    import torch

SUPPORTED_DTYPES: tuple[str, ...] = ("float16", "bfloat16")
SUPPORTED_BLOCK_SIZES: tuple[int, ...] = (16, 32)


class GpuAttentionBackend(AttentionBackend):
    """Writes the batch's keys and values into the cache, then runs the paged attention kernels."""

    name = "gpu"
    # Every per-step value (slots, lengths, block tables, query offsets) is read from tensors;
    # max_seq_len is only a bound that sizes the partition grid, so a graph captured with the
    # largest bound serves every later step.
    supports_step_graphs = True
    supports_non_causal = True  # the prefill kernel's causal flag (heron_interfaces 1.7)
    supports_sliding_window = True  # both kernels start at the window (heron_interfaces 1.9)
    supports_logits_soft_cap = True

    def __init__(self, spec: AttentionLayerSpec) -> None:
        super().__init__(spec)
        reasons = self.check_support(spec)
        if reasons:
            raise ValueError(f"{type(self).__name__} cannot run this layer: " + "; ".join(reasons))
        # Imported here, not at module top, so that resolving the class stays free of torch and
        # of the compiled module until a layer is actually built.
        from . import ops

        self._ops = ops

    @classmethod
    def supported_block_sizes(cls) -> Sequence[int]:
        return SUPPORTED_BLOCK_SIZES

    @classmethod
    def supported_head_sizes(cls) -> Sequence[int] | None:
        from . import _C

        return tuple(_C.HEAD_SIZES)

    @classmethod
    def supported_dtypes(cls) -> tuple[str, ...]:
        return SUPPORTED_DTYPES

    @classmethod
    def kv_cache_shape(
        cls, num_blocks: int, block_size: int, num_kv_heads: int, head_size: int
    ) -> tuple[int, ...]:
        return (2, num_blocks, num_kv_heads, block_size, head_size)

    @classmethod
    def kv_views(cls, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return kv_cache[0].transpose(1, 2), kv_cache[1].transpose(1, 2)

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        self._ops.write_kv(key, value, kv_cache, slot_mapping)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        out: torch.Tensor,
    ) -> torch.Tensor:
        self._ops.write_kv(key, value, kv_cache, metadata.slot_mapping)
        self._ops.paged_attention(
            out,
            query,
            kv_cache,
            metadata.query_start_loc,
            metadata.seq_lens,
            metadata.block_tables,
            self.spec.scale,
            metadata.max_query_len,
            metadata.max_seq_len,
            self.spec.causal,
            self.spec.sliding_window,
            self.spec.logits_soft_cap,
        )
        return out
