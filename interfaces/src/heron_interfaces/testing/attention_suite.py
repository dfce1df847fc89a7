"""Conformance tests of an :class:`~heron_interfaces.AttentionBackend` against the torch reference.

Collected through :mod:`heron_interfaces.testing.conformance`; every test takes the platform from
the ``backend_platform`` fixture and skips the dtypes the platform does not declare.

Batches and reference results are computed on the CPU; the backend gets its inputs, metadata and
KV cache on its own device (``backend_device``), and what it wrote is read back to the CPU and
compared there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from heron_interfaces.attention import AttentionBackend
from heron_interfaces.platform import Capabilities, Platform
from heron_interfaces.testing.batches import (
    TOLERANCES,
    Batch,
    Scenario,
    batch_to,
    make_batch,
    random_scenario,
    reference_forward,
    to_device,
)
from heron_interfaces.testing.loader import resolve_ref

DTYPES = ("float32", "bfloat16", "float16")
GROUPS = (1, 2, 4, 8)
SEEDS = range(6)
DEFAULT_HEAD_SIZES = (64, 80, 128)


def resolve_attention_backend(platform: type[Platform]) -> type[AttentionBackend]:
    """The platform's attention backend class, resolved from a lazy reference when needed."""
    cls = resolve_ref(platform.attention_backend())
    assert isinstance(cls, type) and issubclass(cls, AttentionBackend), cls
    return cls


@pytest.fixture(scope="session")
def attention_backend_cls(backend_platform: type[Platform]) -> type[AttentionBackend]:
    return resolve_attention_backend(backend_platform)


@pytest.fixture(scope="session")
def capabilities(backend_platform: type[Platform]) -> Capabilities:
    caps = backend_platform.capabilities()
    assert isinstance(caps, Capabilities)
    return caps


