"""``CpuAttentionBackend``: the attention backend of the ``cpu`` platform.

Layout ``[2, num_blocks, num_kv_heads, head_size, block_size]``: each KV head's block is one
dense tile that the kernel streams, instead of rows gathered with a ``num_kv_heads * head_size``
stride as the default layout would require. Key tiles are transposed (``[head, block]``, as the
shape reads) so that 16 keys are scored per vector instruction; value tiles hold the same number
of elements row-major (``[block, head]``), which is what accumulating probabilities times values
wants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from heron_cpu import long_prefill, ops
from heron_cpu.memory import place_on_huge_pages
from heron_interfaces import AttentionBackend, AttentionLayerSpec, AttentionMetadata


class CpuAttentionBackend(AttentionBackend):
    """One instance per layer; stateless between steps, as the interface requires."""

    name = "cpu"
    supports_step_graphs = True  # every launch goes through heron_cpu.launch
    supports_non_causal = True  # through torch's SDPA, see _forward_bidirectional
    supports_sliding_window = True  # in the C++ kernel (and long_prefill's masked path)
    supports_logits_soft_cap = True  # in the C++ kernel (long chunks too: SDPA has no cap)

    def __init__(self, spec: AttentionLayerSpec) -> None:
        super().__init__(spec)
        reasons = self.check_support(spec)
        if reasons:
            raise ValueError(
                "the cpu attention backend cannot run this layer: " + "; ".join(reasons)
            )

    @classmethod
    def supported_block_sizes(cls) -> Sequence[int]:
        return ops.BLOCK_SIZES

    @classmethod
    def supported_head_sizes(cls) -> Sequence[int] | None:
        return ops.HEAD_SIZES

    @classmethod
    def supported_dtypes(cls) -> tuple[str, ...]:
        return ("float32", "bfloat16")

    @classmethod
    def check_support(cls, spec: AttentionLayerSpec) -> list[str]:
        """Non-causal layers run through torch (any head size; see ``_forward_bidirectional``)."""
        if not spec.causal and spec.head_size not in ops.HEAD_SIZES:
            return super().check_support(dataclasses.replace(spec, head_size=ops.HEAD_SIZES[0]))
        return super().check_support(spec)

    def _kernel_head_size(self) -> bool:
        return self.spec.head_size in ops.HEAD_SIZES

    @classmethod
    def kv_cache_shape(
        cls, num_blocks: int, block_size: int, num_kv_heads: int, head_size: int
    ) -> tuple[int, ...]:
        return (2, num_blocks, num_kv_heads, head_size, block_size)

    @classmethod
    def allocate_kv_cache(
        cls, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """On huge pages: a decode step reads scattered 2 KiB tiles, nearly one TLB miss each."""
        cache = torch.empty(shape, dtype=dtype, device=device)
        if cache.is_cpu:
            place_on_huge_pages(cache, "KV cache")
        return cache

    @classmethod
    def kv_views(cls, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[num_blocks, block_size, kv_heads, head]`` strided views of the two kinds of tile."""
        _, num_blocks, num_kv_heads, head_size, block_size = kv_cache.shape
        keys = kv_cache[0].permute(0, 3, 1, 2)
        values = kv_cache[1].view(num_blocks, num_kv_heads, block_size, head_size).transpose(1, 2)
        return keys, values

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        if not self._kernel_head_size():  # a non-causal layer the C++ kernels do not cover
            _write_kv_torch(key, value, kv_cache, slot_mapping)
            return
        _write_kv()(_rows(key), _rows(value), kv_cache, slot_mapping)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        out: torch.Tensor,
    ) -> torch.Tensor:
        self.write_kv(key, value, kv_cache, metadata.slot_mapping)
        query = _rows(query)
        if not self.spec.causal:
            self._forward_bidirectional(query, key, value, kv_cache, metadata, out)
            return out
        # torch's SDPA has no soft-capping: capped layers stay on the kernel for long chunks too.
        threshold = 0 if self.spec.logits_soft_cap is not None else long_prefill.min_query_tokens()
        if threshold and metadata.max_query_len >= threshold and not torch.compiler.is_compiling():
            self._forward_mixed(query, kv_cache, metadata, out, threshold)
            return out
        _paged_attention()(
            out,
            query,
            kv_cache,
            metadata.query_start_loc,
            metadata.seq_lens,
            metadata.block_tables,
            self.spec.scale,
            metadata.num_seqs,
            self.spec.sliding_window,
            self.spec.logits_soft_cap,
        )
        return out

    def _forward_bidirectional(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        out: torch.Tensor,
    ) -> None:
        """Encoder layers: each sequence through torch's unmasked SDPA (oneDNN matmuls).

        Encoder prompts are computed whole in one step, which is the compute-bound case that
        :mod:`heron_cpu.long_prefill` already serves faster than the paged kernel, and an
        unmasked attention needs no mask at all; so no C++ kernel has a non-causal mode. A whole
        prompt (the encoder case) attends to this step's own keys and values, with no gather
        from the cache; a chunk over cached positions reads them from the cache.
        """
        qsl = metadata.query_start_loc_cpu
        lens = metadata.seq_lens_cpu
        starts = (qsl if qsl is not None else metadata.query_start_loc).tolist()
        seq_lens = (lens if lens is not None else metadata.seq_lens).tolist()
        prompts = [
            i
            for i in range(metadata.num_seqs)
            if 0 < starts[i + 1] - starts[i] == seq_lens[i]  # a whole prompt: no cached prefix
        ]
        if prompts:
            long_prefill.attend_prompts(
                out,
                query,
                key,
                value,
                [starts[i] for i in prompts],
                [seq_lens[i] for i in prompts],
                self.spec.scale,
            )
        whole = set(prompts)
        for i in range(metadata.num_seqs):
            q_len = starts[i + 1] - starts[i]
            if q_len == 0 or i in whole:
                continue
            long_prefill.attend_sequence(
                out,
                query,
                kv_cache,
                metadata.block_tables[i],
                starts[i],
                q_len,
                seq_lens[i],
                self.spec.scale,
                causal=False,
            )

    def _forward_mixed(
        self,
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        out: torch.Tensor,
        threshold: int,
    ) -> None:
        """Long prefill chunks through :mod:`heron_cpu.long_prefill`, the rest through the kernel.

        Never inside a recorded step graph: those hold decode steps, whose queries are one token.
        """
        num_seqs = metadata.num_seqs
        qsl_tensor = metadata.query_start_loc_cpu
        lens_tensor = metadata.seq_lens_cpu
        starts = qsl_tensor if qsl_tensor is not None else metadata.query_start_loc
        lens = lens_tensor if lens_tensor is not None else metadata.seq_lens
        query_start_loc = starts[: num_seqs + 1].tolist()
        seq_lens = lens[:num_seqs].tolist()
        long_ids, runs = long_prefill.split_long_sequences(query_start_loc, threshold)
        for first, end in runs:
            _paged_attention()(
                out,
                query,
                kv_cache,
                metadata.query_start_loc[first : end + 1],
                metadata.seq_lens[first:end],
                metadata.block_tables[first:end],
                self.spec.scale,
                end - first,
                self.spec.sliding_window,
                self.spec.logits_soft_cap,
            )
        for i in long_ids:
            long_prefill.attend_sequence(
                out,
                query,
                kv_cache,
                metadata.block_tables[i],
                query_start_loc[i],
                query_start_loc[i + 1] - query_start_loc[i],
                seq_lens[i],
                self.spec.scale,
                sliding_window=self.spec.sliding_window,
            )


