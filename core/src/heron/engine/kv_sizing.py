"""The one KV-budget formula: backends report memory numbers, core decides how many blocks fit."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from heron_interfaces import MemorySnapshot

logger = logging.getLogger(__name__)


class KVCacheTooSmallError(RuntimeError):
    """The memory left for the KV cache cannot hold even one sequence of max_model_len tokens."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KVPlan:
    num_blocks: int
    block_size: int
    bytes_per_block: int
    source: str

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block


def plan_kv_cache(
    *,
    snapshot: MemorySnapshot,
    bytes_per_block: int,
    block_size: int,
    weights_bytes: int,
    peak_activation_bytes: int,
    memory_utilization: float,
    max_model_len: int,
    max_num_seqs: int,
    override: int | None,
    hint: str,
) -> KVPlan:
    """blocks = (budget − weights − peak activations) / bytes per block.

    A platform with an explicit KV budget (CPU: ``HERON_CPU_KVCACHE_SPACE``) reports it in the
    snapshot and that budget is the KV cache alone. Otherwise the budget is the device's total memory
    times ``memory_utilization``, from which weights and the profiled activation peak are taken.
    More blocks than ``max_num_seqs`` full-length sequences could ever use are not allocated.
    """
    blocks_per_seq = -(-max_model_len // block_size)
    if override is not None:
        num_blocks, source = override, "num_gpu_blocks_override"
    else:
        if snapshot.kv_budget is not None:
            budget, source = snapshot.kv_budget, "the platform's KV cache space"
        else:
            budget = (
                int(snapshot.total * memory_utilization) - weights_bytes - peak_activation_bytes
            )
            source = f"{memory_utilization:.0%} of device memory after weights and activations"
        num_blocks = max(0, budget // bytes_per_block)
        useful = blocks_per_seq * max_num_seqs + 1
        if num_blocks > useful:
            num_blocks = useful
            source += f", capped at what {max_num_seqs} sequences of {max_model_len} tokens use"
    if num_blocks < blocks_per_seq:
        raise KVCacheTooSmallError(
            f"the KV cache has room for {num_blocks * block_size} tokens ({num_blocks} blocks of "
            f"{block_size}), fewer than max_model_len={max_model_len}; {hint}"
        )
    return KVPlan(
        num_blocks=num_blocks,
        block_size=block_size,
        bytes_per_block=bytes_per_block,
        source=source,
    )
