"""The periodic stats line (issue 23, item 6): logged while busy, silent when idle, off by flag."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest
from model_utils import KERNEL_FRIENDLY, make_tiny_model_dir

from heron import AsyncLLM, SamplingParams
from heron.engine.stats_logger import (
    INTERVAL_ENV,
    EngineStats,
    StatsLogger,
    format_stats,
    interval_from_env,
)


def _stats(**values: float) -> EngineStats:
    fields = {
        "num_running": 0,
        "num_waiting": 0,
        "kv_cache_usage": 0.0,
        "prefix_cache_queries": 0,
        "prefix_cache_hits": 0,
        "num_preemptions": 0,
        "prompt_tokens": 0,
        "generation_tokens": 0,
    }
    fields.update(values)
    return EngineStats(**fields)  # type: ignore[arg-type]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_line_reports_rates_over_the_interval_and_the_state_at_its_end() -> None:
    base = _stats(prompt_tokens=100, generation_tokens=50, prefix_cache_queries=40)
    now = _stats(
        num_running=3,
        num_waiting=2,
        kv_cache_usage=0.25,
        prompt_tokens=600,
        generation_tokens=250,
        prefix_cache_queries=240,
        prefix_cache_hits=50,
    )
    line = format_stats(now, base, elapsed=5.0)
    assert line == (
        "Avg prompt throughput: 100.0 tokens/s, Avg generation throughput: 40.0 tokens/s, "
        "Running: 3 reqs, Waiting: 2 reqs, KV cache usage: 25.0%, Prefix cache hit rate: 25.0%"
    )
    assert format_stats(_stats(num_preemptions=2), base, 1.0).endswith("Preempted: 2 reqs")


def test_logs_every_interval_while_busy_once_more_when_idle_then_silent() -> None:
    clock, lines = _Clock(), []
    stats_logger = StatsLogger(5.0, clock=clock, log=lambda fmt, *a: lines.append(fmt % a))
    busy = _stats(num_running=1, prompt_tokens=0)
    assert stats_logger.seconds_until_due() is None  # idle from the start: nothing to log

    stats_logger.begin(lambda: busy)
    clock.now += 4.0
    assert not stats_logger.maybe_log(lambda: busy)
    assert stats_logger.seconds_until_due() == pytest.approx(1.0)
    clock.now += 1.0
    assert stats_logger.maybe_log(lambda: _stats(num_running=1, generation_tokens=50))
    assert "Avg generation throughput: 10.0 tokens/s" in lines[-1]

    # The load ends: one more line for that interval, then nothing however long it stays idle.
    clock.now += 5.0
    assert stats_logger.maybe_log(lambda: _stats(generation_tokens=60))
    assert "Running: 0 reqs" in lines[-1] and "2.0 tokens/s" in lines[-1]
    assert stats_logger.seconds_until_due() is None
    clock.now += 3600.0
    assert not stats_logger.maybe_log(lambda: _stats(generation_tokens=60))
    assert len(lines) == 2

    # Work after an hour idle: the hour does not dilute the next interval's rate.
    stats_logger.begin(lambda: _stats(generation_tokens=60))
    clock.now += 5.0
    assert stats_logger.maybe_log(lambda: _stats(num_running=1, generation_tokens=110))
    assert "Avg generation throughput: 10.0 tokens/s" in lines[-1]


def test_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "0.5")
    assert interval_from_env() == 0.5
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    assert interval_from_env() == 5.0
    with pytest.raises(ValueError, match="positive"):
        StatsLogger(0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("stats"), "llama", **KERNEL_FRIENDLY)


def _run(engine: AsyncLLM, max_tokens: int) -> None:
    async def generate() -> None:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        async for _ in engine.generate("count the herons", params):
            await asyncio.sleep(0.002)  # a slow client: the engine stays busy for a while

    asyncio.run(generate())


def _stats_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Avg prompt throughput" in r.getMessage()]


def test_async_engine_logs_stats_while_busy_and_not_when_disabled(
    model_dir, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "0.05")  # generation here takes ~0.2 s
    caplog.set_level(logging.INFO, logger="heron.engine.stats")
    engine = AsyncLLM(model=str(model_dir), dtype="float32", max_model_len=256)
    try:
        _run(engine, 200)
        time.sleep(0.6)  # the interval in which the load ended is logged once
        lines = _stats_lines(caplog)
        assert lines, "no stats line while the engine was busy"
        assert any("Running: 1 reqs" in line for line in lines)
        assert "Running: 0 reqs" in lines[-1]
        rates = [re.search(r"generation throughput: ([\d.]+)", line) for line in lines]
        assert sum(float(m.group(1)) for m in rates if m) > 0
        time.sleep(0.6)
        assert len(_stats_lines(caplog)) == len(lines), "an idle engine kept logging"
    finally:
        engine.shutdown()

    caplog.clear()
    quiet = AsyncLLM(
        model=str(model_dir), dtype="float32", max_model_len=256, disable_log_stats=True
    )
    try:
        _run(quiet, 150)
        time.sleep(0.4)
    finally:
        quiet.shutdown()
    assert not _stats_lines(caplog)
