"""Conformance tests of the non-causal (bidirectional, encoder) attention mode, API 1.7.

A backend that declares ``supports_non_causal`` must match the reference on layers built with
``AttentionLayerSpec(causal=False)``: whole prompts (how encoders run) and, for the contract's
sake, chunks on top of cached positions (every query sees the whole context). A backend that does
not declare it must refuse such a layer in ``check_support``, so core names it instead of running
an encoder with a causal mask.
"""

from __future__ import annotations

import pytest
import torch

from heron_interfaces.attention import AttentionBackend, AttentionLayerSpec
from heron_interfaces.platform import Capabilities, Platform
from heron_interfaces.testing.attention_suite import (
    DTYPES,
    _new_cache,
    _require_dtype,
    _sizes,
    check_forward,
)
from heron_interfaces.testing.batches import TOLERANCES, Scenario, batch_to, make_batch

ENCODER_HEAD_SIZES = (32, 64)
"""Head sizes of common encoders (MiniLM: 32, BERT-base: 64), tried where the backend takes any."""


def _require_non_causal(cls: type[AttentionBackend]) -> None:
    if not cls.supports_non_causal:
        pytest.skip(f"{cls.name} declares no non-causal attention (encoder models are refused)")


def _head_sizes(cls: type[AttentionBackend], caps: Capabilities) -> tuple[int, ...]:
    """Encoder head sizes the backend accepts for a non-causal layer, else its own sizes."""
    _, heads = _sizes(cls, caps)
    block = cls.supported_block_sizes()[0]
    accepted = tuple(h for h in ENCODER_HEAD_SIZES if not cls.check_support(_spec(caps, h, block)))
    return accepted or heads


def _spec(caps: Capabilities, head: int, block: int) -> AttentionLayerSpec:
    """A small non-causal layer of ``head`` and ``block`` sizes in the platform's dtype."""
    return Scenario(
        seqs=((1, 1),),
        num_heads=2,
        num_kv_heads=2,
        head_size=head,
        block_size=block,
        dtype=caps.default_dtype,
        causal=False,
    ).layer_spec()


def test_non_causal_support_is_declared_honestly(
    attention_backend_cls: type[AttentionBackend], capabilities: Capabilities
) -> None:
    """``check_support`` refuses a non-causal layer exactly when the backend does not declare it."""
    cls = attention_backend_cls
    block_sizes, head_sizes = _sizes(cls, capabilities)
    spec = _spec(capabilities, head_sizes[0], block_sizes[0])
    reasons = cls.check_support(spec)
    if cls.supports_non_causal:
        assert not reasons, reasons
    else:
        assert any("non-causal" in r for r in reasons), reasons


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_causal_forward_matches_reference(
    attention_backend_cls: type[AttentionBackend],
    capabilities: Capabilities,
    backend_platform: type[Platform],
    backend_device: torch.device,
    dtype: str,
    seed: int,
) -> None:
    """Whole prompts of several lengths (single tokens included) batched together, and a chunk
    on top of cached positions: every query sees its whole context."""
    cls = attention_backend_cls
    _require_non_causal(cls)
    _require_dtype(capabilities, dtype)
    block_sizes, _ = _sizes(cls, capabilities)
    heads = _head_sizes(cls, capabilities)
    bs = block_sizes[seed % len(block_sizes)]
    prompts = ((bs + 3, bs + 3), (1, 1), (2 * bs, 2 * bs), (5, 5), (3 * bs - 1, 3 * bs - 1))
    seqs = prompts if seed != 2 else (*prompts[:3], (2 * bs + 7, bs))
    scenario = Scenario(
        seqs=seqs,
        num_heads=4,
        num_kv_heads=4 if seed == 0 else 2,
        head_size=heads[seed % len(heads)],
        block_size=bs,
        dtype=dtype,
        seed=300 + seed,
        causal=False,
    )
    check_forward(
        cls, make_batch(scenario), device=backend_device, synchronize=backend_platform.synchronize
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_causal_prompt_matches_dense(
    attention_backend_cls: type[AttentionBackend],
    capabilities: Capabilities,
    backend_platform: type[Platform],
    backend_device: torch.device,
    dtype: str,
) -> None:
    """A whole prompt equals plain unmasked attention (and differs from the causal result)."""
    from heron_interfaces.reference import dense_causal_attention

    cls = attention_backend_cls
    _require_non_causal(cls)
    _require_dtype(capabilities, dtype)
    block_sizes, _ = _sizes(cls, capabilities)
    length = 2 * block_sizes[0] + 3
    s = Scenario(
        seqs=((length, length),),
        num_heads=4,
        num_kv_heads=4,
        head_size=_head_sizes(cls, capabilities)[0],
        block_size=block_sizes[0],
        dtype=dtype,
        seed=17,
        causal=False,
    )
    batch = make_batch(s)
    scale = s.head_size**-0.5
    dense = dense_causal_attention(batch.query, batch.key, batch.value, scale, causal=False)
    causal = dense_causal_attention(batch.query, batch.key, batch.value, scale)
    on_device = batch_to(batch, backend_device)
    kv_cache, _, _ = _new_cache(cls, batch, backend_device)
    out = torch.empty_like(on_device.query)
    cls(s.layer_spec()).forward(
        on_device.query, on_device.key, on_device.value, kv_cache, on_device.metadata, out
    )
    backend_platform.synchronize()
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out.cpu(), dense, atol=atol, rtol=rtol)
    assert not torch.allclose(out.cpu().float()[:-1], causal.float()[:-1], atol=atol, rtol=rtol)
