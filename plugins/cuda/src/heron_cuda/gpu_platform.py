"""What the CUDA and ROCm platforms share: both drive their GPUs through ``torch.cuda``.

ROCm builds of torch present HIP devices through the ``torch.cuda`` API, the ``"cuda"`` device type
and RCCL behind the ``"nccl"`` backend, so one class holds the logic and each backend's platform only
names its package, kernels and communicator. Like ``ops.py`` and ``gpu_attention.py``, this file is
installed into both wheels from this one source.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import torch

from heron_interfaces import Capabilities, CommContext, Communicator, MemoryProfiler, Platform

from .gpu_attention import SUPPORTED_BLOCK_SIZES, SUPPORTED_DTYPES
from .memory import UTILIZATION_ENV, GpuMemoryProfiler


class GpuPlatform(Platform):
    """A ``torch.cuda`` device with this repository's GPU kernels; subclasses name the package."""

    device_type: ClassVar[str] = "cuda"
    dist_backend: ClassVar[str] = "nccl"
    package: ClassVar[str]
    """The import name whose ``_C`` holds the compiled kernels (``heron_cuda``, ``heron_rocm``)."""
    attention_ref: ClassVar[str]
    """Lazy ``"pkg.mod:Class"`` reference of the backend's attention class."""
    communicator_cls: ClassVar[type[Communicator]]

    @classmethod
    def kernels(cls) -> Any:
        return importlib.import_module(f"{cls.package}._C")

    @classmethod
    def device_count(cls) -> int:
        return torch.cuda.device_count()

    @classmethod
    def set_device(cls, index: int) -> None:
        torch.cuda.set_device(index)

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            dtypes=SUPPORTED_DTYPES,
            kv_cache_dtypes=SUPPORTED_DTYPES,
            block_sizes=SUPPORTED_BLOCK_SIZES,
            head_sizes=tuple(cls.kernels().HEAD_SIZES),
            default_dtype="bfloat16",
            pinned_memory=True,
            # The kernels use the current stream and never sync, so decode steps are captured
            # as CUDA graphs (hipGraph on ROCm) by GpuKernelOps.capture_graph.
            graph_capture=True,
        )

    @classmethod
    def kernel_ops(cls) -> str:
        return f"{cls.package}.gpu_kernel_ops:GpuKernelOps"

    @classmethod
    def attention_backend(cls) -> str:
        return cls.attention_ref

    @classmethod
    def communicator(cls, ctx: CommContext) -> Communicator:
        return cls.communicator_cls(ctx)

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
