"""The ROCm platform: AMD GPUs through a ROCm build of torch and heron-rocm's kernels.

ROCm torch presents HIP devices through the ``torch.cuda`` API and RCCL through ``"nccl"``, so the
logic is the CUDA platform's, shared through ``gpu_platform`` (installed into this package from
heron-cuda's sources). Resolved by core only in the worker of the selected backend.
"""

from __future__ import annotations

from typing import ClassVar

from heron_rocm.communicator import RocmCommunicator
from heron_rocm.gpu_platform import GpuPlatform


class RocmPlatform(GpuPlatform):
    """AMD Instinct GPUs: the kernels target gfx90a, and gfx942 when the compiler knows it."""

    name: ClassVar[str] = "rocm"
    package = "heron_rocm"
    attention_ref = "heron_rocm.attention:RocmAttentionBackend"
    communicator_cls = RocmCommunicator
