"""How heron-xpu runs its kernels: compiled for a GPU, or in Triton's interpreter on the CPU.

``HERON_XPU_INTERPRET=1`` selects the interpreter. Triton decides between compiling and
interpreting when a ``@triton.jit`` function is decorated, from ``TRITON_INTERPRET``; so this
module, imported by ``heron_xpu/__init__.py`` before anything can import the kernels, sets that
variable as soon as the package is imported. It imports neither torch nor triton and touches no
device, because core imports every backend package just to probe it.

Setting ``TRITON_INTERPRET`` is process-wide: every Triton kernel decorated afterwards in this
process is interpreted too. That is what a CPU host wants (no GPU to compile for) and why the
variable is opt-in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

INTERPRET_ENV = "HERON_XPU_INTERPRET"
TRITON_INTERPRET_ENV = "TRITON_INTERPRET"
_TRUE = frozenset({"1", "true", "yes", "on"})


def interpret_requested(environ: Mapping[str, str] | None = None) -> bool:
    """``HERON_XPU_INTERPRET`` is set to a true value (1, true, yes, on)."""
    env = os.environ if environ is None else environ
    return env.get(INTERPRET_ENV, "").strip().lower() in _TRUE


def enable_interpreter_if_requested() -> bool:
    """Set ``TRITON_INTERPRET=1`` when the interpreter mode is requested; returns whether it is."""
    if not interpret_requested():
        return False
    os.environ[TRITON_INTERPRET_ENV] = "1"
    return True
