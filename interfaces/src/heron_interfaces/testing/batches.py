"""Random attention batches and their reference results, shared by the attention conformance tests.

A batch is described by a :class:`Scenario` (plain numbers, printable in a failure message) and
materialised by :func:`make_batch` into tensors laid out as core lays them out: a flattened token
dimension, decodes first then prefills, physical KV blocks handed out in shuffled order, and a
cache whose already-computed prefix is filled while every other slot holds NaN. The NaNs stand for
the arbitrary bits of a ``torch.empty`` cache: a kernel that reads past a sequence's length (or
multiplies a masked probability by an unwritten value) turns them into NaN outputs.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from heron_interfaces import reference
from heron_interfaces.attention import AttentionLayerSpec, AttentionMetadata

TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (2e-5, 1e-4),
    "float16": (1e-3, 2e-3),
    "bfloat16": (1e-2, 1.6e-2),
}
"""(atol, rtol) per dtype: float32 differs only in summation order, 16-bit types by one rounding."""


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """The shape of one batch: per sequence, its context length and how many tokens are new."""

    seqs: tuple[tuple[int, int], ...]
    """``(context_len, query_len)`` per sequence; equal lengths make a fresh prefill."""
    num_heads: int
    num_kv_heads: int
    head_size: int
    block_size: int
    dtype: str
    seed: int = 0
    extra_blocks: int = 3
    """Unused physical blocks mixed into the pool, so block ids are sparse and out of order."""
    causal: bool = True
    """``False``: a bidirectional (encoder) layer, API 1.7."""
    sliding_window: int | None = None
    """API 1.9: the layer's window. Blocks wholly before a sequence's window are "freed": their
    block-table entries name one shared block of NaNs, which no kernel may read."""
    logits_soft_cap: float | None = None
    """API 1.9: the layer's score cap."""

    def freed_blocks(self, context: int, q_len: int) -> int:
        """Leading blocks of a sequence that lie wholly before its first query's window."""
        if self.sliding_window is None:
            return 0
        return max(0, context - q_len - self.sliding_window + 1) // self.block_size

    def layer_spec(self) -> AttentionLayerSpec:
        return AttentionLayerSpec(
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_size=self.head_size,
            scale=self.head_size**-0.5,
            block_size=self.block_size,
            dtype=self.dtype,
            causal=self.causal,
            sliding_window=self.sliding_window,
            logits_soft_cap=self.logits_soft_cap,
        )


@dataclass(kw_only=True)
class Batch:
    """Tensors of one :class:`Scenario`; caches are in the canonical ``[blocks, bs, kv, head]``."""

    scenario: Scenario
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    metadata: AttentionMetadata
    num_blocks: int
    key_cache: torch.Tensor
    value_cache: torch.Tensor


def _length_near_boundary(rng: random.Random, block_size: int, max_blocks: int) -> int:
    """A length that is often exactly on, just before or just after a block boundary."""
    blocks = rng.randint(1, max_blocks)
    return max(1, blocks * block_size + rng.choice((-1, 0, 1, rng.randint(-block_size + 1, 0))))


