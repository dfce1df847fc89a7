"""How heron-xpu runs its kernels: compiled for a GPU, or in Triton's interpreter on the CPU.

``HERON_XPU_INTERPRET=1`` selects the interpreter. Triton decides between compiling and
interpreting when a ``@triton.jit`` function is decorated, from ``TRITON_INTERPRET``; so this
module, imported by ``heron_xpu/__init__.py`` before anything can import the kernels, sets that
variable as soon as the package is imported. It imports neither torch nor triton and touches no
device, because core imports every backend package just to probe it.

Setting ``TRITON_INTERPRET`` is process-wide: every Triton kernel decorated afterwards in this
process is interpreted too. That is what a CPU host wants (no GPU to compile for) and why the
variable is opt-in.

Triton's own library functions (``tl.sum``, ``tl.max``, ``tl.zeros``: ``@triton.jit`` functions in
``triton.language.standard``) are decorated when ``triton`` is first imported, and the interpreter
can only call interpreted ones. In an engine process something else often imports triton first
(``torch._dynamo`` does, when ``transformers`` loads it), before core loads this package; so when
the switch comes late, :func:`enable_interpreter_if_requested` re-executes those two library
modules (``importlib.reload``) to decorate them again in interpreter mode. Nothing else of triton
holds decorated functions, and nothing runs on a device in this mode.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Mapping

logger = logging.getLogger(__name__)

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
    use_interpreter()
    return True


def use_interpreter() -> None:
    """Make Triton interpret every kernel decorated from now on in this process (tests call this
    directly, without making the backend available to core)."""
    os.environ[TRITON_INTERPRET_ENV] = "1"
    _reinterpret_loaded_triton()


def _reinterpret_loaded_triton() -> None:
    """Re-decorate triton's library functions for the interpreter if triton was imported first.

    Imports nothing that is not imported yet: without ``triton.language`` in ``sys.modules``,
    triton will read ``TRITON_INTERPRET`` itself when it is imported.
    """
    language = sys.modules.get("triton.language")
    standard = sys.modules.get("triton.language.standard")
    if language is None or standard is None:
        return
    if type(getattr(standard, "sum", None)).__name__ == "InterpretedFunction":
        return
    logger.debug("triton was imported before %s=1: re-decorating triton.language", INTERPRET_ENV)
    for name in ("triton.language.standard", "triton.language.random"):
        module = sys.modules.get(name)
        if module is not None:
            importlib.reload(module)
    importlib.reload(language)
