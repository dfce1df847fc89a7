"""``heron bench``: the benchmark instrument (offline throughput, batch latency, serving load).

Modules: :mod:`.datasets` (JSONL and synthetic requests), :mod:`.stats` (percentiles, the only
place they are computed), :mod:`.report` (tables and JSON), :mod:`.throughput`, :mod:`.latency`,
:mod:`.serve` with :mod:`.serve_client`, and :mod:`.cli` (the argument parser). Nothing here is
imported by the engine; the offline benchmarks import the engine only when they run.
"""
