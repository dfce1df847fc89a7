"""The CUDA platform: NVIDIA GPUs through torch and heron-cuda's kernels.

Resolved by core only in the worker of the selected backend, so importing torch here is fine.
The logic is shared with heron-rocm in :mod:`heron_cuda.gpu_platform`.
"""

from __future__ import annotations

from typing import ClassVar

from heron_cuda.communicator import CudaCommunicator
from heron_cuda.gpu_platform import GpuPlatform


class CudaPlatform(GpuPlatform):
    """NVIDIA GPUs (compute capability 8.0 and newer for the prebuilt kernels)."""

    name: ClassVar[str] = "cuda"
    package = "heron_cuda"
    attention_ref = "heron_cuda.attention:CudaAttentionBackend"
    communicator_cls = CudaCommunicator
