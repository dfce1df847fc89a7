"""The TPU platforms: a real TPU through torch-tpu, and Pallas's interpreter on CPU tensors.

Both declare static shapes (API 1.6): a TPU runs compiled programs of fixed shapes, so core pads
each step to a padding bucket and compiles every bucket at start-up. Interpreter mode keeps that
contract, so the bucketed, padded steps that a TPU will run are the ones tested on a CPU host.

Buckets: the token and sequence counts the kernels are compiled for. A real TPU gets powers of two
up to 8192 tokens and 256 sequences; interpreter mode, where each compile takes seconds, a short
list up to 64 tokens and 8 sequences. ``HERON_TPU_TOKEN_BUCKETS`` / ``HERON_TPU_SEQ_BUCKETS``
(comma-separated) override either. :meth:`check_config` lowers the engine's step limits to the
largest bucket, so that no step can outgrow what was compiled.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

from heron_interfaces import (
    Capabilities,
    CommContext,
    Communicator,
    ConfigChange,
    MemoryProfiler,
    Platform,
)
from heron_tpu.attention import SUPPORTED_BLOCK_SIZES, SUPPORTED_DTYPES, SUPPORTED_HEAD_SIZES
from heron_tpu.availability import tpu_chips

if TYPE_CHECKING:
    from heron_interfaces import AttentionBackend
    from heron_interfaces.kernel_ops import KernelOps

TOKEN_BUCKETS_ENV = "HERON_TPU_TOKEN_BUCKETS"
SEQ_BUCKETS_ENV = "HERON_TPU_SEQ_BUCKETS"
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048
"""Core's step budget when the user sets none (``heron.engine``), restated to clamp it."""


def _buckets(env: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        values = tuple(sorted({int(v) for v in raw.split(",") if v.strip()}))
    except ValueError:
        raise ValueError(f"{env}={raw!r} must be comma-separated integers") from None
    if not values or values[0] < 1:
        raise ValueError(f"{env}={raw!r} must list positive integers")
    return values


class _TpuBase(Platform):
    """What both modes share: kernels, dtypes, block sizes, buckets and their clamping."""

    default_token_buckets: ClassVar[tuple[int, ...]]
    default_seq_buckets: ClassVar[tuple[int, ...]]

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            dtypes=SUPPORTED_DTYPES,
            kv_cache_dtypes=SUPPORTED_DTYPES,
            block_sizes=SUPPORTED_BLOCK_SIZES,
            head_sizes=SUPPORTED_HEAD_SIZES,
            default_dtype="bfloat16",
            static_shapes=True,
            token_buckets=_buckets(TOKEN_BUCKETS_ENV, cls.default_token_buckets),
            seq_buckets=_buckets(SEQ_BUCKETS_ENV, cls.default_seq_buckets),
        )

    @classmethod
    def attention_backend(cls) -> type[AttentionBackend] | str:
        return "heron_tpu.attention:TpuAttentionBackend"

    @classmethod
    def kernel_ops(cls) -> type[KernelOps] | str:
        return "heron_tpu.kernel_ops:TpuKernelOps"

    @classmethod
    def check_config(cls, config: Any) -> list[ConfigChange]:
        """Step limits no larger than the largest compiled bucket (a larger step has no program)."""
        caps = cls.capabilities()
        changes = []
        tokens = getattr(config, "max_num_batched_tokens", None) or DEFAULT_MAX_NUM_BATCHED_TOKENS
        if tokens > caps.token_buckets[-1]:
            changes.append(
                ConfigChange(
                    field="max_num_batched_tokens",
                    value=caps.token_buckets[-1],
                    reason=f"the largest token bucket compiled for {cls.name} "
                    f"(set {TOKEN_BUCKETS_ENV} for larger steps)",
                )
            )
        seqs = getattr(config, "max_num_seqs", None)
        if seqs is not None and seqs > caps.seq_buckets[-1]:
            changes.append(
                ConfigChange(
                    field="max_num_seqs",
                    value=caps.seq_buckets[-1],
                    reason=f"the largest sequence bucket compiled for {cls.name} "
                    f"(set {SEQ_BUCKETS_ENV} for more)",
                )
            )
        return changes


class TpuPlatform(_TpuBase):
    """Google TPU chips: the model in torch on torch-tpu's ``tpu`` device, kernels in Pallas.

    Not exercised on a TPU in this repository's CI (see plugins/tpu/README.md): the kernels are
    checked by the TPU compiler ahead of time and by the interpreter, the device glue is not.
    """

    name: ClassVar[str] = "tpu"
    device_type: ClassVar[str] = "tpu"
    dist_backend: ClassVar[str] = "tpu"
    default_token_buckets = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    default_seq_buckets = (8, 16, 32, 64, 128, 256)

    @classmethod
    def device_count(cls) -> int:
        return len(tpu_chips())

    @classmethod
    def set_device(cls, index: int) -> None:
        import torch

        torch.tpu.set_device(index)  # type: ignore[attr-defined]

    @classmethod
    def communicator(cls, ctx: CommContext) -> Communicator:
        from heron_tpu.communicator import TpuCommunicator

        return TpuCommunicator(ctx)

    @classmethod
    def memory_profiler(cls) -> MemoryProfiler:
        from heron_tpu.memory import TpuMemoryProfiler

        return TpuMemoryProfiler()

    @classmethod
    def synchronize(cls) -> None:
        import torch

        torch.tpu.synchronize()  # type: ignore[attr-defined]

    @classmethod
    def memory_budget_hint(cls) -> str:
        return "lower max_model_len or max_num_seqs, or use a TPU with more HBM"


class TpuInterpretPlatform(_TpuBase):
    """``HERON_TPU_INTERPRET=1``: the TPU backend's kernels in Pallas's interpreter, on the CPU."""

    name: ClassVar[str] = "tpu"
    device_type: ClassVar[str] = "cpu"
    dist_backend: ClassVar[str] = "gloo"
    default_token_buckets = (8, 16, 32, 64)
    default_seq_buckets = (1, 2, 4, 8)

    @classmethod
    def device_count(cls) -> int:
        return 1

    @classmethod
    def capabilities(cls) -> Capabilities:
        import dataclasses

        # bfloat16 matmuls are emulated (slowly) on most CPUs: interpret in float32 by default.
        return dataclasses.replace(super().capabilities(), default_dtype="float32")

    @classmethod
    def communicator(cls, ctx: CommContext) -> Communicator:
        from heron_tpu.communicator import InterpretCommunicator

        return InterpretCommunicator(ctx)

    @classmethod
    def memory_profiler(cls) -> MemoryProfiler:
        from heron_tpu.memory import InterpretMemoryProfiler

        return InterpretMemoryProfiler()

    @classmethod
    def memory_budget_hint(cls) -> str:
        from heron_tpu.memory import DEFAULT_INTERPRET_KV_SPACE_GIB, KV_SPACE_ENV

        return (
            f"set {KV_SPACE_ENV} to the GiB of RAM the KV cache may use (default "
            f"{DEFAULT_INTERPRET_KV_SPACE_GIB:g}), or lower max_model_len or max_num_seqs"
        )
