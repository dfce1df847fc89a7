"""A draft model: a second, smaller (or quantized) model proposing k tokens greedily.

It runs on Heron's own runner, on the same platform, with a KV cache and block manager of its own;
the scheduler never sees its blocks. Each request has a *shadow*: the draft's view of the request
(its token ids, the draft KV's blocks and how many positions of it are valid). Proposals are made
for every decoding request at once, lazily, on the first ``propose`` of a step: one catch-up step
(the tokens the target accepted since the last proposal, or the whole prompt the first time) that
also yields the first draft, then k - 1 one-token steps.

Why the draft's KV stays valid: the draft computed KV for the request's tokens plus its own drafts;
the target keeps a prefix of those drafts, so the draft's valid prefix is the common prefix of what
it computed and the request's new tokens; the rest is overwritten by the next catch-up.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from heron.kv.kv_cache_manager import KVCacheManager
from heron.request import Request
from heron.sampling_params import SamplingParams
from heron.sched.output import ScheduledRequest, SchedulerOutput
from heron.spec_decode.config import SpeculativeConfig
from heron.spec_decode.proposer import DraftPlanner

logger = logging.getLogger(__name__)

_GREEDY = SamplingParams(temperature=0.0, max_tokens=None)


@dataclasses.dataclass(slots=True)
class _Shadow:
    request: Request
    """The draft's request: ``prompt_token_ids`` the target's tokens, ``output_token_ids`` the
    drafts of the proposal in progress, its own ``block_ids`` in the draft's KV cache."""
    kv_tokens: list[int] = dataclasses.field(default_factory=list)
    """The tokens whose KV the draft cache holds, in order."""
    proposal: tuple[int, list[int]] | None = None
    """(the target's token count it was made for, the drafts)."""


class DraftModelPlanner(DraftPlanner):
    """Proposes with a draft model's greedy continuation."""

    def __init__(
        self,
        config: SpeculativeConfig,
        max_model_len: int,
        *,
        runner: Any,
        num_blocks: int,
        block_size: int,
        running: Callable[[], list[Request]],
    ) -> None:
        super().__init__(config, max_model_len)
        self.runner = runner
        """The draft model's ``TorchModelRunner`` (its KV cache initialised)."""
        self.kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=False)
        self._running = running
        """The scheduler's running requests: a proposal is made for all the decoding ones."""
        self._shadows: dict[str, _Shadow] = {}

    def propose(self, request: Request, limit: int) -> list[int]:
        shadow = self._shadows.get(request.request_id)
        if shadow is None or shadow.proposal is None or shadow.proposal[0] != request.num_tokens:
            self._propose_all(request)
            shadow = self._shadows.get(request.request_id)
        if shadow is None or shadow.proposal is None:
            return []
        return shadow.proposal[1][:limit]

    # -- one batched proposal --------------------------------------------------------------------
    def _propose_all(self, asking: Request) -> None:
        running = self._running()
        self.forget_finished(running)
        batch: dict[str, tuple[_Shadow, int]] = {}
        for request in [asking, *running]:
            if request.request_id in batch or request.num_tokens - request.num_computed_tokens != 1:
                continue
            k = self.length_limit(request)
            if k <= 0:
                continue
            shadow = self._sync(request)
            if shadow is not None:
                batch[request.request_id] = (shadow, k)
        if not batch:
            return
        # Step 1: catch up on the target's new tokens; its last logits give the first drafts.
        first = [
            ScheduledRequest(
                request=s.request,
                num_new_tokens=s.request.num_tokens - s.request.num_computed_tokens,
            )
            for s, _ in batch.values()
        ]
        self._step(first)
        # Steps 2..k: one token each, for the requests that want more drafts.
        for j in range(1, max(k for _, k in batch.values())):
            items = []
            for shadow, k in batch.values():
                if k > j and self._grow(shadow.request):
                    items.append(ScheduledRequest(request=shadow.request, num_new_tokens=1))
            if not items:
                break
            self._step(items)
        for shadow, _ in batch.values():
            draft = shadow.request
            drafts = list(draft.output_token_ids)
            shadow.kv_tokens = draft.token_ids_range(0, draft.num_computed_tokens)
            shadow.proposal = (draft.num_prompt_tokens, drafts)

    def _sync(self, request: Request) -> _Shadow | None:
        """The request's shadow, its valid KV prefix kept and room made for the catch-up."""
        tokens = request.all_token_ids
        shadow = self._shadows.get(request.request_id)
        if shadow is None:
            draft = Request(
                request_id=request.request_id, prompt_token_ids=tokens, sampling_params=_GREEDY
            )
            shadow = self._shadows[request.request_id] = _Shadow(request=draft)
        draft = shadow.request
        valid = 0
        for have, want in zip(shadow.kv_tokens, tokens):
            if have != want:
                break
            valid += 1
        draft.prompt_token_ids = tokens
        draft.output_token_ids = []
        draft.num_computed_tokens = min(valid, len(tokens) - 1)
        shadow.proposal = None
        self.kv.free_blocks_past(draft, draft.num_computed_tokens)
        if self.kv.allocate_slots(draft, len(tokens) - draft.num_computed_tokens) is None:
            self._drop(request.request_id)  # the draft's cache is full: no drafts this time
            return None
        return shadow

    def _grow(self, draft: Request) -> bool:
        """Room for the KV of the draft's last token; False when the draft cache is full."""
        return self.kv.allocate_slots(draft, 1) is not None

    def _step(self, items: list[ScheduledRequest]) -> None:
        """One draft-model step; each request's greedy token appended to its drafts."""
        result = self.runner.execute(SchedulerOutput(scheduled=items))
        for item in items:
            draft = item.request
            draft.num_computed_tokens += item.num_new_tokens
            draft.output_token_ids.append(result.sampled[draft.request_id])

    def forget_finished(self, running: list[Request]) -> None:
        """Release the shadows of requests no longer running (finished, aborted or preempted);
        done at each proposal, so no engine hook is needed when requests finish."""
        alive = {r.request_id for r in running}
        for request_id in [rid for rid in self._shadows if rid not in alive]:
            self._drop(request_id)

    def _drop(self, request_id: str) -> None:
        shadow = self._shadows.pop(request_id, None)
        if shadow is not None:
            self.kv.free(shadow.request)
            self.runner.release([request_id])


