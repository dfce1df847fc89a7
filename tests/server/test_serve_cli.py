"""``heron serve`` flags, start-up errors, the API key variable and a clean SIGTERM shutdown."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from server_utils import TINY_ARGS, start_server

from heron.config import EngineArgs, engine_args_from_namespace
from heron_server.cli import build_parser, load_chat_template, resolve_model


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
    assert args.api_key == ["a", "c"]
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


def test_api_key_takes_one_value_and_never_the_model() -> None:
    """Issue 23 item 4: `--api-key k1 /path/model.gguf` took the path as a second key."""
    args = build_parser().parse_args(["--api-key", "k1", "/path/model.gguf"])
    assert args.api_key == ["k1"]
    assert args.model == "/path/model.gguf"
    args = build_parser().parse_args(["--api-key", "a", "--api-key", "b", "m.gguf"])
    assert (args.api_key, args.model) == (["a", "b"], "m.gguf")


def test_served_model_name_may_not_swallow_the_model(tmp_path: Path) -> None:
    """Like --api-key, --served-model-name takes several values: a model after it is caught."""
    model = tmp_path / "model.gguf"
    model.write_bytes(b"")
    args = build_parser().parse_args(["--served-model-name", "x", str(model)])
    with pytest.raises(ValueError, match="looks like the model"):
        resolve_model(args)
    args = build_parser().parse_args([str(model), "--served-model-name", "x", "y"])
    assert resolve_model(args) == str(model)


def test_port_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--port", "99999"])
    assert "argument --port: must be in [0, 65535], got 99999" in capsys.readouterr().err


def test_model_is_positional_or_an_option_and_both_must_agree() -> None:
    """Issue 23 item 13: `heron serve --model M` as vLLM accepts it, beside `heron serve M`."""
    parse = build_parser().parse_args
    assert resolve_model(parse(["--model", "some/model"])) == "some/model"
    assert resolve_model(parse(["some/model"])) == "some/model"
    assert resolve_model(parse(["some/model", "--model", "some/model"])) == "some/model"
    assert resolve_model(parse([])) is None
    with pytest.raises(ValueError, match="given twice"):
        resolve_model(parse(["a/model", "--model", "b/model"]))
    result = subprocess.run(
        [sys.executable, "-m", "heron_server", "a/model", "--model", "b/model"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "heron serve: the model is given twice, as 'a/model' and as --model 'b/model'; give it once"
    ]


def test_log_level_is_checked_in_any_case_with_a_one_line_error() -> None:
    """Issue 23 item 12: `--log-level foo` gave a raw traceback."""
    assert build_parser().parse_args(["--log-level", "WARNING"]).log_level == "warning"
    result = subprocess.run(
        [sys.executable, "-m", "heron_server", "--log-level", "foo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "argument --log-level: invalid choice: 'foo'" in result.stderr.splitlines()[-1]


def test_server_flags_state_their_default_exactly_once() -> None:
    """Issue 23 item 13: help texts must neither omit a default nor state it twice."""
    parser = build_parser()
    groups = [g for g in parser._action_groups if g.title in ("server", "positional arguments")]
    actions = [a for g in groups for a in g._group_actions]
    actions += [a for a in parser._actions if a.dest == "model_option"]
    assert len(actions) > 10
    for action in actions:
        assert action.help is not None, action.dest
        assert action.help.count("(default") == 1, (action.dest, action.help)


def test_disable_log_stats_reaches_the_engine() -> None:
    args = build_parser().parse_args(["--disable-log-stats"])
    assert engine_args_from_namespace(args, model=args.model).disable_log_stats is True
    args = build_parser().parse_args([])
    assert engine_args_from_namespace(args, model=args.model).disable_log_stats is False


def test_a_port_in_use_fails_at_once_naming_it_before_the_engine_loads(
    tiny_model: Path,
) -> None:
    """Issue 23 item 12: the port was found busy only after the whole engine had loaded."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        command = [sys.executable, "-m", "heron_server", str(tiny_model), *TINY_ARGS]
        result = subprocess.run(
            [*command, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert "Loading" not in result.stderr and "Engine ready" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"heron serve: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert time.monotonic() - started < 30


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
        # Ample time: this stream must finish by itself even on a loaded machine (one that
        # outlives the timeout is cut, which test_server_lifecycle checks).
        "--shutdown-timeout",
        "150",
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
            body = {"prompt": "Go on", "max_tokens": 100, "stream": True, "ignore_eos": True}
            http = httpx.Client(base_url=server.url, headers=server.headers, timeout=180)
            with http, http.stream("POST", "/v1/completions", json=body) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        first_event.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert first_event.wait(60)
        server.proc.send_signal(signal.SIGTERM)
        reader.join(180)
        assert server.proc.wait(180) == 0, server.log()
    finally:
        server.stop()
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "length"
    assert "Stopped" in server.log()
