"""The encoder's own SDPA path (heron.pooling.encoder_attention): the plan's groups, attention
equal to a per-prompt softmax reference, and on heron-cpu an encoder step that never calls the
backend (no KV write) yet equals Hugging Face."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from test_embed_encoders import INPUTS, _encoder_dir

from heron import LLM
from heron.pooling.encoder_attention import attend, plan_groups


def _reference(qkv: torch.Tensor, starts: list[int], heads: int, size: int) -> torch.Tensor:
    out = torch.zeros(qkv.shape[0], heads * size, dtype=torch.float64)
    for a, b in itertools.pairwise(starts):
        part = qkv[a:b].double().view(b - a, 3, heads, size)
        q, k, v = (part[:, j].transpose(0, 1) for j in range(3))
        weights = torch.softmax(q @ k.transpose(1, 2) * size**-0.5, dim=-1)
        out[a:b] = (weights @ v).transpose(0, 1).reshape(b - a, heads * size)
    return out


def test_plan_groups_views_equal_neighbours_and_pads_the_rest() -> None:
    # Three prompts of 4 side by side, one of 9, then one of 4 apart from the others.
    lengths = [4, 4, 4, 9, 4]
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    groups = plan_groups(starts, torch.device("cpu"))
    assert sorted(g.batch for g in groups) == [1, 4]
    four = next(g for g in groups if g.batch == 4)
    assert four.length == 4 and four.rows is not None  # not contiguous: gathered
    nine = next(g for g in groups if g.batch == 1)
    assert nine.rows is None and nine.start == 12 and nine.length == 9
    contiguous = plan_groups([0, 5, 10, 15], torch.device("cpu"))
    assert [(g.start, g.batch, g.length, g.rows) for g in contiguous] == [(0, 3, 5, None)]
    # Lengths 10 and 20 together would pad a third of the tokens: two groups.
    assert len(plan_groups([0, 10, 30], torch.device("cpu"))) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attend_equals_per_prompt_softmax(dtype: torch.dtype) -> None:
    heads, size = 3, 8
    lengths = [5, 5, 1, 17, 16, 5, 30, 2]
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    torch.manual_seed(0)
    qkv = torch.randn(starts[-1], 3 * heads * size).to(dtype)
    groups = plan_groups(starts, torch.device("cpu"))
    assert any(g.rows is None for g in groups) and any(g.rows is not None for g in groups)
    out = torch.full((starts[-1], heads * size), float("nan"), dtype=dtype)
    attend(qkv, groups, heads, size, size**-0.5, out)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(out.double(), _reference(qkv, starts, heads, size), **tol)


def test_cpu_encoder_skips_the_backend_and_equals_hf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heron_cpu = pytest.importorskip("heron_cpu.attention")
    monkeypatch.setenv("HERON_BACKEND", "cpu")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the encoder called the backend (and its KV write)")

    monkeypatch.setattr(heron_cpu.CpuAttentionBackend, "forward", refuse)
    monkeypatch.setattr(heron_cpu.CpuAttentionBackend, "write_kv", refuse)
    folder, hf = _encoder_dir(tmp_path, "bert")
    llm = LLM(
        str(folder),
        dtype="float32",
        pooler_config={"pooling_type": "MEAN", "normalize": False},
        enforce_eager=True,
    )
    assert llm.llm_engine.core.platform.name == "cpu"
    inputs = INPUTS + [list(range(40, 120))] * 3  # equal neighbours: a view, not a gather
    outs = llm.embed(inputs, use_tqdm=False)
    for ids, out in zip(inputs, outs):
        with torch.no_grad():
            want = hf(input_ids=torch.tensor([ids])).last_hidden_state[0].mean(0)
        torch.testing.assert_close(torch.tensor(out.outputs.embedding), want, atol=2e-5, rtol=1e-4)
        assert out.prompt_token_ids == ids


def _cpu_bert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str) -> tuple[LLM, object]:
    monkeypatch.setenv("HERON_BACKEND", "cpu")
    folder, hf = _encoder_dir(tmp_path, "bert")
    pooler = {"pooling_type": "MEAN", "normalize": False}
    llm = LLM(str(folder), dtype=dtype, pooler_config=pooler, enforce_eager=True)
    assert llm.llm_engine.core.platform.name == "cpu"
    return llm, hf


def _assert_equals_hf(llm: LLM, hf: object, inputs: list[list[int]], tol: float) -> None:
    outs = llm.embed(inputs, use_tqdm=False)
    for ids, out in zip(inputs, outs):
        with torch.no_grad():
            want = hf(input_ids=torch.tensor([ids])).last_hidden_state[0].mean(0)
        got = torch.tensor(out.outputs.embedding)
        torch.testing.assert_close(got, want.float(), atol=tol, rtol=tol)


def test_cpu_encoder_runs_the_kernel_not_sdpa(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On heron-cpu a whole-prompt step goes through KernelOps.encoder_attention (the C++
    kernel) on rows padded to ROW_ALIGN, never the SDPA groups or the backend, and equals
    Hugging Face."""
    pytest.importorskip("heron_cpu.encoder_attention")
    import heron.models.bert as bert

    calls = []
    llm, hf = _cpu_bert(tmp_path, monkeypatch, "float32")
    ops = llm.llm_engine.core.runner.kernel_ops
    original = type(ops).encoder_attention

    def counted(self, qkv, query_start_loc, *args):
        out = original(self, qkv, query_start_loc, *args)
        calls.append(out is not None)
        # Rows padded to ROW_ALIGN (oneDNN compiles its kernels per row count).
        assert qkv.shape[0] % bert.ROW_ALIGN == 0
        return out

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the encoder fell back to torch's SDPA")

    monkeypatch.setattr(type(ops), "encoder_attention", counted)
    monkeypatch.setattr(bert, "attend", refuse)
    _assert_equals_hf(llm, hf, INPUTS + [list(range(40, 120))] * 3, 2e-5)
    assert calls and all(calls)


def test_cpu_encoder_falls_back_to_sdpa_when_the_kernel_declines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernel ops that return None (a backend without the kernel, API 1.13's default) leave the
    step to torch's SDPA groups on heron-cpu, still equal to Hugging Face."""
    heron_cpu = pytest.importorskip("heron_cpu.kernel_ops")
    monkeypatch.setattr(heron_cpu.CpuKernelOps, "encoder_attention", lambda self, *a: None)
    llm, hf = _cpu_bert(tmp_path, monkeypatch, "float32")
    _assert_equals_hf(llm, hf, INPUTS, 2e-5)
