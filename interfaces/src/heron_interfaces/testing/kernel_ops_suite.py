"""Conformance tests of a platform's :class:`~heron_interfaces.kernel_ops.KernelOps`.

Each op runs on the backend's device and is compared, on the CPU, with the plain-torch reference
(the base class). Elementwise ops must round where the reference rounds, so in the model dtype
nearly every element is bit-identical (a summation order may move a rare element by one unit in
the last place); matmuls may accumulate in another order and are compared with a tolerance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from heron_interfaces.testing.loader import resolve_ref

if TYPE_CHECKING:
    import torch

    from heron_interfaces.kernel_ops import KernelOps
    from heron_interfaces.platform import Capabilities, Platform

DTYPES = ("float32", "bfloat16", "float16")


@pytest.fixture(scope="session")
def kernel_ops(backend_platform: type[Platform]) -> KernelOps:
    from heron_interfaces.kernel_ops import KernelOps

    ops = resolve_ref(backend_platform.kernel_ops())()
    assert isinstance(ops, KernelOps), f"kernel_ops() gave {type(ops).__name__}, not a KernelOps"
    return ops


@pytest.fixture(scope="session")
def reference_ops() -> KernelOps:
    """The plain-torch reference every backend's ops are compared with."""
    from heron_interfaces.kernel_ops import KernelOps

    return KernelOps()


def _dtype(caps: Capabilities, name: str) -> torch.dtype:
    import torch

    if name not in caps.dtypes:
        pytest.skip(f"the platform does not declare dtype {name} (declares {caps.dtypes})")
    return getattr(torch, name)


def _assert_matches(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Nearly all elements identical, the rest within one unit in the last place."""
    import torch

    actual = actual.cpu()
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    tol = {torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=what)
    if expected.dtype != torch.float32:
        same = (actual == expected).float().mean().item()
        assert same >= 0.999, f"{what}: only {same:.2%} of elements equal the reference"


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_rms_norm_matches_reference(
    kernel_ops: KernelOps,
    reference_ops: KernelOps,
    capabilities: Capabilities,
    backend_device,
    dtype_name: str,
    rows: int,
) -> None:
    import torch

    dtype = _dtype(capabilities, dtype_name)
    gen = torch.Generator().manual_seed(rows)
    # Rows strided inside a wider tensor, as a slice of a fused projection would be.
    wide = (torch.randn(rows, 640, generator=gen) * 3).to(dtype)
    x, residual = wide[:, :576], torch.randn(rows, 576, generator=gen).to(dtype)
    weight = torch.randn(576, generator=gen).to(dtype)
    dev = backend_device
    out = kernel_ops.rms_norm(x.to(dev), weight.to(dev), 1e-5)
    _assert_matches(out, reference_ops.rms_norm(x, weight, 1e-5), "rms_norm")
    normed, summed = kernel_ops.add_rms_norm(x.to(dev), residual.to(dev), weight.to(dev), 1e-6)
    ref_normed, ref_summed = reference_ops.add_rms_norm(x, residual, weight, 1e-6)
    _assert_matches(summed, ref_summed, "add_rms_norm residual")
    _assert_matches(normed, ref_normed, "add_rms_norm")


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_silu_and_mul_matches_reference(
    kernel_ops: KernelOps,
    reference_ops: KernelOps,
    capabilities: Capabilities,
    backend_device,
    dtype_name: str,
    rows: int,
) -> None:
    import torch

    dtype = _dtype(capabilities, dtype_name)
    gen = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, 2 * 1536 + 8, generator=gen) * 4).to(dtype)[:, : 2 * 1536]
    x[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0]).to(dtype)  # exp's clamps and signed zero
    out = kernel_ops.silu_and_mul(x.to(backend_device))
    _assert_matches(out, reference_ops.silu_and_mul(x), "silu_and_mul")


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("rows", [1, 6, 300])
@pytest.mark.parametrize("with_residual", [False, True])
def test_layer_norm_matches_reference(
    kernel_ops: KernelOps,
    reference_ops: KernelOps,
    capabilities: Capabilities,
    backend_device,
    dtype_name: str,
    rows: int,
    with_residual: bool,
) -> None:
    """API 1.14: an encoder's post-norm, alone and with its residual add, on strided rows."""
    import torch

    dtype = _dtype(capabilities, dtype_name)
    gen = torch.Generator().manual_seed(rows)
    # Offset rows (a mean far from zero), strided inside a wider tensor; the last row constant.
    wide = (torch.randn(rows, 400, generator=gen) * 3 + 5).to(dtype)
    x = wide[:, :384]
    x[-1] = 2.5
    residual = torch.randn(rows, 384, generator=gen).to(dtype) if with_residual else None
    if with_residual:
        residual[-1] = 0.0
    weight = torch.randn(384, generator=gen).to(dtype)
    bias = torch.randn(384, generator=gen).to(dtype)
    dev = backend_device
    out = kernel_ops.layer_norm(
        x.clone().to(dev), weight.to(dev), bias.to(dev), 1e-12,
        residual.to(dev) if with_residual else None,
    )  # fmt: skip
    expected = reference_ops.layer_norm(x.clone(), weight, bias, 1e-12, residual)
    _assert_matches(out, expected, "layer_norm")


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("lengths", [[1], [7, 1, 130, 2], [33] * 40])
def test_mean_pool_matches_reference(
    kernel_ops: KernelOps,
    reference_ops: KernelOps,
    capabilities: Capabilities,
    backend_device,
    dtype_name: str,
    lengths: list[int],
) -> None:
    """API 1.15: each sequence's float32 mean, over strided rows, padding rows after the last
    sequence ignored (a step padded to a row multiple), sums kept in float32."""
    import itertools

    import torch

    dtype = _dtype(capabilities, dtype_name)
    gen = torch.Generator().manual_seed(len(lengths))
    starts = [0, *itertools.accumulate(lengths)]
    rows = starts[-1] + 5  # padding rows: large values that must not reach any mean
    wide = (torch.randn(rows, 400, generator=gen) * 3 + 1).to(dtype)
    wide[starts[-1] :] = 1000
    hidden = wide[:, :384]
    qsl = torch.tensor(starts, dtype=torch.int32)
    out = kernel_ops.mean_pool(hidden.to(backend_device), qsl.to(backend_device))
    expected = reference_ops.mean_pool(hidden, qsl)
    exact = torch.stack([hidden[a:b].double().mean(0) for a, b in itertools.pairwise(starts)])
    assert out.dtype == torch.float32 and tuple(out.shape) == (len(lengths), 384)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.cpu().double(), exact, rtol=1e-5, atol=1e-5)


