"""heron-tpu's Pallas kernels against plain-torch references, in the TPU interpreter.

Race detection is on (conftest): each kernel call is followed by ``runtime.check_races``, and
``test_race_detector_catches_an_unawaited_dma`` shows that check failing on a kernel that reads a
DMA's destination before waiting for it, so a pass here means "no race found", not "not looked".
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from heron_tpu import runtime
from heron_tpu.attention import TpuAttentionBackend
from heron_tpu.kernels.kv_write import write_kv
from heron_tpu.kernels.ragged_paged_attention import ragged_paged_attention
from heron_tpu.kernels.rms_norm import rms_norm
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from heron_interfaces.kernel_ops import KernelOps
from heron_interfaces.testing.batches import TOLERANCES, Scenario, make_batch, reference_forward

DTYPES = ("float32", "bfloat16")


def _interpret() -> pltpu.InterpretParams:
    return runtime.interpret_params(True)


def _tpu_cache(key_cache: torch.Tensor, value_cache: torch.Tensor) -> torch.Tensor:
    """Canonical ``[blocks, bs, kvh, d]`` caches in heron-tpu's ``[2, kvh, blocks, bs, d]``."""
    return torch.stack([key_cache.permute(2, 0, 1, 3), value_cache.permute(2, 0, 1, 3)])


SCENARIOS = {
    "decodes": dict(seqs=((37, 1), (16, 1), (17, 1), (3, 1), (64, 1)), num_heads=4, num_kv_heads=2),
    "mixed-gqa4": dict(seqs=((40, 1), (33, 33), (50, 13), (15, 1)), num_heads=8, num_kv_heads=2),
    "prefill-mha": dict(seqs=((45, 45),), num_heads=2, num_kv_heads=2),
    "chunk-on-prefix-mqa": dict(seqs=((70, 19), (5, 5), (32, 1)), num_heads=4, num_kv_heads=1),
}


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_ragged_paged_attention_matches_reference(dtype: str, name: str, block_size: int) -> None:
    """Decodes, fresh prefills and chunks over cached pages in one flattened batch, GQA 1-4."""
    s = Scenario(**SCENARIOS[name], head_size=64, block_size=block_size, dtype=dtype, seed=3)
    batch = make_batch(s)
    expected, key_ref, value_ref = reference_forward(batch)
    cache = _tpu_cache(key_ref, value_ref)  # already written: this tests attention alone
    md = batch.metadata
    out = ragged_paged_attention(
        runtime.to_jax(batch.query),
        runtime.to_jax(cache),
        runtime.to_jax(md.query_start_loc),
        runtime.to_jax(md.seq_lens),
        runtime.to_jax(md.block_tables),
        jnp.array([md.num_seqs], jnp.int32),
        scale=s.head_size**-0.5,
        tile_tokens=8,
        pages_per_step=2,
        interpret=_interpret(),
    )
    runtime.check_races("ragged paged attention")
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(runtime.to_torch(out), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_padded_step_gives_the_same_rows_and_zero_padding(dtype: str) -> None:
    """A step padded to a bucket (tokens and sequences) computes the real rows unchanged."""
    s = Scenario(
        seqs=((20, 1), (33, 9), (18, 18)),
        num_heads=4,
        num_kv_heads=2,
        head_size=64,
        block_size=16,
        dtype=dtype,
        seed=5,
    )
    batch = make_batch(s)
    expected, key_ref, value_ref = reference_forward(batch)
    md = batch.metadata
    tokens, seqs, width = 40, 8, 6
    real_tokens = batch.query.shape[0]
    query = torch.zeros(tokens, 4, 64, dtype=batch.query.dtype)
    query[:real_tokens] = batch.query
    qsl = torch.full((seqs + 1,), real_tokens, dtype=torch.int32)
    qsl[: md.num_seqs + 1] = md.query_start_loc
    lens = torch.zeros(seqs, dtype=torch.int32)
    lens[: md.num_seqs] = md.seq_lens
    tables = torch.zeros(seqs, width, dtype=torch.int32)
    tables[: md.num_seqs, : md.block_tables.shape[1]] = md.block_tables
    out = ragged_paged_attention(
        runtime.to_jax(query),
        runtime.to_jax(_tpu_cache(key_ref, value_ref)),
        runtime.to_jax(qsl),
        runtime.to_jax(lens),
        runtime.to_jax(tables),
        jnp.array([md.num_seqs], jnp.int32),
        scale=64**-0.5,
        interpret=_interpret(),
    )
    runtime.check_races("ragged paged attention")
    out = runtime.to_torch(out)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out[:real_tokens], expected, atol=atol, rtol=rtol)
    assert bool((out[real_tokens:] == 0).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_matches_reference(dtype: str) -> None:
    """Scattered slots (and padding slots -1) across blocks and heads, token count not a tile."""
    from heron_interfaces.reference import write_kv as reference_write

    torch_dtype = getattr(torch, dtype)
    blocks, bs, kvh, d, tokens = 7, 16, 2, 64, 21
    gen = torch.Generator().manual_seed(0)
    key = torch.randn(tokens, kvh, d, generator=gen).to(torch_dtype)
    value = torch.randn(tokens, kvh, d, generator=gen).to(torch_dtype)
    slots = torch.randperm(blocks * bs, generator=gen)[:tokens]
    slots[::5] = -1
    key_ref = torch.full((blocks, bs, kvh, d), float("nan"), dtype=torch_dtype)
    value_ref = key_ref.clone()
    cache = _tpu_cache(key_ref, value_ref).contiguous()
    reference_write(key, value, key_ref, value_ref, slots)
    new = write_kv(
        runtime.to_jax(key),
        runtime.to_jax(value),
        runtime.to_jax(cache),
        runtime.to_jax(slots.to(torch.int32)),
        tile_tokens=8,
        interpret=_interpret(),
    )
    runtime.check_races("the KV write")
    torch.testing.assert_close(
        runtime.to_torch(new), _tpu_cache(key_ref, value_ref), atol=0, rtol=0, equal_nan=True
    )


def _assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """One unit in the last place at most (XLA's rsqrt is not torch's), and in 16-bit types
    nearly every element identical: the rounding points are HF's."""
    tol = {torch.float32: 2e-6, torch.bfloat16: 8e-3}[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)
    if expected.dtype != torch.float32:
        assert (actual == expected).float().mean().item() >= 0.99


@pytest.mark.parametrize("rows", [1, 13, 130])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_reference(dtype: str, rows: int) -> None:
    """Float32 statistics, rounding to the input dtype before the weight multiply (as HF)."""
    torch_dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 192, generator=gen).to(torch_dtype)
    residual = torch.randn(rows, 192, generator=gen).to(torch_dtype)
    weight = (1 + 0.1 * torch.randn(192, generator=gen)).to(torch_dtype)
    ref = KernelOps()
    got = rms_norm(runtime.to_jax(x), runtime.to_jax(weight), 1e-6, interpret=_interpret())
    runtime.check_races("RMSNorm")
    _assert_matches(runtime.to_torch(got), ref.rms_norm(x, weight, 1e-6))
    normed, summed = rms_norm(
        runtime.to_jax(x),
        runtime.to_jax(weight),
        1e-6,
        runtime.to_jax(residual),
        interpret=_interpret(),
    )
    runtime.check_races("add + RMSNorm")
    want_normed, want_summed = ref.add_rms_norm(x, residual, weight, 1e-6)
    torch.testing.assert_close(runtime.to_torch(summed), want_summed, atol=0, rtol=0)
    _assert_matches(runtime.to_torch(normed), want_normed)


