"""``CpuPlatform``: what the CPU backend offers and the factories for its parts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from heron_cpu.memory import DEFAULT_KV_SPACE_GIB, KV_SPACE_ENV
from heron_interfaces import Capabilities, CommContext, Communicator, MemoryProfiler, Platform

if TYPE_CHECKING:
    from heron_interfaces import AttentionBackend
    from heron_interfaces.kernel_ops import KernelOps

BLOCK_SIZES = (16, 32, 64, 128)
HEAD_SIZES = (64, 80, 96, 128, 256)


class CpuPlatform(Platform):
    """The host CPU as one device; kernels from :mod:`heron_cpu.ops`, collectives over gloo."""

    name = "cpu"
    device_type = "cpu"
    dist_backend = "gloo"

    @classmethod
    def device_count(cls) -> int:
        return 1

    @classmethod
    def capabilities(cls) -> Capabilities:
        """bfloat16 is the default only on CPUs with AVX512-BF16: elsewhere torch's bf16 matmuls
        run through slow emulation, while the attention kernels accept both dtypes everywhere."""
        from heron_cpu._kernels import cpu_features

        native_bf16 = cpu_features().get("avx512_bf16", False)
        dtypes = ("bfloat16", "float32")
        return Capabilities(
            dtypes=dtypes,
            kv_cache_dtypes=dtypes,
            block_sizes=BLOCK_SIZES,
            head_sizes=HEAD_SIZES,
            default_dtype="bfloat16" if native_bf16 else "float32",
        )

    @classmethod
    def attention_backend(cls) -> type[AttentionBackend] | str:
        return "heron_cpu.attention:CpuAttentionBackend"

    @classmethod
    def kernel_ops(cls) -> type[KernelOps] | str:
        return "heron_cpu.kernel_ops:CpuKernelOps"

    @classmethod
    def communicator(cls, ctx: CommContext) -> Communicator:
        from heron_cpu.communicator import CpuCommunicator

        return CpuCommunicator(ctx)

    @classmethod
    def memory_profiler(cls) -> MemoryProfiler:
        from heron_cpu.memory import CpuMemoryProfiler

        return CpuMemoryProfiler()

    @classmethod
    def memory_budget_hint(cls) -> str:
        return (
            f"set {KV_SPACE_ENV} to the GiB of RAM the KV cache may use (default "
            f"{DEFAULT_KV_SPACE_GIB:g}), or lower max_model_len or max_num_seqs"
        )
