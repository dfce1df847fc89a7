"""How a pooling model turns a sequence's hidden states into one vector, and when Heron pools.

The pooler of an embedding model is part of the model as sentence-transformers saves it:
``modules.json`` lists a ``Pooling`` module (its ``1_Pooling/config.json`` says mean, CLS or last
token) and maybe a ``Normalize`` module. Heron reads that instead of guessing, like vLLM, and
``--pooler-config`` (JSON) overrides any of it. ``--runner auto`` picks the pooling runner for
such a folder and for encoder-only architectures, which cannot generate.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

POOLING_TYPES = ("MEAN", "CLS", "LAST")
ENCODER_ARCHITECTURES = frozenset({"BertModel", "RobertaModel", "XLMRobertaModel"})
"""Architectures that are bidirectional encoders: the pooling runner is the only way to run them."""

_ST_POOLING_MODES = {
    "pooling_mode_mean_tokens": "MEAN",
    "pooling_mode_cls_token": "CLS",
    "pooling_mode_lasttoken": "LAST",
}


class PoolerConfigError(ValueError):
    """A pooler configuration (from the model folder or ``--pooler-config``) is invalid."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolerConfig:
    """The engine-wide pooling recipe (vLLM's ``PoolerConfig`` fields).

    Attributes:
        pooling_type: ``MEAN`` (average of every token, special tokens included, as
            sentence-transformers does), ``CLS`` (the first token) or ``LAST`` (the last token:
            decoder embedding models such as Qwen3-Embedding).
        normalize: scale each embedding to unit L2 norm (after ``dimensions`` truncation).
        matryoshka: whether a request may ask for fewer ``dimensions`` (the model was trained so
            that a prefix of the vector is itself an embedding); ``False`` unless the model's
            ``config.json`` says ``is_matryoshka`` or ``--pooler-config`` does.
        max_seq_length: sentence-transformers' ``max_seq_length`` (the length it truncates to),
            the default ``max_model_len`` of the pooling runner.
    """

    pooling_type: str = "LAST"
    normalize: bool = True
    matryoshka: bool = False
    max_seq_length: int | None = None

    def __post_init__(self) -> None:
        if self.pooling_type not in POOLING_TYPES:
            raise PoolerConfigError(
                f"pooling_type must be one of {list(POOLING_TYPES)}, got {self.pooling_type!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        return {
            "pooling_type": self.pooling_type,
            "normalize": self.normalize,
            "matryoshka": self.matryoshka,
            "max_seq_length": self.max_seq_length,
        }


def parse_pooler_config(value: Any) -> dict[str, Any] | None:
    """``--pooler-config`` as given (JSON text or a dict) to a dict of known fields."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise PoolerConfigError(f"pooler_config is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise PoolerConfigError(f"pooler_config must be a JSON object, got {type(value).__name__}")
    known = set(PoolerConfig.__dataclass_fields__)
    unknown = sorted(set(value) - known)
    if unknown:
        raise PoolerConfigError(
            f"pooler_config has unknown field(s) {unknown}; allowed: {sorted(known)}"
        )
    if "pooling_type" in value and isinstance(value["pooling_type"], str):
        value = {**value, "pooling_type": value["pooling_type"].upper()}
    return dict(value)


def _read_json(path: Path) -> dict[str, Any] | list[Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def sentence_transformers_pooler(folder: str | Path) -> PoolerConfig | None:
    """The pooler a sentence-transformers folder declares, or ``None`` if it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list):
        return None
    pooling_type: str | None = None
    normalize = False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith(".Pooling"):
            cfg = _read_json(folder / str(module.get("path", "")) / "config.json") or {}
            chosen = [mode for key, mode in _ST_POOLING_MODES.items() if cfg.get(key)]
            modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode_") and v)
            if len(chosen) != 1 or len(modes) != 1:
                raise PoolerConfigError(
                    f"{folder}: the sentence-transformers pooling {modes} is not supported; "
                    f"Heron pools with exactly one of {sorted(_ST_POOLING_MODES)}"
                )
            pooling_type = chosen[0]
        elif kind.endswith(".Normalize"):
            normalize = True
    if pooling_type is None:
        return None
    st_config = _read_json(folder / "sentence_bert_config.json") or {}
    max_len = st_config.get("max_seq_length") if isinstance(st_config, dict) else None
    return PoolerConfig(
        pooling_type=pooling_type,
        normalize=normalize,
        max_seq_length=int(max_len) if max_len else None,
    )


