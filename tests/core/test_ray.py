"""The Ray executor on a two-node Ray cluster started on this machine (two raylets on loopback):
tensor parallel 2 with one rank per node equals Hugging Face ``generate()``, a killed rank's actor
fails the engine, and ``heron serve --distributed-executor-backend ray`` serves the openai client.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from model_utils import EQUALITY_PROMPTS, hf_greedy, kernel_friendly_overrides, make_tiny_model_dir

from heron import LLM, SamplingParams
from heron.distributed.executor import WorkerFailedError

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

NEW_TOKENS = 8
SHAPE = {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    nodes = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    nodes.add_node(num_cpus=1)
    ray.init(address=nodes.address, logging_level="WARNING")
    yield nodes
    ray.shutdown()
    nodes.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_tiny_model_dir(
        tmp_path_factory.mktemp("ray"), "qwen2", **{**kernel_friendly_overrides("qwen2"), **SHAPE}
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt_ids = [tokenizer(p)["input_ids"] for p in EQUALITY_PROMPTS]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, hf_greedy(hf, prompt_ids, NEW_TOKENS)


def ray_llm(folder: Path, tp: int = 2, pp: int = 1) -> LLM:
    return LLM(
        str(folder),
        dtype="float32",
        block_size=16,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        distributed_executor_backend="ray",
    )


@pytest.mark.parametrize("layout", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_two_ranks_on_two_nodes_equal_hf(
    cluster, tiny, monkeypatch: pytest.MonkeyPatch, layout: tuple[int, int]
) -> None:
    """Tensor parallel 2 across the nodes, and pipeline parallel 2 with a batch per stage in
    flight (steps run in order on each actor while the next one is sent)."""
    monkeypatch.setenv("HERON_RAY_PLACEMENT_STRATEGY", "STRICT_SPREAD")
    folder, expected = tiny
    llm = ray_llm(folder, *layout)
    try:
        if layout[1] == 2:
            assert llm.llm_engine.core.scheduler.config.max_batches_in_flight == 2
        executor = llm.llm_engine.core.executor
        here = ray.get_runtime_context().get_node_id()[:8]
        assert executor._nodes and executor._nodes[0] != here  # rank 1 runs on the other node
        params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
        outputs = llm.generate(EQUALITY_PROMPTS, params, use_tqdm=False)
        assert [list(o.outputs[0].token_ids) for o in outputs] == expected
    finally:
        llm.shutdown()


def test_a_killed_rank_fails_the_engine(cluster, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_RAY_PLACEMENT_STRATEGY", "STRICT_SPREAD")
    folder, _expected = tiny
    llm = ray_llm(folder)
    core = llm.llm_engine.core
    ray.kill(core.executor._actors[0])
    with pytest.raises(WorkerFailedError, match=r"worker rank 1 .*died"):
        llm.generate(["after"], SamplingParams(max_tokens=4), use_tqdm=False)
    assert core.failure is not None
    llm.shutdown()


def test_heron_serve_on_ray_answers_the_openai_client(cluster, tiny, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "server"))
    from server_utils import TINY_ARGS, start_server

    folder, _expected = tiny
    server = start_server(
        tmp_path,
        str(folder),
        *TINY_ARGS,
        "--served-model-name",
        "tiny",
        "--tensor-parallel-size",
        "2",
        "--distributed-executor-backend",
        "ray",
        env={"RAY_ADDRESS": cluster.address, "HERON_RAY_PLACEMENT_STRATEGY": "STRICT_SPREAD"},
    )
    try:
        assert "executor ray" in server.log()
        client = server.client()
        kwargs = {"model": "tiny", "prompt": EQUALITY_PROMPTS[1], "max_tokens": NEW_TOKENS}
        whole = client.completions.create(temperature=0, **kwargs)
        stream = client.completions.create(temperature=0, stream=True, **kwargs)
        joined = "".join(c.choices[0].text for c in stream if c.choices)
        assert joined == whole.choices[0].text
        assert whole.usage.completion_tokens == NEW_TOKENS
    finally:
        assert server.stop() == 0
