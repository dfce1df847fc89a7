"""``heron serve`` flags, start-up errors, the API key variable and a clean SIGTERM shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from server_utils import TINY_ARGS, start_server

from heron.config import EngineArgs, engine_args_from_namespace
from heron_server.cli import build_parser, load_chat_template


def test_engine_flags_are_spelled_as_vllm_spells_them() -> None:
    args = build_parser().parse_args(
        [
            "some/model",
            "--dtype",
            "float32",
            "--seed",
            "3",
            "--max-model-len",
            "1024",
            "--no-enable-prefix-caching",
            "--max-num-seqs",
            "8",
            "--api-key",
            "a",
            "b",
            "--api-key",
            "c",
            "--served-model-name",
            "x",
            "y",
            "--port",
            "0",
        ]
    )
    engine_args = engine_args_from_namespace(args, model=args.model)
    assert engine_args == EngineArgs(
        model="some/model",
        dtype="float32",
        seed=3,
        max_model_len=1024,
        enable_prefix_caching=False,
        max_num_seqs=8,
    )
    assert args.api_key == ["a", "b", "c"]
    assert args.served_model_name == ["x", "y"]
    assert (args.host, args.port) == ("127.0.0.1", 0)
    defaults = build_parser().parse_args([])
    assert engine_args_from_namespace(defaults, model=defaults.model) == EngineArgs()
    assert (defaults.host, defaults.port) == ("127.0.0.1", 8000)
    # Every engine argument has its flag.
    help_text = build_parser().format_help()
    for name in EngineArgs.model_fields:
        if name != "model":
            assert "--" + name.replace("_", "-") in help_text


def test_chat_template_from_a_file_or_inline(tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    path = tmp_path / "template.jinja"
    path.write_text(template)
    assert load_chat_template(str(path)) == template
    assert load_chat_template(template) == template
    assert load_chat_template(None) is None
    with pytest.raises(ValueError, match="neither a file nor"):
        load_chat_template("no-such-file.jinja")


def test_bad_engine_arguments_exit_with_a_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "heron_server", "--max-model-len", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "max_model_len" in result.stderr


def test_heron_serve_runs_this_package() -> None:
    """core's ``heron serve`` hands its arguments to heron_server.cli.main."""
    result = subprocess.run(
        [sys.executable, "-m", "heron.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--max-model-len" in result.stdout and "--api-key" in result.stdout


def test_sigterm_lets_running_streams_finish_then_exits_cleanly(
    tmp_path: Path, tiny_model: Path
) -> None:
    # The key comes from HERON_API_KEY here (the shared server uses --api-key).
    server = start_server(
        tmp_path,
        str(tiny_model),
        *TINY_ARGS,
        "--chat-template",
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
        env={"HERON_API_KEY": "env-key"},
        api_key="env-key",
    )
    try:
        assert httpx.post(f"{server.url}/v1/completions", json={"prompt": "x"}).status_code == 401
        with server.client() as client:
            chat = client.chat.completions.create(
                model=str(tiny_model), messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert chat.usage.prompt_tokens == len("user: hi\n")  # byte-level tokens
        events: list[str] = []
        first_event = threading.Event()

        def consume() -> None:
            body = {"prompt": "Go on", "max_tokens": 400, "stream": True, "ignore_eos": True}
            http = httpx.Client(base_url=server.url, headers=server.headers, timeout=60)
            with http, http.stream("POST", "/v1/completions", json=body) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        first_event.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert first_event.wait(60)
        server.proc.send_signal(signal.SIGTERM)
        reader.join(60)
        assert server.proc.wait(60) == 0, server.log()
    finally:
        server.stop()
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "length"
    assert "Stopped" in server.log()
