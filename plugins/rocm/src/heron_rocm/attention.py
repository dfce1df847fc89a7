"""The ROCm attention backend: the shared paged-attention implementation under the name "rocm"."""

from __future__ import annotations

from heron_rocm.gpu_attention import GpuAttentionBackend


class RocmAttentionBackend(GpuAttentionBackend):
    """Paged attention with heron-rocm's kernels (HIP builds of heron-cuda's sources)."""

    name = "rocm"
