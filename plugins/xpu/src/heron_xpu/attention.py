"""Paged attention for the XPU backend, on the Triton kernels of :mod:`heron_xpu.kernels`.

KV cache layout, one tensor per layer: the contract's ``[2, num_blocks, block_size, num_kv_heads,
head_size]`` (so :meth:`AttentionBackend.kv_views` needs no override). The attention kernel gathers
``KV_TILE`` cache positions at a time through the block table as ``[positions, head_size]`` rows,
each row one contiguous head vector; within a block the positions of one KV head are
``num_kv_heads * head_size`` apart, which a strided gather reads as well as head-major blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from heron_interfaces import AttentionBackend, AttentionLayerSpec, AttentionMetadata

if TYPE_CHECKING:
    import torch

SUPPORTED_DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")
SUPPORTED_BLOCK_SIZES: tuple[int, ...] = (16, 32, 64)
MAX_HEAD_SIZE = 256
"""Kept in step with ``heron_xpu.ops.MAX_HEAD_SIZE`` (a test checks), without importing torch."""


class XpuAttentionBackend(AttentionBackend):
    """Writes the step's keys and values into the cache, then runs one paged-attention launch over
    the whole flattened batch (prefill chunks and decodes together)."""

    name = "xpu-triton"
    supports_non_causal = True  # API 1.7: the kernel's CAUSAL=False branch (encoder layers)
    supports_sliding_window = True  # API 1.9: the kernel's WINDOW (blocks before it never read)
    supports_logits_soft_cap = True  # API 1.9: the kernel's SOFT_CAP

    def __init__(self, spec: AttentionLayerSpec) -> None:
        super().__init__(spec)
        reasons = self.check_support(spec)
        if reasons:
            raise ValueError(f"{type(self).__name__} cannot run this layer: " + "; ".join(reasons))
        # Imported per layer, not at module top: resolving the class must stay free of torch and
        # triton, and the kernels must be decorated after the interpreter switch.
        from heron_xpu import ops

        self._ops = ops

    @classmethod
    def supported_block_sizes(cls) -> Sequence[int]:
        return SUPPORTED_BLOCK_SIZES

    @classmethod
    def supported_dtypes(cls) -> tuple[str, ...]:
        return SUPPORTED_DTYPES

    @classmethod
    def check_support(cls, spec: AttentionLayerSpec) -> list[str]:
        """Any head size up to 256: the kernel pads a head to a power of two and masks the rest."""
        reasons = super().check_support(spec)
        if not 0 < spec.head_size <= MAX_HEAD_SIZE:
            reasons.append(f"head size {spec.head_size} is not in 1..{MAX_HEAD_SIZE}")
        return reasons

    @classmethod
    def kv_cache_shape(
        cls, num_blocks: int, block_size: int, num_kv_heads: int, head_size: int
    ) -> tuple[int, ...]:
        return (2, num_blocks, block_size, num_kv_heads, head_size)

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
            self.spec.causal,
            self.spec.sliding_window,
            self.spec.logits_soft_cap,
        )
        return out
