"""Loads the compiled kernels once and applies ``HERON_CPU_ISA``.

Kept apart from :mod:`heron_cpu.ops` so that the platform can read CPU features without importing
torch. ``HERON_CPU_ISA`` forces a variant (``portable``, ``avx2``, ``avx512`` or ``auto``); a name
this CPU cannot run is an error rather than a silent fallback, because whoever set it is measuring
or debugging exactly that variant.
"""

from __future__ import annotations

import os

from heron_cpu import _C

ISA_ENV = "HERON_CPU_ISA"


def _apply_env() -> None:
    requested = os.environ.get(ISA_ENV, "auto").strip().lower()
    try:
        _C.set_isa(requested or "auto")
    except ValueError as exc:
        raise ValueError(f"{ISA_ENV}={os.environ.get(ISA_ENV)!r}: {exc}") from exc


_apply_env()


def isa() -> str:
    """The kernel variant in use (``"avx512"``, ``"avx2"`` or ``"portable"``)."""
    return _C.isa()


def set_isa(name: str) -> None:
    """Switch the variant for the whole process (tests run every variant this CPU supports)."""
    _C.set_isa(name)


def available_isas() -> list[str]:
    return list(_C.available_isas())


def cpu_features() -> dict[str, bool]:
    return dict(_C.cpu_features())


__all__ = ["ISA_ENV", "available_isas", "cpu_features", "isa", "set_isa"]
