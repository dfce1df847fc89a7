"""A platform's ``check_config`` changes: core applies them to its own copy and logs each reason."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from model_utils import KERNEL_FRIENDLY, make_tiny_model_dir

from heron.backends.reference import ReferencePlatform
from heron.config import make_engine_args
from heron.engine.engine_core import EngineConfigError, EngineCore
from heron_interfaces import ConfigChange


@pytest.fixture
def asks_for(monkeypatch: pytest.MonkeyPatch):
    """Make the reference backend ask for the given changes; returns the configs it was shown."""
    monkeypatch.setenv("HERON_BACKEND", "reference")
    seen: list[Any] = []

    def install(*changes: ConfigChange) -> list[Any]:
        def check_config(cls: type, config: Any) -> list[ConfigChange]:
            seen.append(config)
            return list(changes)

        monkeypatch.setattr(ReferencePlatform, "check_config", classmethod(check_config))
        return seen

    return install


@pytest.fixture
def model_dir(tmp_path):
    return str(make_tiny_model_dir(tmp_path, "llama", **KERNEL_FRIENDLY))


def test_changes_are_applied_and_logged(model_dir, asks_for, caplog) -> None:
    seen = asks_for(ConfigChange(field="max_num_batched_tokens", value=96, reason="short steps"))
    args = make_engine_args(model=model_dir, dtype="float32", max_model_len=64)
    with caplog.at_level(logging.INFO, logger="heron.engine.engine_core"):
        core = EngineCore(args)
    assert seen == [args]
    assert core.scheduler_config.max_num_batched_tokens == 96
    assert core.args.max_num_batched_tokens == 96
    assert args.max_num_batched_tokens is None  # the caller's arguments are left alone
    assert "Backend reference sets max_num_batched_tokens = 96: short steps" in caplog.text
    assert "token budget 96 per step" in caplog.text


def test_no_changes_keep_the_arguments(model_dir, asks_for) -> None:
    asks_for()
    args = make_engine_args(model=model_dir, dtype="float32", max_model_len=64)
    assert EngineCore(args).args is args


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (ConfigChange(field="max_num_batched_token", value=96, reason="typo"), "not an engine"),
        (ConfigChange(field="max_num_batched_tokens", value=0, reason="bad"), "not allowed"),
    ],
)
def test_a_bad_change_names_the_backend_and_the_field(
    model_dir, asks_for, change: ConfigChange, message: str
) -> None:
    asks_for(change)
    with pytest.raises(EngineConfigError, match=message) as info:
        EngineCore(make_engine_args(model=model_dir, dtype="float32", max_model_len=64))
    assert "'reference'" in str(info.value) and change.field in str(info.value)
