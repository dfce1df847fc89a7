"""The XPU platform: Intel GPUs through ``torch.xpu`` and heron-xpu's Triton kernels.

Resolved by core only in the worker of the selected backend, so importing torch here is fine; the
device itself is touched only by the methods core calls there (``device_count``, ``set_device``,
the memory profiler).

:class:`XpuInterpretPlatform` is the same backend in Triton's interpreter (``HERON_XPU_INTERPRET=1``):
the same attention, kernel ops and communicator classes, on CPU tensors with gloo collectives and a
host-RAM KV budget. Only the device-facing members differ.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from heron_interfaces import Capabilities, CommContext, Communicator, MemoryProfiler, Platform
from heron_xpu.attention import SUPPORTED_BLOCK_SIZES, SUPPORTED_DTYPES
from heron_xpu.communicator import XpuCommunicator
from heron_xpu.memory import (
    INTERPRET_DEFAULT_KV_SPACE_GIB,
    INTERPRET_KV_SPACE_ENV,
    XpuMemoryProfiler,
    interpret_memory_profiler,
)


class XpuPlatform(Platform):
    """Intel GPUs (Arc, Data Center GPU Max/Flex) as ``torch.xpu`` devices."""

    name: ClassVar[str] = "xpu"
    device_type: ClassVar[str] = "xpu"
    dist_backend: ClassVar[str] = "xccl"
    default_dtype: ClassVar[str] = "bfloat16"

    @classmethod
    def device_count(cls) -> int:
        return torch.xpu.device_count()

    @classmethod
    def set_device(cls, index: int) -> None:
        torch.xpu.set_device(index)

    @classmethod
    def device_name(cls, index: int = 0) -> str:
        return f"xpu:{index} ({torch.xpu.get_device_name(index)})"

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            dtypes=SUPPORTED_DTYPES,
            kv_cache_dtypes=SUPPORTED_DTYPES,
            block_sizes=SUPPORTED_BLOCK_SIZES,
            head_sizes=None,  # any head size up to 256 (the attention backend checks)
            default_dtype=cls.default_dtype,
        )

    @classmethod
    def attention_backend(cls) -> str:
        return "heron_xpu.attention:XpuAttentionBackend"

    @classmethod
    def kernel_ops(cls) -> str:
        return "heron_xpu.kernel_ops:XpuKernelOps"

    @classmethod
    def communicator(cls, ctx: CommContext) -> Communicator:
        return XpuCommunicator(ctx)

    @classmethod
    def memory_profiler(cls) -> MemoryProfiler:
        return XpuMemoryProfiler()

    @classmethod
    def synchronize(cls) -> None:
        torch.xpu.synchronize()

    @classmethod
    def seed(cls, seed: int) -> None:
        torch.xpu.manual_seed_all(seed)

    @classmethod
    def memory_budget_hint(cls) -> str:
        return "raise memory_utilization, or lower max_model_len or max_num_seqs"


class XpuInterpretPlatform(XpuPlatform):
    """The XPU backend's kernels in Triton's interpreter, on the host CPU (``HERON_XPU_INTERPRET=1``).

    For developing and testing the kernels without an Intel GPU: slow (every kernel program runs
    in Python) and float32 by default, where the interpreter is exact.
    """

    device_type: ClassVar[str] = "cpu"
    dist_backend: ClassVar[str] = "gloo"
    default_dtype: ClassVar[str] = "float32"

    @classmethod
    def device_count(cls) -> int:
        return 1

    @classmethod
    def set_device(cls, index: int) -> None:
        """The host is the only device."""

    @classmethod
    def device_name(cls, index: int = 0) -> str:
        return "cpu (Triton interpreter)"

    @classmethod
    def memory_profiler(cls) -> MemoryProfiler:
        return interpret_memory_profiler()

    @classmethod
    def synchronize(cls) -> None:
        """Interpreted kernels finish before their launch returns."""

    @classmethod
    def seed(cls, seed: int) -> None:
        """Core seeds torch's CPU generator itself."""

    @classmethod
    def memory_budget_hint(cls) -> str:
        return (
            f"set {INTERPRET_KV_SPACE_ENV} to the GiB of RAM the KV cache may use (default "
            f"{INTERPRET_DEFAULT_KV_SPACE_GIB:g}), or lower max_model_len or max_num_seqs"
        )
