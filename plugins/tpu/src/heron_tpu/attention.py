"""The TPU attention backend: Pallas kernels for the KV write and ragged paged attention.

KV cache layout, one tensor per layer: ``[2, num_kv_heads, num_blocks, block_size, head_size]``
(see :mod:`heron_tpu.kernels.ragged_paged_attention` for why); :meth:`kv_views` presents it in the
contract's ``[num_blocks, block_size, num_kv_heads, head_size]`` order.

Each call hands the torch tensors to one jitted JAX program (KV write, then attention) through
DLPack. Everything per step travels as arrays, so the compiled program depends only on the shapes:
with core padding steps to buckets (API 1.6), every program is compiled at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from heron_interfaces import AttentionBackend, AttentionLayerSpec, AttentionMetadata

if TYPE_CHECKING:
    import jax
    import torch

SUPPORTED_DTYPES: tuple[str, ...] = ("bfloat16", "float32")
SUPPORTED_BLOCK_SIZES: tuple[int, ...] = (16, 32)
"""Pages of 16 or 32 rows fill whole (8, 128) / (16, 128) vector tiles for float32 / bfloat16."""
SUPPORTED_HEAD_SIZES: tuple[int, ...] = (64, 128)


def attention_tiles(num_tokens: int, block_size: int) -> tuple[int, int]:
    """``(tile_tokens, pages_per_step)`` for a step of ``num_tokens`` tokens.

    Tiles of 16 tokens (8 for tiny steps) keep a tile's rows a multiple of 8; 128 keys per
    inner step give the matmul a full lane width.
    """
    return (8 if num_tokens <= 8 else 16), max(1, 128 // block_size)


def _write_and_attend(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    kv_cache: jax.Array,
    slots: jax.Array,
    query_start_loc: jax.Array,
    seq_lens: jax.Array,
    block_tables: jax.Array,
    num_seqs: jax.Array,
    *,
    scale: float,
    interpret: Any,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    causal: bool = True,
) -> tuple[jax.Array, jax.Array]:
    from heron_tpu.kernels.kv_write import write_kv
    from heron_tpu.kernels.ragged_paged_attention import ragged_paged_attention

    cache = write_kv(key, value, kv_cache, slots, interpret=interpret)
    tile_tokens, pages = attention_tiles(query.shape[0], kv_cache.shape[3])
    out = ragged_paged_attention(
        query,
        cache,
        query_start_loc,
        seq_lens,
        block_tables,
        num_seqs,
        scale=scale,
        tile_tokens=tile_tokens,
        pages_per_step=pages,
        interpret=interpret,
        sliding_window=sliding_window,
        logits_soft_cap=logits_soft_cap,
        causal=causal,
    )
    return out, cache


def _write_only(
    key: jax.Array, value: jax.Array, kv_cache: jax.Array, slots: jax.Array, *, interpret: Any
) -> jax.Array:
    from heron_tpu.kernels.kv_write import write_kv

    return write_kv(key, value, kv_cache, slots, interpret=interpret)


class TpuAttentionBackend(AttentionBackend):
    """Writes the step's keys and values into the cache, then runs ragged paged attention."""

    name = "tpu-pallas"
    supports_sliding_window = True  # pages before the window are never fetched (API 1.9)
    supports_logits_soft_cap = True
    supports_non_causal = True  # API 1.7: encoder layers see their whole context

    def __init__(self, spec: AttentionLayerSpec) -> None:
        super().__init__(spec)
        reasons = self.check_support(spec)
        if reasons:
            raise ValueError(f"{type(self).__name__} cannot run this layer: " + "; ".join(reasons))

    @classmethod
    def supported_block_sizes(cls) -> Sequence[int]:
        return SUPPORTED_BLOCK_SIZES

    @classmethod
    def supported_head_sizes(cls) -> Sequence[int] | None:
        return SUPPORTED_HEAD_SIZES

    @classmethod
    def supported_dtypes(cls) -> Sequence[str] | None:
        return SUPPORTED_DTYPES

    @classmethod
    def kv_cache_shape(
        cls, num_blocks: int, block_size: int, num_kv_heads: int, head_size: int
    ) -> tuple[int, ...]:
        return (2, num_kv_heads, num_blocks, block_size, head_size)

    @classmethod
    def kv_views(cls, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return kv_cache[0].permute(1, 2, 0, 3), kv_cache[1].permute(1, 2, 0, 3)

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        import torch

        from heron_tpu import runtime

        fn = runtime.jitted(_write_only, interpret=runtime.kernel_interpret())
        cache = fn(
            runtime.to_jax(key),
            runtime.to_jax(value),
            runtime.to_jax(kv_cache),
            runtime.to_jax(slot_mapping.to(torch.int32)),
        )
        runtime.check_races("the KV write")
        kv_cache.copy_(runtime.to_torch(cache))

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        out: torch.Tensor,
    ) -> torch.Tensor:
        import torch

        from heron_tpu import runtime

        fn = runtime.jitted(
            _write_and_attend,
            scale=float(self.spec.scale),
            interpret=runtime.kernel_interpret(),
            sliding_window=self.spec.sliding_window,
            logits_soft_cap=self.spec.logits_soft_cap,
            causal=self.spec.causal,
        )
        num_seqs = torch.tensor([metadata.num_seqs], dtype=torch.int32)
        result, cache = fn(
            runtime.to_jax(query),
            runtime.to_jax(key),
            runtime.to_jax(value),
            runtime.to_jax(kv_cache),
            runtime.to_jax(metadata.slot_mapping.to(torch.int32)),
            runtime.to_jax(metadata.query_start_loc),
            runtime.to_jax(metadata.seq_lens),
            runtime.to_jax(metadata.block_tables),
            runtime.to_jax(num_seqs),
        )
        runtime.check_races("ragged paged attention")
        kv_cache.copy_(runtime.to_torch(cache))
        out.copy_(runtime.to_torch(result))
        return out
