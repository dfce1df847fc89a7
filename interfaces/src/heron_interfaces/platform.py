"""The per-backend description of a device: what it can do and the factories for its parts."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from heron_interfaces.attention import AttentionBackend
    from heron_interfaces.communicator import CommContext, Communicator
    from heron_interfaces.kernel_ops import KernelOps
    from heron_interfaces.memory import MemoryProfiler


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """Feature flags of a platform, all with defaults, instead of a dozen ``supports_x()`` methods.

    New fields are always added with a default, so a backend written against an older minor version
    keeps working.
    """

    dtypes: tuple[str, ...] = ("float32",)
    """Activation/weight dtypes the backend computes in, as torch dtype names."""
    kv_cache_dtypes: tuple[str, ...] = ("float32",)
    block_sizes: tuple[int, ...] = (16,)
    """KV block sizes its attention kernels accept; core picks the first unless the user chooses."""
    head_sizes: tuple[int, ...] | None = None
    """Head sizes its kernels accept; ``None`` means any."""
    default_dtype: str = "float32"
    pinned_memory: bool = False
    graph_capture: bool = False
    static_shapes: bool = False
    """API 1.6: the device runs compiled programs of fixed shapes (a TPU). Core then pads every
    step to a padding bucket (:func:`padding_bucket`), runs every bucket once at start-up so that
    each is compiled before the first request, and never builds a step of another shape. Eager
    devices leave it False and get exact shapes."""
    token_buckets: tuple[int, ...] = ()
    """API 1.6: flattened token counts a step is padded to, ascending. With ``static_shapes`` the
    platform must keep the engine's token budget at or below the last one (``check_config``)."""
    seq_buckets: tuple[int, ...] = ()
    """API 1.6: sequence counts a step is padded to, ascending; the last bounds ``max_num_seqs``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigChange:
    """A change a platform asks core to make to the engine configuration; core applies and logs it."""

    field: str
    value: Any
    reason: str


class Platform(ABC):
    """Stateless description of a backend's device, used through classmethods.

    Required: ``name``, ``device_type``, ``dist_backend``, :meth:`device_count`,
    :meth:`attention_backend`, :meth:`memory_profiler`. Everything else has a default that is correct
    for a device driven by plain torch.
    """

    name: ClassVar[str]
    """The backend's short name (``"cpu"``)."""
    device_type: ClassVar[str]
    """torch device string (``"cpu"``, ``"cuda"``)."""
    dist_backend: ClassVar[str]
    """torch.distributed backend for collectives (``"gloo"``, ``"nccl"``)."""

    @classmethod
    @abstractmethod
    def device_count(cls) -> int:
        """Number of devices of this kind visible to the process."""

    @classmethod
    def set_device(cls, index: int) -> None:
        """Bind the calling process to device ``index``; CPU-like devices need nothing."""

    @classmethod
    def device_name(cls, index: int = 0) -> str:
        return f"{cls.device_type}:{index}"

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities()

    @classmethod
    @abstractmethod
    def attention_backend(cls) -> type[AttentionBackend] | str:
        """The :class:`AttentionBackend` subclass (or lazy ``"pkg.mod:Class"`` reference)."""

    @classmethod
    def kernel_ops(cls) -> type[KernelOps] | str:
        """The :class:`~heron_interfaces.kernel_ops.KernelOps` subclass (or lazy reference).

        The default is the plain-torch reference, right for any device torch drives; a backend
        overrides it to ship fused norm/rotary/activation kernels or its own small-batch GEMM.
        """
        return "heron_interfaces.kernel_ops:KernelOps"

    @classmethod
    def communicator(cls, ctx: CommContext) -> Communicator:
        """A communicator for one process group; the default goes through ``torch.distributed``."""
        from heron_interfaces.communicator import Communicator

        return Communicator(ctx)

    @classmethod
    @abstractmethod
    def memory_profiler(cls) -> MemoryProfiler:
        """Raw memory numbers for core's one KV-budget formula."""

    @classmethod
    def check_config(cls, config: Any) -> list[ConfigChange]:
        """Changes this platform needs in ``config`` (a core ``EngineConfig``); empty means none."""
        return []

    @classmethod
    def synchronize(cls) -> None:
        """Wait for queued device work; a no-op on synchronous devices."""

    @classmethod
    def seed(cls, seed: int) -> None:
        """Seed the device's random generators; core seeds torch's CPU generator itself."""

    @classmethod
    def memory_budget_hint(cls) -> str:
        """One line that tells a user how to give the KV cache more memory on this platform."""
        return "lower max_model_len or max_num_seqs"


def padding_bucket(buckets: tuple[int, ...], count: int) -> int:
    """The smallest of ``buckets`` that holds ``count`` (API 1.6).

    Raises ``ValueError`` when none does: a compile-first device would have to compile a new
    program mid-serving, which the contract rules out; the platform's ``check_config`` must keep
    the engine's limits within its largest bucket.
    """
    for bucket in buckets:
        if bucket >= count:
            return bucket
    raise ValueError(f"{count} exceeds the largest padding bucket {max(buckets, default=0)}")


__all__ = ["Capabilities", "ConfigChange", "Platform", "field", "padding_bucket"]
