"""The model's elementwise ops on this package's kernels, and decode steps as CUDA/HIP graphs.

Core's layers call :class:`~heron_interfaces.kernel_ops.KernelOps`; this subclass routes RMSNorm
(the base class's residual add + RMSNorm calls it too), SiLU-and-multiply and rotary embedding to
the compiled kernels, which
round where the plain-torch reference rounds (see ``round_to`` in ``heron_gpu_compat.h``), and
leaves embedding and matmuls to torch (cuBLAS / hipBLASLt already run those at the GPU's rate).
Layouts the kernels do not take (a 3-D strided view under Qwen3's per-head norms, say) go to the
reference implementation.

:meth:`GpuKernelOps.capture_graph` hands core a :class:`GpuStepGraph`: a ``torch.cuda.CUDAGraph``
(a hipGraph on ROCm builds of torch) that captures every launch on the capture stream, torch's
own kernels included. A single-sequence decode step of a 30-layer model is ~400 launches; eager
Python issues them slower than the GPU runs them, so replaying a graph is what makes small decode
batches fast.

This file is shared verbatim by heron_cuda and heron_rocm (plugins/rocm's CMake installs it).
"""

from __future__ import annotations

from typing import Any

import torch

from heron_interfaces.kernel_ops import KernelOps


class GpuStepGraph:
    """One forward pass captured as a device graph; the protocol of ``heron_interfaces.StepGraph``.

    Capture records without running anything, so leaving the context replays the graph once: the
    captured pass then has its result, as the protocol promises. Graphs of one :class:`GpuKernelOps`
    share a memory pool, as vLLM's do, since only one of them runs at a time.
    """

    records_torch_ops = True
    """Every device operation issued while capturing is in the graph, not only this package's
    kernels, so core need not refuse a pass in which torch ran a matmul or a copy."""

    def __init__(self, pool: Any) -> None:
        self._graph = torch.cuda.CUDAGraph()
        self._pool = pool
        self._capture: Any = None

    def __enter__(self) -> GpuStepGraph:
        self._capture = torch.cuda.graph(self._graph, pool=self._pool)
        self._capture.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        capture, self._capture = self._capture, None
        capture.__exit__(*exc_info)
        if exc_info[0] is None:
            self._graph.replay()

    def replay(self) -> None:
        self._graph.replay()


def _plain_rows(t: torch.Tensor) -> bool:
    """Rows the kernels can index as ``row * stride + feature``."""
    return (t.dim() == 2 and (t.stride(1) == 1 or t.shape[1] <= 1)) or t.is_contiguous()


class GpuKernelOps(KernelOps):
    """The compiled elementwise kernels where their layout fits, torch elsewhere."""

    name = __package__.removeprefix("heron_") if __package__ else "gpu"

    def __init__(self) -> None:
        from . import ops

        self._ops = ops
        self._pool: Any = None
        # id(model's table) -> (that table, its float32 copy); the table is held, so its id stays
        # unique (tables are never written after the model is built). An address would not do: a freed table's memory
        # goes to the next table allocated, and the copy would be stale.
        self._float_caches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- step graphs -----------------------------------------------------------------------------
    def capture_graph(self, num_tokens: int) -> GpuStepGraph | None:
        if not torch.cuda.is_available():
            return None
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return GpuStepGraph(self._pool)

    # -- mixture of experts (heron_interfaces 1.11) ----------------------------------------------
    def prepare_moe(self, w13: torch.Tensor, w2: torch.Tensor) -> Any | None:
        """The experts for the fused kernels (:mod:`.moe_ops`) when they are on the GPU in a dtype
        the kernels take; None otherwise, and core runs its plain-torch experts."""
        from . import moe_ops

        return moe_ops.prepare_experts(w13, w2)

    def fused_moe(
        self, x: torch.Tensor, prepared: Any, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> torch.Tensor:
        """Route-grouped expert GEMMs in five launches with no host sync (graph-capturable);
        host tensors, and more experts per token than the kernels order (``MAX_TOP_K``), go to
        the contract's reference. Invalid input raises ``ValueError``."""
        from . import moe_ops

        if not isinstance(prepared, moe_ops.GpuExperts):
            return super().fused_moe(x, prepared, topk_ids, topk_weights)
        if not x.is_cuda or (topk_ids.dim() == 2 and topk_ids.shape[1] > moe_ops.MAX_TOP_K):
            return super().fused_moe(x, (prepared.w13, prepared.w2), topk_ids, topk_weights)
        if x.dim() == 2 and x.shape[1] > 1 and x.stride(1) != 1:
            x = x.contiguous()
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        moe_ops.fused_moe(
            out, x, prepared.w13, prepared.w2, topk_ids.contiguous(), topk_weights.contiguous()
        )
        return out

    # -- normalisation ---------------------------------------------------------------------------
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if not (
            x.is_cuda
            and x.dtype in self._ops.ELEMENTWISE_DTYPES
            and weight.dtype == x.dtype
            and weight.is_contiguous()
            and _plain_rows(x)
        ):
            return super().rms_norm(x, weight, eps)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        self._ops.rms_norm(out, x, weight, eps)
        return out

    # -- activation ------------------------------------------------------------------------------
    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        if not (
            x.is_cuda
            and x.dtype in self._ops.ELEMENTWISE_DTYPES
            and x.dim() >= 1
            and x.shape[-1] % 2 == 0
            and _plain_rows(x)
        ):
            return super().silu_and_mul(x)
        out = torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=x.dtype, device=x.device)
        self._ops.silu_and_mul(out, x)
        return out

    # -- rotary embedding ------------------------------------------------------------------------
    def rotary(
        self, positions: torch.Tensor, heads: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> torch.Tensor:
        if not (
            heads.is_cuda
            and heads.dim() == 3
            and heads.shape[1] >= 1
            and heads.dtype in self._ops.ELEMENTWISE_DTYPES
            and positions.dtype == torch.int64
            and positions.is_contiguous()
            and cos_sin_cache.dim() == 2
            and cos_sin_cache.shape[1] % 2 == 0
            and 0 < cos_sin_cache.shape[1] <= heads.shape[2]
        ):
            return super().rotary(positions, heads, cos_sin_cache)
        out = heads.clone(memory_format=torch.contiguous_format)  # inputs are never modified
        # The kernel rotates two head sets in one launch; any split of ``out`` works.
        self._ops.rotary_embedding(
            positions, out[:, :1], out[:, 1:], self._float_cache(cos_sin_cache), heads.shape[2]
        )
        return out

    def _float_cache(self, cache: torch.Tensor) -> torch.Tensor:
        """The model's cos/sin table (model dtype) widened to the float32 the kernel reads.

        Widening is exact, and the kernel rounds each product to the model dtype, so the result
        equals the reference's half-precision arithmetic. Made once per table, on the first
        (eager) step: never inside a graph capture.
        """
        if cache.dtype == torch.float32 and cache.is_contiguous():
            return cache
        entry = self._float_caches.get(id(cache))
        if entry is None or entry[0] is not cache:
            if len(self._float_caches) >= 8:  # one table per model; tests make many
                self._float_caches.clear()
            entry = (cache, cache.float().contiguous())
            self._float_caches[id(cache)] = entry
        return entry[1]
