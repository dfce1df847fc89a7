"""What heron-cuda's expert grouping (``moe_align``) must produce, computed with torch.

Shared by the host test of the kernels' bookkeeping (test_moe_logic_host.py) and the GPU kernel
tests (test_cuda_moe_kernels.py). Layout: ``plugins/cuda/csrc/moe_logic.h``.
"""

from __future__ import annotations

import torch

BLOCK_M, CHUNK = 16, 256  # moe::kBlockM, moe::kChunk


def torch_alignment(
    flat: torch.Tensor, num_experts: int, max_tiles: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(offsets, sorted_slots, tile_experts, chunk bases)`` from a stable sort and bincounts;
    entries naming no expert are left out."""
    flat = flat.cpu()
    valid = (flat >= 0) & (flat < num_experts)
    counts = torch.bincount(flat[valid], minlength=num_experts)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(padded, 0)])
    slots = torch.full((max_tiles * BLOCK_M,), -1, dtype=torch.long)
    entries = torch.arange(flat.numel())
    for e in range(num_experts):
        mine = entries[flat == e]  # ascending entry order: the sort is stable
        slots[offsets[e] : offsets[e] + mine.numel()] = mine
    tiles = torch.full((max_tiles,), -1, dtype=torch.long)
    for e in range(num_experts):
        tiles[offsets[e] // BLOCK_M : offsets[e + 1] // BLOCK_M] = e
    chunks = -(-flat.numel() // CHUNK)
    per_chunk = torch.zeros(chunks, num_experts, dtype=torch.long)
    for c in range(chunks):
        part = flat[c * CHUNK : (c + 1) * CHUNK]
        part = part[(part >= 0) & (part < num_experts)]
        per_chunk[c] = torch.bincount(part, minlength=num_experts)
    bases = torch.cumsum(per_chunk, 0) - per_chunk  # exclusive prefix over chunks, per expert
    return offsets, slots, tiles, bases.reshape(-1)
