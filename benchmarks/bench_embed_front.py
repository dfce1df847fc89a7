"""What the ``-dp`` front of ``LLM.embed`` costs: its stages alone, and a run's output timeline.

With ``--dp 2`` on two cores three processes share them, so every CPU-second of the front (and
every non-model CPU-second of a replica) is taken from the model. Issue 22's seventeenth session:

    OMP_NUM_THREADS=1 python benchmarks/bench_embed_front.py stages     # ~30 s, one process
    OMP_NUM_THREADS=1 python benchmarks/bench_embed_front.py timeline   # ~40 s, -dp 2

``stages`` times, in one process and CPU-seconds, for all-MiniLM-L6-v2 and the 10,000 sentences
of ``bench_embeddings.py``: the tokenizer's own call against ``TextIds``; checking (``prepare``);
the messages to the replicas (pickling and unpickling one ``PreparedPooling`` per request, and the
``PoolingWire`` lists of one chunk per replica); and the outputs (``tolist`` and pickling as before,
float32 bytes and ``unpack_embedding`` now). ``timeline`` runs ``LLM.embed`` with two replicas and
prints when each replica's outputs were read, how far apart the replicas finished, the CPU-seconds
of each process (from /proc) and the core-seconds not used by them (idle, or other jobs).
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import time
from typing import Any

import bench_embeddings as bench


def _cpu(fn: Any) -> tuple[float, Any]:
    """CPU-seconds of ``fn()`` and its result, after a full collection: what an earlier stage
    left alive would otherwise be traversed by this stage's collections."""
    gc.collect()
    started = time.process_time()
    out = fn()
    return round(time.process_time() - started, 3), out


def stages(num: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    from heron.pooling.config import PoolerConfig
    from heron.pooling.frontend import PoolingFrontend, to_wire, unpack_embedding
    from heron.pooling.outputs import EmbeddingOutput, EmbeddingRequestOutput
    from heron.pooling.params import PoolingParams
    from heron.pooling.scheduler import check_pooling_limits
    from heron.pooling.text_ids import TextIds
    from heron.sched.scheduler import RequestLimits

    sentences = bench.make_sentences(num)
    tokenizer = AutoTokenizer.from_pretrained(bench.model_path())
    chunks = [sentences[i : i + 1024] for i in range(0, len(sentences), 1024)]
    result: dict[str, Any] = {"sentences": num}
    result["tokenizer_call_s"], _ = _cpu(
        lambda: [tokenizer(c, add_special_tokens=True)["input_ids"] for c in chunks]
    )
    del _
    text_ids = TextIds(tokenizer)
    result["text_ids_s"], _ = _cpu(lambda: [text_ids.ids(c, None) for c in chunks])
    del _
    frontend = PoolingFrontend(
        tokenizer,
        pooler=PoolerConfig(pooling_type="MEAN"),
        max_model_len=256,
        vocab_size=tokenizer.vocab_size,
        hidden_size=384,
    )
    limits = RequestLimits(
        max_model_len=256,
        enable_chunked_prefill=False,
        max_num_batched_tokens=2048,
        block_size=16,
        num_blocks=4096,
    )
    params = PoolingParams()
    processed = frontend.process_many(sentences, [params] * num)
    result["prepare_s"], prepared = _cpu(
        lambda: [
            frontend.prepare(str(i), p, params, lambda r: check_pooling_limits(r, limits))
            for i, p in enumerate(processed)
        ]
    )
    result["pickle_per_request_s"], blobs = _cpu(
        lambda: [pickle.dumps(("add", (p, 1))) for p in prepared]
    )
    result["unpickle_per_request_s"], _ = _cpu(lambda: [pickle.loads(b) for b in blobs])
    del _
    per_replica = [prepared[i : i + 512] for i in range(0, num, 512)]
    result["pickle_wire_s"], blobs = _cpu(
        lambda: [pickle.dumps(("add_pooling", [to_wire(p) for p in c])) for c in per_replica]
    )
    result["unpickle_wire_and_rebuild_s"], _ = _cpu(
        lambda: [[frontend.from_wire(w) for w in pickle.loads(b)[1]] for b in blobs]
    )
    del _
    torch.manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(num, 384), dim=-1)
    steps = [range(i, min(i + 18, num)) for i in range(0, num, 18)]  # ~18 outputs per step

    def old_outputs() -> list[bytes]:  # what a replica sent before f801544
        return [
            pickle.dumps(
                [
                    EmbeddingRequestOutput(
                        request_id=str(i),
                        prompt=processed[i].prompt,
                        prompt_token_ids=processed[i].prompt_token_ids,
                        outputs=EmbeddingOutput(embedding=vectors[i].tolist()),
                    )
                    for i in step
                ]
            )
            for step in steps
        ]

    result["outputs_tolist_and_pickle_s"], blobs = _cpu(old_outputs)
    result["outputs_unpickle_s"], _ = _cpu(lambda: [pickle.loads(b) for b in blobs])
    del _
    result["outputs_pack_and_pickle_s"], blobs = _cpu(
        lambda: [
            pickle.dumps([(str(i), vectors[i].numpy().tobytes()) for i in step]) for step in steps
        ]
    )
    result["outputs_unpickle_and_unpack_s"], _ = _cpu(
        lambda: [
            [unpack_embedding(rid, processed[int(rid)], data) for rid, data in pickle.loads(b)]
            for b in blobs
        ]
    )
    return result


def timeline(num: int, dp: int) -> dict:
    from heron import LLM
    from heron.engine.data_parallel import DataParallelEngine

    sentences = bench.make_sentences(num)
    llm = LLM(bench.model_path(), dtype="bfloat16", data_parallel_size=dp)
    llm.embed(sentences[:200], use_tqdm=False)
    engine = llm.llm_engine
    arrivals: dict[int, list[float]] = {i: [] for i in range(dp)}
    handle = DataParallelEngine._handle

    def timed_handle(self: Any, index: int, kind: str, payload: Any) -> Any:
        arrivals[index].append(time.perf_counter())
        return handle(self, index, kind, payload)

    DataParallelEngine._handle = timed_handle  # type: ignore[method-assign]
    pids: list[int | str] = ["self", *(r.process.pid for r in engine._replicas)]
    cpu_before = [bench._cpu_seconds(p) for p in pids]
    started = time.perf_counter()
    llm.embed(sentences, use_tqdm=False)
    wall = time.perf_counter() - started
    cpu = [bench._cpu_seconds(p) - c for p, c in zip(pids, cpu_before)]
    llm.shutdown()
    last = [max(a) - started for a in arrivals.values()]
    return {
        "sentences": num,
        "seconds": round(wall, 2),
        "first_output_read_s": round(min(min(a) for a in arrivals.values()) - started, 3),
        "last_output_per_replica_s": [round(t, 3) for t in last],
        "replicas_finished_apart_s": round(max(last) - min(last), 3),
        "cpu_s": [round(c, 2) for c in cpu],
        "core_s_not_ours": round(dp * wall - sum(cpu), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["stages", "timeline"])
    parser.add_argument("--num", type=int, default=10_000)
    parser.add_argument("--dp", type=int, default=2)
    args = parser.parse_args()
    result = stages(args.num) if args.mode == "stages" else timeline(args.num, args.dp)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
