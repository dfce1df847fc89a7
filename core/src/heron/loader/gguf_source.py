"""GGUF checkpoints: config, tokenizer and generation defaults from metadata, weights dequantized.

transformers already turns GGUF metadata into a config and a tokenizer (``gguf_file=``); Heron uses
that public path rather than re-implementing the conversions. Both re-parse the whole file
(seconds for the token tables), so their result is saved once as an ordinary Hugging Face folder
in Heron's cache, keyed by file size, mtime and transformers version; later loads read that.

Tensor names are mapped to Hugging Face names, and llama.cpp's rotary permutation of Q/K (applied
by ``convert_hf_to_gguf.py`` for the ``llama`` architecture only) is undone exactly as
transformers' ``LlamaTensorProcessor`` does, so the same model classes serve both sources.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import quant_shape_from_byte_shape

from heron.loader.dequant import dequantize
from heron.loader.gguf_file import read_gguf
from heron.loader.lazy import LazyTensor, leading_rows
from heron.loader.quantized import GGUF_FORMATS, gguf_quantized_tensor

logger = logging.getLogger(__name__)

# GGUF ``general.architecture`` / transformers ``model_type`` -> HF architecture class name
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# Bump when the conversion below changes, so that stale cache entries are not reused.
_CACHE_FORMAT = 1
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
# GGUF float types keep their dtype when decoded; quantized ones become float32.
_FLOAT_DTYPES = {
    GGMLQuantizationType.F64: torch.float64,
    GGMLQuantizationType.F32: torch.float32,
    GGMLQuantizationType.F16: torch.float16,
    GGMLQuantizationType.BF16: torch.bfloat16,
}
# Tensors llama.cpp stores that Heron derives from the config instead.
_DERIVED = {"rope_freqs.weight"}
# generation_config.json key -> GGUF metadata key (config defaults would invent a bos id)
_GEN_KEYS = {
    "bos_token_id": "tokenizer.ggml.bos_token_id",
    "eos_token_id": "tokenizer.ggml.eos_token_id",
    "pad_token_id": "tokenizer.ggml.padding_token_id",
}


def hf_tensor_name(gguf_name: str) -> str:
    """The Hugging Face name of a GGUF tensor (unknown names are returned unchanged)."""
    match = _BLOCK_RE.match(gguf_name)
    if match:
        layer, part, kind = match.groups()
        if part in _BLOCK_NAMES:
            return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"
        return gguf_name
    stem, _, kind = gguf_name.rpartition(".")
    if stem in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[stem]}.{kind}"
    return gguf_name


def unpermute_rotary(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's ``permute`` of a Q or K projection (rows interleaved per head)."""
    half = weight.shape[0] // num_heads // 2
    rest = weight.shape[1:]
    return weight.reshape(num_heads, half, 2, *rest).transpose(1, 2).reshape(weight.shape)


def iter_gguf_weights(
    path: str, hf_config: Any, *, lazy: bool = False, keep_quantized: bool = False
) -> Iterator[tuple[str, torch.Tensor | LazyTensor]]:
    """Yield ``(hf_name, tensor)`` for each tensor of the GGUF file, dequantized on the fly.

    ``lazy``: :class:`~heron.loader.lazy.LazyTensor` s that dequantize only the rows a rank keeps
    (whole quantization blocks run along rows), and nothing for a tensor that is skipped.
    ``keep_quantized`` (``--quantization gguf``): 2-D Q8_0/Q4_0/Q4_1/Q4_K tensors come as
    :class:`~heron.loader.quantized.QuantizedTensor` s whose blocks a linear layer keeps; other
    quantized 2-D types (Q6_K, ...) are dequantized, and one log line says which.
    """
    metadata, tensors = read_gguf(path)
    dequantized: dict[str, int] = {}  # quantized types kept_quantized could not keep
    permuted = metadata.get("general.architecture") == "llama"
    num_heads = hf_config.num_attention_heads
    num_kv_heads = getattr(hf_config, "num_key_value_heads", None) or num_heads
    for tensor in tensors:
        if tensor.name in _DERIVED:
            continue
        name = hf_tensor_name(tensor.name)
        heads = None
        if permuted and ".self_attn.q_proj." in name:
            heads = num_heads
        elif permuted and ".self_attn.k_proj." in name:
            heads = num_kv_heads
        if lazy:
            yield name, _lazy_gguf_tensor(name, tensor.data, tensor.tensor_type, heads)
            continue
        if keep_quantized and tensor.tensor_type in GGUF_FORMATS and len(tensor.data.shape) == 2:
            yield name, _quantized_gguf_tensor(name, tensor.data, tensor.tensor_type, heads)
            continue
        if keep_quantized and tensor.tensor_type not in _FLOAT_DTYPES:
            dequantized[tensor.tensor_type.name] = dequantized.get(tensor.tensor_type.name, 0) + 1
        weight = dequantize(tensor.data, tensor.tensor_type)
        yield name, weight if heads is None else unpermute_rotary(weight, heads)
    if dequantized:
        logger.info(
            "Quantized weights: %s dequantized at load (no quantized kernels for %s; "
            "--quantization gguf keeps %s)",
            ", ".join(f"{n} {t} tensors" for t, n in sorted(dequantized.items())),
            "this type" if len(dequantized) == 1 else "these types",
            "/".join(t.name for t in GGUF_FORMATS),
        )


