"""Which CPU cores each rank of a tensor-parallel group runs its threads on.

On a CPU backend the ranks share one machine: left alone, each rank's OpenMP pool would spin on
every core and the ranks would steal each other's cores at every collective. Each rank gets its
own cores instead: ``HERON_CPU_OMP_THREADS_BIND`` lists them per rank, separated by ``|``
(``0-3|4-7``, like vLLM's ``VLLM_CPU_OMP_THREADS_BIND``); unset, the cores this process may use are
split into equal consecutive groups.
"""

from __future__ import annotations

import os

BIND_ENV = "HERON_CPU_OMP_THREADS_BIND"


class CoreBindingError(ValueError):
    """``HERON_CPU_OMP_THREADS_BIND`` does not name one non-empty core list per rank."""


def _parse_cores(text: str) -> list[int]:
    cores: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if first > last:
            raise ValueError(part)
        cores.extend(range(first, last + 1))
    if not cores:
        raise ValueError(text)
    return cores


def cores_per_rank(world_size: int) -> list[list[int]]:
    """One list of core ids per rank."""
    spec = os.environ.get(BIND_ENV, "").strip()
    if spec:
        groups = spec.split("|")
        if len(groups) != world_size:
            raise CoreBindingError(
                f"{BIND_ENV}={spec!r} names {len(groups)} core lists; {world_size} ranks need "
                f"one each, separated by '|' (e.g. 0-3|4-7)"
            )
        try:
            return [_parse_cores(g) for g in groups]
        except ValueError as exc:
            raise CoreBindingError(
                f"{BIND_ENV}={spec!r}: {exc!s} is not a core id or range like 0-3"
            ) from None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < world_size:
        # Fewer cores than ranks: ranks share them round-robin rather than failing.
        return [[available[r % len(available)]] for r in range(world_size)]
    per_rank = len(available) // world_size
    return [available[r * per_rank : (r + 1) * per_rank] for r in range(world_size)]


def bind_to_cores(cores: list[int]) -> None:
    """Run this process's threads (and torch's pool) on ``cores``."""
    import torch

    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
