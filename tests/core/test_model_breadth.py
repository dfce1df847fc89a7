"""Architectures beyond the Llama family: the Transformers fallback (``--model-impl``).

Greedy ids of the engine equal transformers' ``generate()`` on the same tiny random weights, in
every scheduling mode (prefix caching on/off, small chunks, forced preemption), on every
installed backend, for architectures Heron has no native implementation of.
"""

from __future__ import annotations

import logging

import pytest
from breadth_models import FALLBACK_CONFIGS, NATIVE_CONFIGS, load_hf, make_breadth_model_dir
from model_utils import ENGINE_MODES, EQUALITY_PROMPTS, hf_greedy, make_equality_model

from heron import LLM, SamplingParams
from heron.config import EngineArgsError
from heron.engine.engine_core import EngineConfigError
from heron.layers import Linear
from heron.models import UnsupportedModelError

NEW_TOKENS = 10


def greedy(n: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n)


@pytest.fixture(scope="module", params=sorted(FALLBACK_CONFIGS))
def fallback_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    folder = make_breadth_model_dir(tmp_path_factory.mktemp(request.param), request.param)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt_ids = [tokenizer(p)["input_ids"] for p in EQUALITY_PROMPTS]
    return folder, prompt_ids, hf_greedy(load_hf(folder), prompt_ids, NEW_TOKENS)


def test_fallback_greedy_ids_equal_hf_in_every_mode(fallback_model, backend: str) -> None:
    folder, prompt_ids, expected = fallback_model
    for mode, kwargs in ENGINE_MODES.items():
        llm = LLM(str(folder), dtype="float32", block_size=16, model_impl="auto", **kwargs)
        outputs = llm.generate(EQUALITY_PROMPTS, greedy(), use_tqdm=False)
        assert [o.prompt_token_ids for o in outputs] == prompt_ids
        got = [list(o.outputs[0].token_ids) for o in outputs]
        assert got == expected, f"mode {mode} on {backend}"
        if mode == "preemption":
            assert llm.llm_engine.stats().num_preemptions > 0, "the small KV cache never preempted"


def test_auto_takes_native_when_there_is_one_and_says_which(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    native, _ = make_equality_model(tmp_path / "n", "llama")
    fallback = make_breadth_model_dir(tmp_path / "f", "olmo2")
    with caplog.at_level(logging.INFO, logger="heron.engine.engine_core"):
        llm = LLM(str(native), dtype="float32", block_size=16)
        assert type(llm.llm_engine.core.runner.model).__name__ == "LlamaForCausalLM"
        assert "Model implementation: native LlamaForCausalLM" in caplog.text
        caplog.clear()
        llm = LLM(str(fallback), dtype="float32", block_size=16)
        assert "Model implementation: transformers fallback" in caplog.text
        assert "Olmo2ForCausalLM" in caplog.text
        assert "step graphs off (the Transformers fallback" in caplog.text


def test_transformers_impl_runs_a_native_architecture_through_the_fallback(tmp_path) -> None:
    """--model-impl transformers on Llama: the fallback, and the same ids as the native model."""
    folder, prompt_ids = make_equality_model(tmp_path, "llama")
    ids = {}
    for impl in ("heron", "transformers"):
        llm = LLM(str(folder), dtype="float32", block_size=16, model_impl=impl)
        model = llm.llm_engine.core.runner.model
        expected_cls = "TransformersForCausalLM" if impl == "transformers" else "LlamaForCausalLM"
        assert type(model).__name__ == expected_cls
        if impl == "transformers":  # transformers' linears run on the platform's prepared weights
            q_proj = model.hf_model.model.layers[0].self_attn.q_proj
            assert model.num_linears == 2 * (4 + 3) + 1
            assert isinstance(q_proj, Linear) and "_prepared" in q_proj.__dict__
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompt_ids], greedy())
        ids[impl] = [list(o.outputs[0].token_ids) for o in outputs]
    assert ids["heron"] == ids["transformers"]


def test_heron_impl_refuses_an_architecture_it_does_not_implement(tmp_path) -> None:
    folder = make_breadth_model_dir(tmp_path, "gpt2")
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        LLM(str(folder), dtype="float32", model_impl="heron")


def test_a_model_whose_attention_transformers_does_not_route_is_refused(tmp_path) -> None:
    folder = make_breadth_model_dir(tmp_path, "stablelm")
    with pytest.raises(UnsupportedModelError, match="_supports_attention_backend is False"):
        LLM(str(folder), dtype="float32")


def test_a_bidirectional_model_is_refused() -> None:
    """BERT's causal-LM head class still attends both ways unless configured as a decoder."""
    from model_utils import make_context
    from transformers import BertConfig

    from heron.models.transformers_backend import TransformersForCausalLM

    config = BertConfig(
        vocab_size=64, hidden_size=128, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="attends bidirectionally"):
        TransformersForCausalLM(config, make_context(block_size=16))
    decoder = TransformersForCausalLM(
        BertConfig(**{**config.to_dict(), "is_decoder": True}), make_context(block_size=16)
    )
    assert decoder.num_layers == 1


def test_bad_model_impl_is_refused_naming_the_choices() -> None:
    with pytest.raises(EngineArgsError, match="model_impl"):
        LLM(model="unused", model_impl="vllm")


# Plans with sharded attention (fused qkv in GPT-NeoX, biases in Phi, multipliers in Granite)
# and OLMo 2's, whose attention stays replicated (its q/k norms span all heads) and MLP splits.
FALLBACK_TP = ("gpt_neox", "granite", "olmo2", "phi")


