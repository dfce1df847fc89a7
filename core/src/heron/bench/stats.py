"""Percentiles and summaries: the one place where every ``heron bench`` statistic is computed.

Percentiles interpolate linearly between order statistics, as ``numpy.percentile`` does by default
and as ``vllm bench`` reports them, so a p99 from Heron's instrument means what vLLM's p99 means.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

DEFAULT_PERCENTILES: tuple[float, ...] = (10, 25, 50, 75, 90, 99)
"""Percentiles of ``bench latency`` (vLLM's ``bench latency`` reports the same set)."""

SERVE_PERCENTILES: tuple[float, ...] = (90, 99)
"""Percentiles of ``bench serve`` besides mean and median (those of USERS.md §4.4)."""


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {p}")
    xs = sorted(values)
    if not xs:
        return math.nan
    rank = (len(xs) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(xs) - 1)
    return xs[low] + (xs[high] - xs[low]) * (rank - low)


def percentile_key(p: float) -> str:
    """``p99``, ``p99.9``: the JSON key of a percentile (no trailing ``.0``)."""
    return f"p{p:g}"


def summarize(
    values: Iterable[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> dict[str, float]:
    """Mean, median, population std (numpy's default, as vLLM reports), min, max and percentiles.

    Every key is present even without values (then NaN), so tables and JSON keep one shape.
    """
    xs = [float(v) for v in values]
    out: dict[str, float] = {"count": float(len(xs))}
    if xs:
        out.update(
            mean=statistics.fmean(xs),
            median=statistics.median(xs),
            std=statistics.pstdev(xs),
            min=min(xs),
            max=max(xs),
        )
    else:
        out.update(mean=math.nan, median=math.nan, std=math.nan, min=math.nan, max=math.nan)
    for p in percentiles:
        out[percentile_key(p)] = percentile(xs, p)
    return out


def scale(summary: dict[str, float], factor: float) -> dict[str, float]:
    """The summary with every statistic but ``count`` multiplied (seconds to milliseconds)."""
    return {k: (v if k == "count" else v * factor) for k, v in summary.items()}


def median_of_runs(values: Sequence[float]) -> dict[str, object]:
    """Median, min, max and every run: how repeated timed runs are reported (never a best-of)."""
    xs = list(values)
    return {
        "median": statistics.median(xs) if xs else math.nan,
        "min": min(xs) if xs else math.nan,
        "max": max(xs) if xs else math.nan,
        "all": xs,
    }