def is_encoder(hf_config: Any) -> bool:
    """Whether the checkpoint is a bidirectional encoder (cannot generate)."""
    return bool(set(getattr(hf_config, "architectures", None) or ()) & ENCODER_ARCHITECTURES)


def resolve_runner(
    runner: str, path: str | None, hf_config: Any, override: dict[str, Any] | None
) -> tuple[str, PoolerConfig | None]:
    """``(runner, pooler)``: ``"generate"`` with no pooler, or ``"pooling"`` with its recipe.

    ``auto`` picks pooling for a sentence-transformers folder or an encoder architecture. The
    recipe comes from the folder, else the model's defaults (CLS for encoders, vLLM's default;
    last token for decoders), and ``override`` (``--pooler-config``) wins field by field.
    """
    st_pooler = sentence_transformers_pooler(path) if path else None
    encoder = is_encoder(hf_config)
    if runner == "auto":
        runner = "pooling" if (st_pooler is not None or encoder) else "generate"
    if runner == "generate":
        if encoder:
            raise PoolerConfigError(
                f"{'/'.join(hf_config.architectures)} is an encoder model: it cannot generate "
                "text; run it with runner 'pooling' (or 'auto')"
            )
        if override:
            raise PoolerConfigError("pooler_config is only used with runner 'pooling'")
        return "generate", None
    if runner != "pooling":
        raise PoolerConfigError(f"runner must be one of auto, generate, pooling; got {runner!r}")
    pooler = st_pooler or PoolerConfig(pooling_type="CLS" if encoder else "LAST")
    if getattr(hf_config, "is_matryoshka", False) or getattr(
        hf_config, "matryoshka_dimensions", None
    ):
        pooler = replace(pooler, matryoshka=True)
    if override:
        try:
            pooler = replace(pooler, **override)
        except TypeError as exc:
            raise PoolerConfigError(f"pooler_config: {exc}") from None
    source = "sentence-transformers modules.json" if st_pooler is not None else "model defaults"
    logger.info(
        "Pooling runner: %s pooling, normalize %s, matryoshka %s (from %s%s)",
        pooler.pooling_type,
        "on" if pooler.normalize else "off",
        "on" if pooler.matryoshka else "off",
        source,
        ", --pooler-config" if override else "",
    )
    return "pooling", pooler


def pooling_engine_changes(args: Any, pooler: PoolerConfig) -> dict[str, Any]:
    """Engine arguments the pooling runner fixes, each logged with its reason.

    A pooled prompt is computed whole in one step (mean pooling and bidirectional attention need
    every position at once), so chunked prefill is off; prefix caching is off because an
    encoder's KV depends on the whole prompt and nothing stays cached after the step anyway.
    """
    changes: dict[str, Any] = {"runner": "pooling", "pooler_config": pooler.as_dict()}
    if args.enable_chunked_prefill:
        changes["enable_chunked_prefill"] = False
        logger.info("Pooling runner: chunked prefill off (each input is computed whole)")
    if args.enable_prefix_caching:
        changes["enable_prefix_caching"] = False
        logger.info("Pooling runner: prefix caching off (KV is freed after each step)")
    return changes


def pooling_kv_plan(plan: Any, budget: int, max_num_seqs: int) -> Any:
    """The KV plan capped at one step's blocks: pooled inputs free their KV after their step.

    A cache sized for generation (gigabytes on a CPU) would only be walked through block after
    block, each first touch a page fault, while a step's worth stays in cache; a sequence wastes
    at most one partial block, hence the extra block per sequence.
    """
    needed = -(-budget // plan.block_size) + min(max_num_seqs, budget)
    if plan.num_blocks <= needed:
        return plan
    return replace(
        plan,
        num_blocks=needed,
        source=f"{plan.source}, capped at one pooling step ({budget} tokens, up to "
        f"{max_num_seqs} inputs)",
    )