def _gelu_exact(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """GELU in float64 in forms without cancellation in either tail, rounded to ``x``'s dtype."""
    import torch

    x64 = x.double()
    if approximate == "tanh":
        u = 0.7978845608028654 * (x64 + 0.044715 * x64**3)
        return (x64 * torch.sigmoid(2 * u)).to(x.dtype)
    return (x64 * 0.5 * torch.special.erfc(-x64 / 2**0.5)).to(x.dtype)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("rows", [1, 9, 64])
def test_gelu_matches_reference(
    kernel_ops: KernelOps,
    reference_ops: KernelOps,
    capabilities: Capabilities,
    backend_device,
    dtype_name: str,
    approximate: str,
    rows: int,
) -> None:
    """API 1.14: the encoder's activation, both forms, over the tails and around zero.

    Compared with the exact value rather than bit for bit with torch: torch's own kernel forms
    ``1 + erf`` (or ``1 + tanh``) and loses the negative tail to cancellation (at x = -4.5 its
    bfloat16 result is 1.5 % off), and a kernel need not copy that. Below ``2e-6`` in magnitude
    the tail is noise beside the activations it joins, so the absolute tolerance admits torch's.
    """
    import torch

    dtype = _dtype(capabilities, dtype_name)
    gen = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, 1536 + 16, generator=gen) * 3).to(dtype)[:, :1536]
    edges = torch.tensor([-100.0, -12.0, -5.5, -1e-3, -0.0, 0.0, 1e-3, 5.5, 12.0, 100.0])
    x[0, : edges.numel()] = edges.to(dtype)
    exact = _gelu_exact(x, approximate)
    rtol = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    for name, ops in (("reference", reference_ops), ("backend", kernel_ops)):
        dev = backend_device if ops is kernel_ops else "cpu"
        out = ops.gelu(x.clone().to(dev), approximate).cpu()
        assert out.shape == x.shape and out.dtype == dtype, name
        torch.testing.assert_close(
            out, exact, rtol=rtol, atol=2e-6, msg=f"gelu {approximate} ({name})"
        )
    with pytest.raises(ValueError, match="approximate"):
        kernel_ops.gelu(x.to(backend_device), "erf")


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("rotary_dim", [64, 32])
def test_rotary_matches_reference(
    kernel_ops: KernelOps,
    reference_ops: KernelOps,
    capabilities: Capabilities,
    backend_device,
    dtype_name: str,
    rotary_dim: int,
) -> None:
    import torch

    dtype = _dtype(capabilities, dtype_name)
    gen = torch.Generator().manual_seed(rotary_dim)
    tokens, q_heads, kv_heads, head_size = 37, 9, 3, 64
    # q and k heads viewed inside a fused q/k/v projection: strided tokens.
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_size, generator=gen).to(dtype)
    heads = qkv[:, : (q_heads + kv_heads) * head_size].view(tokens, q_heads + kv_heads, head_size)
    angles = torch.rand(4096, rotary_dim // 2, generator=gen) * 6.3
    cache = torch.cat([angles.cos(), angles.sin()], dim=-1).to(dtype)
    positions = torch.randint(0, 4096, (tokens,), generator=gen)
    dev = backend_device
    out = kernel_ops.rotary(positions.to(dev), heads.to(dev), cache.to(dev))
    _assert_matches(out, reference_ops.rotary(positions, heads, cache), "rotary")


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 8, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_reference(
    kernel_ops: KernelOps,
    capabilities: Capabilities,
    backend_device,
    dtype_name: str,
    rows: int,
    bias: bool,
) -> None:
    """Prepared once, then called with any row count (decode steps and prefill chunks)."""
    import torch

    dtype = _dtype(capabilities, dtype_name)
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(200, 96, generator=gen).to(dtype)
    b = torch.randn(200, generator=gen).to(dtype) if bias else None
    x = torch.randn(rows, 96, generator=gen).to(dtype)
    dev = backend_device
    prepared = kernel_ops.prepare_linear(weight.to(dev))
    out = kernel_ops.linear(x.to(dev), prepared, None if b is None else b.to(dev)).cpu()
    expected = x.double() @ weight.double().T + (0 if b is None else b.double())
    assert out.shape == (rows, 200) and out.dtype == dtype
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_embedding_matches_reference(
    kernel_ops: KernelOps,
    reference_ops: KernelOps,
    capabilities: Capabilities,
    backend_device,
    dtype_name: str,
) -> None:
    import torch

    dtype = _dtype(capabilities, dtype_name)
    gen = torch.Generator().manual_seed(5)
    table = torch.randn(300, 96, generator=gen).to(dtype)
    ids = torch.tensor([0, 299, 17, 17, 5])
    out = kernel_ops.embedding(ids.to(backend_device), table.to(backend_device)).cpu()
    assert torch.equal(out, reference_ops.embedding(ids, table)), "embedding"


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_embedding_shard_matches_reference(
    kernel_ops: KernelOps,
    reference_ops: KernelOps,
    capabilities: Capabilities,
    backend_device,
    dtype_name: str,
) -> None:
    """API 1.12: ids inside the shard's rows get them, every other id zeros; a backend that
    records graphs replays it on new ids (tensor-parallel decode steps are recorded with it)."""
    import torch

    dtype = _dtype(capabilities, dtype_name)
    gen = torch.Generator().manual_seed(6)
    shard = torch.randn(100, 64, generator=gen).to(dtype)  # vocabulary rows 100..199
    ids = torch.tensor([0, 99, 100, 150, 199, 200, 299, 150])
    out = kernel_ops.embedding_shard(ids.to(backend_device), shard.to(backend_device), 100).cpu()
    want = reference_ops.embedding_shard(ids, shard, 100)
    assert torch.equal(out, want), "embedding_shard"
    assert torch.equal(want[2:5], shard[[0, 50, 99]]) and not want[[0, 1, 5, 6]].any()
    graph = kernel_ops.capture_graph(len(ids))
    if graph is None:
        return
    dev_ids, dev_shard = ids.to(backend_device), shard.to(backend_device)
    with graph:
        recorded = kernel_ops.embedding_shard(dev_ids, dev_shard, 100)
    new_ids = torch.tensor([120, 5, 300, 100, 101, 199, 0, 180])
    dev_ids.copy_(new_ids.to(backend_device))
    graph.replay()
    assert torch.equal(recorded.cpu(), reference_ops.embedding_shard(new_ids, shard, 100)), (
        "embedding_shard replayed from a step graph on new ids"
    )


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_step_graph_replays_recorded_ops(
    kernel_ops: KernelOps,
    reference_ops: KernelOps,
    capabilities: Capabilities,
    backend_device,
    dtype_name: str,
) -> None:
    """What core relies on: a recorded pass, replayed after its inputs change in place."""
    import torch

    dtype = _dtype(capabilities, dtype_name)
    graph = kernel_ops.capture_graph(2)
    if graph is None:
        pytest.skip("the backend's KernelOps do not record launches (capture_graph gives None)")
    gen = torch.Generator().manual_seed(9)
    dev = backend_device
    table = torch.randn(50, 128, generator=gen).to(dtype).to(dev)
    weight = torch.randn(128, generator=gen).to(dtype).to(dev)
    ids = torch.tensor([3, 4]).to(dev)
    with graph:
        hidden = kernel_ops.embedding(ids, table)
        normed = kernel_ops.rms_norm(hidden, weight, 1e-6)
        gated = kernel_ops.silu_and_mul(normed)
    for new_ids in ([7, 49], [0, 0]):
        ids.copy_(torch.tensor(new_ids))
        graph.replay()
        want = reference_ops.embedding(torch.tensor(new_ids), table.cpu())
        want = reference_ops.silu_and_mul(reference_ops.rms_norm(want, weight.cpu(), 1e-6))
        _assert_matches(gated, want, f"replayed step for ids {new_ids}")
