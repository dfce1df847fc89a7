"""``heron`` command line: one-line errors instead of tracebacks, truthful help, the model as a
positional argument (issue 23, items 11, 12 and 13).

``main`` runs in-process on a tiny random model (under two seconds to load), so each check costs
little more than the engine start it needs; checks that fail before the model loads cost nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from model_utils import KERNEL_FRIENDLY, make_tiny_model_dir

from heron import cli, config
from heron.cli import main
from heron.config import EngineArgs, add_engine_arguments

MAX_MODEL_LEN = KERNEL_FRIENDLY["max_position_embeddings"]  # the tiny model's limit


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_model_dir(tmp_path_factory.mktemp("cli"), "llama", **KERNEL_FRIENDLY))


@pytest.fixture
def small_kv(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small KV cache: the tiny model needs little, and allocating less starts faster."""
    monkeypatch.setenv("HERON_CPU_KVCACHE_SPACE", "0.05")
    monkeypatch.setenv("HERON_KVCACHE_SPACE", "0.05")


def _one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The error ``main`` printed: exactly one line on stderr, starting with the command."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("heron ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"heron {command}: "), err
    return lines[0]


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[name]


# -- 12: the top-level --log-level ------------------------------------------------------------


def test_an_unknown_log_level_is_a_usage_error_naming_the_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--log-level", "foo", "plugins"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "--log-level: invalid choice: 'FOO'" in err and "'WARNING'" in err


def test_log_levels_are_case_insensitive() -> None:
    for given in ("debug", "Warning", "ERROR"):
        args = cli.build_parser().parse_args(["--log-level", given, "plugins"])
        assert args.log_level == given.upper()


# -- 13: help texts -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_every_flag_states_its_default_once(command: str) -> None:
    """No "default: the model's limit. (default: None)": one default per flag, a true one."""
    parser = _subparser(command)
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings == ["-h", "--help"]:
            continue
        flag = action.option_strings[-1]
        help_text = action.help or ""
        assert help_text.lower().count("default:") == 1, (flag, help_text)
        assert "(default: " in help_text, (flag, help_text)
        assert "None" not in help_text, (flag, help_text)


def test_engine_flags_show_their_real_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    helps = {a.dest: a.help for a in parser._actions if a.dest in EngineArgs.model_fields}
    assert set(helps) == set(EngineArgs.model_fields)
    assert helps["enable_prefix_caching"].endswith("(default: on)")
    assert helps["enforce_eager"].endswith("(default: off)")
    assert helps["trust_remote_code"].endswith("(default: off)")
    assert helps["max_num_seqs"].endswith("(default: 128)")
    assert helps["max_model_len"].endswith("(default: the model's limit)")
    assert "2048" in helps["max_num_batched_tokens"]
    # The words agree with the values where a value exists.
    assert config.engine_argument_default("seed") == str(EngineArgs().seed)
    assert config.engine_argument_default("dtype") == EngineArgs().dtype
    for name, info in EngineArgs.model_fields.items():
        assert "default:" not in (info.description or "").lower(), name
    # argparse can render every help (a stray % would raise here).
    parser.format_help()


@pytest.mark.parametrize(
    ("command", "documented"),
    [("generate", "[MODEL] -p PROMPT"), ("chat", "\n  MODEL ")],
)
def test_help_documents_the_model_positional(
    command: str, documented: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert documented in out and "--model" in out


# -- 13: the model as a positional argument -----------------------------------------------------


def test_chat_takes_the_model_as_a_positional_or_as_model() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["chat", "some/model"]).positional_model == "some/model"
    assert parser.parse_args(["chat", "--model", "some/model"]).model == "some/model"


def test_chat_refuses_two_different_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "a/model", "--model", "b/model"]) == 2
    assert "two models" in _one_line_error(capsys, "chat")


def test_generate_positionals_are_prompts_unless_prompts_come_with_p() -> None:
    parser = cli.build_parser()
    assert cli.generate_inputs(parser.parse_args(["generate", "Hello", "Bonjour"])) == (
        None,
        ["Hello", "Bonjour"],
    )
    args = parser.parse_args(["generate", "m.gguf", "-p", "Hello", "--prompt", "Bonjour"])
    assert cli.generate_inputs(args) == ("m.gguf", ["Hello", "Bonjour"])
    args = parser.parse_args(["generate", "--model", "m.gguf", "-p", "Hello"])
    assert cli.generate_inputs(args) == ("m.gguf", ["Hello"])
    args = parser.parse_args(["generate", "--model", "m.gguf", "Hello"])
    assert cli.generate_inputs(args) == ("m.gguf", ["Hello"])


def test_generate_refuses_ambiguous_positionals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "a", "b", "-p", "Hello"]) == 2
    assert "at most one positional" in _one_line_error(capsys, "generate")
    assert main(["generate", "a.gguf", "-p", "Hello", "--model", "b.gguf"]) == 2
    assert "two models" in _one_line_error(capsys, "generate")


@pytest.mark.usefixtures("small_kv")
def test_generate_with_a_positional_model(
    tiny_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["generate", tiny_model, "-p", "Hello", "--max-tokens", "4", "--temperature", "0"])
    assert code == 0
    assert "### Hello\n" in capsys.readouterr().out


# -- 11: heron generate's errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--max-model-len", "4"], "max_model_len"),
    ],
)
def test_bad_flag_values_are_one_line_before_loading(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # No model exists at this path: the value is refused before any loading is tried.
    assert main(["generate", "--model", "/no/such/model.gguf", *flags, "Hello"]) == 2
    assert named in _one_line_error(capsys, "generate")


@pytest.mark.usefixtures("small_kv")
def test_a_prompt_longer_than_the_model_allows_is_one_line(
    tiny_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["generate", "--model", tiny_model, "--max-model-len", "64", "word " * 100])
    assert code == 2
    line = _one_line_error(capsys, "generate")
    assert "maximum context length is 64 tokens" in line and "500 tokens" in line


@pytest.mark.usefixtures("small_kv")
def test_max_tokens_beyond_the_context_is_refused_as_the_server_does(
    tiny_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["generate", "--model", tiny_model, "--max-tokens", "100000", "Hello"])
    assert code == 2
    line = _one_line_error(capsys, "generate")
    assert "--max-tokens 100000" in line and f"{MAX_MODEL_LEN} tokens" in line
    # The prompt's tokens count, as in the server's 400: 5 bytes = 5 tokens here.
    room = MAX_MODEL_LEN - 5
    assert f"at most {room}" in line
    code = main(["generate", "--model", tiny_model, "--max-tokens", str(room + 1), "Hello"])
    assert code == 2
    capsys.readouterr()
    code = main(["generate", "--model", tiny_model, "--max-tokens", str(room), "Hello"])
    assert code == 0, capsys.readouterr().err


def test_a_model_that_cannot_load_is_one_line_with_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--model", str(tmp_path / "missing.gguf"), "Hello"]) == 1
    assert "cannot load the model" in _one_line_error(capsys, "generate")