def _sizes(
    cls: type[AttentionBackend], caps: Capabilities
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Block and head sizes to test: what the backend class says, else what the platform says."""
    block_sizes = tuple(cls.supported_block_sizes())
    heads = cls.supported_head_sizes() or caps.head_sizes or DEFAULT_HEAD_SIZES
    return block_sizes, tuple(heads)


def _require_dtype(caps: Capabilities, dtype: str) -> None:
    if dtype not in caps.dtypes:
        pytest.skip(f"the platform does not declare dtype {dtype} (declares {caps.dtypes})")


def _new_cache(
    cls: type[AttentionBackend], batch: Batch, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A cache on ``device`` in the backend's layout holding ``batch``'s initial contents (NaN in
    every slot not yet written, see :mod:`~heron_interfaces.testing.batches`), and its K/V views.
    """
    s = batch.scenario
    shape = cls.kv_cache_shape(batch.num_blocks, s.block_size, s.num_kv_heads, s.head_size)
    kv_cache = torch.empty(shape, dtype=getattr(torch, s.dtype), device=device)
    key_view, value_view = cls.kv_views(kv_cache)
    assert key_view.device == kv_cache.device and value_view.device == kv_cache.device, (
        "kv_views must return views of the cache, on its device"
    )
    key_view.copy_(to_device(batch.key_cache, device))
    value_view.copy_(to_device(batch.value_cache, device))
    return kv_cache, key_view, value_view


def _assert_same_cache(
    actual: torch.Tensor, expected: torch.Tensor, what: str, s: Scenario
) -> None:
    """Caches are copies, not computations: every slot must match exactly, NaN slots included.

    ``actual`` may live on the backend's device; it is compared on the CPU, where ``expected`` is.
    """
    torch.testing.assert_close(
        actual.cpu(), expected, atol=0, rtol=0, equal_nan=True, msg=lambda m: f"{what}: {m}\n{s}"
    )


def check_forward(
    cls: type[AttentionBackend],
    batch: Batch,
    qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    *,
    device: torch.device | str = "cpu",
    synchronize: Callable[[], None] | None = None,
) -> None:
    """Run ``cls.forward`` on ``batch`` on ``device`` and compare output and caches with the
    reference, computed on the CPU.

    ``qkv``, when given, replaces the batch's query, key and value (same values, another memory
    layout) and must already be on ``device``. ``synchronize`` (the platform's) waits for the
    backend's queued work before its results are read back.
    """
    device = torch.device(device)
    s = batch.scenario
    expected, key_ref, value_ref = reference_forward(batch)
    backend = cls(s.layer_spec())
    on_device = batch_to(batch, device)
    kv_cache, key_view, value_view = _new_cache(cls, batch, device)
    query, key, value = (
        qkv if qkv is not None else (on_device.query, on_device.key, on_device.value)
    )
    out = torch.full_like(on_device.query, float("nan"))
    result = backend.forward(query, key, value, kv_cache, on_device.metadata, out)
    assert result.data_ptr() == out.data_ptr() and result.shape == out.shape, (
        "forward must return out"
    )
    if synchronize is not None:
        synchronize()
    atol, rtol = TOLERANCES[s.dtype]
    torch.testing.assert_close(out.cpu(), expected, atol=atol, rtol=rtol, msg=lambda m: f"{m}\n{s}")
    _assert_same_cache(key_view, key_ref, "key cache", s)
    _assert_same_cache(value_view, value_ref, "value cache", s)


def test_kv_cache_layout(
    attention_backend_cls: type[AttentionBackend],
    capabilities: Capabilities,
    backend_device: torch.device,
) -> None:
    """``kv_views`` must be views of the cache: K and V disjoint, together covering the cache."""
    cls = attention_backend_cls
    block_sizes, head_sizes = _sizes(cls, capabilities)
    assert block_sizes, "supported_block_sizes() is empty"
    shape = cls.kv_cache_shape(5, block_sizes[0], 2, head_sizes[0])
    assert all(isinstance(n, int) and n > 0 for n in shape), shape
    dtype = getattr(torch, capabilities.default_dtype)
    kv_cache = torch.zeros(shape, dtype=dtype, device=backend_device)
    key_view, value_view = cls.kv_views(kv_cache)
    expected = (5, block_sizes[0], 2, head_sizes[0])
    assert tuple(key_view.shape) == expected and tuple(value_view.shape) == expected
    key_view.fill_(1)
    value_view.fill_(2)
    assert int((kv_cache == 1).sum()) == key_view.numel(), "key view is not a view of the cache"
    assert int((kv_cache == 2).sum()) == value_view.numel(), "value view overlaps or is a copy"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_reference(
    attention_backend_cls: type[AttentionBackend],
    capabilities: Capabilities,
    backend_platform: type[Platform],
    backend_device: torch.device,
    dtype: str,
    group: int,
    seed: int,
) -> None:
    """Random mixed batches: decodes, fresh prefills and chunks over shuffled cached blocks."""
    _require_dtype(capabilities, dtype)
    block_sizes, head_sizes = _sizes(attention_backend_cls, capabilities)
    scenario = random_scenario(
        seed=seed, dtype=dtype, group=group, block_sizes=block_sizes, head_sizes=head_sizes
    )
    check_forward(
        attention_backend_cls,
        make_batch(scenario),
        device=backend_device,
        synchronize=backend_platform.synchronize,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_block_boundaries(
    attention_backend_cls: type[AttentionBackend],
    capabilities: Capabilities,
    backend_platform: type[Platform],
    backend_device: torch.device,
    dtype: str,
) -> None:
    """Contexts ending just before, on and after a block boundary; chunks starting on one."""
    _require_dtype(capabilities, dtype)
    block_sizes, head_sizes = _sizes(attention_backend_cls, capabilities)
    for i, bs in enumerate(block_sizes):
        seqs = ((2 * bs - 1, 1), (2 * bs, 1), (2 * bs + 1, 1), (bs, bs), (2 * bs, bs), (bs + 3, 4))
        scenario = Scenario(
            seqs=seqs,
            num_heads=4,
            num_kv_heads=2,
            head_size=head_sizes[i % len(head_sizes)],
            block_size=bs,
            dtype=dtype,
            seed=100 + i,
        )
        check_forward(
            attention_backend_cls,
            make_batch(scenario),
            device=backend_device,
            synchronize=backend_platform.synchronize,
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_long_context(
    attention_backend_cls: type[AttentionBackend],
    capabilities: Capabilities,
    backend_platform: type[Platform],
    backend_device: torch.device,
    dtype: str,
) -> None:
    """Decodes over thousands of cached tokens (where split-context kernels kick in) and a chunk."""
    _require_dtype(capabilities, dtype)
    block_sizes, head_sizes = _sizes(attention_backend_cls, capabilities)
    scenario = Scenario(
        seqs=((3000, 1), (1777, 1), (1200, 37)),
        num_heads=8,
        num_kv_heads=2,
        head_size=head_sizes[-1],
        block_size=block_sizes[0],
        dtype=dtype,
        seed=7,
    )
    check_forward(
        attention_backend_cls,
        make_batch(scenario),
        device=backend_device,
        synchronize=backend_platform.synchronize,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_fresh_prefill_matches_dense(
    attention_backend_cls: type[AttentionBackend],
    capabilities: Capabilities,
    backend_platform: type[Platform],
    backend_device: torch.device,
    dtype: str,
) -> None:
    """A whole prompt with an empty cache equals plain causal attention (checks the oracle too)."""
    from heron_interfaces.reference import dense_causal_attention

    _require_dtype(capabilities, dtype)
    block_sizes, head_sizes = _sizes(attention_backend_cls, capabilities)
    s = Scenario(
        seqs=((3 * block_sizes[0] + 5, 3 * block_sizes[0] + 5),),
        num_heads=4,
        num_kv_heads=1,
        head_size=head_sizes[0],
        block_size=block_sizes[0],
        dtype=dtype,
        seed=11,
    )
    batch = make_batch(s)
    dense = dense_causal_attention(batch.query, batch.key, batch.value, s.head_size**-0.5)
    on_device = batch_to(batch, backend_device)
    kv_cache, _, _ = _new_cache(attention_backend_cls, batch, backend_device)
    out = torch.empty_like(on_device.query)
    attention_backend_cls(s.layer_spec()).forward(
        on_device.query, on_device.key, on_device.value, kv_cache, on_device.metadata, out
    )
    backend_platform.synchronize()
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out.cpu(), dense, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_strided_qkv(
    attention_backend_cls: type[AttentionBackend],
    capabilities: Capabilities,
    backend_platform: type[Platform],
    backend_device: torch.device,
    dtype: str,
) -> None:
    """Query, key and value as column slices of one fused QKV projection, as models produce them."""
    _require_dtype(capabilities, dtype)
    block_sizes, head_sizes = _sizes(attention_backend_cls, capabilities)
    scenario = random_scenario(
        seed=3, dtype=dtype, group=2, block_sizes=block_sizes, head_sizes=head_sizes
    )
    batch = make_batch(scenario)
    n = batch.query.shape[0]
    fused = torch.cat([t.reshape(n, -1) for t in (batch.query, batch.key, batch.value)], dim=1)
    # Sliced on the device: moving slices there one by one would make them contiguous.
    fused = to_device(fused, backend_device)
    widths = [t[0].numel() for t in (batch.query, batch.key, batch.value)]
    q, k, v = fused.split(widths, dim=1)
    qkv = tuple(x.view(n, -1, scenario.head_size) for x in (q, k, v))
    assert not qkv[1].is_contiguous()
    check_forward(
        attention_backend_cls,
        batch,
        qkv,  # type: ignore[arg-type]
        device=backend_device,
        synchronize=backend_platform.synchronize,
    )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_matches_reference(
    attention_backend_cls: type[AttentionBackend],
    capabilities: Capabilities,
    backend_platform: type[Platform],
    backend_device: torch.device,
    dtype: str,
    seed: int,
) -> None:
    """Scattered slots land where the reference puts them; negative slots write nothing."""
    _require_dtype(capabilities, dtype)
    block_sizes, head_sizes = _sizes(attention_backend_cls, capabilities)
    scenario = random_scenario(
        seed=seed, dtype=dtype, group=1, block_sizes=block_sizes, head_sizes=head_sizes
    )
    batch = make_batch(dataclasses.replace(scenario, extra_blocks=8))
    slots = batch.metadata.slot_mapping.clone()
    padding = torch.rand(slots.shape, generator=torch.Generator().manual_seed(seed)) < 0.25
    slots[padding] = -1
    from heron_interfaces.reference import write_kv

    key_ref, value_ref = batch.key_cache.clone(), batch.value_cache.clone()
    write_kv(batch.key, batch.value, key_ref, value_ref, slots)
    on_device = batch_to(batch, backend_device)
    kv_cache, key_view, value_view = _new_cache(attention_backend_cls, batch, backend_device)
    attention_backend_cls(scenario.layer_spec()).write_kv(
        on_device.key, on_device.value, kv_cache, to_device(slots, backend_device)
    )
    backend_platform.synchronize()
    _assert_same_cache(key_view, key_ref, "key cache", scenario)
    _assert_same_cache(value_view, value_ref, "value cache", scenario)
