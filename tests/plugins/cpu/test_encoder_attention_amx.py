"""heron-cpu's AMX-BF16 encoder attention against float64 torch, with its error bound stated.

The AMX loops compute q.k on tiles (bfloat16 products are exact, sums in fp32), the softmax in
fp32, and round each probability once to bfloat16 for P.V (fp32 sums); each row is divided by the
fp32 sum of its unrounded probabilities, and the output is rounded to bfloat16. Rounding a weight
moves it by at most 2^-9 of itself, hence an output by at most 2^-9 * max|v| (max over the
prompt's values of that head), and the output rounding adds at most 2^-9 of the result, itself at
most max|v|: every output element is within 2 * 2^-9 * max|v| of the exact attention, plus the fp32
sums' and exp's own error (2^f's polynomial is within 1e-4 of itself, the sums far closer;
2.25 * 2^-9 allows for it). That is the tolerance here,
per prompt and head, on
every length from 1 to 512 (tile tails of 16 and 32 rows, the kernel's copy of a last query block
that would read past the step) and on head sizes 32, 64 and 128 (one, two and four 32-element
chunks; 128 also needs two groups of output tiles).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

ea = pytest.importorskip("heron_cpu.encoder_attention", reason="heron-cpu is not installed")

pytestmark = pytest.mark.skipif(
    "amx" not in ea.kernel_paths(), reason="this CPU (or OS) runs no AMX-BF16 tiles"
)
BOUND = 2.25 * 2**-9


def _check(lengths: list[int], heads: int, head_size: int, *, seed: int, extra_cols: int = 0):
    gen = torch.Generator().manual_seed(seed)
    starts = [0, *itertools.accumulate(lengths)]
    width = heads * head_size
    qkv = (torch.randn(starts[-1], 3 * width + extra_cols, generator=gen) * 2).bfloat16()
    scale = head_size**-0.5
    out = torch.full((starts[-1], width), float("nan"), dtype=torch.bfloat16)
    qsl = torch.tensor(starts, dtype=torch.int32)
    assert ea.encoder_attention_eager(out, qkv, qsl, heads, head_size, scale, path="amx") == "amx"
    for a, b in itertools.pairwise(starts):
        if a == b:
            continue
        x = qkv[a:b, : 3 * width].double().view(b - a, 3, heads, head_size)
        q, k, v = (x[:, i].transpose(0, 1) for i in range(3))
        expected = F.scaled_dot_product_attention(q, k, v, scale=scale)  # [heads, len, d]
        got = out[a:b].double().view(b - a, heads, head_size).transpose(0, 1)
        limit = BOUND * v.abs().amax(dim=(1, 2), keepdim=True)
        err = (got - expected).abs()
        assert torch.all(err <= limit), (
            f"prompt of {b - a} tokens: error {err.max().item():.3g} over {limit.max().item():.3g}"
        )


@pytest.mark.parametrize(("heads", "head_size"), [(4, 32), (2, 64), (1, 128)])
def test_every_length_up_to_512(heads: int, head_size: int) -> None:
    lengths = list(range(1, 513))
    gen = torch.Generator().manual_seed(head_size)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    shuffled = [lengths[i] for i in order]
    for part in range(0, len(shuffled), 64):  # ragged steps of 64 prompts, short and long mixed
        _check(shuffled[part : part + 64], heads, head_size, seed=part, extra_cols=3)


@pytest.mark.parametrize("threads", [1, 2])
def test_ragged_step_with_empty_prompts_and_threads(threads: int) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check([0, 17, 1, 0, 200, 33, 16, 32, 0], 12, 32, seed=5)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("heads", [12, 3])
def test_units_of_two_heads_give_the_same_bits_on_any_thread_count(heads: int) -> None:
    """Keys and values are packed two heads of a sequence at a time (one where the head count is
    odd) and the units shared out over threads: no output may depend on how many threads ran."""
    lengths = [5, 200, 0, 33, 1, 64, 17, 120, 16]
    _check(lengths, heads, 32, seed=heads)
    gen = torch.Generator().manual_seed(11)
    qkv = torch.randn(sum(lengths), 3 * heads * 32, generator=gen).bfloat16()
    qsl = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = torch.empty(sum(lengths), heads * 32, dtype=torch.bfloat16)
            ea.encoder_attention_eager(out, qkv, qsl, heads, 32, 0.18, path="amx")
            outs.append(out)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def test_large_scores_stay_finite() -> None:
    """Scores far above exp's range: the row maximum is subtracted before exp, as in fp32."""
    _check([40, 3], 2, 32, seed=9)
    qkv = torch.zeros(5, 3 * 32).bfloat16()
    qkv[:, :64] = 30.0  # q.k = 28,800 before scaling
    qkv[:, 64:] = torch.arange(5 * 32).view(5, 32).bfloat16()
    out = torch.empty(5, 32, dtype=torch.bfloat16)
    qsl = torch.tensor([0, 5], dtype=torch.int32)
    ea.encoder_attention_eager(out, qkv, qsl, 1, 32, 1.0, path="amx")
    expected = qkv[:, 64:].float().mean(dim=0)  # every score equal: the mean of the values
    torch.testing.assert_close(out.float(), expected.expand(5, 32), rtol=2**-8, atol=0)


def test_float32_and_odd_head_sizes_do_not_take_tiles() -> None:
    qkv = torch.randn(9, 3 * 2 * 48)
    qsl = torch.tensor([0, 9], dtype=torch.int32)
    out = torch.empty(9, 96)
    assert ea.encoder_attention_eager(out, qkv, qsl, 2, 48, 0.2, path="amx") == "avx512"
    assert (
        ea.encoder_attention_eager(out.bfloat16(), qkv.bfloat16(), qsl, 2, 48, 0.2, path="amx")
        == "avx512"
    )
    q64 = torch.randn(9, 3 * 64)
    assert (
        ea.encoder_attention_eager(torch.empty(9, 64), q64, qsl, 2, 32, 0.2, path="amx") == "avx512"
    )
