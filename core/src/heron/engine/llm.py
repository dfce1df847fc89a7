"""``LLM``: offline batched generation, the vLLM-shaped Python API."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from heron.config import make_engine_args
from heron.engine.data_parallel import build_engine
from heron.engine.input_processor import ChatMessages, PromptType
from heron.outputs import RequestOutput
from heron.pooling.outputs import EmbeddingRequestOutput
from heron.pooling.params import PoolingParams
from heron.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

EMBED_CHUNK = 1024
"""Inputs that :meth:`LLM.embed` tokenizes, checks and submits together. Data-parallel replicas
start on the first chunk while the front tokenizes the next: tokenizing and checking 10,000
sentences before submitting any took 1.5 s of a 22.5 s two-replica run, with both replicas idle.
An invalid input raises as before; the chunks already submitted are aborted."""

EMBED_BACKLOG = 2 * EMBED_CHUNK
"""Inputs :meth:`LLM.embed` keeps submitted and unfinished before it tokenizes the next chunk
(it steps the engine until fewer are). Data-parallel replicas get each input when it is placed,
least-loaded first: placing all 10,000 of a run in its first two seconds left any difference in
the replicas' speed over the next twenty to the end, where one replica idled up to 1.2 s while
the other finished. Placed late, the last chunk goes to the replicas as they stand then. One
engine's steps see the same queue either way (a step takes ~20 inputs, the backlog ~2,000)."""