def random_scenario(
    *,
    seed: int,
    dtype: str,
    group: int,
    block_sizes: tuple[int, ...],
    head_sizes: tuple[int, ...],
) -> Scenario:
    """A seeded mixed batch: decodes, fresh prefills and prefill chunks on top of cached blocks.

    The block and head sizes cycle with the seed, so consecutive seeds cover all of them.
    """
    rng = random.Random(f"{seed}-{dtype}-{group}")
    block_size = block_sizes[seed % len(block_sizes)]
    head_size = head_sizes[(seed // len(block_sizes)) % len(head_sizes)]
    num_kv_heads = rng.choice((1, 2)) if group < 8 else 1
    decodes, prefills = [], []
    for _ in range(rng.randint(1, 5)):
        kind = rng.choice(("decode", "decode", "prefill", "chunk"))
        if kind == "decode":
            context = _length_near_boundary(rng, block_size, 3)
            decodes.append((context, 1))
        elif kind == "prefill":
            length = _length_near_boundary(rng, block_size, 2)
            prefills.append((length, length))
        else:
            cached = _length_near_boundary(rng, block_size, 2)
            new = rng.randint(2, block_size + 3)
            prefills.append((cached + new, new))
    return Scenario(
        seqs=tuple(decodes + prefills),
        num_heads=num_kv_heads * group,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        block_size=block_size,
        dtype=dtype,
        seed=seed,
    )


def make_batch(scenario: Scenario) -> Batch:
    """Materialise ``scenario`` with seeded random values (layout: see the module docstring)."""
    s = scenario
    dtype = getattr(torch, s.dtype)
    gen = torch.Generator().manual_seed(s.seed)
    rng = random.Random(s.seed)
    blocks_per_seq = [(ctx + s.block_size - 1) // s.block_size for ctx, _ in s.seqs]
    freed_per_seq = [s.freed_blocks(ctx, q_len) for ctx, q_len in s.seqs]
    num_blocks = sum(blocks_per_seq) - sum(freed_per_seq) + max(s.extra_blocks, 1)
    pool = list(range(num_blocks))
    rng.shuffle(pool)
    freed_block = pool[0]  # an unused block: stays NaN, and every freed table entry names it
    max_blocks = max(blocks_per_seq)
    block_tables = torch.zeros(len(s.seqs), max_blocks, dtype=torch.int32)
    starts, slots = [0], []
    for i, ((ctx, q_len), n, freed) in enumerate(zip(s.seqs, blocks_per_seq, freed_per_seq)):
        table = [freed_block] * freed + [pool.pop() for _ in range(n - freed)]
        block_tables[i, :n] = torch.tensor(table, dtype=torch.int32)
        starts.append(starts[-1] + q_len)
        slots += [
            table[p // s.block_size] * s.block_size + p % s.block_size
            for p in range(ctx - q_len, ctx)
        ]
    num_tokens = starts[-1]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    cache_shape = (num_blocks, s.block_size, s.num_kv_heads, s.head_size)
    key_cache = torch.full(cache_shape, float("nan"), dtype=dtype)
    value_cache = torch.full(cache_shape, float("nan"), dtype=dtype)
    prefix = [  # the cached prefix of every sequence, written by earlier steps
        (int(block_tables[i, p // s.block_size]), p % s.block_size)
        for i, (ctx, q_len) in enumerate(s.seqs)
        for p in range(s.freed_blocks(ctx, q_len) * s.block_size, ctx - q_len)
    ]
    if prefix:
        blocks, offsets = (torch.tensor(column) for column in zip(*prefix))
        key_cache[blocks, offsets] = randn(len(prefix), s.num_kv_heads, s.head_size)
        value_cache[blocks, offsets] = randn(len(prefix), s.num_kv_heads, s.head_size)
    num_decode = sum(q for _, q in s.seqs if q == 1)
    metadata = AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor([ctx for ctx, _ in s.seqs], dtype=torch.int32),
        block_tables=block_tables,
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        max_query_len=max(q for _, q in s.seqs),
        max_seq_len=max(ctx for ctx, _ in s.seqs),
        num_prefill_tokens=num_tokens - num_decode,
        num_decode_tokens=num_decode,
        num_seqs=len(s.seqs),
    )
    metadata.query_start_loc_cpu = metadata.query_start_loc
    metadata.seq_lens_cpu = metadata.seq_lens
    return Batch(
        scenario=s,
        query=randn(num_tokens, s.num_heads, s.head_size),
        key=randn(num_tokens, s.num_kv_heads, s.head_size),
        value=randn(num_tokens, s.num_kv_heads, s.head_size),
        metadata=metadata,
        num_blocks=num_blocks,
        key_cache=key_cache,
        value_cache=value_cache,
    )


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, itself when already there.

    ``Tensor.to`` copies a CPU tensor asked onto ``cpu:0`` although CPU tensors report plain
    ``cpu``; the suite runs CPU backends on the very tensors the reference reads, without copies.
    """
    here = tensor.device
    if here.type == device.type and (here.index is None or here.index == device.index):
        return tensor
    return tensor.to(device)


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with its inputs and metadata tensors on ``device``, as core hands them to a backend.

    The ``*_cpu`` twins of the metadata stay on the CPU. The initial caches stay where they are:
    a test copies them into a cache of the backend's own layout, allocated on ``device``.
    """
    md = batch.metadata
    metadata = dataclasses.replace(
        md,
        query_start_loc=to_device(md.query_start_loc, device),
        seq_lens=to_device(md.seq_lens, device),
        block_tables=to_device(md.block_tables, device),
        slot_mapping=to_device(md.slot_mapping, device),
        query_start_loc_cpu=(
            md.query_start_loc if md.query_start_loc_cpu is None else md.query_start_loc_cpu
        ).cpu(),
        seq_lens_cpu=(md.seq_lens if md.seq_lens_cpu is None else md.seq_lens_cpu).cpu(),
    )
    return dataclasses.replace(
        batch,
        query=to_device(batch.query, device),
        key=to_device(batch.key, device),
        value=to_device(batch.value, device),
        metadata=metadata,
    )


def reference_forward(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output, key cache and value cache after one reference forward pass over ``batch``."""
    key_cache, value_cache = batch.key_cache.clone(), batch.value_cache.clone()
    reference.write_kv(batch.key, batch.value, key_cache, value_cache, batch.metadata.slot_mapping)
    out = torch.empty_like(batch.query)
    scale = batch.scenario.head_size**-0.5
    reference.paged_attention(
        batch.query,
        key_cache,
        value_cache,
        batch.metadata,
        scale,
        out,
        causal=batch.scenario.causal,
        sliding_window=batch.scenario.sliding_window,
        logits_soft_cap=batch.scenario.logits_soft_cap,
    )
    return out, key_cache, value_cache
