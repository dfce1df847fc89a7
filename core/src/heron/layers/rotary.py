"""Rotary position embedding (GPT-NeoX / Hugging Face Llama layout) with a precomputed cache.

The cos/sin table for every position up to the model's maximum is computed once at build time,
in float32 (as ``transformers`` does) and stored in the model dtype; each step only gathers the
rows of its tokens' positions. That is why tokens of many sequences can be flattened together:
each token carries its own position. The rotation itself is the platform's
:meth:`~heron_interfaces.kernel_ops.KernelOps.rotary`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from heron_interfaces.kernel_ops import KernelOps

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope")


def rope_parameters(hf_config: Any) -> dict[str, Any]:
    """Rope settings of a config as one dict with ``rope_type`` and ``rope_theta``.

    transformers 5 keeps them in ``config.rope_parameters``; older configs use ``rope_theta`` plus
    an optional ``rope_scaling`` dict whose type key is ``type`` or ``rope_type``. Both are read.
    """
    params: dict[str, Any] = {}
    scaling = getattr(hf_config, "rope_scaling", None)
    if isinstance(scaling, dict):
        params.update(scaling)
    rope_params = getattr(hf_config, "rope_parameters", None)
    if isinstance(rope_params, dict):
        params.update(rope_params)
    if "rope_type" not in params:
        params["rope_type"] = params.pop("type", None) or "default"
    params.pop("type", None)
    if params.get("rope_theta") is None:
        params["rope_theta"] = getattr(hf_config, "rope_theta", None) or 10000.0
    return params


def _llama3_inv_freq(inv_freq: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1's frequency-dependent rescaling: long wavelengths slowed by ``factor``."""
    factor = float(params["factor"])
    low_freq_factor = float(params["low_freq_factor"])
    high_freq_factor = float(params["high_freq_factor"])
    old_context_len = float(params["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _longrope_table(
    inv_freq_shape: torch.Tensor, base: float, max_position: int, params: dict[str, Any]
) -> torch.Tensor:
    """Phi-3's LongRoPE: per-frequency factors, ``short_factor`` for positions inside the
    original context and ``long_factor`` past it, cos and sin scaled by the attention factor.

    transformers switches a whole sequence to the long factors once it grows past the original
    context; with a paged cache whose keys were rotated when written, Heron switches per position
    instead, so outputs equal transformers' up to ``original_max_position_embeddings`` tokens.
    """
    original = int(params["original_max_position_embeddings"])
    factor = params.get("factor") or max_position / original
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        )
    positions = torch.arange(max_position, dtype=torch.int64).float()
    tables = []
    for key, rows in (
        ("short_factor", positions[:original]),
        ("long_factor", positions[original:]),
    ):
        ext = torch.tensor(params[key], dtype=torch.float32)
        tables.append(torch.outer(rows, 1.0 / (ext * base**inv_freq_shape)))
    freqs = torch.cat(tables)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1) * attention_factor


class RotaryEmbedding(nn.Module):
    """Applies rotary embedding to ``query``/``key`` of shape ``[tokens, heads, head_size]``.

    Only the first ``rotary_dim`` channels of each head rotate (all of them for the supported
    architectures); the cache covers positions ``0 .. max_position - 1``.
    """

    def __init__(
        self,
        *,
        head_size: int,
        rotary_dim: int,
        max_position: int,
        params: dict[str, Any],
        dtype: torch.dtype,
        ops: KernelOps | None = None,
    ) -> None:
        super().__init__()
        self.ops = ops or KernelOps()
        rope_type = params.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"rope type {rope_type!r} is not supported; supported: {list(SUPPORTED_ROPE_TYPES)}"
            )
        self.head_size = head_size
        self.rotary_dim = rotary_dim
        base = float(params["rope_theta"])
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
        inv_freq = 1.0 / (base**exponents)
        if rope_type == "linear":
            factor = float(params["factor"])
            inv_freq = inv_freq / factor
            # Linear scaling stretches the usable context by ``factor``.
            max_position = int(max_position * factor)
        elif rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, params)
        self.max_position = max_position
        if rope_type == "longrope":
            cache = _longrope_table(exponents, base, max_position, params).to(dtype)
        else:
            freqs = torch.outer(torch.arange(max_position, dtype=torch.int64).float(), inv_freq)
            cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(dtype)
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated ``(query, key)`` as new contiguous tensors."""
        return self.rotate_heads(positions, query), self.rotate_heads(positions, key)

    def rotate_heads(self, positions: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """Rotate ``[tokens, n, head_size]`` in one call: query and key heads side by side.

        Half the calls of :meth:`forward` when q and k sit next to each other in a fused
        projection, which matters at decode sizes where each call costs more than its math.
        """
        return self.ops.rotary(positions, heads, self.cos_sin_cache)
