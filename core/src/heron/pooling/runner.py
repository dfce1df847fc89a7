"""The pooling runner: the generation runner's inputs and forward, pooled instead of sampled."""

from __future__ import annotations

from typing import Any

import torch

from heron.pooling.config import PoolerConfig
from heron.pooling.pooler import pool
from heron.runner.input_batch import StepInputs, build_profile_inputs
from heron.runner.model_runner import TorchModelRunner
from heron.sched.output import RunnerOutput, SchedulerOutput


class PoolingModelRunner(TorchModelRunner):
    """Overrides only what differs: :meth:`sample` pools, and nothing computes logits."""

    def __init__(self, *, pooler: PoolerConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pooler = pooler

    def sample(
        self, out: SchedulerOutput, inputs: StepInputs, hidden: torch.Tensor
    ) -> RunnerOutput:
        """One raw (unnormalised) pooled vector per scheduled request, on the host.

        Normalisation and Matryoshka truncation are per request (``dimensions``), so they are
        applied where the request's options are known (:func:`heron.pooling.pooler.finish_embedding`).
        """
        for s in out.scheduled:
            if s.start != 0 or not s.samples:
                raise RuntimeError(
                    f"request {s.request.request_id!r}: the pooling runner needs the whole "
                    f"prompt in one step, got tokens {s.start}..{s.start + s.num_new_tokens} of "
                    f"{s.request.num_tokens}"
                )
        pooled = pool(hidden, _bounds(inputs), self.pooler.pooling_type, self.kernel_ops).cpu()
        result = RunnerOutput()
        for i, s in enumerate(out.scheduled):
            result.pooled[s.request.request_id] = pooled[i]
        return result

    def enable_step_graphs(self, max_model_len: int) -> str:
        return "off (pooling runner: it has no decode steps to record)"

    @torch.inference_mode()
    def profile_run(self, num_tokens: int, num_seqs: int, max_model_len: int) -> int:
        """The largest step's forward on a scratch cache (see the base class); no logits."""
        inputs, num_blocks = build_profile_inputs(
            num_tokens, num_seqs, max_model_len, self.block_size, self.device
        )
        shape = self.kv_cache_shape(num_blocks)
        scratch = [
            self.attention_cls.allocate_kv_cache(shape, self.dtype, self.device)
            for _ in range(self.model.num_layers)
        ]
        kept, self.kv_caches = self.kv_caches, scratch
        try:
            hidden = self._model_forward(inputs.input_ids, inputs.positions, inputs.metadata)
            pool(hidden, _bounds(inputs), "MEAN", self.kernel_ops)
            self.platform.synchronize()
        finally:
            self.kv_caches = kept
        return sum(t.numel() * t.element_size() for t in scratch)


def _bounds(inputs: StepInputs) -> torch.Tensor:
    """The step's int32 ``query_start_loc`` on its device, real sequences only: the metadata's
    own (a padded step's extra sequences are empty and come after them), no host copy."""
    return inputs.metadata.query_start_loc[: len(inputs.query_start_loc)]


def runner_class(args: Any) -> tuple[type[TorchModelRunner], dict[str, Any]]:
    """The runner class a worker builds for these (resolved) engine arguments, and its extra
    keyword arguments: the pooling runner once the engine has resolved ``runner`` to pooling."""
    if args.runner == "pooling":
        if not args.pooler_config:
            raise ValueError("runner 'pooling' reached a worker without its pooler_config")
        return PoolingModelRunner, {"pooler": PoolerConfig(**args.pooler_config)}
    return TorchModelRunner, {}
