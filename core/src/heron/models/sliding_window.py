"""Which layers of a Hugging Face config attend through a sliding window, and how wide it is.

One reading of the config for everything that must agree on it: the models (each layer's
``AttentionLayerSpec.sliding_window``) and the KV cache manager (which frees blocks that fall out
of the window only when *every* layer is windowed). transformers' own rules:

* ``use_sliding_window: false`` (Qwen2's default) or no ``sliding_window``: no layer is windowed.
* ``layer_types`` (Gemma 2/3, Qwen2 with ``max_window_layers``, newer configs): the layers marked
  ``"sliding_attention"`` are windowed, the ``"full_attention"`` ones are not.
* otherwise (Mistral, Phi-3, Mixtral): every layer uses ``sliding_window``.
"""

from __future__ import annotations

from typing import Any

SLIDING = "sliding_attention"


def layer_windows(hf_config: Any) -> list[int | None]:
    """The window of each of the config's ``num_hidden_layers`` layers (``None``: full)."""
    num_layers = int(hf_config.num_hidden_layers)
    window = getattr(hf_config, "sliding_window", None)
    if window is None or getattr(hf_config, "use_sliding_window", True) is False:
        return [None] * num_layers
    window = int(window)
    if window < 1:
        raise ValueError(f"config.sliding_window must be a positive number of tokens, got {window}")
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is None:
        return [window] * num_layers
    if len(layer_types) != num_layers:
        raise ValueError(
            f"config.layer_types has {len(layer_types)} entries for {num_layers} layers"
        )
    return [window if kind == SLIDING else None for kind in layer_types]


def uniform_window(hf_config: Any) -> int | None:
    """The window shared by every layer (Mistral-style), else ``None``.

    Only then may the KV cache manager free a sequence's blocks that fell out of the window:
    with a full-attention layer among them (Gemma 2/3), every block stays needed.
    """
    windows = layer_windows(hf_config)
    if windows and all(w is not None for w in windows) and len(set(windows)) == 1:
        return windows[0]
    return None
