"""Every GPU kernel against plain torch, on each GPU backend this machine can run.

Attention and ``write_kv`` are compared with :mod:`heron_interfaces.reference` (through the
conformance suite's batch builder, whose caches hold NaN in every unwritten slot, so a kernel that
reads past a context fails loudly); RMSNorm, rotary embedding and SiLU-and-multiply with a few
lines of torch. Each op also goes through ``torch.library.opcheck``. Without a GPU every test here
skips with the reason from :func:`gpu_backends.require_device`.
"""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
from gpu_backends import GpuBackend

from heron_interfaces import AttentionMetadata, reference
from heron_interfaces.testing.batches import (
    TOLERANCES,
    Batch,
    Scenario,
    make_batch,
    random_scenario,
    reference_forward,
)

DTYPES = ("float16", "bfloat16")
ALL_HEAD_SIZES = (64, 80, 96, 112, 128, 192, 256)


def _on_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with its tensors on ``device``; the ``*_cpu`` twins stay on the host."""
    m = batch.metadata
    metadata = AttentionMetadata(
        query_start_loc=m.query_start_loc.to(device),
        seq_lens=m.seq_lens.to(device),
        block_tables=m.block_tables.to(device),
        slot_mapping=m.slot_mapping.to(device),
        max_query_len=m.max_query_len,
        max_seq_len=m.max_seq_len,
        num_prefill_tokens=m.num_prefill_tokens,
        num_decode_tokens=m.num_decode_tokens,
        num_seqs=m.num_seqs,
        query_start_loc_cpu=m.query_start_loc,
        seq_lens_cpu=m.seq_lens,
    )
    return dataclasses.replace(
        batch,
        query=batch.query.to(device),
        key=batch.key.to(device),
        value=batch.value.to(device),
        metadata=metadata,
        key_cache=batch.key_cache.to(device),
        value_cache=batch.value_cache.to(device),
    )


def _new_cache(gpu: GpuBackend, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s = batch.scenario
    shape = gpu.attention_cls.kv_cache_shape(
        batch.num_blocks, s.block_size, s.num_kv_heads, s.head_size
    )
    kv_cache = torch.empty(shape, dtype=getattr(torch, s.dtype), device=gpu.device)
    key_view, value_view = gpu.attention_cls.kv_views(kv_cache)
    key_view.copy_(batch.key_cache)
    value_view.copy_(batch.value_cache)
    return kv_cache, key_view, value_view


def check_forward(gpu: GpuBackend, scenario: Scenario, *, fused_qkv: bool = False) -> None:
    """The backend's forward (write_kv + attention) on the GPU equals the CPU reference."""
    batch = make_batch(scenario)
    dev = _on_device(batch, gpu.device)
    kv_cache, key_view, value_view = _new_cache(gpu, dev)
    query, key, value = dev.query, dev.key, dev.value
    out = torch.full_like(query, float("nan"))
    if fused_qkv:
        # Slices of one projection output and an output with padded rows: only the token stride
        # differs from a contiguous tensor, which the kernels must honour.
        t, h, d = query.shape
        kv = key.shape[1]
        qkv = torch.cat([query.flatten(1), key.flatten(1), value.flatten(1)], dim=1)
        query = qkv[:, : h * d].view(t, h, d)
        key = qkv[:, h * d : (h + kv) * d].view(t, kv, d)
        value = qkv[:, (h + kv) * d :].view(t, kv, d)
        out = torch.full((t, h * d + 8), float("nan"), dtype=query.dtype, device=gpu.device)
        out = out[:, : h * d].view(t, h, d)
    backend = gpu.attention_cls(scenario.layer_spec())
    result = backend.forward(query, key, value, kv_cache, dev.metadata, out)
    assert result is out
    torch.cuda.synchronize()
    expected, key_ref, value_ref = reference_forward(batch)
    atol, rtol = TOLERANCES[scenario.dtype]
    message = f"{gpu.name}: {scenario}"
    torch.testing.assert_close(
        out.cpu(), expected, atol=atol, rtol=rtol, msg=lambda m: f"{m}\n{message}"
    )
    for view, ref, what in ((key_view, key_ref, "key"), (value_view, value_ref, "value")):
        torch.testing.assert_close(
            view.cpu(), ref, atol=0, rtol=0, equal_nan=True, msg=lambda m, w=what: f"{w} cache: {m}"
        )


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_size", ALL_HEAD_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_every_head_size(
    gpu: GpuBackend, dtype: str, head_size: int, block_size: int
) -> None:
    """Decodes, a fresh prefill and chunks over cached blocks, for each compiled head size."""
    check_forward(
        gpu,
        Scenario(
            seqs=((40, 1), (20, 20), (33, 5), (1, 1), (17, 1), (50, 35)),
            num_heads=8,
            num_kv_heads=2,
            head_size=head_size,
            block_size=block_size,
            dtype=dtype,
            seed=head_size + block_size,
        ),
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("group", [1, 2, 4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_random_batches(gpu: GpuBackend, dtype: str, group: int, seed: int) -> None:
    """The conformance suite's random mixed batches, with grouped-query heads."""
    check_forward(
        gpu,
        random_scenario(
            seed=seed, dtype=dtype, group=group, block_sizes=(16, 32), head_sizes=(64, 80, 128)
        ),
    )


@pytest.mark.parametrize("head_size", [80, 96, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_prefills_before_decodes(gpu: GpuBackend, dtype: str, head_size: int) -> None:
    """The CPU backend's wide-group shapes, with prefills placed before decodes in the batch."""
    check_forward(
        gpu,
        Scenario(
            seqs=((65, 17), (31, 31), (47, 1), (1, 1)),
            num_heads=16,
            num_kv_heads=2,
            head_size=head_size,
            block_size=32,
            dtype=dtype,
            seed=head_size,
        ),
    )


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_size", [128, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_long_contexts(
    gpu: GpuBackend, dtype: str, head_size: int, block_size: int
) -> None:
    """Contexts around the decode partition size (split-context path and its reduction)."""
    p = gpu.ops.PARTITION_SIZE
    check_forward(
        gpu,
        Scenario(
            seqs=((3000, 1), (1777, 1), (p, 1), (p + 1, 1), (2 * p, 1), (1200, 37), (600, 600)),
            num_heads=8,
            num_kv_heads=2,
            head_size=head_size,
            block_size=block_size,
            dtype=dtype,
            seed=7,
        ),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_single_partition_and_decode_only(gpu: GpuBackend, dtype: str) -> None:
    """Decode-only batches: one partition (direct write) and several (partition merge)."""
    for seqs in (((5, 1), (16, 1), (17, 1), (300, 1)), ((5, 1), (1500, 1))):
        check_forward(
            gpu,
            Scenario(
                seqs=seqs, num_heads=4, num_kv_heads=4, head_size=128, block_size=16, dtype=dtype
            ),
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_query_tiles(gpu: GpuBackend, dtype: str) -> None:
    """Prefill lengths around the 16-row query tile and the 32-position key tile."""
    check_forward(
        gpu,
        Scenario(
            seqs=((15, 15), (16, 16), (17, 17), (33, 33), (100, 64), (64, 2)),
            num_heads=4,
            num_kv_heads=1,
            head_size=64,
            block_size=16,
            dtype=dtype,
            seed=3,
        ),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_fused_qkv_slices(gpu: GpuBackend, dtype: str) -> None:
    check_forward(
        gpu,
        Scenario(
            seqs=((40, 1), (20, 20), (33, 5)),
            num_heads=4,
            num_kv_heads=2,
            head_size=64,
            block_size=16,
            dtype=dtype,
        ),
        fused_qkv=True,
    )


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_write_kv_skips_padding(gpu: GpuBackend, dtype: str) -> None:
    torch_dtype = getattr(torch, dtype)
    num_blocks, block_size, kv_heads, head = 6, 16, 2, 80
    cache_shape = gpu.attention_cls.kv_cache_shape(num_blocks, block_size, kv_heads, head)
    kv_cache = torch.full(cache_shape, float("nan"), dtype=torch_dtype, device=gpu.device)
    key = torch.randn(9, kv_heads, head, dtype=torch_dtype, device=gpu.device)
    value = torch.randn(9, kv_heads, head, dtype=torch_dtype, device=gpu.device)
    slots = torch.tensor([5, 17, -1, 95, 0, 40, -1, 63, 64], dtype=torch.int64, device=gpu.device)
    key_ref = torch.full((num_blocks, block_size, kv_heads, head), float("nan"), dtype=torch_dtype)
    value_ref = key_ref.clone()
    reference.write_kv(key.cpu(), value.cpu(), key_ref, value_ref, slots.cpu())
    gpu.ops.write_kv(key, value, kv_cache, slots)
    key_view, value_view = gpu.attention_cls.kv_views(kv_cache)
    torch.testing.assert_close(key_view.cpu(), key_ref, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(value_view.cpu(), value_ref, atol=0, rtol=0, equal_nan=True)


def _attention_args(gpu: GpuBackend, dtype: str = "bfloat16") -> list:
    s = Scenario(
        seqs=((40, 1), (20, 20), (33, 5)),
        num_heads=4,
        num_kv_heads=2,
        head_size=64,
        block_size=16,
        dtype=dtype,
    )
    batch = _on_device(make_batch(s), gpu.device)
    kv_cache, _, _ = _new_cache(gpu, batch)
    m = batch.metadata
    return [
        torch.zeros_like(batch.query),
        batch.query,
        kv_cache.nan_to_num(0.0),
        m.query_start_loc,
        m.seq_lens,
        m.block_tables,
        s.head_size**-0.5,
        m.max_query_len,
        m.max_seq_len,
    ]


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_attention_ops(gpu: GpuBackend, dtype: str) -> None:
    args = _attention_args(gpu, dtype)
    torch.library.opcheck(gpu.namespace.paged_attention.default, tuple(args))
    query, kv_cache = args[1], args[2]
    num_tokens = query.shape[0]
    key = torch.randn(num_tokens, 2, 64, dtype=query.dtype, device=gpu.device)
    slots = torch.arange(num_tokens, dtype=torch.int64, device=gpu.device)
    torch.library.opcheck(gpu.namespace.write_kv.default, (key, key.clone(), kv_cache, slots))


def test_paged_attention_long_context_opcheck(gpu: GpuBackend) -> None:
    """The partitioned path allocates a workspace inside the op; opcheck must still pass."""
    s = Scenario(
        seqs=((1500, 1), (700, 3)),
        num_heads=4,
        num_kv_heads=1,
        head_size=128,
        block_size=32,
        dtype="float16",
    )
    batch = _on_device(make_batch(s), gpu.device)
    kv_cache, _, _ = _new_cache(gpu, batch)
    m = batch.metadata
    args = (
        torch.zeros_like(batch.query),
        batch.query,
        kv_cache.nan_to_num(0.0),
        m.query_start_loc,
        m.seq_lens,
        m.block_tables,
        s.head_size**-0.5,
        m.max_query_len,
        m.max_seq_len,
    )
    torch.library.opcheck(gpu.namespace.paged_attention.default, args)


@pytest.mark.parametrize(
    ("index", "mutate", "message"),
    [
        (1, lambda t: t.float(), "query must have dtype"),
        (2, lambda t: t.half(), "kv_cache has dtype"),
        (0, lambda t: t[:, :2], "out has shape"),
        (2, lambda t: t.transpose(3, 4), "kv_cache must be contiguous"),
        (1, lambda t: t.transpose(1, 2).contiguous().transpose(1, 2), "query must have contiguous"),
        (4, lambda t: t.long(), "seq_lens must have dtype"),
        (5, lambda t: t[0], "block_tables must be 2-D"),
        (3, lambda t: t[:-1], "query_start_loc has"),
        (1, lambda t: t.cpu(), "query must be a GPU"),
        (8, lambda n: 10_000, "max_seq_len 10000 exceeds"),
    ],
)
def test_paged_attention_rejects_bad_arguments(
    gpu: GpuBackend, index: int, mutate: object, message: str
) -> None:
    args = _attention_args(gpu)
    args[index] = mutate(args[index])  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        gpu.ops.paged_attention(*args)


def test_paged_attention_rejects_unsupported_head_size(gpu: GpuBackend) -> None:
    args = _attention_args(gpu)
    q = torch.zeros(args[1].shape[0], 4, 72, dtype=args[1].dtype, device=gpu.device)
    args[0], args[1] = torch.zeros_like(q), q
    with pytest.raises(ValueError, match="head size 72"):
        gpu.ops.paged_attention(*args)


def test_write_kv_rejects_bad_arguments(gpu: GpuBackend) -> None:
    kv_cache = torch.zeros(
        gpu.attention_cls.kv_cache_shape(4, 16, 2, 64), dtype=torch.bfloat16, device=gpu.device
    )
    key = torch.zeros(3, 2, 64, dtype=torch.bfloat16, device=gpu.device)
    slots = torch.arange(3, device=gpu.device)
    with pytest.raises(ValueError, match="slot_mapping must have dtype"):
        gpu.ops.write_kv(key, key, kv_cache, slots.int())
    with pytest.raises(ValueError, match="value has 2 tokens"):
        gpu.ops.write_kv(key, key[1:], kv_cache, slots)
    with pytest.raises(ValueError, match="key has shape"):
        gpu.ops.write_kv(key[:, :1], key, kv_cache, slots)
    with pytest.raises(ValueError, match="key has dtype"):
        gpu.ops.write_kv(key.half(), key, kv_cache, slots)
    with pytest.raises(ValueError, match="kv_cache must be"):
        gpu.ops.write_kv(key, key, kv_cache[0], slots)


# ---------------------------------------------------------------- RMSNorm, rotary, SiLU-and-mul


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    atol, rtol = TOLERANCES[str(dtype).removeprefix("torch.")]
    return {"atol": atol, "rtol": rtol}


ELEMENTWISE_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


@pytest.mark.parametrize("shape", [(1, 64), (7, 1000), (33, 4096), (2, 3, 5120)])
@pytest.mark.parametrize("dtype", ELEMENTWISE_DTYPES)
def test_rms_norm(gpu: GpuBackend, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, dtype=dtype, device=gpu.device) * 3
    weight = torch.rand(shape[-1], dtype=dtype, device=gpu.device) + 0.5
    out = torch.full_like(x, float("nan"))
    gpu.ops.rms_norm(out, x, weight, 1e-6)
    torch.testing.assert_close(out, rms_norm_reference(x, weight, 1e-6), **_tolerance(dtype))


def test_rms_norm_strided_rows_and_opcheck(gpu: GpuBackend) -> None:
    big = torch.randn(9, 512, dtype=torch.bfloat16, device=gpu.device)
    x = big[:, :256]
    weight = torch.rand(256, dtype=torch.bfloat16, device=gpu.device)
    out = torch.empty(9, 256, dtype=torch.bfloat16, device=gpu.device)
    gpu.ops.rms_norm(out, x, weight, 1e-5)
    torch.testing.assert_close(out, rms_norm_reference(x, weight, 1e-5), **_tolerance(x.dtype))
    torch.library.opcheck(gpu.namespace.rms_norm.default, (out, x.contiguous(), weight, 1e-5))
    with pytest.raises(ValueError, match="weight must have shape"):
        gpu.ops.rms_norm(out, x, weight[:100], 1e-5)


def cos_sin_cache(max_position: int, rot_dim: int, device: torch.device) -> torch.Tensor:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim))
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(device)


def rope_reference(
    positions: torch.Tensor, x: torch.Tensor, cache: torch.Tensor, head_size: int
) -> torch.Tensor:
    tokens = x.shape[0]
    xf = x.float().reshape(tokens, -1, head_size)
    half = cache.shape[1] // 2
    cos = cache[positions, :half].unsqueeze(1)
    sin = cache[positions, half:].unsqueeze(1)
    x1, x2 = xf[..., :half], xf[..., half : 2 * half]
    out = xf.clone()
    out[..., :half] = x1 * cos - x2 * sin
    out[..., half : 2 * half] = x2 * cos + x1 * sin
    return out.reshape(x.shape).to(x.dtype)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_size", "rot_dim"),
    [(4, 2, 64, 64), (8, 8, 128, 128), (16, 2, 128, 64), (2, 1, 80, 80), (4, 1, 256, 256)],
)
@pytest.mark.parametrize("dtype", ELEMENTWISE_DTYPES)
def test_rotary_embedding(
    gpu: GpuBackend, dtype: torch.dtype, heads: int, kv_heads: int, head_size: int, rot_dim: int
) -> None:
    tokens, max_position = 37, 4096
    cache = cos_sin_cache(max_position, rot_dim, gpu.device)
    positions = torch.randint(0, max_position, (tokens,), device=gpu.device)
    query = torch.randn(tokens, heads * head_size, dtype=dtype, device=gpu.device)
    key = torch.randn(tokens, kv_heads, head_size, dtype=dtype, device=gpu.device)
    expected_q = rope_reference(positions, query, cache, head_size)
    expected_k = rope_reference(positions, key, cache, head_size)
    gpu.ops.rotary_embedding(positions, query, key, cache, head_size)
    torch.testing.assert_close(query, expected_q, **_tolerance(dtype))
    torch.testing.assert_close(key, expected_k, **_tolerance(dtype))


def test_rotary_embedding_on_fused_qkv_and_opcheck(gpu: GpuBackend) -> None:
    tokens, heads, kv_heads, head_size = 11, 4, 2, 64
    cache = cos_sin_cache(128, head_size, gpu.device)
    positions = torch.arange(tokens, device=gpu.device) * 3
    qkv = torch.randn(
        tokens, (heads + 2 * kv_heads) * head_size, dtype=torch.float16, device=gpu.device
    )
    original = qkv.clone()
    query = qkv[:, : heads * head_size]
    key = qkv[:, heads * head_size : (heads + kv_heads) * head_size]
    expected_q = rope_reference(positions, query, cache, head_size)
    expected_k = rope_reference(positions, key, cache, head_size)
    gpu.ops.rotary_embedding(positions, query, key, cache, head_size)
    torch.testing.assert_close(query, expected_q, **_tolerance(qkv.dtype))
    torch.testing.assert_close(key, expected_k, **_tolerance(qkv.dtype))
    value_columns = slice((heads + kv_heads) * head_size, None)
    assert torch.equal(qkv[:, value_columns], original[:, value_columns]), "value was modified"
    torch.library.opcheck(
        gpu.namespace.rotary_embedding.default,
        (positions, query.contiguous(), key.contiguous(), cache, head_size),
    )
    with pytest.raises(ValueError, match="cos_sin_cache must have dtype"):
        gpu.ops.rotary_embedding(positions, query, key, cache.half(), head_size)
    with pytest.raises(ValueError, match="rot_dim"):
        gpu.ops.rotary_embedding(positions, query, key, cos_sin_cache(8, 128, gpu.device), 64)


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return (torch.nn.functional.silu(x[..., :d].float()) * x[..., d:].float()).to(x.dtype)


@pytest.mark.parametrize("shape", [(1, 128), (13, 2 * 1376), (64, 2 * 11008), (2, 3, 512)])
@pytest.mark.parametrize("dtype", ELEMENTWISE_DTYPES)
def test_silu_and_mul(gpu: GpuBackend, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, dtype=dtype, device=gpu.device) * 4
    out = torch.full((*shape[:-1], shape[-1] // 2), float("nan"), dtype=dtype, device=gpu.device)
    gpu.ops.silu_and_mul(out, x)
    torch.testing.assert_close(out, silu_and_mul_reference(x), **_tolerance(dtype))


def test_silu_and_mul_opcheck(gpu: GpuBackend) -> None:
    x = torch.randn(5, 256, dtype=torch.bfloat16, device=gpu.device)
    out = torch.empty(5, 128, dtype=torch.bfloat16, device=gpu.device)
    torch.library.opcheck(gpu.namespace.silu_and_mul.default, (out, x))
    with pytest.raises(ValueError, match="out has shape"):
        gpu.ops.silu_and_mul(out[:, :64], x)


# ---------------------------------------------------------------- composition and platform parts


def test_ops_compose_with_torch_compile(gpu: GpuBackend) -> None:
    """The ops are opaque graph nodes: a compiled function calling them gives the eager result."""
    args = _attention_args(gpu)

    def step(out: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        gpu.ops.paged_attention(out, query, *args[2:])
        return out * 2

    eager = step(torch.zeros_like(args[0]), args[1])
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(torch.zeros_like(args[0]), args[1]), eager)


def test_ops_follow_the_current_stream(gpu: GpuBackend) -> None:
    x = torch.randn(64, 4096, dtype=torch.float16, device=gpu.device)
    out = torch.empty(64, 2048, dtype=torch.float16, device=gpu.device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        gpu.ops.silu_and_mul(out, x)
    stream.synchronize()
    torch.testing.assert_close(out, silu_and_mul_reference(x), **_tolerance(x.dtype))


def test_memory_profiler(gpu: GpuBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    from heron_interfaces import MemorySnapshot

    if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1":
        # Set for compute-sanitizer runs; torch then keeps no allocation statistics at all.
        pytest.skip("PYTORCH_NO_CUDA_MEMORY_CACHING=1 turns off the allocator statistics it reads")
    monkeypatch.delenv("HERON_GPU_MEMORY_UTILIZATION", raising=False)
    profiler = gpu.platform.memory_profiler()
    profiler.reset_peak()
    block = torch.empty(64 << 20, dtype=torch.uint8, device=gpu.device)
    snap = profiler.snapshot()
    assert isinstance(snap, MemorySnapshot) and snap.kv_budget is None
    assert 0 < snap.free <= snap.total and 0 < snap.allocated <= snap.peak
    assert snap.allocated >= block.numel()
    monkeypatch.setenv("HERON_GPU_MEMORY_UTILIZATION", "0.9")
    budgeted = gpu.platform.memory_profiler().snapshot()
    assert budgeted.kv_budget is not None and 0 <= budgeted.kv_budget < math.ceil(0.9 * snap.total)
    del block


def test_platform_on_device(gpu: GpuBackend) -> None:
    assert gpu.platform.device_count() >= 1
    gpu.platform.set_device(0)
    gpu.platform.seed(1234)
    gpu.platform.synchronize()
