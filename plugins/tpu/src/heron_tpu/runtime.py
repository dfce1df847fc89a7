"""Where the Pallas kernels run, and how torch tensors reach them.

Two modes, one kernel source. On a TPU host the kernels are compiled by the TPU compiler. With
``HERON_TPU_INTERPRET=1`` they run in Pallas's TPU interpreter on the CPU: DMAs, semaphores,
VMEM/SMEM and the grid are simulated, with out-of-bounds reads raising and uninitialised memory
filled with NaN, and (unless ``HERON_TPU_DETECT_RACES=0``) a happens-before race detector watching
every access. A race it finds is raised as :class:`PallasRaceError` after the call, so a kernel
that races fails its tests instead of printing a line nobody reads.

torch and JAX exchange CPU tensors through DLPack without copies (contiguous tensors only, hence
the ``contiguous()`` in :func:`to_jax`). JAX arrays are immutable, and jax does not let a
DLPack-imported buffer be donated, so results are copied back into the caller's torch tensors.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from heron_tpu.availability import interpret_requested

if TYPE_CHECKING:
    import jax
    import torch

DETECT_RACES_ENV = "HERON_TPU_DETECT_RACES"


class PallasRaceError(RuntimeError):
    """Pallas's interpreter saw two unordered accesses to the same memory, one of them a write."""


def detect_races() -> bool:
    """Race detection is on in interpreter mode unless ``HERON_TPU_DETECT_RACES`` turns it off."""
    raw = os.environ.get(DETECT_RACES_ENV, "1").strip().lower()
    return raw not in ("0", "false", "no", "off")


@functools.cache
def interpret_params(races: bool) -> Any:
    """The ``interpret=`` argument of every ``pallas_call`` in interpreter mode (cached: it is
    part of the jit key, so one object per setting keeps compiled kernels reusable)."""
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.InterpretParams(detect_races=races, out_of_bounds_reads="raise")


def kernel_interpret() -> Any:
    """``None`` on a TPU (compile), else the interpreter parameters."""
    if not interpret_requested():
        return None
    return interpret_params(detect_races())


def check_races(kernel: str) -> None:
    """Raise :class:`PallasRaceError` if the interpreter flagged a race since the last check."""
    if not interpret_requested() or not detect_races():
        return
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc

    state = getattr(ipc, "races", None)
    if state is not None and state.races_found:
        from jax.experimental.pallas import tpu as pltpu

        pltpu.reset_tpu_interpret_mode_state()
        raise PallasRaceError(f"Pallas's TPU interpreter detected a data race in {kernel}")


def to_jax(tensor: torch.Tensor) -> jax.Array:
    """A JAX view of a torch CPU tensor (a copy only when it is not contiguous)."""
    import jax

    return jax.dlpack.from_dlpack(tensor.detach().contiguous())


def to_torch(array: jax.Array) -> torch.Tensor:
    """A torch view of a JAX array's buffer."""
    import torch

    return torch.from_dlpack(array)


_JITTED: dict[tuple[Any, ...], Callable[..., Any]] = {}
"""Every jitted kernel entry point built so far, by function and static arguments."""


def jitted(fn: Callable[..., Any], **static: Any) -> Callable[..., Any]:
    """``jax.jit(partial(fn, **static))``, built once per distinct ``static``.

    Why a cache of our own: a fresh ``jax.jit`` wrapper per call would retrace every time; one
    wrapper per configuration compiles once per input shape, which is what padding buckets bound.
    """
    key = (fn, tuple(sorted(static.items())))
    wrapper = _JITTED.get(key)
    if wrapper is None:
        import jax

        wrapper = jax.jit(functools.partial(fn, **static))
        _JITTED[key] = wrapper
    return wrapper


def compiled_programs() -> int:
    """How many programs the jitted kernels hold in all; it grows by one per compile."""
    return sum(wrapper._cache_size() for wrapper in _JITTED.values())
