"""Raw memory numbers from a device; core owns the one formula that turns them into KV blocks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class MemorySnapshot:
    """Bytes, as the device sees them at one moment.

    ``kv_budget`` is the number of bytes the platform lets the KV cache take *in total*, or ``None``
    when core should derive it as ``free`` after weights and activations (GPU-style, with a
    utilisation fraction). CPU backends set it from an explicit user setting.
    """

    free: int
    total: int
    allocated: int
    peak: int
    kv_budget: int | None = None


class MemoryProfiler(ABC):
    @abstractmethod
    def snapshot(self) -> MemorySnapshot:
        """Current numbers; ``free <= total`` and ``allocated <= peak`` must hold."""

    def reset_peak(self) -> None:
        """Start a new peak measurement (before a profiling forward pass)."""
