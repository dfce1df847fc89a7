"""The ROCm platform: AMD GPUs through a ROCm build of torch and heron-rocm's kernels.

ROCm torch presents HIP devices through the ``torch.cuda`` API and the ``"cuda"`` device type, and
RCCL through the ``"nccl"`` distributed backend, so this mirrors the CUDA platform with AMD's
runtime underneath. Resolved by core only in the worker of the selected backend.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from heron_interfaces import Capabilities, CommContext, Communicator, MemoryProfiler, Platform
from heron_rocm.communicator import RocmCommunicator
from heron_rocm.gpu_attention import SUPPORTED_BLOCK_SIZES, SUPPORTED_DTYPES
from heron_rocm.memory import UTILIZATION_ENV, GpuMemoryProfiler


class RocmPlatform(Platform):
    """AMD Instinct GPUs: the kernels target gfx90a, and gfx942 when the compiler knows it."""

    name: ClassVar[str] = "rocm"
    device_type: ClassVar[str] = "cuda"
    dist_backend: ClassVar[str] = "nccl"

    @classmethod
    def device_count(cls) -> int:
        return torch.cuda.device_count()

    @classmethod
    def set_device(cls, index: int) -> None:
        torch.cuda.set_device(index)

    @classmethod
    def capabilities(cls) -> Capabilities:
        from heron_rocm import _C

        return Capabilities(
            dtypes=SUPPORTED_DTYPES,
            kv_cache_dtypes=SUPPORTED_DTYPES,
            block_sizes=SUPPORTED_BLOCK_SIZES,
            head_sizes=tuple(_C.HEAD_SIZES),
            default_dtype="bfloat16",
            pinned_memory=True,
            # Capture (hipGraph) has not been validated on hardware with these kernels yet.
            graph_capture=False,
        )

    @classmethod
    def attention_backend(cls) -> str:
        return "heron_rocm.attention:RocmAttentionBackend"

    @classmethod
    def communicator(cls, ctx: CommContext) -> Communicator:
        return RocmCommunicator(ctx)

    @classmethod
    def memory_profiler(cls) -> MemoryProfiler:
        return GpuMemoryProfiler()

    @classmethod
    def synchronize(cls) -> None:
        torch.cuda.synchronize()

    @classmethod
    def seed(cls, seed: int) -> None:
        torch.cuda.manual_seed_all(seed)

    @classmethod
    def memory_budget_hint(cls) -> str:
        return (
            f"raise {UTILIZATION_ENV} (a fraction of GPU memory, default left to core), or lower "
            "max_model_len or max_num_seqs"
        )
