"""The Transformers fallback: any decoder-only architecture ``transformers`` implements, run by Heron.

The model is transformers' own module tree (its embeddings, norms, MLPs, rotary), built with
``attn_implementation="heron"``: transformers then calls :func:`heron_attention_forward` in place
of its attention kernel in every layer, and that function writes the layer's keys and values into
Heron's paged KV cache and attends with the selected backend's kernels, from the same
:class:`~heron_interfaces.AttentionMetadata` as the native models. So the scheduler, prefix cache,
chunked prefill and preemption all work unchanged; only the rest of each layer is slower than a
native implementation (plain torch, no prepacked GEMMs, no step graphs).

The flattened batch of a step goes in as one "sequence" of ``[1, num_tokens]`` ids with each
token's own position; with a custom attention function transformers builds no attention mask, so
nothing quadratic is computed outside the kernels. The per-step state (KV caches and metadata)
travels through the forward's keyword arguments, which models that declare
``_supports_attention_backend`` pass down to their attention (the contract transformers documents
for inference engines).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heron.distributed.tensor_parallel import ShardingError
from heron.layers import Linear, copy_weight
from heron.layers.linear import prepare_linear_weights
from heron.models.context import ModelContext
from heron.models.decoder import UnsupportedAttentionError, _dtype_name
from heron.models.registry import UnsupportedModelError
from heron.models.sliding_window import SLIDING, layer_windows
from heron.models.transformers_tp import (
    apply_tp_plan,
    heads_are_sharded,
    shard_heads,
    sharded_modules,
    tp_plan,
)
from heron.models.weights import CheckpointMismatchError, _show
from heron_interfaces import AttentionBackend, AttentionLayerSpec, AttentionMetadata

logger = logging.getLogger(__name__)

ATTENTION_NAME = "heron"
"""The name Heron's attention is registered under in ``transformers.AttentionInterface``."""

_STEP_KWARG = "heron_step"


@dataclass(slots=True)
class _Step:
    """What one forward pass's attention calls need: this step's caches and metadata."""

    owner: TransformersForCausalLM
    kv_caches: list[torch.Tensor]
    metadata: AttentionMetadata


def heron_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature over Heron's paged attention.

    ``query`` is ``[1, heads, tokens, head_size]`` and ``key``/``value`` are
    ``[1, kv_heads, tokens, head_size]`` (after the model's rotary); returns
    ``[1, tokens, heads, head_size]`` as transformers' own functions do, and no weights.
    """
    step = kwargs.get(_STEP_KWARG)
    if not isinstance(step, _Step):
        raise RuntimeError(
            f"{type(module).__name__} was called without Heron's step state: attention "
            f"implementation {ATTENTION_NAME!r} only runs inside Heron's engine"
        )
    if kwargs.get("s_aux") is not None:
        raise UnsupportedModelError(
            f"{type(module).__name__} uses attention sinks, which the Transformers fallback "
            "does not implement"
        )
    window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
    out = step.owner.attend(module, query, key, value, scaling, step, window, softcap)
    return out, None


def register_heron_attention() -> None:
    """Make ``attn_implementation="heron"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, heron_attention_forward)


def transformers_implements(hf_config: Any) -> bool:
    """Whether ``transformers`` has a causal-LM class for ``hf_config``'s model type."""
    from transformers import AutoModelForCausalLM

    return type(hf_config) in AutoModelForCausalLM._model_mapping