def _quantized_gguf_tensor(
    name: str, data: Any, qtype: GGMLQuantizationType, rotary_heads: int | None
) -> LazyTensor:
    """A quantized 2-D tensor as its blocks (for a linear layer) or, read, dequantized."""
    shape = tuple(int(n) for n in quant_shape_from_byte_shape(tuple(data.shape), qtype))
    unpermute = None if rotary_heads is None else partial(unpermute_rotary, num_heads=rotary_heads)

    def read(index: Any) -> torch.Tensor:
        weight = dequantize(data, qtype)
        return (weight if unpermute is None else unpermute(weight))[index]

    return gguf_quantized_tensor(name, data, qtype, shape, read, unpermute)


def _lazy_gguf_tensor(
    name: str, data: Any, qtype: GGMLQuantizationType, rotary_heads: int | None
) -> LazyTensor:
    """``data`` (rows of quantization blocks) as a LazyTensor; ``rotary_heads``: a Q or K
    projection stored permuted per head, which a slice of whole heads un-permutes by itself."""
    shape = tuple(int(n) for n in data.shape)
    if data.dtype == np.uint8:  # rows of packed blocks (BF16 included): the element shape
        shape = tuple(int(n) for n in quant_shape_from_byte_shape(shape, qtype))
    dtype = _FLOAT_DTYPES.get(qtype, torch.float32)

    def decode(rows: Any, heads: int | None) -> torch.Tensor:
        weight = dequantize(rows, qtype)
        return weight if heads is None else unpermute_rotary(weight, heads)

    def read(index: Any) -> torch.Tensor:
        split = leading_rows(index, shape[0]) if len(shape) >= 2 else None
        if split is not None:
            rows, rest = split
            start, stop = rows.start, rows.stop
            if rotary_heads is None and stop > start:
                return decode(data[start:stop], None)[rest]
            per_head = shape[0] // rotary_heads if rotary_heads else 0
            if per_head and stop > start and start % per_head == 0 and stop % per_head == 0:
                return decode(data[start:stop], (stop - start) // per_head)[rest]
        return decode(data, rotary_heads)[index]

    return LazyTensor(name, shape, dtype, read)


def heron_cache_dir() -> Path:
    """``$HERON_CACHE_DIR``, else ``$XDG_CACHE_HOME/heron``, else ``~/.cache/heron``."""
    explicit = os.environ.get("HERON_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "heron"


def _metadata_key(path: Path) -> str:
    import transformers

    stat = path.stat()
    return (
        f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"
        f"-tf{transformers.__version__}-v{_CACHE_FORMAT}"
    )


def _convert_metadata(path: Path, out_dir: Path) -> None:
    """Write config, tokenizer and generation defaults of a GGUF file as an HF folder."""
    from transformers import AutoConfig, AutoTokenizer

    folder, file_name = str(path.parent), path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=file_name)
    model_type = getattr(config, "model_type", "")
    if not getattr(config, "architectures", None) and model_type in _ARCHITECTURES:
        config.architectures = [_ARCHITECTURES[model_type]]
    # transformers maps ``rope.dimension_count`` to head_dim for llama only; the explicit
    # per-head key length (Qwen3: head_dim != hidden / heads) is authoritative when present.
    metadata, _ = read_gguf(str(path))
    key_length = metadata.get(f"{metadata.get('general.architecture')}.attention.key_length")
    if key_length:
        config.head_dim = int(key_length)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
    generation = {
        key: int(metadata[gguf_key])
        for key, gguf_key in _GEN_KEYS.items()
        if metadata.get(gguf_key) is not None
    }
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))


def load_cached_metadata(meta: Path) -> tuple[Any, Any] | None:
    """Config and tokenizer of a metadata folder this module wrote, without ``transformers.models``.

    Why: ``AutoConfig`` and ``AutoTokenizer`` import ``transformers.models`` and, through the
    architecture's config module, much of the library: about 1 s of a 2-CPU ``heron serve`` start
    for a 135M model that loads in under 2 s. The folder's key includes the transformers version
    and its config.json was written by the architecture's own config class, so it holds every
    field that class has; transformers' base config class read from it has the same values (all
    but ``use_cache``, a generation flag the base class keeps out and inference never reads). The
    tokenizer is loaded into ``TokenizersBackend`` when that is the class its tokenizer_config
    names (transformers 5's GGUF conversion does). ``None`` where either does not apply (older
    transformers, another tokenizer class): the caller uses the Auto classes.
    """
    import transformers

    tokenizer_config = json.loads((meta / "tokenizer_config.json").read_text())
    if tokenizer_config.get("tokenizer_class") != "TokenizersBackend":
        return None
    try:
        config_cls = transformers.PreTrainedConfig
        tokenizer_cls = transformers.TokenizersBackend
    except AttributeError:
        return None
    config = config_cls.from_dict(json.loads((meta / "config.json").read_text()))
    return config, tokenizer_cls.from_pretrained(str(meta))


def gguf_metadata_dir(path: Path) -> Path:
    """An HF folder (no weights) holding the GGUF's config and tokenizer, converting once.

    The folder is built in a temporary directory and renamed into place, so a concurrent or
    interrupted conversion never leaves a half-written cache entry. If the cache is not
    writable the conversion goes to a private temporary directory instead.
    """
    cache = heron_cache_dir() / "gguf"
    target = cache / _metadata_key(path)
    if (target / "config.json").is_file():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache))
    except OSError as exc:
        logger.warning("cannot write Heron's cache %s (%s); converting uncached", cache, exc)
        staging = Path(tempfile.mkdtemp(prefix="heron-gguf-"))
        _convert_metadata(path, staging)
        return staging
    try:
        _convert_metadata(path, staging)
        os.replace(staging, target)
    except OSError:
        # Another process won the rename; its entry is as good as ours.
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