class LLM:
    """Generate for many prompts at once; every request joins one continuously batched loop.

    ``LLM(model=None)`` loads the bundled SmolLM2-135M-Instruct. Keyword arguments are the engine
    arguments (:class:`heron.config.EngineArgs`), validated with their names in the error.
    """

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        args = make_engine_args(model=model, **kwargs)
        if args.split_prompt_bursts is None:
            # Staggered admission buys earlier first tokens, which an offline batch does not
            # return anyway, with more and emptier steps (W64 on 2 CPUs, interleaved A/B: within
            # noise, 469 vs 464 tok/s median; benchmarks/RESULTS.md).
            args = args.model_copy(update={"split_prompt_bursts": False})
        self.engine_args = args
        # With data_parallel_size > 1, a front over one engine process per replica.
        self.llm_engine = build_engine(self.engine_args)

    def shutdown(self) -> None:
        """Stop the worker processes of a tensor-parallel engine now (they also stop when this
        object is garbage-collected or the interpreter exits)."""
        self.llm_engine.shutdown()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Outputs in the order of ``prompts``. A single string or token-id list is one prompt."""
        prompt_list = _as_prompt_list(prompts)
        params_list = _broadcast_params(sampling_params, len(prompt_list))
        engine = self.llm_engine
        return self._run(
            [
                (engine.input_processor.process_prompt(p), sp)
                for p, sp in zip(prompt_list, params_list)
            ],
            use_tqdm,
        )

    def chat(
        self,
        messages: ChatMessages | Sequence[ChatMessages],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> list[RequestOutput]:
        """One conversation (a list of messages) or many (a list of such lists)."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        params_list = _broadcast_params(sampling_params, len(conversations))
        render = self.llm_engine.input_processor.render_chat
        return self._run(
            [
                (
                    render(
                        conv,
                        chat_template=chat_template,
                        add_generation_prompt=add_generation_prompt,
                        continue_final_message=continue_final_message,
                    ),
                    sp,
                )
                for conv, sp in zip(conversations, params_list)
            ],
            use_tqdm,
        )

    def embed(
        self,
        prompts: PromptType | Sequence[PromptType],
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
    ) -> list[EmbeddingRequestOutput]:
        """One embedding per prompt, in order (``out.outputs.embedding``, a list of floats).

        The model must run the pooling runner (``runner="pooling"``, or ``"auto"`` for an
        embedding model). ``truncate_prompt_tokens`` applies to every prompt without its own
        ``PoolingParams``.
        """
        prompt_list = _as_prompt_list(prompts)
        if pooling_params is None or isinstance(pooling_params, PoolingParams):
            params_list = [pooling_params] * len(prompt_list)
        else:
            params_list = list(pooling_params)
            if len(params_list) != len(prompt_list):
                raise ValueError(
                    f"pooling_params: got {len(params_list)} PoolingParams for "
                    f"{len(prompt_list)} prompts; pass one, or one per prompt"
                )
        default = PoolingParams(truncate_prompt_tokens=truncate_prompt_tokens)
        params_list = [p or default for p in params_list]  # one object: pickled once per message
        engine = self.llm_engine
        pooling = getattr(engine, "pooling", None)
        order: list[str] = []  # the caller's order
        added: list[str] = []
        results: dict[str, EmbeddingRequestOutput] = {}
        bar = tqdm(total=len(prompt_list), desc="Embedding", unit="input", disable=not use_tqdm)
        try:
            for start in range(0, len(prompt_list), EMBED_CHUNK):
                chunk = prompt_list[start : start + EMBED_CHUNK]
                chunk_params = params_list[start : start + EMBED_CHUNK]
                if pooling is not None:  # texts tokenized in batches
                    chunk = pooling.process_many(chunk, chunk_params)
                prepared = [
                    engine.prepare_pooling(engine.next_request_id(), prompt, params)
                    for prompt, params in zip(chunk, chunk_params)
                ]
                # Submitted shortest first (as sentence-transformers batches): a step then holds
                # prompts of nearly one length, which attend in few padded calls with little
                # padding. Outputs still come back in the caller's order.
                # Added together: a data-parallel front sends each replica its share in one
                # message. Recorded first, so that a failure aborts whatever did get in.
                ordered = sorted(prepared, key=lambda p: len(p.request.prompt_token_ids))
                added.extend(item.request_id for item in ordered)
                engine.add_prepared_many(ordered)
                order.extend(item.request_id for item in prepared)
                # Replicas' outputs so far, without waiting: unread, they pile up in the
                # connections while the front tokenizes the remaining chunks.
                for output in engine.poll():
                    results[output.request_id] = output
                    bar.update(1)
                while (
                    len(order) - len(results) > EMBED_BACKLOG and engine.has_unfinished_requests()
                ):
                    for output in engine.step():
                        results[output.request_id] = output
                        bar.update(1)
            while engine.has_unfinished_requests():
                for output in engine.step():
                    results[output.request_id] = output
                    bar.update(1)
            return [results[rid] for rid in order]
        except BaseException:
            for rid in added:
                engine.abort_request(rid)
            raise
        finally:
            bar.close()

    def encode(
        self,
        prompts: PromptType | Sequence[PromptType],
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
    ) -> list[EmbeddingRequestOutput]:
        """vLLM's name for :meth:`embed` (the pooled outputs of an embedding model)."""
        return self.embed(
            prompts,
            pooling_params,
            truncate_prompt_tokens=truncate_prompt_tokens,
            use_tqdm=use_tqdm,
        )

    def _run(
        self, items: list[tuple[Any, SamplingParams | None]], use_tqdm: bool
    ) -> list[RequestOutput]:
        engine = self.llm_engine
        ids = []
        try:
            for prompt, params in items:
                rid = engine.next_request_id()
                engine.add_request(rid, prompt, params)
                ids.append(rid)
            return self._drain(ids, use_tqdm)
        except BaseException:
            for rid in ids:
                engine.abort_request(rid)
            raise

    def _drain(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        results: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="Generating", unit="req", disable=not use_tqdm)
        generated = 0
        try:
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if output.finished:
                        results[output.request_id] = output
                        bar.update(1)
                        generated += sum(len(o.token_ids) for o in output.outputs)
                        elapsed = bar.format_dict.get("elapsed") or 0.0
                        if elapsed:
                            bar.set_postfix_str(f"{generated / elapsed:.1f} output tok/s")
        finally:
            bar.close()
        return [results[rid] for rid in ids]


def _as_prompt_list(prompts: Any) -> list[PromptType]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
        return [prompts]
    return prompts


def _broadcast_params(
    params: SamplingParams | Sequence[SamplingParams] | None, count: int
) -> list[SamplingParams | None]:
    if params is None or isinstance(params, SamplingParams):
        return [params] * count
    params = list(params)
    if len(params) != count:
        raise ValueError(
            f"sampling_params: got {len(params)} SamplingParams for {count} prompts; "
            "pass one, or one per prompt"
        )
    return params
