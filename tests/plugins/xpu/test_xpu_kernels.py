"""heron-xpu's Triton kernels against the plain-torch references, one op at a time.

Runs in Triton's interpreter on this CPU by default and compiled on a GPU with
``HERON_XPU_DEVICE=xpu`` (or ``cuda``); see conftest.py. Shapes are small because interpreted
Triton runs every program of the grid in Python. Batches and references come from the conformance
suite's own helpers (``heron_interfaces.testing.batches``), so the kernels are checked against the
same oracle as every backend, here with shapes the suite does not pick: three query heads per KV
head, a padded head size, block tables wider than needed, strided outputs.
"""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from heron_interfaces.kernel_ops import KernelOps
from heron_interfaces.testing.batches import (
    TOLERANCES,
    Scenario,
    make_batch,
    random_scenario,
    reference_forward,
)

# numpy warns when exp overflows to inf in silu(-100), which is the value silu must give there.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

REF = KernelOps()
# float32 and float16 everywhere. bfloat16 too: the interpreter stores it as raw 16-bit integers,
# which the kernels widen before any arithmetic, and its tl.dot operands are widened there.
DTYPES = ("float32", "float16", "bfloat16")


def _cache(key_cache: torch.Tensor, value_cache: torch.Tensor, device: torch.device):
    """heron-xpu's ``[2, blocks, block_size, kv_heads, head_size]`` cache from the batch's."""
    return torch.stack([key_cache, value_cache]).to(device)


