"""The CUDA attention backend: the shared paged-attention implementation under the name "cuda"."""

from __future__ import annotations

from heron_cuda.gpu_attention import GpuAttentionBackend


class CudaAttentionBackend(GpuAttentionBackend):
    """Paged attention with heron-cuda's kernels; see :mod:`heron_cuda.gpu_attention`."""

    name = "cuda"
