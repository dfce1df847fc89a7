"""Per-call timings of the CPU kernels on a decode step shaped like SmolLM2-135M's.

64 sequences, one new token each, contexts of 100-350 tokens; 9 query heads over 3 KV heads of
size 64, block size 16 (``--block-size``), bfloat16. Each sequence's blocks are scattered over a cache of 8000 blocks
and the calls rotate over several layers' caches and several batches (more bytes than the
last-level cache holds), so
the KV memory is cold as it is in the engine rather than all sequences sharing a few hot blocks.

    python plugins/cpu/benchmarks/bench_decode.py [--repeats 5] [--threads N] [--prefill]
        [--block-size 16|32|64|128]

Prints the minimum over repeats of the mean per-call time (the machine may be shared: the minimum
is the least disturbed measurement).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from heron_cpu import ops
from heron_cpu.attention import CpuAttentionBackend
from heron_interfaces import AttentionLayerSpec, AttentionMetadata

NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE = 9, 3, 64
NUM_LAYERS, NUM_SEQS = 8, 64
CACHE_TOKENS = 128_000  # per layer cache, whatever the block size
BLOCK_SIZE = 16  # --block-size sets it
NUM_BLOCKS = CACHE_TOKENS // BLOCK_SIZE
# Batches over disjoint blocks: calls cycle over NUM_LAYERS caches x NUM_BATCHES batches, whose
# KV bytes (~500 MB) are more than the last-level cache holds.
NUM_BATCHES = 5


def _decode_batch(gen: torch.Generator, q_len: int, blocks: torch.Tensor) -> dict:
    seq_lens = torch.randint(100, 351, (NUM_SEQS,), generator=gen, dtype=torch.int32)
    max_blocks = (int(seq_lens.max()) + BLOCK_SIZE - 1) // BLOCK_SIZE
    block_tables = blocks[: NUM_SEQS * max_blocks].view(NUM_SEQS, max_blocks).contiguous()
    query_start_loc = torch.arange(0, (NUM_SEQS + 1) * q_len, q_len, dtype=torch.int32)
    positions = torch.cat([torch.arange(int(n) - q_len, int(n)) for n in seq_lens])
    blocks = block_tables.gather(1, (positions.view(NUM_SEQS, q_len) // BLOCK_SIZE).long()).view(-1)
    slot_mapping = blocks.long() * BLOCK_SIZE + positions % BLOCK_SIZE
    tokens = NUM_SEQS * q_len
    qkv = torch.randn(tokens, NUM_HEADS + 2 * NUM_KV_HEADS, HEAD_SIZE, generator=gen)
    qkv = qkv.to(torch.bfloat16)
    return {
        "query": qkv[:, :NUM_HEADS],
        "key": qkv[:, NUM_HEADS : NUM_HEADS + NUM_KV_HEADS],
        "value": qkv[:, NUM_HEADS + NUM_KV_HEADS :],
        "metadata": AttentionMetadata(
            num_seqs=NUM_SEQS,
            num_prefill_tokens=0 if q_len == 1 else tokens,
            num_decode_tokens=tokens if q_len == 1 else 0,
            query_start_loc=query_start_loc,
            seq_lens=seq_lens,
            block_tables=block_tables,
            slot_mapping=slot_mapping,
            max_query_len=q_len,
            max_seq_len=int(seq_lens.max()),
        ),
    }


def _calls(
    gen: torch.Generator, q_len: int, caches: list[torch.Tensor], backend: CpuAttentionBackend
) -> list[tuple[str, Callable[[int], None]]]:
    """``(label, fn(call_index))`` for the two ops and the backend's forward (both together)."""
    # Distinct random blocks for every sequence, as a long-running engine's allocator leaves them.
    perm = torch.randperm(NUM_BLOCKS, generator=gen, dtype=torch.int32)
    per_batch = NUM_BLOCKS // NUM_BATCHES
    batches = [
        _decode_batch(gen, q_len, perm[i * per_batch : (i + 1) * per_batch])
        for i in range(NUM_BATCHES)
    ]
    outs = [torch.empty_like(b["query"]) for b in batches]
    scale = backend.spec.scale

    def attention(i: int) -> None:
        b = batches[i % NUM_BATCHES]
        m = b["metadata"]
        ops.paged_attention(
            outs[i % NUM_BATCHES],
            b["query"],
            caches[i // NUM_BATCHES % NUM_LAYERS],
            m.query_start_loc,
            m.seq_lens,
            m.block_tables,
            scale,
            m.num_seqs,
        )

    def write(i: int) -> None:
        b = batches[i % NUM_BATCHES]
        cache = caches[i // NUM_BATCHES % NUM_LAYERS]
        ops.write_kv(b["key"], b["value"], cache, b["metadata"].slot_mapping)

    def forward(i: int) -> None:
        b = batches[i % NUM_BATCHES]
        cache = caches[i // NUM_BATCHES % NUM_LAYERS]
        backend.forward(
            b["query"], b["key"], b["value"], cache, b["metadata"], outs[i % NUM_BATCHES]
        )

    return [("paged_attention", attention), ("write_kv", write), ("forward", forward)]


def _time(fn, calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            fn(i)
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def main() -> None:
    global BLOCK_SIZE, NUM_BLOCKS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--prefill", action="store_true", help="also time 64 x 32-token chunks")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--block-size", type=int, default=16, choices=ops.BLOCK_SIZES)
    args = parser.parse_args()
    BLOCK_SIZE, NUM_BLOCKS = args.block_size, CACHE_TOKENS // args.block_size
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    shape = CpuAttentionBackend.kv_cache_shape(NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_SIZE)
    caches = [torch.randn(shape, generator=gen).to(torch.bfloat16) for _ in range(NUM_LAYERS)]
    spec = AttentionLayerSpec(
        num_heads=NUM_HEADS,
        num_kv_heads=NUM_KV_HEADS,
        head_size=HEAD_SIZE,
        scale=HEAD_SIZE**-0.5,
        block_size=BLOCK_SIZE,
        dtype="bfloat16",
    )
    backend = CpuAttentionBackend(spec)
    print(f"isa={ops.isa()} threads={torch.get_num_threads()} block_size={BLOCK_SIZE}")
    steps = [("decode", 1)] + ([("prefill32", 32)] if args.prefill else [])
    for name, q_len in steps:
        calls = args.calls if q_len == 1 else max(4, args.calls // 8)
        for label, fn in _calls(gen, q_len, caches, backend):
            fn(0)
            print(f"{name:10s} {label:16s} {_time(fn, calls, args.repeats):9.1f} us/call")


if __name__ == "__main__":
    main()
