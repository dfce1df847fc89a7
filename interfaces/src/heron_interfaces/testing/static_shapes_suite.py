"""Conformance tests of the compile-first contract (API 1.6), for platforms with static shapes.

A platform that declares ``Capabilities.static_shapes`` must declare usable padding buckets, keep
the engine's step limits within its largest bucket (``check_config``), and compute the real rows of
a step padded to a bucket exactly as it computes the unpadded step: core pads every step it runs.
Platforms without static shapes skip these tests.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from heron_interfaces.attention import AttentionBackend
from heron_interfaces.platform import Capabilities, Platform, padding_bucket
from heron_interfaces.static_shapes import pad_metadata
from heron_interfaces.testing.batches import (
    TOLERANCES,
    Scenario,
    batch_to,
    make_batch,
    reference_forward,
    to_device,
)

PADDED_DTYPES = ("float32", "bfloat16", "float16")


def _require_static(caps: Capabilities) -> None:
    if not caps.static_shapes:
        pytest.skip("the platform runs exact shapes (Capabilities.static_shapes is False)")


def test_padding_buckets_are_declared(capabilities: Capabilities) -> None:
    """Non-empty, strictly ascending, positive bucket lists."""
    _require_static(capabilities)
    for name in ("token_buckets", "seq_buckets"):
        buckets = getattr(capabilities, name)
        assert buckets, f"{name} is empty on a static-shape platform"
        assert all(isinstance(b, int) and b > 0 for b in buckets), buckets
        assert list(buckets) == sorted(set(buckets)), f"{name} must ascend: {buckets}"
    assert padding_bucket(capabilities.token_buckets, 1) == capabilities.token_buckets[0]


def test_check_config_keeps_steps_within_buckets(
    backend_platform: type[Platform], capabilities: Capabilities
) -> None:
    """Asked for steps far beyond its buckets, the platform lowers the limits to fit them."""
    _require_static(capabilities)
    config = SimpleNamespace(max_num_batched_tokens=1 << 20, max_num_seqs=1 << 20)
    changes = {c.field: c.value for c in backend_platform.check_config(config)}
    assert changes.get("max_num_batched_tokens", 1 << 20) <= capabilities.token_buckets[-1]
    assert changes.get("max_num_seqs", 1 << 20) <= capabilities.seq_buckets[-1]
    for change in backend_platform.check_config(config):
        assert change.reason, f"change of {change.field} without a reason"


@pytest.mark.parametrize("dtype", PADDED_DTYPES)
def test_padded_step_matches_unpadded(
    attention_backend_cls: type[AttentionBackend],
    capabilities: Capabilities,
    backend_platform: type[Platform],
    backend_device: torch.device,
    dtype: str,
) -> None:
    """A mixed batch padded to the next buckets (tokens, sequences, block-table columns): the
    real rows and the cache equal the reference; padding tokens write nothing."""
    _require_static(capabilities)
    if dtype not in capabilities.dtypes:
        pytest.skip(f"the platform does not declare dtype {dtype}")
    cls = attention_backend_cls
    block_size = next(iter(cls.supported_block_sizes()))
    head_size = (cls.supported_head_sizes() or capabilities.head_sizes or (64,))[0]
    s = Scenario(
        seqs=((block_size + 3, 1), (2 * block_size, 5), (block_size - 1, block_size - 1)),
        num_heads=4,
        num_kv_heads=2,
        head_size=head_size,
        block_size=block_size,
        dtype=dtype,
        seed=21,
    )
    batch = make_batch(s)
    expected, key_ref, value_ref = reference_forward(batch)
    real_tokens, real_seqs = batch.query.shape[0], len(s.seqs)
    num_tokens = real_tokens + 7
    num_seqs = real_seqs + 2
    md = pad_metadata(
        batch.metadata,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        max_blocks=batch.metadata.block_tables.shape[1] + 3,
    )

    def pad_rows(t: torch.Tensor) -> torch.Tensor:
        extra = torch.randn(num_tokens - real_tokens, *t.shape[1:]).to(t.dtype)
        return torch.cat([t, extra])

    on_device = batch_to(
        type(batch)(
            scenario=s,
            query=pad_rows(batch.query),
            key=pad_rows(batch.key),
            value=pad_rows(batch.value),
            metadata=md,
            num_blocks=batch.num_blocks,
            key_cache=batch.key_cache,
            value_cache=batch.value_cache,
        ),
        backend_device,
    )
    shape = cls.kv_cache_shape(batch.num_blocks, block_size, s.num_kv_heads, head_size)
    kv_cache = torch.empty(shape, dtype=getattr(torch, dtype), device=backend_device)
    key_view, value_view = cls.kv_views(kv_cache)
    key_view.copy_(to_device(batch.key_cache, backend_device))
    value_view.copy_(to_device(batch.value_cache, backend_device))
    out = torch.empty_like(on_device.query)
    cls(s.layer_spec()).forward(
        on_device.query, on_device.key, on_device.value, kv_cache, on_device.metadata, out
    )
    backend_platform.synchronize()
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out[:real_tokens].cpu(), expected, atol=atol, rtol=rtol)
    for view, ref, what in ((key_view, key_ref, "key"), (value_view, value_ref, "value")):
        torch.testing.assert_close(
            view.cpu(), ref, atol=0, rtol=0, equal_nan=True, msg=lambda m, w=what: f"{w}: {m}"
        )