def test_fallback_tensor_parallel_two_equals_hf(fallback_model, request) -> None:
    """transformers' own plan splits the fallback's linear layers over two ranks."""
    arch = request.node.callspec.params["fallback_model"]
    if arch not in FALLBACK_TP:
        pytest.skip("tensor parallelism is checked on a few architectures")
    folder, _prompt_ids, expected = fallback_model
    llm = LLM(str(folder), dtype="float32", block_size=16, tensor_parallel_size=2)
    try:
        model = llm.llm_engine.core.runner.model
        assert type(model).__name__ == "TransformersForCausalLM" and model.num_sharded > 0
        outputs = llm.generate(EQUALITY_PROMPTS, greedy(), use_tqdm=False)
        assert [list(o.outputs[0].token_ids) for o in outputs] == expected, arch
    finally:
        llm.shutdown()


def test_fallback_refuses_what_it_cannot_split_clearly(tmp_path) -> None:
    folder = make_breadth_model_dir(tmp_path, "gpt2")
    with pytest.raises(EngineConfigError, match="no tensor-parallel plan for 'gpt2'"):
        LLM(str(folder), dtype="float32", tensor_parallel_size=2)
    with pytest.raises(EngineConfigError, match="pipeline_parallel_size \\(2\\) must be 1"):
        LLM(str(folder), dtype="float32", pipeline_parallel_size=2)


def test_cli_flag_is_spelled_like_vllm() -> None:
    import argparse

    from heron.config import add_engine_arguments, engine_args_from_namespace

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    args = engine_args_from_namespace(parser.parse_args(["--model-impl", "transformers"]))
    assert args.model_impl == "transformers"
    with pytest.raises(SystemExit):
        parser.parse_args(["--model-impl", "other"])


@pytest.fixture(scope="module", params=sorted(NATIVE_CONFIGS))
def native_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    folder = make_breadth_model_dir(tmp_path_factory.mktemp(request.param), request.param)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt_ids = [tokenizer(p)["input_ids"] for p in EQUALITY_PROMPTS]
    return request.param, folder, prompt_ids, hf_greedy(load_hf(folder), prompt_ids, NEW_TOKENS)


def test_native_greedy_ids_equal_hf_in_every_mode(native_model, backend: str) -> None:
    arch, folder, prompt_ids, expected = native_model
    for mode, kwargs in ENGINE_MODES.items():
        llm = LLM(str(folder), dtype="float32", block_size=16, model_impl="heron", **kwargs)
        model = llm.llm_engine.core.runner.model
        assert type(model).__name__ != "TransformersForCausalLM"
        outputs = llm.generate(EQUALITY_PROMPTS, greedy(), use_tqdm=False)
        assert [o.prompt_token_ids for o in outputs] == prompt_ids
        got = [list(o.outputs[0].token_ids) for o in outputs]
        assert got == expected, f"{arch}: mode {mode} on {backend}"
        if mode == "preemption":
            assert llm.llm_engine.stats().num_preemptions > 0, "the small KV cache never preempted"


def test_native_tensor_parallel_two_equals_hf(native_model) -> None:
    """Fused checkpoint tensors (Phi-3's qkv_proj / gate_up_proj) split per rank."""
    arch, folder, _prompt_ids, expected = native_model
    llm = LLM(str(folder), dtype="float32", block_size=16, tensor_parallel_size=2)
    try:
        outputs = llm.generate(EQUALITY_PROMPTS, greedy(), use_tqdm=False)
        assert [list(o.outputs[0].token_ids) for o in outputs] == expected, arch
    finally:
        llm.shutdown()


def test_heron_plugins_lists_how_each_architecture_runs(capsys: pytest.CaptureFixture) -> None:
    from heron.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    native = next(line for line in out.splitlines() if "native (--model-impl heron)" in line)
    for arch in (
        "LlamaForCausalLM",
        "Phi3ForCausalLM",
        "MixtralForCausalLM",
        "Qwen3MoeForCausalLM",
    ):
        assert arch in native
    assert "Olmo2ForCausalLM" not in out
    assert "Transformers fallback (--model-impl transformers" in out


def test_native_architectures_through_the_fallback_equal_hf(native_model, backend: str) -> None:
    """--model-impl transformers runs the natively supported ones too (Mixtral and Qwen-MoE's
    per-expert tensors go through transformers' own converting loader)."""
    arch, folder, _prompt_ids, expected = native_model
    llm = LLM(str(folder), dtype="float32", block_size=16, model_impl="transformers")
    assert type(llm.llm_engine.core.runner.model).__name__ == "TransformersForCausalLM"
    outputs = llm.generate(EQUALITY_PROMPTS, greedy(), use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outputs] == expected, arch


def test_moe_pipeline_parallel_two_equals_hf(native_model) -> None:
    """Each stage loads only its layers' experts (Qwen2-MoE: a dense layer on the first stage,
    a sparse one on the second)."""
    arch, folder, _prompt_ids, expected = native_model
    if arch not in ("mixtral", "qwen2_moe"):
        pytest.skip("pipeline stages of a mixture-of-experts model")
    llm = LLM(str(folder), dtype="float32", block_size=16, pipeline_parallel_size=2)
    try:
        outputs = llm.generate(EQUALITY_PROMPTS, greedy(), use_tqdm=False)
        assert [list(o.outputs[0].token_ids) for o in outputs] == expected, arch
    finally:
        llm.shutdown()
