"""The GPU backends under test and the skips that keep their tests honest on any machine.

The kernel tests need a GPU of the backend's vendor and a torch built for it. On a machine without
one (the CI default) they skip with a plain reason; the registration and build tests in this
directory run everywhere.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

import pytest

BACKENDS = ("cuda", "rocm")


@dataclass(frozen=True)
class GpuBackend:
    """One installed GPU backend, ready to run on this machine's device 0."""

    name: str
    ops: ModuleType
    attention_cls: type
    platform: type
    device: object  # torch.device; kept untyped so that collecting this file needs no torch

    @property
    def namespace(self) -> object:
        """``torch.ops.heron_<name>``, for opcheck."""
        import torch

        return getattr(torch.ops, f"heron_{self.name}")


def import_backend(name: str) -> ModuleType:
    """The backend package, or a skip that says it is not installed."""
    try:
        return importlib.import_module(f"heron_{name}")
    except ImportError as err:
        pytest.skip(f"heron-{name} is not installed ({err})")


def require_device(name: str) -> None:
    """Skip unless torch sees a GPU of ``name``'s kind."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch.cuda.is_available() is False")
    if name == "cuda" and torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is not a CUDA build (torch.version.cuda is None)")
    if name == "rocm" and torch.version.hip is None:
        pytest.skip(f"torch {torch.__version__} is not a ROCm build (torch.version.hip is None)")


def load_compiled(name: str) -> ModuleType:
    """``heron_<name>._C``, or a skip when it is not built or its runtime library is missing.

    heron-rocm's module links ``libamdhip64`` dynamically, so on a machine without ROCm it is
    installed but cannot load; that is an environment fact, not a failure of the package.
    """
    import_backend(name)
    if importlib.util.find_spec(f"heron_{name}._C") is None:
        pytest.skip(f"heron_{name}._C is not built")
    try:
        return importlib.import_module(f"heron_{name}._C")
    except ImportError as err:
        pytest.skip(f"heron_{name}._C cannot load here: {err}")