def _config_int(hf_config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(hf_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _use_heron_linears(model: nn.Module, ctx: ModelContext) -> int:
    """Swap every plain ``nn.Linear`` of ``model`` for Heron's :class:`Linear` over the *same*
    parameters (names, shapes and ties unchanged), so that after loading the platform's kernels
    prepare each weight once (prepacked GEMMs) instead of torch re-laying it out on every call.
    Returns how many were swapped; subclasses of ``nn.Linear`` are left alone."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            layer = Linear(1, 1, bias=child.bias is not None, dtype=ctx.dtype, ops=ctx.ops)
            layer.in_features, layer.out_features = child.in_features, child.out_features
            layer.weight = child.weight
            layer.bias = child.bias
            setattr(parent, name, layer)
            swapped += 1
    return swapped


class TransformersForCausalLM(nn.Module):
    """A transformers causal LM whose attention is Heron's (see the module docstring).

    Tensor parallelism follows transformers' own plan (:mod:`heron.models.transformers_tp`);
    pipeline parallelism is refused with a clear error (:meth:`check_layout`).
    """

    step_graphs_off = "the Transformers fallback runs transformers' modules in eager torch"
    """Read by the runner: decode steps are never recorded for replay."""

    def __init__(self, hf_config: Any, ctx: ModelContext) -> None:
        super().__init__()
        self.check_layout(hf_config, ctx.tp.size, ctx.pp.size)
        self._check_architecture(hf_config)
        self.ctx = ctx
        num_heads = _config_int(hf_config, "num_attention_heads", "n_head")
        hidden = _config_int(hf_config, "hidden_size", "n_embd")
        if num_heads is None or hidden is None:
            raise UnsupportedModelError(
                f"{type(hf_config).__name__}: the Transformers fallback needs "
                "num_attention_heads and hidden_size in the config"
            )
        self.num_heads = num_heads
        self.num_kv_heads = _config_int(hf_config, "num_key_value_heads") or num_heads
        """KV heads of each layer: the runner sizes its KV cache with them."""
        self.head_size = _config_int(hf_config, "head_dim") or hidden // num_heads
        self.num_layers = int(hf_config.num_hidden_layers)
        """Layers of the model: the runner allocates one KV cache per layer."""
        self.hidden_size = hidden
        self.vocab_size = int(hf_config.vocab_size)
        self.config = hf_config
        self._windows = layer_windows(hf_config)
        """Each layer's sliding window (None: full), as the KV cache manager reads them."""
        self.hf_model = self._build(hf_config, ctx)
        self.base = self.hf_model.base_model
        self.num_sharded = 0
        """Linear layers split over the tensor-parallel ranks by transformers' plan."""
        if ctx.tp.size > 1:
            sharded = sharded_modules(self.base, tp_plan(hf_config))
            if heads_are_sharded(self.base, sharded):
                self.num_heads, self.num_kv_heads = shard_heads(
                    self.num_heads, self.num_kv_heads, ctx.tp.size
                )
            self.num_sharded = apply_tp_plan(self.base, sharded, ctx)
        self._check_kernels(ctx)
        self.num_linears = _use_heron_linears(self.hf_model, ctx)
        """transformers' ``nn.Linear`` layers now run through the platform's matmul kernels."""
        self.lm_head = self.hf_model.get_output_embeddings()
        if self.lm_head is None:
            raise UnsupportedModelError(
                f"{type(self.hf_model).__name__} has no output embeddings (LM head)"
            )
        self._layers: dict[int, AttentionBackend] = {}

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def check_layout(cls, hf_config: Any, tp: int, pp: int) -> None:
        """Refuse pipeline parallelism, and tensor parallelism without transformers' plan."""
        if pp > 1:
            raise ShardingError(
                f"the Transformers fallback runs {getattr(hf_config, 'model_type', '?')} in one "
                f"pipeline stage: pipeline_parallel_size ({pp}) must be 1 (a native "
                "implementation, --model-impl heron, splits into stages)"
            )
        if tp > 1:
            tp_plan(hf_config)

    @staticmethod
    def _check_architecture(hf_config: Any) -> None:
        if getattr(hf_config, "is_encoder_decoder", False):
            raise UnsupportedModelError(
                f"{hf_config.model_type} is an encoder-decoder model; the Transformers fallback "
                "runs decoder-only models"
            )
        if not transformers_implements(hf_config):
            raise UnsupportedModelError(
                f"transformers has no causal-LM class for model type {hf_config.model_type!r}"
            )
        layer_types = getattr(hf_config, "layer_types", None) or ()
        other = sorted({t for t in layer_types if t not in ("full_attention", SLIDING)})
        if other:
            raise UnsupportedModelError(
                f"{hf_config.model_type} has {', '.join(other)} layers; the Transformers "
                "fallback runs full and sliding-window attention layers only"
            )

    def _check_kernels(self, ctx: ModelContext) -> None:
        """Refuse up front what the backend cannot run: any of the config's windows, or its
        attention logit soft-cap (the layers themselves are built on their first call)."""
        windows = [w for w in self._windows if w is not None]
        cap = getattr(self.config, "attn_logit_softcapping", None)
        spec = self._spec(None, windows[0] if windows else None, float(cap) if cap else None)
        reasons = ctx.attention_cls.check_support(spec)
        if reasons:
            raise UnsupportedAttentionError(
                f"attention backend {ctx.attention_cls.name!r} cannot run this model: "
                + "; ".join(reasons)
            )

    def _spec(
        self, scaling: float | None, window: int | None, softcap: float | None
    ) -> AttentionLayerSpec:
        return AttentionLayerSpec(
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_size=self.head_size,
            scale=self.head_size**-0.5 if scaling is None else float(scaling),
            block_size=self.ctx.block_size,
            dtype=_dtype_name(self.ctx.dtype),
            sliding_window=window,
            logits_soft_cap=softcap,
        )

    @staticmethod
    def _build(hf_config: Any, ctx: ModelContext) -> nn.Module:
        """transformers' model, uninitialised (the checkpoint fills it), on ``ctx.device``."""
        from transformers import AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        register_heron_attention()
        config = copy.deepcopy(hf_config)
        with torch.device(ctx.device), no_init_weights():
            model = AutoModelForCausalLM.from_config(
                config, attn_implementation=ATTENTION_NAME, dtype=ctx.dtype
            )
        model.tie_weights()  # skipped with the initialisation; ties what the config ties
        bidirectional = [
            name
            for name, module in model.named_modules()
            if hasattr(module, "layer_idx") and getattr(module, "is_causal", True) is False
        ]
        if bidirectional:
            raise UnsupportedModelError(
                f"{type(model).__name__} attends bidirectionally ({bidirectional[0]}.is_causal "
                "is False); the Transformers fallback runs causal decoders only"
            )
        if not getattr(model, "_supports_attention_backend", False):
            raise UnsupportedModelError(
                f"{type(model).__name__} does not pass attention arguments through transformers' "
                "AttentionInterface (_supports_attention_backend is False), so Heron's paged "
                "attention cannot replace its own"
            )
        return model.eval()

    # -- one step --------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Final hidden states ``[num_tokens, hidden_size]`` of the flattened batch."""
        step = _Step(owner=self, kv_caches=kv_caches, metadata=metadata)
        out = self.base(
            input_ids=input_ids[None],
            position_ids=positions[None],
            use_cache=False,
            **{_STEP_KWARG: step},
        )
        return out.last_hidden_state[0]

    def attend(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scaling: float | None,
        step: _Step,
        window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """Heron's KV write and paged attention for one layer (``module.layer_idx``).

        ``window`` / ``softcap`` are what transformers passes the attention function; the window
        must be the one :func:`layer_windows` reads from the config, which the KV cache manager
        frees blocks by.
        """
        layer_idx = getattr(module, "layer_idx", None)
        if not isinstance(layer_idx, int):
            raise UnsupportedModelError(
                f"{type(module).__name__} has no layer_idx, so its KV cache cannot be found"
            )
        if query.shape[-1] != self.head_size or key.shape[1] != self.num_kv_heads:
            raise UnsupportedModelError(
                f"layer {layer_idx}: attention has {key.shape[1]} KV heads of size "
                f"{query.shape[-1]}, but the config gives {self.num_kv_heads} of size "
                f"{self.head_size}"
            )
        attn = self._layers.get(layer_idx)
        if attn is None:
            expected = self._windows[layer_idx] if layer_idx < len(self._windows) else None
            if window != expected:
                raise UnsupportedModelError(
                    f"layer {layer_idx}: transformers attends with sliding window {window}, the "
                    f"config gives {expected}"
                )
            spec = self._spec(scaling, window, float(softcap) if softcap else None)
            attn = self._layers[layer_idx] = self.ctx.attention_cls(spec)
        q = query[0].transpose(0, 1).contiguous()
        k = key[0].transpose(0, 1).contiguous()
        v = value[0].transpose(0, 1).contiguous()
        out = torch.empty_like(q)
        attn.forward(q, k, v, step.kv_caches[layer_idx], step.metadata, out)
        return out[None]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits, with the scalings transformers' causal-LM heads apply after the
        projection (Cohere's ``logit_scale``, Granite's ``logits_scaling``, soft-capping)."""
        logits = self.lm_head(hidden).float()
        config = self.config
        scale = getattr(config, "logit_scale", None)
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            logits = logits * scale
        divisor = getattr(config, "logits_scaling", None)
        if isinstance(divisor, (int, float)) and not isinstance(divisor, bool):
            logits = logits / divisor
        cap = getattr(config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # -- weights ---------------------------------------------------------------------------------
    def prepare_for_inference(self) -> None:
        """After loading: the platform's kernels prepare every swapped linear layer's weight."""
        prepare_linear_weights(self.hf_model)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into transformers' own parameters.

        Names go through transformers' own renamings for the model (e.g. GPT-NeoX's
        ``embed_out`` is ``lm_head`` in transformers 5) and its base-model prefix rule (old GPT-2
        checkpoints lack ``transformer.``) and are copied as they stream in. Tensors that
        transformers merges or splits on load (per-expert tensors into fused experts) are held
        back and handed to transformers' own converting loader at the end, so mixture-of-experts
        models load too while everything else stays streamed. Missing, unexpected or
        unconvertible tensors raise, naming them.
        """
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightRenaming,
            apply_converters,
            rename_source_key,
        )

        model = self.hf_model
        targets: dict[str, torch.Tensor] = dict(model.named_parameters())
        targets.update(dict(model.named_buffers()))
        tied = {
            name
            for name, param in model.named_parameters(remove_duplicate=False)
            if name not in targets or targets[name] is not param
        }
        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
        prefix = getattr(model, "base_model_prefix", None) or None
        modules = dict(model.named_modules())
        loaded: set[str] = set()
        unexpected: list[str] = []
        held: dict[str, torch.Tensor] = {}
        for name, tensor in weights:
            target_name, _ = rename_source_key(name, renamings, [], prefix, targets)
            if target_name in tied or target_name.endswith("rotary_emb.inv_freq"):
                continue
            target = targets.get(target_name)
            if target is None:
                if converters and apply_converters(target_name, converters)[1] is not None:
                    held[name] = tensor
                else:
                    unexpected.append(name)
                continue
            owner_name, _, kind = target_name.rpartition(".")
            owner = modules.get(owner_name)
            if isinstance(owner, Linear):  # slices its tensor-parallel shard itself
                owner.load_tensor(kind, tensor, name)
            else:
                copy_weight(target, tensor, name)
            loaded.add(target_name)
        missing = set(dict(model.named_parameters())) - loaded
        if held:
            missing &= self._load_converted(held, transforms, unexpected)
        if missing or unexpected:
            problems = []
            if missing:
                problems.append(f"{len(missing)} missing weight(s): {_show(missing)}")
            if unexpected:
                problems.append(f"{len(unexpected)} unexpected weight(s): {_show(unexpected)}")
            raise CheckpointMismatchError(
                f"checkpoint does not match {type(model).__name__}: " + "; ".join(problems)
            )

    def _load_converted(
        self, held: dict[str, torch.Tensor], transforms: list[Any], unexpected: list[str]
    ) -> set[str]:
        """transformers' converting loader over the held-back tensors; returns the names it did
        not load (every other parameter included) and adds its unexpected names."""
        from transformers.core_model_loading import convert_and_load_state_dict_in_model
        from transformers.modeling_utils import LoadStateDictConfig

        config = LoadStateDictConfig(weight_mapping=transforms, dtype=self.ctx.dtype)
        info, _ = convert_and_load_state_dict_in_model(
            model=self.hf_model, state_dict=held, load_config=config
        )
        if info.conversion_errors or info.mismatched_keys:
            problems = {**info.conversion_errors, **{k: "shape" for k in info.mismatched_keys}}
            raise CheckpointMismatchError(
                f"transformers could not convert {len(problems)} tensor(s) for "
                f"{type(self.hf_model).__name__}: {_show(str(p) for p in problems)}"
            )
        unexpected.extend(info.unexpected_keys)
        return set(info.missing_keys)
