"""heron-cuda's mixture-of-experts bookkeeping, run on the host and checked against torch.

The CUDA/HIP kernels that route tokens, group them by expert and order each token's expert outputs
do their per-thread work in ``plugins/cuda/csrc/moe_logic.h`` (``__host__ __device__``
functions). ``moe_host_check.cpp`` runs those functions over every block and thread in the
kernels' phase order; this test compiles it with the host C++ compiler (no GPU, no nvcc, no
installed heron-cuda needed) and compares what it prints with the same quantities computed with
torch: the stable grouping of (token, slot) entries by expert, each expert's padded first row,
each GEMM tile's expert, and core's own ``route_top_k``. The GEMMs themselves are checked on a GPU
by test_cuda_moe_kernels.py and the conformance ``moe_suite``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from moe_align_reference import BLOCK_M, CHUNK, torch_alignment

from heron.layers.moe import route_top_k

ROOT = Path(__file__).resolve().parents[3]
CSRC = ROOT / "plugins" / "cuda" / "csrc"
DRIVER = Path(__file__).with_name("moe_host_check.cpp")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """moe_host_check.cpp compiled with the host compiler against the kernels' header."""
    compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no host C++ compiler (g++, c++ or clang++) on PATH")
    binary = tmp_path_factory.mktemp("moe_host") / "moe_host_check"
    flags = ["-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}"]
    subprocess.run(
        [compiler, *flags, str(DRIVER), "-o", str(binary)],
        check=True,
        capture_output=True,
        text=True,
    )
    return binary


def _run(driver: Path, *words: object) -> dict[str, list[str]]:
    result = subprocess.run(
        [str(driver)],
        input=" ".join(str(w) for w in words),
        capture_output=True,
        text=True,
        check=True,
    )
    lines = (line.split() for line in result.stdout.splitlines())
    return {line[0]: line[1:] for line in lines if line}


def _align(driver: Path, ids: torch.Tensor, num_experts: int) -> dict[str, torch.Tensor]:
    flat = ids.reshape(-1).tolist()
    out = _run(driver, "align", len(flat), num_experts, *flat)
    return {name: torch.tensor([int(v) for v in values]) for name, values in out.items()}


ALIGN_CASES = [
    # tokens, experts, top_k
    (1, 8, 2),  # one decode token
    (5, 6, 2),
    (40, 6, 2),
    (3, 4, 1),
    (129, 8, 2),  # two chunks
    (700, 16, 4),  # eleven chunks, entries of one expert in many chunks
    (64, 128, 8),  # Qwen3-MoE's routing width: most experts get 0-2 entries
    (2, 1024, 8),  # the most experts the kernels take
]


@pytest.mark.parametrize(("tokens", "experts", "top_k"), ALIGN_CASES)
def test_alignment_equals_a_stable_sort_by_expert(driver, tokens, experts, top_k) -> None:
    gen = torch.Generator().manual_seed(tokens * 7 + experts)
    logits = torch.randn(tokens, experts, generator=gen)
    logits[:, -1] = -1e9  # the last expert gets no token
    _, ids = torch.topk(logits, top_k, dim=-1)
    got = _align(driver, ids, experts)
    num_chunks, max_tiles, _total = got["layout"].tolist()
    assert num_chunks == -(-tokens * top_k // CHUNK)
    offsets, slots, tiles, bases = torch_alignment(ids.reshape(-1), experts, max_tiles)
    assert torch.equal(got["offsets"], offsets)
    assert offsets[-1] <= max_tiles * BLOCK_M, "the grid bound is too small for this routing"
    assert torch.equal(got["slots"], slots)
    assert torch.equal(got["tiles"], tiles)
    assert torch.equal(got["bases"], bases)


def test_grid_bound_is_reached_when_every_expert_has_one_entry(driver) -> None:
    """The worst case of padding: each used expert pads 1 entry to a whole tile."""
    ids = torch.arange(32).reshape(16, 2)
    got = _align(driver, ids, 32)
    _, max_tiles, _ = got["layout"].tolist()
    assert max_tiles == 32 and torch.equal(got["tiles"], torch.arange(32))
    assert got["offsets"][-1] == 32 * BLOCK_M


def test_entries_naming_no_expert_are_left_out(driver) -> None:
    """Out-of-range ids (the kernels cannot raise) contribute nothing, and shift no one."""
    ids = torch.tensor([[0, 5], [-1, 2], [2, 0], [7, 1]])
    got = _align(driver, ids, 4)
    flat = ids.reshape(-1)
    offsets, slots, tiles, _ = torch_alignment(flat, 4, int(got["layout"][1]))
    assert torch.equal(got["offsets"], offsets) and torch.equal(got["slots"], slots)
    assert torch.equal(got["tiles"], tiles)
    placed = got["slots"][got["slots"] >= 0]
    assert sorted(placed.tolist()) == [0, 3, 4, 5, 7]


@pytest.mark.parametrize(("experts", "top_k"), [(4, 2), (8, 2), (60, 4), (128, 8), (6, 1)])
@pytest.mark.parametrize("renormalize", [False, True])
def test_routing_equals_core_route_top_k(driver, experts, top_k, renormalize) -> None:
    tokens = 33
    gen = torch.Generator().manual_seed(experts + top_k)
    logits = torch.randn(tokens, experts, generator=gen) * 3
    out = _run(
        driver, "route", tokens, experts, top_k, int(renormalize), *logits.reshape(-1).tolist()
    )
    ids = torch.tensor([int(v) for v in out["ids"]]).reshape(tokens, top_k)
    weights = torch.tensor([float(v) for v in out["weights"]]).reshape(tokens, top_k)
    want_weights, want_ids = route_top_k(logits, top_k, renormalize)
    assert torch.equal(ids, want_ids)
    # expf against torch's vectorised exp: a few units in the last place.
    torch.testing.assert_close(weights, want_weights, rtol=2e-6, atol=1e-7)
    if renormalize:
        torch.testing.assert_close(weights.sum(-1), torch.ones(tokens))


def test_routing_ties_go_to_the_lower_expert(driver) -> None:
    out = _run(driver, "route", 1, 5, 3, 0, 0.5, 2.0, 0.5, 2.0, 0.5)
    assert [int(v) for v in out["ids"]] == [1, 3, 0]


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([3, 1], [1, 0]),
        ([0, 7, 2, 5], [0, 2, 3, 1]),
        ([6, 5, 4, 3, 2, 1, 0, 7], [6, 5, 4, 3, 2, 1, 0, 7]),
        ([4, -1, 1, 9], [2, 0]),  # -1 and 9 name no expert of 8
    ],
)
def test_token_slots_are_summed_in_expert_order(driver, ids, expected) -> None:
    """The reference adds a token's expert outputs in ascending expert id (index_add_ per
    expert); with three or more per token that order sets the rounding."""
    out = _run(driver, "order", len(ids), 8, *ids)
    assert [int(v) for v in out["order"]] == expected