def build_draft_model_planner(config: SpeculativeConfig, core: Any) -> DraftModelPlanner:
    """Load the draft model on the engine's platform as a one-rank worker of its own, check that
    it can draft for the target, and give it a KV cache of as many blocks as the target's."""
    from heron.distributed.worker import Worker, WorkerSpec
    from heron.loader import load_model_source

    args = core.args.model_copy(
        update={
            "model": config.model,
            "quantization": config.quantization,
            "speculative_config": None,
            "tensor_parallel_size": 1,
            "pipeline_parallel_size": 1,
            "data_parallel_size": 1,
            "distributed_executor_backend": None,
        }
    )
    spec = WorkerSpec(
        engine_args=args,
        platform_name=core.backend.name,
        dtype=str(core.dtype).removeprefix("torch."),
        block_size=core.block_size,
        max_model_len=core.max_model_len,
        rank=0,
        world_size=1,
    )
    source = load_model_source(
        config.model, trust_remote_code=args.trust_remote_code, quantization=config.quantization
    )
    check_draft_model(core.source, source, core.max_model_len)
    worker = Worker(spec, platform=core.platform, source=source)
    seconds = worker.load_weights()
    num_blocks = core.kv_plan.num_blocks
    worker.runner.init_kv_cache(num_blocks)
    # Its k - 1 one-token steps are decode steps: replayed from recorded launches where the
    # backend can, as the target's are.
    graphs = (
        "off (--enforce-eager)"
        if core.args.enforce_eager
        else worker.runner.enable_step_graphs(core.max_model_len)
    )
    logger.info(
        "Speculative decoding: draft model %s (%s) loaded in %.1f s, %d KV blocks, up to %d "
        "draft tokens per step, step graphs %s",
        worker.source.name,
        type(worker.runner.model).__name__,
        seconds,
        num_blocks,
        config.num_speculative_tokens,
        graphs,
    )
    return DraftModelPlanner(
        config,
        core.max_model_len,
        runner=worker.runner,
        num_blocks=num_blocks,
        block_size=core.block_size,
        running=lambda: core.scheduler.running,
    )


def check_draft_model(target: Any, draft: Any, max_model_len: int) -> None:
    """A draft must speak the target's tokens and reach its length; ValueError naming what
    differs otherwise."""
    target_vocab = target.tokenizer.get_vocab()
    draft_vocab = draft.tokenizer.get_vocab()
    if target_vocab != draft_vocab:
        differ = sum(draft_vocab.get(t) != i for t, i in target_vocab.items())
        raise ValueError(
            f"speculative_config.model {draft.name!r}: its tokenizer ({len(draft_vocab)} tokens) "
            f"is not the target's ({len(target_vocab)} tokens, {differ} of them differ); a draft "
            "model must share the target's vocabulary"
        )
    limit = getattr(draft.hf_config, "max_position_embeddings", None)
    if limit is not None and limit < max_model_len:
        raise ValueError(
            f"speculative_config.model {draft.name!r} handles {limit} positions, fewer than "
            f"max_model_len ({max_model_len}); lower max_model_len or choose another draft"
        )
