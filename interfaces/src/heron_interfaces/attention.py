"""Paged attention over one flattened batch that mixes prefill chunks and decodes.

Core owns the KV block tables and builds one :class:`AttentionMetadata` per step; the backend owns
the layout of the KV cache and the kernels that write and read it.

Conventions, for every backend:

* ``query`` is ``[num_tokens, num_heads, head_size]``; ``key``/``value`` are
  ``[num_tokens, num_kv_heads, head_size]``; ``out`` is like ``query`` and is written in place.
* Tokens are grouped by sequence: sequence ``i`` owns rows ``query_start_loc[i]:query_start_loc[i+1]``.
  Its query tokens are the *last* ``q_len`` positions of its ``seq_lens[i]`` tokens of context, so a
  prefill chunk on top of cached blocks and a one-token decode are the same case.
* Attention is causal: query token at context position ``p`` sees positions ``0..p``; a layer
  built with ``AttentionLayerSpec(causal=False)`` (API 1.7, encoder models such as BERT) is
  bidirectional instead: every query token of sequence ``i`` sees all ``seq_lens[i]`` positions.
  Only backends whose :attr:`AttentionBackend.supports_non_causal` is true accept such a layer.
* Sliding window (API 1.9, ``AttentionLayerSpec(sliding_window=W)``): the query at position ``p``
  sees only positions ``p - W + 1 .. p`` (Hugging Face's window: the token and the ``W - 1`` before
  it). Core may free the blocks of a sequence that lie wholly before the window of its first query
  token, i.e. blocks ``j`` with ``(j + 1) * block_size <= seq_len - q_len - W + 1``: their
  ``block_tables`` entries then name blocks that other sequences may be using, so a kernel must
  never read them (not even to multiply them by a zero probability).
* Logit soft-capping (API 1.9, ``AttentionLayerSpec(logits_soft_cap=c)``, Gemma 2): each scaled
  score ``s`` becomes ``c * tanh(s / c)`` before masking and softmax.
* ``slot_mapping[t]`` is ``block_id * block_size + offset`` of token ``t``; a negative slot means
  "do not write" (padding).
* ``block_tables[i, j]`` is the physical block holding positions ``j*block_size .. (j+1)*block_size-1``
  of sequence ``i``.
* Grouped-query attention: query head ``h`` reads KV head ``h // (num_heads // num_kv_heads)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch


@dataclass(slots=True, kw_only=True)
class AttentionMetadata:
    """Everything an attention kernel learns about the batch; built once per step by core.

    Integer tensors live on the device of the batch; ``query_start_loc``, ``seq_lens`` and
    ``block_tables`` are int32, ``slot_mapping`` is int64. The ``*_cpu`` twins let a backend plan
    work without a device-to-host copy; they may be ``None`` on CPU backends where they are the
    same tensors.
    """

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    max_query_len: int
    max_seq_len: int
    num_prefill_tokens: int
    num_decode_tokens: int
    num_seqs: int
    query_start_loc_cpu: torch.Tensor | None = None
    seq_lens_cpu: torch.Tensor | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AttentionLayerSpec:
    """The shape of one attention layer, fixed when the model is built."""

    num_heads: int
    num_kv_heads: int
    head_size: int
    scale: float
    block_size: int
    dtype: str
    """torch dtype name of queries and of the KV cache (``"float32"``, ``"bfloat16"``)."""
    causal: bool = True
    """API 1.7: ``False`` for a bidirectional (encoder) layer: each query token attends to every
    position of its sequence's context, not only to those before it."""
    sliding_window: int | None = None
    """API 1.9: the query at position ``p`` attends to positions ``p - sliding_window + 1 .. p``
    only (Mistral, the local layers of Gemma 2/3); ``None``: the whole causal context. Per layer,
    since models alternate windowed and full layers."""
    logits_soft_cap: float | None = None
    """API 1.9: scores (after ``scale``) pass through ``cap * tanh(score / cap)`` before the
    softmax (Gemma 2); ``None``: no capping."""

    def __post_init__(self) -> None:
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1 or None, got {self.sliding_window}")
        if self.sliding_window is not None and not self.causal:
            raise ValueError("sliding_window applies to causal layers only (causal=False given)")
        if self.logits_soft_cap is not None and not self.logits_soft_cap > 0:
            raise ValueError(f"logits_soft_cap must be > 0 or None, got {self.logits_soft_cap}")


