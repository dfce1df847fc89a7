"""Periodic one-line engine statistics in the log, as vLLM prints them while it serves.

An operator watching ``heron serve`` wants to see, without a Prometheus stack, whether the engine
is busy, how fast it goes and whether the KV cache is the bottleneck. Every ``interval`` seconds
while the engine has work, :class:`StatsLogger` logs prompt and generation throughput over that
interval, running and waiting requests, KV cache usage and the prefix cache hit rate. It logs one
last line for the interval in which the engine went idle (so the log shows the load ended), then
stays silent until work arrives again: an idle server writes nothing.

The logger only reads cumulative counters (:class:`EngineStats`) that the engine keeps anyway, so
it costs nothing per token; the engine loop calls :meth:`StatsLogger.begin` before a step and
:meth:`StatsLogger.maybe_log` after it (and when its idle wait times out), each with a reader
of :class:`EngineStats` that is called only when a line is due.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heron.spec_decode.metrics import SpecDecodeCounters

logger = logging.getLogger("heron.engine.stats")

DEFAULT_INTERVAL_S = 5.0
INTERVAL_ENV = "HERON_LOG_STATS_INTERVAL"
"""Seconds between stats lines (vLLM's VLLM_LOG_STATS_INTERVAL); tests set it short."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineStats:
    """The engine's state now, and counters since it started.

    A superset of the scheduler's stats (same field names), so readers of ``engine.stats()``
    such as the server's Prometheus collector keep working.
    """

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    prompt_tokens: int = 0
    """Prompt tokens computed (cached prefix tokens are not computed, so not counted)."""
    generation_tokens: int = 0
    """Tokens sampled."""
    spec_decode: SpecDecodeCounters | None = None
    """Speculative decoding's acceptance counters, when it is on."""

    @property
    def busy(self) -> bool:
        return self.num_running > 0 or self.num_waiting > 0


@dataclass(frozen=True, slots=True)
class _Window:
    """Where the current logging interval started: its time and the counters then."""

    start: float
    base: EngineStats


def interval_from_env(default: float = DEFAULT_INTERVAL_S) -> float:
    """The interval from ``HERON_LOG_STATS_INTERVAL``; a bad value falls back to the default
    with a warning rather than stopping the engine over a logging setting."""
    raw = os.environ.get(INTERVAL_ENV)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        logger.warning("%s=%r is not a positive number; using %g s", INTERVAL_ENV, raw, default)
        return default
    return value


class StatsLogger:
    """Logs :class:`EngineStats` every ``interval`` seconds while the engine is busy."""

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[..., None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = interval
        self._clock = clock
        self._log = log or logger.info
        self._window: _Window | None = None

    def begin(self, read_stats: Callable[[], EngineStats]) -> None:
        """Called before an engine step: opens an interval if none is open (the engine was
        idle), so the step's time counts and idle time before it does not dilute the rates.

        Stats are passed as a reader, called only when needed, so a step pays nothing for them.
        """
        if self._window is None:
            self._window = _Window(self._clock(), read_stats())

    def seconds_until_due(self) -> float | None:
        """How long an idle engine may sleep before the open interval must be logged; None
        when no interval is open (nothing to report: sleep until work arrives)."""
        if self._window is None:
            return None
        return max(0.0, self._window.start + self.interval - self._clock())

    def maybe_log(self, read_stats: Callable[[], EngineStats]) -> bool:
        """Log the interval if it is over; returns whether a line was logged.

        A new interval starts right away while the engine is busy; when it is idle, none does,
        which is what keeps an idle server silent.
        """
        window = self._window
        now = self._clock()
        if window is None or now - window.start < self.interval:
            return False
        stats = read_stats()
        self._log("%s", format_stats(stats, window.base, now - window.start))
        self._window = _Window(now, stats) if stats.busy else None
        return True


def format_stats(now: EngineStats, base: EngineStats, elapsed: float) -> str:
    """vLLM's line: throughputs over the interval, then the state at its end."""
    prompt_rate = (now.prompt_tokens - base.prompt_tokens) / elapsed
    generation_rate = (now.generation_tokens - base.generation_tokens) / elapsed
    queries = now.prefix_cache_queries - base.prefix_cache_queries
    hits = now.prefix_cache_hits - base.prefix_cache_hits
    hit_rate = 100.0 * hits / queries if queries > 0 else 0.0
    line = (
        f"Avg prompt throughput: {prompt_rate:.1f} tokens/s, "
        f"Avg generation throughput: {generation_rate:.1f} tokens/s, "
        f"Running: {now.num_running} reqs, Waiting: {now.num_waiting} reqs, "
        f"KV cache usage: {100.0 * now.kv_cache_usage:.1f}%, "
        f"Prefix cache hit rate: {hit_rate:.1f}%"
    )
    preemptions = now.num_preemptions - base.num_preemptions
    if preemptions:
        line += f", Preempted: {preemptions} reqs"
    if now.spec_decode is not None:
        line += spec_decode_summary(now.spec_decode, base.spec_decode)
    return line


def spec_decode_summary(now: SpecDecodeCounters, base: SpecDecodeCounters | None) -> str:
    """Draft acceptance over the interval, as vLLM reports it: the rate, and the mean tokens a
    verification step yields (1 + accepted drafts)."""
    drafts = now.num_drafts - (base.num_drafts if base else 0)
    drafted = now.num_draft_tokens - (base.num_draft_tokens if base else 0)
    accepted = now.num_accepted_tokens - (base.num_accepted_tokens if base else 0)
    if drafts <= 0:
        return ", Spec decode: no drafts"
    return (
        f", Spec decode acceptance rate: {100.0 * accepted / drafted:.1f}% "
        f"({accepted}/{drafted} draft tokens), mean acceptance length: "
        f"{1.0 + accepted / drafts:.2f}"
    )
