"""The CUDA platform: what core needs to drive NVIDIA GPUs through torch and heron-cuda's kernels.

Resolved by core only in the worker of the selected backend, so importing torch here is fine.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from heron_cuda.communicator import CudaCommunicator
from heron_cuda.gpu_attention import SUPPORTED_BLOCK_SIZES, SUPPORTED_DTYPES
from heron_cuda.memory import UTILIZATION_ENV, GpuMemoryProfiler
from heron_interfaces import Capabilities, CommContext, Communicator, MemoryProfiler, Platform


class CudaPlatform(Platform):
    """NVIDIA GPUs (compute capability 8.0 and newer for the prebuilt kernels)."""

    name: ClassVar[str] = "cuda"
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
        from heron_cuda import _C

        return Capabilities(
            dtypes=SUPPORTED_DTYPES,
            kv_cache_dtypes=SUPPORTED_DTYPES,
            block_sizes=SUPPORTED_BLOCK_SIZES,
            head_sizes=tuple(_C.HEAD_SIZES),
            default_dtype="bfloat16",
            pinned_memory=True,
            # The kernels use the current stream and never sync, but capture has not been
            # validated on hardware yet; core keeps eager mode until it is.
            graph_capture=False,
        )

    @classmethod
    def attention_backend(cls) -> str:
        return "heron_cuda.attention:CudaAttentionBackend"

    @classmethod
    def communicator(cls, ctx: CommContext) -> Communicator:
        return CudaCommunicator(ctx)

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
