"""A real server's connections and its end (issue 23, items 3, 6 and 8).

One server process serves both tests, in order: slow-header connections are closed (item 8), then
SIGTERM arrives while streams run longer than ``--shutdown-timeout``: every client must see a final
chunk with ``finish_reason == "abort"`` and ``[DONE]``, the log says how many were cut, without a
traceback, and the process exits 0 (item 3). The stats lines of the busy engine are checked in the
same log (item 6).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest
from model_utils import KERNEL_FRIENDLY, make_tiny_model_dir
from server_utils import RemoteServer, start_server

HEADER_TIMEOUT = 1.0
SHUTDOWN_TIMEOUT = 1.5
CONTEXT = 16384
"""Long enough that a stream of the tiny model outlives the shutdown timeout many times over."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    folder = tmp_path_factory.mktemp("lifecycle")
    model = make_tiny_model_dir(
        folder, "llama", **{**KERNEL_FRIENDLY, "max_position_embeddings": CONTEXT}
    )
    remote = start_server(
        folder,
        str(model),
        "--max-model-len",
        str(CONTEXT),
        "--dtype",
        "float32",
        "--max-num-seqs",
        "2",  # two requests wait: a waiting request must be ended too
        "--shutdown-timeout",
        str(SHUTDOWN_TIMEOUT),
        "--header-timeout",
        str(HEADER_TIMEOUT),
        env={"HERON_LOG_STATS_INTERVAL": "0.5"},
    )
    yield remote
    remote.stop()


def _address(server: RemoteServer) -> tuple[str, int]:
    url = urlsplit(server.url)
    return url.hostname or "127.0.0.1", url.port or 80


def _seconds_until_closed(sock: socket.socket, limit: float, trickle: bytes = b"") -> float | None:
    """Send ``trickle`` one byte every 0.25 s; the seconds until the server closed the
    connection, or None if it was still open after ``limit`` seconds."""
    started = time.monotonic()
    position = 0
    while time.monotonic() - started < limit:
        try:
            if position < len(trickle):
                sock.send(trickle[position : position + 1])
                position += 1
            readable, _, _ = select.select([sock], [], [], 0.25)
            if readable and sock.recv(4096) == b"":
                return time.monotonic() - started
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    return None


def test_connections_that_never_complete_their_headers_are_closed(server: RemoteServer) -> None:
    address = _address(server)
    slow_headers = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    with socket.create_connection(address) as trickling:
        closed = _seconds_until_closed(trickling, 8.0, slow_headers)
    assert closed is not None, "a connection sending its headers a byte at a time stayed open"
    assert closed < HEADER_TIMEOUT + 4.0

    with socket.create_connection(address) as silent:
        closed = _seconds_until_closed(silent, 8.0)
    assert closed is not None and closed < HEADER_TIMEOUT + 4.0

    # After a complete response, the next request's headers are held to the same deadline.
    with socket.create_connection(address) as kept_alive:
        kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept_alive.recv(4096).startswith(b"HTTP/1.1 200")
        closed = _seconds_until_closed(kept_alive, 8.0, slow_headers)
    assert closed is not None and closed < HEADER_TIMEOUT + 4.0


def test_a_slow_body_after_timely_headers_is_still_served(server: RemoteServer) -> None:
    body = json.dumps({"prompt": "hello"}).encode()
    head = (
        b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with socket.create_connection(_address(server)) as sock:
        sock.sendall(head)
        for half in (body[: len(body) // 2], body[len(body) // 2 :]):
            time.sleep(HEADER_TIMEOUT * 0.8)  # 1.6 timeouts in all, after the headers
            sock.sendall(half)
        sock.settimeout(30)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")


@dataclass
class _Stream:
    path: str
    body: dict
    events: list[str] = field(default_factory=list)
    error: BaseException | None = None
    started: threading.Event = field(default_factory=threading.Event)

    def run(self, server: RemoteServer) -> None:
        try:
            with (
                httpx.Client(base_url=server.url, timeout=60) as http,
                http.stream("POST", self.path, json=self.body) as response,
            ):
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                        self.started.set()
        except BaseException as exc:  # recorded: the test asserts on it, with the events
            self.error = exc
        finally:
            self.started.set()


def _long_streams() -> list[_Stream]:
    sampling = {"max_tokens": CONTEXT - 64, "ignore_eos": True, "stream": True}
    chat = {"messages": [{"role": "user", "content": "talk"}], **sampling}
    return [
        _Stream("/v1/completions", {"prompt": "Go on", **sampling}),
        _Stream("/v1/chat/completions", chat),
        _Stream("/v1/completions", {"prompt": "And on", **sampling}),
    ]


def _post_and_keep(server: RemoteServer, body: dict, answers: list) -> None:
    """A non-streaming request; its response (or exception) is appended to ``answers``."""
    try:
        answers.append(httpx.post(f"{server.url}/v1/completions", json=body, timeout=60))
    except BaseException as exc:  # recorded: the test asserts on it
        answers.append(exc)


def test_sigterm_ends_every_stream_with_abort_and_done_then_exits_0(
    server: RemoteServer,
) -> None:
    streams = _long_streams()
    readers = [threading.Thread(target=s.run, args=(server,)) for s in streams]
    answers: list = []
    body = {"prompt": "Whole", "max_tokens": CONTEXT - 64, "ignore_eos": True}
    readers.append(threading.Thread(target=_post_and_keep, args=(server, body, answers)))
    # The first two streams take both seats (--max-num-seqs 2) before the other two requests are
    # sent, so those two wait. Sent all at once, the non-streaming request could take a seat and
    # the wait below would last until a running request had finished by length.
    for reader in readers[:2]:
        reader.start()
    deadline = time.monotonic() + 60
    while not all(s.started.is_set() for s in streams[:2]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(s.started.is_set() for s in streams[:2]), "the running streams never started"
    for reader in readers[2:]:
        reader.start()
    time.sleep(1.0)  # the stats logger (0.5 s interval) reports the busy engine
    server.proc.terminate()
    stopped = time.monotonic()
    for reader in readers:
        reader.join(60)
    assert server.proc.wait(60) == 0, server.log()
    assert time.monotonic() - stopped < SHUTDOWN_TIMEOUT + 15
    log = server.log()

    for stream in streams:
        assert stream.error is None, f"{stream.path}: {stream.error!r}\n{log}"
        assert stream.events[-1] == "[DONE]", f"{stream.path} ended without [DONE]:\n{log}"
        last = json.loads(stream.events[-2])
        assert last["choices"][0]["finish_reason"] == "abort", last
    # A non-streaming request cut by the shutdown returns what it has, marked "abort".
    assert isinstance(answers[0], httpx.Response), answers[0]
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["choices"][0]["finish_reason"] == "abort"
    cut_lines = [line for line in log.splitlines() if "Shutdown timeout" in line]
    assert len(cut_lines) == 1 and "cut 4 generation(s)" in cut_lines[0], log
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert "Avg generation throughput" in log and "Running: 2 reqs, Waiting: 2 reqs" in log, log
