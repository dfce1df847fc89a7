"""The custom ops themselves: opcheck, argument checks, and shapes the generic suite skips."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from heron_cpu import _kernels, ops
from heron_cpu.attention import CpuAttentionBackend
from heron_interfaces.testing.attention_suite import check_forward
from heron_interfaces.testing.batches import Scenario, make_batch


@pytest.fixture(params=_kernels.available_isas())
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    _kernels.set_isa(request.param)
    try:
        yield request.param
    finally:
        _kernels.set_isa("auto")


def _inputs(dtype: torch.dtype = torch.float32, head_size: int = 64, block_size: int = 16) -> dict:
    s = Scenario(
        seqs=((40, 1), (20, 20), (33, 5)),
        num_heads=4,
        num_kv_heads=2,
        head_size=head_size,
        block_size=block_size,
        dtype=str(dtype).removeprefix("torch."),
    )
    batch = make_batch(s)
    shape = CpuAttentionBackend.kv_cache_shape(batch.num_blocks, block_size, 2, head_size)
    return {
        "batch": batch,
        "kv_cache": torch.zeros(shape, dtype=dtype),
        "out": torch.zeros_like(batch.query),
    }


def _attention_args(inp: dict) -> tuple:
    b, m = inp["batch"], inp["batch"].metadata
    return (
        inp["out"],
        b.query,
        inp["kv_cache"],
        m.query_start_loc,
        m.seq_lens,
        m.block_tables,
        b.scenario.head_size**-0.5,
        m.num_seqs,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_write_kv(dtype: torch.dtype) -> None:
    inp = _inputs(dtype)
    b = inp["batch"]
    args = (b.key, b.value, inp["kv_cache"], b.metadata.slot_mapping)
    torch.library.opcheck(torch.ops.heron_cpu.write_kv.default, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_paged_attention(dtype: torch.dtype) -> None:
    inp = _inputs(dtype)
    torch.library.opcheck(torch.ops.heron_cpu.paged_attention.default, _attention_args(inp))


def test_ops_compose_with_torch_compile() -> None:
    """The ops are opaque graph nodes: a compiled function calling them gives the eager result."""
    inp = _inputs()
    b = inp["batch"]

    def step(out: torch.Tensor, kv_cache: torch.Tensor) -> torch.Tensor:
        ops.write_kv(b.key, b.value, kv_cache, b.metadata.slot_mapping)
        args = _attention_args({**inp, "out": out, "kv_cache": kv_cache})
        ops.paged_attention(*args)
        return out * 2

    eager = step(torch.zeros_like(inp["out"]), inp["kv_cache"].clone())
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(
        compiled(torch.zeros_like(inp["out"]), inp["kv_cache"].clone()), eager
    )


def test_backend_forward_traces_the_custom_ops() -> None:
    """Eager forward skips the custom-op dispatch; under torch.compile it must use the ops.

    With fullgraph=True a call into the pybind module (the eager path) would fail to trace.
    """
    inp = _inputs(torch.bfloat16)
    b = inp["batch"]
    backend = CpuAttentionBackend(b.scenario.layer_spec())

    def step(out: torch.Tensor, kv_cache: torch.Tensor) -> torch.Tensor:
        backend.forward(b.query, b.key, b.value, kv_cache, b.metadata, out)
        return out * 2

    eager = step(torch.zeros_like(inp["out"]), inp["kv_cache"].clone())
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(
        compiled(torch.zeros_like(inp["out"]), inp["kv_cache"].clone()), eager
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.__setitem__(1, a[1].to(torch.float16)), "query must have dtype"),
        (lambda a: a.__setitem__(2, a[2].to(torch.bfloat16)), "query must have dtype"),
        (lambda a: a.__setitem__(0, a[0][:, :2]), "out must have 4 heads"),
        (lambda a: a.__setitem__(2, a[2].transpose(3, 4)), "kv_cache must be contiguous"),
        (lambda a: a.__setitem__(1, a[1].transpose(1, 2)), "query must have a contiguous last"),
        (lambda a: a.__setitem__(1, a[1][..., :32]), "kv_cache has head size 64, the tokens 32"),
        (lambda a: a.__setitem__(4, a[4].long()), "seq_lens must have dtype"),
        (lambda a: a.__setitem__(5, a[5][0]), "block_tables must have 2 dimensions"),
        (lambda a: a.__setitem__(7, 9), "num_seqs 9 exceeds"),
        (lambda a: a[5].__setitem__((0, 0), 10_000), "block_tables holds block 10000"),
        (lambda a: a[4].__setitem__(0, 500), "block_tables has too few columns"),
        (lambda a: a[4].__setitem__(1, 3), "seq_lens is shorter than the query length"),
        (lambda a: a[3].__setitem__(3, 999), "query_start_loc spans tokens outside"),
    ],
)
def test_paged_attention_rejects_bad_arguments(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    args = list(_attention_args(_inputs()))
    args[3], args[4], args[5] = args[3].clone(), args[4].clone(), args[5].clone()
    mutate(args)
    with pytest.raises(ValueError, match=message):
        ops.paged_attention(*args)


def test_write_kv_rejects_bad_arguments() -> None:
    inp = _inputs()
    b = inp["batch"]
    with pytest.raises(ValueError, match="slot_mapping must have dtype"):
        ops.write_kv(b.key, b.value, inp["kv_cache"], b.metadata.slot_mapping.int())
    with pytest.raises(ValueError, match="disagree on the token count"):
        ops.write_kv(b.key, b.value[1:], inp["kv_cache"], b.metadata.slot_mapping)
    with pytest.raises(ValueError, match="key must have 2 heads"):
        ops.write_kv(b.query, b.value, inp["kv_cache"], b.metadata.slot_mapping)
    slots = b.metadata.slot_mapping.clone()
    slots[0] = inp["kv_cache"][0].numel()
    with pytest.raises(ValueError, match=r"slot_mapping\[0\] = .* is past the cache"):
        ops.write_kv(b.key, b.value, inp["kv_cache"], slots)
    bad_block = torch.zeros(2, 3, 2, 64, 24)
    with pytest.raises(ValueError, match="block size 24"):
        ops.write_kv(b.key, b.value, bad_block, b.metadata.slot_mapping)


def test_unsupported_layer_is_refused_at_construction() -> None:
    s = Scenario(
        seqs=((4, 4),), num_heads=2, num_kv_heads=1, head_size=72, block_size=16, dtype="float32"
    )
    with pytest.raises(ValueError, match="head size 72"):
        CpuAttentionBackend(s.layer_spec())


@pytest.mark.parametrize("head_size", [80, 96, 256])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_head_sizes_with_wide_groups(isa: str, head_size: int, dtype: str) -> None:
    s = Scenario(
        seqs=((1, 1), (47, 1), (65, 17), (31, 31)),
        num_heads=16,
        num_kv_heads=2,
        head_size=head_size,
        block_size=32,
        dtype=dtype,
        seed=head_size,
    )
    check_forward(CpuAttentionBackend, make_batch(s))


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_long_context_decode_any_thread_count(isa: str, threads: int) -> None:
    """Split-context decode (flash-decoding) merges its parts correctly whatever the split."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        s = Scenario(
            seqs=((8191, 1), (5000, 1)),
            num_heads=8,
            num_kv_heads=8,
            head_size=128,
            block_size=128,
            dtype="bfloat16",
            seed=threads,
        )
        check_forward(CpuAttentionBackend, make_batch(s))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "seqs"),
    [
        # Items of at most 4 rows (one token of a GQA group, or a few MHA tokens that see
        # different keys) take the two-pass path up to 4096 keys; longer ones stream blocks.
        (12, 3, ((4096, 1), (4097, 1), (1, 1), (300, 1))),
        (8, 4, ((35, 2), (4096, 2), (17, 1))),
        (4, 4, ((3, 3), (70, 4), (4097, 4), (50, 1))),
    ],
)
def test_decode_paths_agree_with_the_reference(
    isa: str, threads: int, heads: int, kv_heads: int, seqs: tuple
) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        s = Scenario(
            seqs=seqs,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_size=64,
            block_size=16,
            dtype="bfloat16",
            seed=heads + threads,
        )
        check_forward(CpuAttentionBackend, make_batch(s))
    finally:
        torch.set_num_threads(before)


def test_empty_batch_is_a_no_op() -> None:
    inp = _inputs()
    args = list(_attention_args(inp))
    args[7] = 0
    ops.paged_attention(*args)
    assert not inp["out"].any()