def _attend(ops: ModuleType, batch, device: torch.device, out=None) -> torch.Tensor:
    """Write the batch's keys/values and attend, through the two ops, as the backend does."""
    md = batch.metadata
    kv_cache = _cache(batch.key_cache, batch.value_cache, device)
    query = batch.query.to(device)
    if out is None:
        out = torch.full_like(query, float("nan"))
    ops.write_kv(batch.key.to(device), batch.value.to(device), kv_cache, md.slot_mapping.to(device))
    ops.paged_attention(
        out,
        query,
        kv_cache,
        md.query_start_loc.to(device),
        md.seq_lens.to(device),
        md.block_tables.to(device),
        batch.scenario.head_size**-0.5,
        md.max_query_len,
    )
    return out, kv_cache


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 3, 8])
def test_paged_attention_mixed_batch(ops, device, dtype: str, group: int) -> None:
    """Decodes, fresh prefills and chunks over shuffled cached blocks, with GQA groups of 1-8."""
    scenario = random_scenario(
        seed=group, dtype=dtype, group=group, block_sizes=(16, 32), head_sizes=(64, 80)
    )
    batch = make_batch(scenario)
    expected, key_ref, value_ref = reference_forward(batch)
    out, kv_cache = _attend(ops, batch, device)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(
        out.cpu(), expected, atol=atol, rtol=rtol, msg=lambda m: f"{m}\n{scenario}"
    )
    torch.testing.assert_close(kv_cache[0].cpu(), key_ref, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(kv_cache[1].cpu(), value_ref, atol=0, rtol=0, equal_nan=True)


def test_paged_attention_long_prefill_chunk_and_strided_out(ops, device) -> None:
    """A 70-token chunk over 45 cached tokens (64-row tiles, several KV tiles per query tile) and
    a decode; ``out`` is a strided slice, written without touching its neighbours."""
    scenario = Scenario(
        seqs=((115, 70), (40, 1)),
        num_heads=6,
        num_kv_heads=2,
        head_size=64,
        block_size=16,
        dtype="float16",
        seed=4,
    )
    batch = make_batch(scenario)
    expected, _, _ = reference_forward(batch)
    n = batch.query.shape[0]
    wide = torch.zeros(n, 8, 64, dtype=torch.float16, device=device)
    out, _ = _attend(ops, batch, device, out=wide[:, 1:7])
    torch.testing.assert_close(out.cpu(), expected, atol=1e-3, rtol=2e-3)
    assert not wide[:, 0].any() and not wide[:, 7].any()


def test_paged_attention_max_query_len_is_a_bound(ops, device) -> None:
    """A larger ``max_query_len`` only adds empty tiles; the result is the same."""
    batch = make_batch(
        Scenario(
            seqs=((33, 1), (20, 5)),
            num_heads=4,
            num_kv_heads=1,
            head_size=64,
            block_size=16,
            dtype="float32",
            seed=2,
        )
    )
    expected, _, _ = reference_forward(batch)
    batch.metadata.max_query_len = 40
    out, _ = _attend(ops, batch, device)
    torch.testing.assert_close(out.cpu(), expected, atol=2e-5, rtol=1e-4)


def test_write_kv_skips_padding_and_slots_past_the_cache(ops, device) -> None:
    gen = torch.Generator().manual_seed(0)
    kv_cache = torch.zeros(2, 3, 16, 2, 64, device=device)
    key = torch.randn(4, 2, 64, generator=gen).to(device)
    value = torch.randn(4, 2, 64, generator=gen).to(device)
    slots = torch.tensor([5, -1, 3 * 16, 47], device=device)
    ops.write_kv(key, value, kv_cache, slots)
    expected = torch.zeros(2, 3 * 16, 2, 64)
    expected[0, 5], expected[1, 5] = key[0].cpu(), value[0].cpu()
    expected[0, 47], expected[1, 47] = key[3].cpu(), value[3].cpu()
    assert torch.equal(kv_cache.cpu().view(2, 48, 2, 64), expected)


def _assert_like_reference(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit-identical in 16-bit dtypes but for rare one-ulp summation-order differences."""
    actual = actual.cpu()
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    tol = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)
    if expected.dtype != torch.float32:
        assert (actual == expected).float().mean().item() >= 0.999


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_and_fused_residual_add(ops, device, dtype: str) -> None:
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(1)
    wide = (torch.randn(9, 200, generator=gen) * 3).to(dt)
    x, residual = wide[:, :160], torch.randn(9, 160, generator=gen).to(dt)  # strided rows
    weight = torch.randn(160, generator=gen).to(dt)
    dev = device
    _assert_like_reference(
        ops.rms_norm(x.to(dev), weight.to(dev), 1e-5), REF.rms_norm(x, weight, 1e-5)
    )
    normed, summed = ops.add_rms_norm(x.to(dev), residual.to(dev), weight.to(dev), 1e-6)
    ref_normed, ref_summed = REF.add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(summed.cpu(), ref_summed)
    _assert_like_reference(normed, ref_normed)


def test_rms_norm_on_per_head_view_of_a_fused_projection(ops, device) -> None:
    """Qwen3's q/k norms: a 3-D view with strided tokens and heads, read in place."""
    gen = torch.Generator().manual_seed(2)
    qkv = torch.randn(5, 7 * 32, generator=gen).to(torch.float16)
    heads = qkv.to(device)[:, : 4 * 32].view(5, 4, 32)
    weight = torch.rand(32, generator=gen).to(torch.float16)
    got = ops.rms_norm(heads, weight.to(device), 1e-6)
    _assert_like_reference(got, REF.rms_norm(qkv[:, : 4 * 32].view(5, 4, 32), weight, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(ops, device, dtype: str) -> None:
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 2 * 1100 + 4, generator=gen) * 4).to(dt)[:, : 2 * 1100]  # two column blocks
    x[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0]).to(dt)
    _assert_like_reference(ops.silu_and_mul(x.to(device)), REF.silu_and_mul(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rotary_dim", [64, 32])
def test_rotary(ops, device, dtype: str, rotary_dim: int) -> None:
    """Full and partial rotary dimensions on q and k heads viewed inside a fused projection."""
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(rotary_dim)
    tokens, q_heads, kv_heads, head_size = 11, 5, 1, 64
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_size, generator=gen).to(dt)
    heads = qkv[:, : (q_heads + kv_heads) * head_size].view(tokens, q_heads + kv_heads, head_size)
    angles = torch.rand(300, rotary_dim // 2, generator=gen) * 6.3
    cache = torch.cat([angles.cos(), angles.sin()], dim=-1).to(dt)
    positions = torch.randint(0, 300, (tokens,), generator=gen)
    dev_heads = qkv.to(device)[:, : (q_heads + kv_heads) * head_size].view(heads.shape)
    got = ops.rotary(positions.to(device), dev_heads, cache.to(device))
    _assert_like_reference(got, REF.rotary(positions, heads, cache))


def test_fake_impls_give_output_metadata_without_running(ops, device) -> None:
    """Under FakeTensorMode (what torch.compile traces with) the ops check shapes and allocate
    outputs of the right shape and dtype; nothing is launched."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(7, 2 * 96, dtype=torch.float16)
        assert ops.silu_and_mul(x).shape == (7, 96)
        normed, summed = ops.add_rms_norm(x, x, torch.empty(192, dtype=torch.float16), 1e-6)
        assert normed.shape == summed.shape == (7, 192) and normed.dtype == torch.float16
        heads = torch.empty(7, 3, 64, dtype=torch.float16)
        cache = torch.empty(100, 64, dtype=torch.float16)
        assert ops.rotary(torch.zeros(7, dtype=torch.long), heads, cache).shape == (7, 3, 64)
        with pytest.raises(ValueError, match="weight"):
            ops.rms_norm(x, torch.empty(10, dtype=torch.float16), 1e-6)


def test_bad_arguments_are_reported_by_name(ops, device) -> None:
    kv_cache = torch.zeros(2, 2, 16, 1, 64, device=device)
    key = torch.zeros(3, 1, 64, device=device)
    with pytest.raises(ValueError, match="slot_mapping"):
        ops.write_kv(key, key, kv_cache, torch.zeros(2, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="key has dtype float16"):
        ops.write_kv(key.half(), key, kv_cache, torch.zeros(3, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="cos_sin_cache"):
        ops.rotary(
            torch.zeros(3, dtype=torch.long, device=device),
            key,
            torch.zeros(10, 65, device=device),
        )


def test_torch_compile_captures_the_ops(ops, device) -> None:
    """A compiled function that mixes torch ops with the fused ops gives the eager result.

    dynamo captures every op as a graph node through its fake implementation. Compiled for a
    device, AOTAutograd also decomposes the ``triton_op`` into its Triton kernel; under the
    interpreter torch's ``wrap_triton`` runs interpreted kernels eagerly only (it cannot trace
    them), so there the graph is checked with dynamo's capture and run eagerly.
    """

    def step(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return ops.silu_and_mul(ops.rms_norm(x * 2.0, weight, 1e-6))

    gen = torch.Generator().manual_seed(6)
    x, weight = torch.randn(4, 64, generator=gen), torch.rand(64, generator=gen)
    backend = "eager" if ops.INTERPRETED else "aot_eager"
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    got = compiled(x.to(device), weight.to(device))
    want = REF.silu_and_mul(REF.rms_norm(x * 2.0, weight, 1e-6))
    torch.testing.assert_close(got.cpu(), want, atol=2e-6, rtol=2e-6)


def test_ops_are_registered_in_the_namespace(ops) -> None:
    names = {"write_kv", "paged_attention", "rms_norm", "add_rms_norm", "silu_and_mul", "rotary"}
    assert all(hasattr(torch.ops.heron_xpu, name) for name in names)


def test_opcheck(ops, device) -> None:
    """torch.library.opcheck on every op: declared mutations, fake impls, autograd registration.

    Compiled for a device it also checks tracing through AOTAutograd; the interpreter's kernels
    cannot be traced (torch's ``wrap_triton`` runs them eagerly only), so that check is skipped
    there.
    """
    tests = ["test_schema", "test_autograd_registration", "test_faketensor"]
    if not ops.INTERPRETED:
        tests.append("test_aot_dispatch_dynamic")
    batch = make_batch(
        Scenario(
            seqs=((20, 1), (9, 9)),
            num_heads=4,
            num_kv_heads=2,
            head_size=64,
            block_size=16,
            dtype="float16",
            seed=8,
        )
    )
    md = batch.metadata
    dev = device
    kv_cache = _cache(batch.key_cache, batch.value_cache, dev).nan_to_num()
    x = torch.randn(5, 128, dtype=torch.float16).to(dev)
    heads = torch.randn(5, 3, 64, dtype=torch.float16).to(dev)
    cache = torch.randn(50, 64, dtype=torch.float16).to(dev)
    cases = [
        (ops.write_kv, (batch.key.to(dev), batch.value.to(dev), kv_cache, md.slot_mapping.to(dev))),
        (
            ops.paged_attention,
            (
                torch.empty_like(batch.query).to(dev),
                batch.query.to(dev),
                kv_cache,
                md.query_start_loc.to(dev),
                md.seq_lens.to(dev),
                md.block_tables.to(dev),
                0.125,
                md.max_query_len,
            ),
        ),
        (ops.rms_norm, (x, torch.rand(128, dtype=torch.float16).to(dev), 1e-6)),
        (ops.add_rms_norm, (x, x.clone(), torch.rand(128, dtype=torch.float16).to(dev), 1e-6)),
        (ops.silu_and_mul, (x,)),
        (ops.rotary, (torch.tensor([0, 3, 9, 49, 1]).to(dev), heads, cache)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=tests)
