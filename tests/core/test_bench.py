"""``heron bench``: dataset parsing, statistics, the offline benchmarks on a tiny random model,
and ``bench serve`` against a fake OpenAI-compatible SSE server started in the test (no network)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_utils import make_tiny_model_dir

from heron.bench import datasets, stats
from heron.bench.cli import main as bench_main
from heron.bench.report import finite, write_json
from heron.bench.serve import compute_metrics
from heron.bench.serve_client import RequestResult

W64_LINE = {
    "id": 0,
    "topic": "a lighthouse keeper",
    "target_len": 100,
    "prompt": "<|im_start|>user\nWrite a short story about a lighthouse keeper.<|im_end|>\n",
    "prompt_token_ids": [1, 2, 3, 4, 5],
    "prompt_len": 5,
    "max_tokens": 128,
}


def _write_jsonl(path: Path, items: list[Any]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


# -- datasets --------------------------------------------------------------------------------------
def test_w64_line_parses(tmp_path: Path) -> None:
    reqs = datasets.load_dataset(_write_jsonl(tmp_path / "w.jsonl", [W64_LINE, W64_LINE]))
    assert len(reqs) == 2
    r = reqs[0]
    assert r.prompt == W64_LINE["prompt"] and r.prompt_token_ids == [1, 2, 3, 4, 5]
    assert (r.output_len, r.prompt_len) == (128, 5)
    assert r.engine_prompt() == W64_LINE["prompt"]  # text, as bench_offline.py sends it
    assert datasets.load_dataset(tmp_path / "w.jsonl", output_len=7)[0].output_len == 7


def test_dataset_forms(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt_token_ids": [5, 6], "output_len": 3}\n\n{"prompt": "hi"}\n')
    ids_only, text_only = datasets.load_dataset(path)
    assert ids_only.engine_prompt() == {"prompt_token_ids": [5, 6]}
    assert ids_only.api_prompt() == [5, 6] and (ids_only.output_len, ids_only.prompt_len) == (3, 2)
    assert text_only.output_len == datasets.DEFAULT_OUTPUT_LEN and text_only.prompt_len is None
    array = tmp_path / "a.json"
    array.write_text(json.dumps([{"prompt": "a", "max_tokens": 4}]))
    assert datasets.load_dataset(array)[0].output_len == 4


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "x"}', ":2: needs 'prompt'"),
        ('{"prompt_token_ids": [1, -2]}', ":2: 'prompt_token_ids' must be"),
        ('{"prompt": "x", "output_len": 0}', ":2: output length must be a positive"),
        ('{"prompt": 3}', ":2: 'prompt' must be a string"),
        ("{not json", ":2: not valid JSON"),
        ("[1]", ":2: expected a JSON object"),
    ],
)
def test_dataset_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line + "\n")
    with pytest.raises(datasets.DatasetError, match=message.replace("[", r"\[")):
        datasets.load_dataset(path)


def test_take_cycles_and_synthetic_prompts() -> None:
    reqs = datasets.synthetic_token_requests(5, 10, 4, 50, seed=1, exclude_ids={0, 1, 2})
    assert reqs == datasets.synthetic_token_requests(5, 10, 4, 50, seed=1, exclude_ids={0, 1, 2})
    assert all(len(r.prompt_token_ids or []) == r.prompt_len == 10 for r in reqs)
    assert not {0, 1, 2} & {t for r in reqs for t in r.prompt_token_ids or []}
    varied = datasets.synthetic_token_requests(50, 100, 4, 50, seed=2, range_ratio=0.5)
    assert {50 <= (r.prompt_len or 0) <= 150 for r in varied} == {True}
    assert len({r.prompt_len for r in varied}) > 1
    assert [r.prompt_len for r in datasets.take(reqs[:2], 5)] == [10] * 5
    text = datasets.synthetic_text_requests(3, 12, 5, seed=0)
    assert all(len((r.prompt or "").split()) == 12 and r.output_len == 5 for r in text)
    assert len({r.prompt for r in text}) == 3


# -- statistics and result files -------------------------------------------------------------------
def test_percentile_matches_numpy() -> None:
    rng = random.Random(0)
    for n in (1, 2, 7, 100):
        xs = [rng.uniform(0, 10) for _ in range(n)]
        for p in (0, 10, 25, 50, 75, 90, 99, 100):
            assert stats.percentile(xs, p) == pytest.approx(float(np.percentile(xs, p)))
    assert math.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_summarize_and_scale() -> None:
    s = stats.summarize([1.0, 2.0, 3.0, 4.0], (50, 99))
    assert (s["mean"], s["median"], s["min"], s["max"], s["count"]) == (2.5, 2.5, 1.0, 4.0, 4.0)
    assert s["std"] == pytest.approx(float(np.std([1, 2, 3, 4])))
    assert s["p99"] == pytest.approx(3.97)
    assert stats.scale(s, 1000.0)["p50"] == 2500.0 and stats.scale(s, 1000.0)["count"] == 4.0
    empty = stats.summarize([], (90,))
    assert math.isnan(empty["mean"]) and math.isnan(empty["p90"])
    assert stats.median_of_runs([3.0, 1.0, 2.0]) == {
        "median": 2.0, "min": 1.0, "max": 3.0, "all": [3.0, 1.0, 2.0],
    }  # fmt: skip


def test_json_has_no_nan(tmp_path: Path) -> None:
    assert finite({"a": math.nan, "b": [math.inf, 1.0], "c": "x"}) == {
        "a": None, "b": [None, 1.0], "c": "x",
    }  # fmt: skip
    write_json(tmp_path / "sub" / "r.json", {"x": math.nan})
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == {"x": None}


def test_serving_metrics_math() -> None:
    a = RequestResult(success=True, ttft=0.1, e2el=1.1, itl=[0.2] * 5, output_tokens=11,
                      prompt_tokens=20)  # fmt: skip
    b = RequestResult(success=True, ttft=0.3, e2el=0.3, itl=[], output_tokens=1, prompt_tokens=10)
    failed = RequestResult(error="HTTP 500")
    m = compute_metrics([a, b, failed], duration=2.0, slos={"ttft": 0.2, "tpot": 0.2})
    assert (m["completed"], m["failed"]) == (2, 1)
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (30, 12)
    assert m["request_throughput"] == 1.0 and m["output_throughput"] == 6.0
    assert m["total_token_throughput"] == 21.0
    assert m["mean_tpot_ms"] == pytest.approx(100.0)  # (1.1 - 0.1) / 10, b has no TPOT
    assert m["median_ttft_ms"] == pytest.approx(200.0) and m["p99_itl_ms"] == pytest.approx(200.0)
    assert m["mean_e2el_ms"] == pytest.approx(700.0)
    assert m["request_goodput"] == 0.5  # b misses the TTFT SLO


# -- offline benchmarks on a tiny model ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(
        tmp_path_factory.mktemp("bench"), "llama", hidden_size=128, intermediate_size=256,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip


@pytest.fixture
def small_kv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_CPU_KVCACHE_SPACE", "0.05")
    monkeypatch.setenv("HERON_KVCACHE_SPACE", "0.05")


@pytest.mark.usefixtures("small_kv")
def test_throughput_synthetic_and_dataset(tiny_model: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "t.json"
    common = ["--model", str(tiny_model), "--max-model-len", "128", "--output-json", str(out)]
    args = ["throughput", *common, "--input-len", "16", "--output-len", "8", "--num-prompts", "4"]
    assert bench_main([*args, "--num-iters", "2"]) == 0
    r = json.loads(out.read_text())
    assert (r["num_requests"], r["prompt_tokens"], r["output_tokens"]) == (4, 64, 32)
    assert len(r["runs"]) == 2 and r["elapsed_s"]["median"] > 0 and r["startup_s"] > 0
    assert r["output_tok_s"]["median"] > 0 and r["engine_args"]["max_model_len"] == 128
    assert "Output token throughput" in capsys.readouterr().out

    line = dict(W64_LINE, prompt="Write a short story about a kite festival.", max_tokens=6)
    dataset = _write_jsonl(tmp_path / "w.jsonl", [line])
    assert bench_main(["throughput", *common, "--dataset", str(dataset), "--num-prompts", "3"]) == 0
    r = json.loads(out.read_text())
    assert (r["num_requests"], r["output_tokens"], r["expected_output_tokens"]) == (3, 18, 18)


@pytest.mark.usefixtures("small_kv")
def test_latency(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "l.json"
    argv = ["latency", "--model", str(tiny_model), "--max-model-len", "128", "--batch-size", "2",
            "--input-len", "8", "--output-len", "6", "--num-iters-warmup", "1", "--num-iters", "3",
            "--output-json", str(out)]  # fmt: skip
    assert bench_main(argv) == 0
    r = json.loads(out.read_text())
    assert len(r["latencies"]) == 3 and r["decode_method"] == "request metrics"
    assert set(r["percentiles"]) == {"10", "25", "50", "75", "90", "99"}
    assert r["latency_s"]["p10"] <= r["latency_s"]["p50"] <= r["latency_s"]["p99"]
    assert r["decode_tok_s_per_seq"]["median"] > 0 and r["ttft_ms"]["count"] == 6


@pytest.mark.usefixtures("small_kv")
def test_prefill(tiny_model: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "p.json"
    argv = ["prefill", "--model", str(tiny_model), "--max-model-len", "128", "--context-lens",
            "16", "100", "--num-iters", "2", "--output-json", str(out)]  # fmt: skip
    assert bench_main(argv) == 0
    r = json.loads(out.read_text())
    assert [row["context_len"] for row in r["results"]] == [16, 100]
    for row in r["results"]:
        assert len(row["prefill_s"]["all"]) == 2
        assert row["prefill_tok_s"] == pytest.approx(
            row["context_len"] / row["prefill_s"]["median"]
        )
    assert "100 tokens of context" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="max_model_len - 1"):
        bench_main([*argv[:6], "128"])


# -- bench serve against a fake OpenAI-compatible server -------------------------------------------
class FakeServer:
    """A minimal HTTP/1.1 server that streams OpenAI-style SSE, one token per chunk; with
    ``send_usage`` False it behaves like a server that ignores ``stream_options``."""

    def __init__(self) -> None:
        self.send_usage = True
        self.bodies: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        method, path, _ = head.split("\r\n", 1)[0].split(" ")
        headers = [h.split(":", 1) for h in head.split("\r\n")[1:] if ":" in h]
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        body = json.loads(await reader.readexactly(length)) if length else {}
        if method == "GET" and path == "/v1/models":
            self._send(writer, "200 OK", "application/json", json.dumps({"data": [{"id": "fake"}]}))
        elif method == "POST" and body.get("model") == "broken":
            self._send(writer, "500 Internal Server Error", "application/json", '{"error": "x"}')
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            self.bodies.append(body)
            self._send(writer, "200 OK", "text/event-stream", "")
            chat = path.endswith("chat/completions")
            for i in range(body["max_tokens"]):
                choice = {"delta": {"content": f"t{i} "}} if chat else {"text": f"t{i} "}
                writer.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
                await writer.drain()
                await asyncio.sleep(0.002)
            if self.send_usage and body.get("stream_options", {}).get("include_usage"):
                usage = {"prompt_tokens": 7, "completion_tokens": body["max_tokens"]}
                writer.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            writer.write(b"data: [DONE]\n\n")
        else:
            self._send(writer, "404 Not Found", "text/plain", "no")
        await writer.drain()
        writer.close()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, status: str, ctype: str, text: str) -> None:
        size = f"Content-Length: {len(text)}\r\n" if ctype != "text/event-stream" else ""
        head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{size}Connection: close\r\n\r\n"
        writer.write(head.encode() + text.encode())


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def test_serve_against_fake_server(fake_server: FakeServer, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "s.json"
    base = ["serve", "--base-url", f"http://127.0.0.1:{fake_server.port}/v1", "--input-len", "5",
            "--output-len", "4", "--num-prompts", "6", "--output-json", str(out)]  # fmt: skip
    assert bench_main([*base, "--max-concurrency", "2", "--save-detailed"]) == 0
    r = json.loads(out.read_text())
    assert r["model"] == "fake" and (r["completed"], r["failed"]) == (6, 0)
    assert (r["total_output_tokens"], r["total_input_tokens"], r["usage_reported"]) == (
        24,
        42,
        True,
    )
    assert r["mean_ttft_ms"] > 0 and r["median_tpot_ms"] > 0 and r["p99_itl_ms"] > 0
    assert r["request_throughput"] > 0 and len(r["requests"][0]["itl"]) == 3
    assert "Serving Benchmark Result" in capsys.readouterr().out
    sent = fake_server.bodies[-1]
    assert sent["stream"] and sent["stream_options"] == {"include_usage": True}
    assert (sent["ignore_eos"], sent["min_tokens"], sent["max_tokens"]) == (True, 4, 4)
    assert len(fake_server.bodies) == 7  # one warm-up request

    fake_server.send_usage = False
    chat = [*base, "--endpoint", "/v1/chat/completions", "--request-rate", "200", "--model", "m"]
    assert bench_main(chat) == 0
    r = json.loads(out.read_text())
    assert (r["completed"], r["total_output_tokens"], r["usage_reported"]) == (6, 24, False)
    assert fake_server.bodies[-1]["messages"][0]["role"] == "user"


def test_serve_reports_failures(fake_server: FakeServer, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{fake_server.port}"
    argv = ["serve", "--base-url", url, "--model", "broken", "--num-prompts", "2"]
    with pytest.raises(SystemExit, match=r"warm-up request failed.*HTTP 500"):
        bench_main(argv)
    out = tmp_path / "f.json"
    assert bench_main([*argv, "--num-warmups", "0", "--output-json", str(out)]) == 1
    r = json.loads(out.read_text())
    assert (r["completed"], r["failed"]) == (0, 2) and "HTTP 500" in r["errors"][0]
