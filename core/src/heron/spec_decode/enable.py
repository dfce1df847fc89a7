"""Turn speculation on for an engine: check the combination, give the scheduler its planner.

Kept out of the engine core so that the core only asks one question at start-up and one per step
(the counters). Combinations that would silently compute wrong tokens are refused here, by name.
"""

from __future__ import annotations

from typing import Any

from heron.spec_decode.config import SpeculativeConfig
from heron.spec_decode.draft_model import build_draft_model_planner
from heron.spec_decode.metrics import SpecDecodeCounters
from heron.spec_decode.proposer import DraftPlanner


class SpeculativeConfigError(ValueError):
    """speculative_config does not fit the rest of the engine's configuration."""


def check_speculation(args: Any, *, pooling: bool) -> SpeculativeConfig | None:
    """``args.speculative_config`` parsed, or None when off; raises before any worker starts
    when it cannot work with the rest of the configuration."""
    config = SpeculativeConfig.from_value(args.speculative_config)
    if config is None:
        return None
    if pooling:
        raise SpeculativeConfigError(
            "speculative_config is for text generation; the pooling runner generates nothing"
        )
    return config


def attach_speculation(config: SpeculativeConfig | None, core: Any) -> SpecDecodeCounters | None:
    """Give the engine core's scheduler its draft planner (loading the draft model, if any);
    the counters, or None when speculation is off."""
    if config is None:
        return None
    if config.method == "ngram":
        core.scheduler.proposer = DraftPlanner(config, core.max_model_len)
    else:
        try:
            core.scheduler.proposer = build_draft_model_planner(config, core)
        except ValueError as exc:
            raise SpeculativeConfigError(str(exc)) from exc
    return SpecDecodeCounters(num_speculative_tokens=config.num_speculative_tokens)