class AttentionBackend(ABC):
    """One instance per attention layer; holds no per-step state.

    Required: :meth:`kv_cache_shape`, :meth:`write_kv`, :meth:`forward`. The default
    :meth:`kv_views` assumes a ``[2, num_blocks, block_size, num_kv_heads, head_size]`` cache; a
    backend with another layout overrides it so that tests and tools can read the cache back.
    """

    name: str = "abstract"

    supports_step_graphs: ClassVar[bool] = False
    """API 1.4: :meth:`write_kv` and :meth:`forward` launch only kernels that the platform's
    ``KernelOps.capture_graph`` recorder records, and those read every per-step value from the
    metadata's tensors (in a recorded step the Python numbers of :class:`AttentionMetadata` are
    bounds: ``max_seq_len`` is the longest a sequence may grow, not this step's)."""

    supports_non_causal: ClassVar[bool] = False
    """API 1.7: the backend runs layers built with ``AttentionLayerSpec(causal=False)``. The
    default keeps older backends honest: :meth:`check_support` refuses such a layer for them, so
    core names the backend instead of computing causal attention for an encoder."""

    supports_sliding_window: ClassVar[bool] = False
    """API 1.9: the backend applies ``AttentionLayerSpec.sliding_window`` and never reads a block
    wholly before a sequence's window (core frees those). Without it :meth:`check_support`
    refuses a windowed layer, so core names the backend instead of attending to the whole
    context."""

    supports_logits_soft_cap: ClassVar[bool] = False
    """API 1.9: the backend applies ``AttentionLayerSpec.logits_soft_cap``; refused otherwise."""

    def __init__(self, spec: AttentionLayerSpec) -> None:
        self.spec = spec

    @classmethod
    def supported_block_sizes(cls) -> Sequence[int]:
        return (16,)

    @classmethod
    def supported_head_sizes(cls) -> Sequence[int] | None:
        """``None`` means any head size."""
        return None

    @classmethod
    def supported_dtypes(cls) -> Sequence[str] | None:
        """torch dtype names of queries and KV cache the kernels accept; ``None`` means any."""
        return None

    @classmethod
    def check_support(cls, spec: AttentionLayerSpec) -> list[str]:
        """Reasons this backend cannot run ``spec``; empty means it can."""
        reasons = []
        dtypes = cls.supported_dtypes()
        if dtypes is not None and spec.dtype not in dtypes:
            reasons.append(f"dtype {spec.dtype} is not one of {list(dtypes)}")
        if spec.block_size not in cls.supported_block_sizes():
            reasons.append(
                f"block_size {spec.block_size} is not one of {list(cls.supported_block_sizes())}"
            )
        heads = cls.supported_head_sizes()
        if heads is not None and spec.head_size not in heads:
            reasons.append(f"head size {spec.head_size} is not one of {list(heads)}")
        if not spec.causal and not cls.supports_non_causal:
            reasons.append(
                "non-causal (bidirectional, encoder) attention is not supported by this backend"
            )
        if spec.sliding_window is not None and not cls.supports_sliding_window:
            reasons.append("sliding-window attention is not supported by this backend")
        if spec.logits_soft_cap is not None and not cls.supports_logits_soft_cap:
            reasons.append("attention logit soft-capping is not supported by this backend")
        if spec.num_heads % spec.num_kv_heads:
            reasons.append(
                f"num_heads {spec.num_heads} is not a multiple of num_kv_heads {spec.num_kv_heads}"
            )
        return reasons

    @classmethod
    @abstractmethod
    def kv_cache_shape(
        cls, num_blocks: int, block_size: int, num_kv_heads: int, head_size: int
    ) -> tuple[int, ...]:
        """Shape of one layer's KV cache tensor; core allocates it with the layer's dtype."""

    @classmethod
    def allocate_kv_cache(
        cls, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """One layer's KV cache, uninitialised (API 1.3; core calls this instead of torch.empty).

        A backend overrides it to place the cache where its kernels read it fastest (huge pages
        on a host, a NUMA node, a pinned pool); the tensor must be contiguous with ``shape``.
        """
        import torch

        return torch.empty(shape, dtype=dtype, device=device)

    @classmethod
    def kv_views(cls, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value caches as (possibly strided) ``[num_blocks, block_size, kv_heads, head]``."""
        return kv_cache[0], kv_cache[1]

    @abstractmethod
    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        """Store each token's key and value at its slot (negative slots are skipped)."""

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        out: torch.Tensor,
    ) -> torch.Tensor:
        """Write ``key``/``value`` into the cache, attend, write into ``out`` and return it."""