# The custom ops are what torch.compile must see (opaque graph nodes); in eager mode their
# dispatch costs more than a decode step's kernels, so the same checked functions run directly.
def _write_kv() -> Callable[..., None]:
    return ops.write_kv if torch.compiler.is_compiling() else ops.write_kv_eager


def _paged_attention() -> Callable[..., None]:
    return ops.paged_attention if torch.compiler.is_compiling() else ops.paged_attention_eager


def _write_kv_torch(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """``write_kv`` in torch for head sizes the C++ kernel lacks: one indexed copy per tile kind
    into this layout (half the time of the reference's, which goes through strided views)."""
    _, num_blocks, num_kv_heads, head_size, block_size = kv_cache.shape
    slots = slot_mapping.long()
    if slots.numel() and int(slots.min()) < 0:  # padding slots write nothing
        keep = slots >= 0
        key, value, slots = key[keep], value[keep], slots[keep]
    blocks, offsets = slots // block_size, slots % block_size
    kv_cache[0][blocks, :, :, offsets] = key.to(kv_cache.dtype)  # key tiles: [kv, head, block]
    values = kv_cache[1].view(num_blocks, num_kv_heads, block_size, head_size)
    values[blocks, :, offsets, :] = value.to(kv_cache.dtype)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """The kernels take any token/head strides but need each head's vector contiguous."""
    return t if t.stride(-1) == 1 else t.contiguous()
