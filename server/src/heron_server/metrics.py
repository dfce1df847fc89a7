"""Prometheus metrics under vLLM's names with the prefix ``heron:``.

Dashboards and autoscalers written for vLLM (``vllm:num_requests_running``, TTFT histograms, ...)
then work by changing one prefix. Everything lives in the server's own ``CollectorRegistry``, never
prometheus_client's global one, so several servers (or tests) in one process do not collide.

Two sources: the engine's scheduler state (running/waiting requests, KV cache usage, prefix cache
counters) is read at scrape time by :class:`_EngineCollector`, so it is never stale; per-request
numbers (tokens, latencies, finish reasons) are recorded by a :class:`RequestRecorder` as each
request's outputs arrive. Latencies come from the engine's own timestamps
(``RequestOutput.metrics``), so they exclude HTTP overhead as vLLM's do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from heron.outputs import RequestOutput

# vLLM's bucket boundaries, so that histograms compare across engines.
_TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
_TPOT_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector(Collector):
    """Scheduler state, read from ``engine.stats()`` at each scrape."""

    def __init__(self, engine: Any, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        stats = self.engine.stats()
        labels = ["model_name"]
        values = [self.model_name]
        gauges = (
            (
                "heron:num_requests_running",
                "Sequences being computed in the current step.",
                stats.num_running,
            ),
            (
                "heron:num_requests_waiting",
                "Sequences queued (waiting or preempted).",
                stats.num_waiting,
            ),
            (
                "heron:kv_cache_usage_perc",
                "Fraction of KV cache blocks in use (1 = full).",
                stats.kv_cache_usage,
            ),
        )
        for name, doc, value in gauges:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, float(value))
            yield family
        counters = (
            (
                "heron:prefix_cache_queries",
                "Prompt tokens looked up in the prefix cache.",
                stats.prefix_cache_queries,
            ),
            (
                "heron:prefix_cache_hits",
                "Prompt tokens found in the prefix cache.",
                stats.prefix_cache_hits,
            ),
            (
                "heron:num_preemptions",
                "Sequences preempted (to be recomputed) for lack of KV.",
                stats.num_preemptions,
            ),
        )
        for name, doc, value in counters:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, float(value))
            yield family
        if stats.spec_decode is not None:
            yield from _spec_decode_families(stats.spec_decode, labels, values)


def _spec_decode_families(spec: Any, labels: list[str], values: list[str]) -> Iterator[Metric]:
    """Speculative decoding's counters under vLLM's names (the ``_total`` suffix is the
    exposition's), the per-position one labelled by draft position."""
    counters = (
        (
            "heron:spec_decode_num_drafts",
            "Verification steps of a request with at least one draft token.",
            spec.num_drafts,
        ),
        (
            "heron:spec_decode_num_draft_tokens",
            "Draft tokens proposed and verified.",
            spec.num_draft_tokens,
        ),
        (
            "heron:spec_decode_num_accepted_tokens",
            "Draft tokens accepted.",
            spec.num_accepted_tokens,
        ),
    )
    for name, doc, value in counters:
        family = CounterMetricFamily(name, doc, labels=labels)
        family.add_metric(values, float(value))
        yield family
    family = CounterMetricFamily(
        "heron:spec_decode_num_accepted_tokens_per_pos",
        "Draft tokens accepted, by their position in the draft (0 = first).",
        labels=[*labels, "position"],
    )
    for position, count in enumerate(spec.accepted_per_pos):
        family.add_metric([*values, str(position)], float(count))
    yield family


class ServerMetrics:
    """The server's registry and the per-request metrics recorded into it."""

    def __init__(self, engine: Any, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(engine, model_name))
        labels = ["model_name"]
        reg = self.registry
        self.prompt_tokens = Counter(
            "heron:prompt_tokens", "Prompt tokens processed.", labels, registry=reg
        ).labels(model_name)
        self.generation_tokens = Counter(
            "heron:generation_tokens", "Tokens generated.", labels, registry=reg
        ).labels(model_name)
        self._success = Counter(
            "heron:request_success",
            "Finished sequences by reason (stop, length, abort).",
            [*labels, "finished_reason"],
            registry=reg,
        )
        self.ttft = Histogram(
            "heron:time_to_first_token_seconds",
            "Arrival to first generated token.",
            labels,
            buckets=_TTFT_BUCKETS,
            registry=reg,
        ).labels(model_name)
        self.tpot = Histogram(
            "heron:time_per_output_token_seconds",
            "Mean time between output tokens of a request, after the first.",
            labels,
            buckets=_TPOT_BUCKETS,
            registry=reg,
        ).labels(model_name)
        self.e2e = Histogram(
            "heron:e2e_request_latency_seconds",
            "Arrival to the last token of a request.",
            labels,
            buckets=_E2E_BUCKETS,
            registry=reg,
        ).labels(model_name)
        self.request_prompt_tokens = Histogram(
            "heron:request_prompt_tokens",
            "Prompt length of finished requests.",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=reg,
        ).labels(model_name)
        self.request_generation_tokens = Histogram(
            "heron:request_generation_tokens",
            "Generated tokens of finished requests.",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=reg,
        ).labels(model_name)

    def finished(self, reason: str, count: int = 1) -> None:
        self._success.labels(self.model_name, reason).inc(count)

    def embedding_finished(self, prompt_tokens: int | None, seconds: float) -> None:
        """One embedding input answered (``prompt_tokens``), or aborted (``None``): its prompt
        tokens, its count under ``finished_reason`` stop or abort, and its end-to-end latency.
        An embedding generates nothing, so it has no TTFT, TPOT or generation tokens."""
        if prompt_tokens is None:
            self.finished("abort")
            return
        self.prompt_tokens.inc(prompt_tokens)
        self.request_prompt_tokens.observe(prompt_tokens)
        self.finished("stop")
        self.e2e.observe(seconds)

    def render(self) -> bytes:
        """Prometheus text format; calls ``engine.stats()``, so run it off the event loop."""
        return generate_latest(self.registry)

    def recorder(self, num_sequences: int) -> RequestRecorder:
        return RequestRecorder(self, num_sequences)


class RequestRecorder:
    """Records one engine request (one prompt; ``num_sequences`` returned choices).

    Feed it every ``RequestOutput`` (delta or final); call :meth:`close` when done, which counts
    the sequences that never finished as aborted (client gone, error).
    """

    def __init__(self, metrics: ServerMetrics, num_sequences: int) -> None:
        self.metrics = metrics
        self.num_sequences = num_sequences
        self.prompt_counted = False
        self.tokens_by_index: dict[int, int] = {}
        self.num_finished = 0
        self.closed = False

    def observe(self, output: RequestOutput) -> None:
        """One DELTA output, or the one FINAL_ONLY output (which is a delta from nothing)."""
        m = self.metrics
        prefilled = output.finished or any(o.token_ids for o in output.outputs)
        if prefilled and not self.prompt_counted:
            self.prompt_counted = True
            m.prompt_tokens.inc(len(output.prompt_token_ids))
        for seq in output.outputs:
            new = len(seq.token_ids)
            self.tokens_by_index[seq.index] = self.tokens_by_index.get(seq.index, 0) + new
            if new:
                m.generation_tokens.inc(new)
            if seq.finish_reason is not None:
                self.num_finished += 1
                m.finished(seq.finish_reason)
        if output.finished:
            self._observe_latencies(output)

    def _observe_latencies(self, output: RequestOutput) -> None:
        m = self.metrics
        times = output.metrics
        generated = max(self.tokens_by_index.values(), default=0)
        m.request_prompt_tokens.observe(len(output.prompt_token_ids))
        m.request_generation_tokens.observe(sum(self.tokens_by_index.values()))
        if times is None:
            return
        if times.first_token_time is not None:
            m.ttft.observe(times.first_token_time - times.arrival_time)
            if generated > 1 and times.last_token_time is not None:
                m.tpot.observe((times.last_token_time - times.first_token_time) / (generated - 1))
        if times.finished_time is not None:
            m.e2e.observe(times.finished_time - times.arrival_time)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        missing = self.num_sequences - self.num_finished
        if missing > 0:
            self.metrics.finished("abort", missing)
