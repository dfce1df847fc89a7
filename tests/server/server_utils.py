"""Running ``python -m heron_server`` as a real uvicorn process on 127.0.0.1, for the tests.

The server picks its own free port (``--port 0``) and :class:`RemoteServer` reads the URL from its
"ready" log line, so parallel test runs never race for a port. (A module of its own rather than
conftest.py: test modules import from it, and several conftest modules share one name.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).parent.parent / "core"))

from model_utils import KERNEL_FRIENDLY, make_tiny_model_dir  # tests/core/model_utils.py

API_KEYS = ("test-key-1", "test-key-2")
SERVED_NAME = "tiny"
TINY_ARGS = ("--max-model-len", "512", "--dtype", "float32", "--seed", "0")
READY = re.compile(r"Heron server ready at (http://\S+)")


class RemoteServer:
    """A ``heron_server`` subprocess; ``url`` is set once it logged that it is ready."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        api_key: str | None = None,
        timeout: float = 240.0,
        heron_cli: bool = False,
    ) -> None:
        """``heron_cli``: start through core's ``heron serve`` instead of ``-m heron_server``."""
        self.api_key = api_key
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if k != "HERON_API_KEY"}
        full_env.update({"HF_HUB_OFFLINE": "1", **(env or {})})
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                *(("heron.cli", "serve") if heron_cli else ("heron_server",)),
                *args,
                "--port",
                "0",
                "--disable-access-log",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self.url = self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = READY.search(self.log())
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.log()}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server was not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _client_args(self, kwargs: dict) -> dict:
        """No retries (a test must see the first answer) and a timeout so nothing hangs."""
        return {
            "base_url": f"{self.url}/v1",
            "api_key": self.api_key or "none",
            "max_retries": 0,
            "timeout": 120.0,
            **kwargs,
        }

    def client(self, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(**self._client_args(kwargs))

    def async_client(self, **kwargs: object) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(**self._client_args(kwargs))

    def http(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60, **kwargs)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {"name{labels}": value} (labels kept verbatim)."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def metric(self, prefix: str) -> float:
        """Sum of the samples whose ``name{labels}`` starts with ``prefix``."""
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def make_tiny_model(tmp_dir: Path) -> Path:
    """A tiny random Llama whose head size every backend's kernels accept."""
    return make_tiny_model_dir(tmp_dir, "llama", **KERNEL_FRIENDLY)


def start_server(tmp_dir: Path, *args: str, **kwargs: object) -> RemoteServer:
    return RemoteServer(list(args), tmp_dir / "server.log", **kwargs)  # type: ignore[arg-type]


def child_pids(parent: int, module: str) -> list[int]:
    """Processes whose parent is ``parent`` and whose command line runs ``python -m module``
    (a tensor-parallel worker rank, a data-parallel replica), read from the process table."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and module.encode() in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)