def test_dlpack_shares_memory_both_ways() -> None:
    """torch -> JAX -> torch through DLPack keeps the same host buffer (no copies per call)."""
    t = torch.arange(4096, dtype=torch.float32).reshape(64, 64)
    a = runtime.to_jax(t)
    assert a.unsafe_buffer_pointer() == t.data_ptr()
    assert runtime.to_torch(a).data_ptr() == t.data_ptr()


def test_backend_forward_through_torch_tensors() -> None:
    """The attention backend on torch tensors: output in ``out``, cache updated in place."""
    s = Scenario(
        seqs=((30, 1), (20, 20)),
        num_heads=4,
        num_kv_heads=2,
        head_size=64,
        block_size=16,
        dtype="float32",
        seed=9,
    )
    batch = make_batch(s)
    expected, key_ref, value_ref = reference_forward(batch)
    cache = _tpu_cache(batch.key_cache, batch.value_cache).contiguous()
    out = torch.full_like(batch.query, float("nan"))
    backend = TpuAttentionBackend(s.layer_spec())
    assert backend.forward(batch.query, batch.key, batch.value, cache, batch.metadata, out) is out
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    k_view, v_view = TpuAttentionBackend.kv_views(cache)
    torch.testing.assert_close(k_view, key_ref, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(v_view, value_ref, atol=0, rtol=0, equal_nan=True)


def _racy_kernel(x_hbm: object, o_ref: object, buf: object, sem: object) -> None:
    copy = pltpu.make_async_copy(x_hbm, buf, sem)
    copy.start()
    o_ref[...] = buf[...]  # read before the DMA is awaited: a race
    copy.wait()


def test_race_detector_catches_an_unawaited_dma() -> None:
    """The check that guards every kernel call above does fail on a racy kernel."""
    x = jnp.ones((8, 128), jnp.float32)
    call = pl.pallas_call(
        _racy_kernel,
        in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=pl.BlockSpec((8, 128), lambda: (0, 0)),
        out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
        scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32), pltpu.SemaphoreType.DMA(())],
        interpret=_interpret(),
    )
    jax.block_until_ready(call(x))
    with pytest.raises(runtime.PallasRaceError):
        runtime.check_races("a racy test kernel")
    runtime.check_races("nothing after the reset")  # the state was reset: no stale race


def test_tiles_are_independent_of_the_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same batch, different tile sizes and pages per step: the same result (bucket invariance)."""
    s = Scenario(
        seqs=((50, 7), (9, 9), (31, 1)),
        num_heads=2,
        num_kv_heads=1,
        head_size=64,
        block_size=16,
        dtype="float32",
        seed=2,
    )
    batch = make_batch(s)
    _, key_ref, value_ref = reference_forward(batch)
    md = batch.metadata
    call = functools.partial(
        ragged_paged_attention,
        runtime.to_jax(batch.query),
        runtime.to_jax(_tpu_cache(key_ref, value_ref)),
        runtime.to_jax(md.query_start_loc),
        runtime.to_jax(md.seq_lens),
        runtime.to_jax(md.block_tables),
        jnp.array([md.num_seqs], jnp.int32),
        scale=0.125,
        interpret=_interpret(),
    )
    a = np.asarray(call(tile_tokens=8, pages_per_step=1))
    b = np.asarray(call(tile_tokens=16, pages_per_step=4))
    runtime.check_races("ragged paged attention")
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)
    assert dataclasses.is_dataclass(s)
