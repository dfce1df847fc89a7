"""What a model needs to know about where and how it runs, fixed at build time."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from heron.distributed.pipeline import SINGLE_STAGE, PipelineStage
from heron.distributed.tensor_parallel import SINGLE, TensorParallel
from heron_interfaces import AttentionBackend
from heron_interfaces.kernel_ops import KernelOps


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelContext:
    """Passed to every model constructor instead of module-global state.

    Attributes:
        dtype: dtype of the weights, activations and KV cache.
        device: device the parameters are created on (directly, without a CPU copy first).
        attention_cls: the selected backend's attention class; one instance per layer.
        block_size: KV cache block size, part of each layer's :class:`AttentionLayerSpec`.
        ops: the platform's kernels for matmuls, norms, rotary and activations (shared by all
            layers); the plain-torch reference unless the backend ships its own.
        tp: the tensor-parallel group: which shard of each sharded weight this process holds.
        pp: the pipeline stage: which layers this process holds.
    """

    dtype: torch.dtype
    device: torch.device
    attention_cls: type[AttentionBackend]
    block_size: int
    ops: KernelOps = field(default_factory=KernelOps)
    tp: TensorParallel = SINGLE
    pp: PipelineStage = SINGLE_STAGE
