"""Runs one scheduled step through the model on the platform's device.

The runner knows tensors, never policy: it builds inputs from the scheduler's decisions, runs the
model (attention through the platform's backend), and samples. Each stage is a method so a backend
with different needs overrides one step instead of copying the runner.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from heron.distributed.pipeline import SINGLE_STAGE, PipelineStage
from heron.distributed.tensor_parallel import SINGLE, TensorParallel
from heron.models.context import ModelContext
from heron.plugins import resolve_reference
from heron.runner.input_batch import (
    StepInputs,
    build_profile_inputs,
    build_step_inputs,
    build_warmup_inputs,
    pad_step_inputs,
)
from heron.runner.sampler import Sampler, SamplingBatch, SamplingRow, compute_prompt_logprobs
from heron.runner.step_graphs import StepGraphs
from heron.sched.output import RunnerOutput, ScheduledRequest, SchedulerOutput
from heron.spec_decode.sampling import sample_with_drafts
from heron.structured_outputs.manager import apply_grammar_bitmask
from heron_interfaces import AttentionBackend, AttentionMetadata, Platform
from heron_interfaces.kernel_ops import KernelOps
from heron_interfaces.platform import padding_bucket

logger = logging.getLogger(__name__)


class TorchModelRunner:
    def __init__(
        self,
        *,
        platform: type[Platform],
        model_cls: type[torch.nn.Module],
        hf_config: Any,
        dtype: torch.dtype,
        block_size: int,
        tp: TensorParallel = SINGLE,
        pp: PipelineStage = SINGLE_STAGE,
    ) -> None:
        self.platform = platform
        self.tp = tp
        self.pp = pp
        self.device = torch.device(platform.device_type)
        self.dtype = dtype
        self.block_size = block_size
        self.attention_cls: type[AttentionBackend] = resolve_reference(platform.attention_backend())
        self.kernel_ops: KernelOps = resolve_reference(platform.kernel_ops())()
        ctx = ModelContext(
            dtype=dtype,
            device=self.device,
            attention_cls=self.attention_cls,
            block_size=block_size,
            ops=self.kernel_ops,
            tp=tp,
            pp=pp,
        )
        with torch.device(self.device):
            self.model = model_cls(hf_config, ctx)
        self.model.eval()
        self.vocab_size = int(hf_config.vocab_size)
        self.kv_caches: list[torch.Tensor] = []
        self.sampler = Sampler()
        self._generators: dict[str, torch.Generator] = {}
        self._prompt_tail: dict[str, torch.Tensor] = {}
        """Hidden state of the last prompt position of a chunk, which scores the next chunk's first."""
        self.step_graphs: StepGraphs | None = None
        caps = platform.capabilities()
        self.static_shapes = caps.static_shapes
        """API 1.6: every step is padded to a (tokens, sequences) bucket warmed at start-up."""
        self.token_buckets = caps.token_buckets
        self.seq_buckets = caps.seq_buckets
        max_len = int(getattr(hf_config, "max_position_embeddings", None) or 2048)
        self.max_blocks = -(-max_len // block_size)
        """Block-table columns of a padded step: enough for the longest sequence the model allows."""
        self.warmed: set[tuple[int, int]] = set()

    # -- set-up ----------------------------------------------------------------------------------
    def load_weights(self, weights: Any) -> None:
        with torch.no_grad():
            self.model.load_weights(weights)
            prepare = getattr(self.model, "prepare_for_inference", None)
            if prepare is not None:
                prepare()

    @torch.inference_mode()
    def profile_run(self, num_tokens: int, num_seqs: int, max_model_len: int) -> int:
        """Run the largest step the scheduler may build, on a scratch KV cache, and free it.

        Why: where the platform gives no explicit KV budget (GPUs), the KV cache may take only
        what the weights *and* the biggest step's activations leave (vLLM's profile run), and the
        allocator's peak after this call holds both. The step is ``num_tokens`` prompt tokens
        over up to ``num_seqs`` sequences, with the logits and log-softmax of one row per
        sequence, as the sampler makes them. Returns the scratch cache's bytes: they are in that
        peak but are not activations.
        """
        inputs, num_blocks = build_profile_inputs(
            num_tokens, num_seqs, max_model_len, self.block_size, self.device
        )
        if self.static_shapes:
            inputs = self._pad(inputs)
        shape = self.kv_cache_shape(num_blocks)
        scratch = [
            self.attention_cls.allocate_kv_cache(shape, self.dtype, self.device)
            for _ in range(self.model.num_layers)
        ]
        kept, self.kv_caches = self.kv_caches, scratch
        try:
            hidden = self._model_forward(inputs.input_ids, inputs.positions, inputs.metadata)
            if self.pp.is_last:
                last = torch.from_numpy(inputs.query_start_loc[1:] - 1).to(self.device)
                torch.log_softmax(self.model.compute_logits(hidden[last]), dim=-1)
            self.platform.synchronize()
        finally:
            self.kv_caches = kept
        return sum(t.numel() * t.element_size() for t in scratch)

    def kv_cache_shape(self, num_blocks: int) -> tuple[int, ...]:
        return tuple(
            self.attention_cls.kv_cache_shape(
                num_blocks, self.block_size, self.model.num_kv_heads, self.model.head_size
            )
        )

    def kv_bytes_per_block(self) -> int:
        per_layer = math.prod(self.kv_cache_shape(1)) * self.dtype.itemsize
        return per_layer * self.model.num_layers

    def weights_bytes(self) -> int:
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def init_kv_cache(self, num_blocks: int) -> None:
        # Uninitialised: pages the cache never touches cost no resident memory on the host.
        shape = self.kv_cache_shape(num_blocks)
        self.kv_caches = [
            self.attention_cls.allocate_kv_cache(shape, self.dtype, self.device)
            for _ in range(self.model.num_layers)
        ]
        if self.step_graphs is not None:
            self.step_graphs.clear()
        if self.static_shapes:
            self.warm_up()

    def warm_up(self) -> None:
        """Run one step of every padding bucket, so that no request ever waits for a compile.

        Why here: a compile-first device (API 1.6) compiles a program per step shape, and a
        compile takes seconds to minutes; after this, every step the scheduler can build is
        padded to a shape that has already run. The steps write no KV.
        """
        from tqdm.auto import tqdm

        shapes = self.bucket_shapes()
        started = time.monotonic()
        with torch.inference_mode():
            for num_tokens, num_seqs in tqdm(
                shapes, desc=f"Compiling {self.platform.name} step shapes", unit="shape"
            ):
                inputs = build_warmup_inputs(
                    num_tokens, num_seqs, self.max_blocks, self.block_size, self.device
                )
                self._model_forward(inputs.input_ids, inputs.positions, inputs.metadata)
                self.warmed.add((num_tokens, num_seqs))
            self.platform.synchronize()
        logger.info(
            "Compiled %d step shapes (tokens x sequences) for %s in %.1f s",
            len(shapes),
            self.platform.name,
            time.monotonic() - started,
        )

    def bucket_shapes(self) -> list[tuple[int, int]]:
        """Every (token bucket, sequence bucket) a step can be padded to.

        A step of ``t`` tokens has at most ``t`` sequences, so a token bucket pairs with the
        sequence buckets up to the one that holds its own size.
        """
        shapes = []
        for tokens in self.token_buckets:
            for seqs in self.seq_buckets:
                shapes.append((tokens, seqs))
                if seqs >= tokens:
                    break
        return shapes

    def _pad(self, inputs: StepInputs) -> StepInputs:
        num_tokens = int(inputs.input_ids.shape[0])
        num_seqs = int(inputs.metadata.num_seqs)
        shape = (
            padding_bucket(self.token_buckets, num_tokens),
            padding_bucket(self.seq_buckets, num_seqs),
        )
        return pad_step_inputs(inputs, shape[0], shape[1], self.max_blocks)

    def enable_step_graphs(self, max_model_len: int) -> str:
        """Replay decode steps from recorded kernel launches where the platform can; says which."""
        if self.pp.size > 1:
            return "off (pipeline stages: hidden states travel between the kernels)"
        if self.tp.size > 1 and not getattr(self.tp.comm, "records_in_step_graphs", False):
            return (
                f"off ({type(self.tp.comm).__name__}'s all-reduce cannot be recorded between "
                "the kernels)"
            )
        reason = getattr(self.model, "step_graphs_off", None)
        if reason:  # the model runs torch code the recorders must not replay (the fallback)
            return f"off ({reason})"
        probe = self.kernel_ops.capture_graph(1)
        if probe is None or not self.attention_cls.supports_step_graphs:
            return f"off ({self.platform.name} kernels do not record their launches)"
        self.step_graphs = StepGraphs(
            forward=self._model_forward,
            kernel_ops=self.kernel_ops,
            device=self.device,
            block_size=self.block_size,
            max_model_len=max_model_len,
        )
        return "on (each decode batch size recorded on first use)"

    # -- one step --------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        inputs = self.prepare_inputs(out)
        hidden = self.forward(inputs)
        if not self.pp.is_last:  # the hidden state went on to the next stage
            return RunnerOutput()
        return self.sample(out, inputs, hidden)

    def prepare_inputs(self, out: SchedulerOutput) -> StepInputs:
        inputs = build_step_inputs(out, self.block_size, self.device)
        if not self.static_shapes:
            return inputs
        padded = self._pad(inputs)
        shape = (int(padded.input_ids.shape[0]), len(padded.metadata.seq_lens))
        if self.warmed and shape not in self.warmed:
            raise RuntimeError(
                f"step shape {shape} (tokens, sequences) was not compiled at start-up; the "
                f"platform's buckets must cover the engine's step limits"
            )
        return padded

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        if self.step_graphs is not None:
            hidden = self.step_graphs.run(inputs)
            if hidden is not None:
                return hidden
        return self._model_forward(inputs.input_ids, inputs.positions, inputs.metadata)

    def _model_forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata
    ) -> torch.Tensor:
        return self.model(input_ids, positions, self.kv_caches, metadata)

    def sample(
        self, out: SchedulerOutput, inputs: StepInputs, hidden: torch.Tensor
    ) -> RunnerOutput:
        result = RunnerOutput()
        cu = inputs.query_start_loc
        sampling = [i for i, s in enumerate(out.scheduled) if s.samples]
        if any(s.draft_token_ids for s in out.scheduled):
            sample_with_drafts(self, out, cu, hidden, result)  # speculative decoding
        elif sampling:
            rows = [self._sampling_row(out.scheduled[i]) for i in sampling]
            last = torch.from_numpy(cu[1:][sampling] - 1).to(self.device)
            batch = SamplingBatch.build(rows, self.vocab_size, self.device)
            greedy_tokens = getattr(self.model, "greedy_tokens", None)
            if batch.plain_greedy and out.grammar is None and greedy_tokens is not None:
                # No float32 [N, V] logits (nor, under tensor parallelism, their gather).
                for row, token in zip(rows, greedy_tokens(hidden[last]).tolist()):
                    result.sampled[row.request_id] = token
            else:
                logits = self.model.compute_logits(hidden[last])
                if out.grammar is not None:  # structured outputs: one masking call for the batch
                    logits = apply_grammar_bitmask(logits, out.grammar)
                sampled = self.sampler.sample(logits, batch)
                for row, token, logprobs in zip(rows, sampled.token_ids, sampled.logprobs):
                    result.sampled[row.request_id] = token
                    if logprobs is not None:
                        result.logprobs[row.request_id] = logprobs
        for i, s in enumerate(out.scheduled):
            k = s.request.sampling_params.prompt_logprobs
            if k is not None:
                self._prompt_logprobs(s, k, hidden, int(cu[i]), result)
        return result

    def _sampling_row(self, s: ScheduledRequest) -> SamplingRow:
        request = s.request
        params = request.sampling_params
        generator = None
        if params.seed is not None:
            generator = self._generators.get(request.request_id)
            if generator is None:
                generator = torch.Generator(device=self.device).manual_seed(params.seed)
                self._generators[request.request_id] = generator
        return SamplingRow(
            request_id=request.request_id,
            params=params,
            prompt_token_ids=request.prompt_token_ids,
            output_token_ids=request.output_token_ids,
            generator=generator,
            eos_token_ids=request.eos_token_ids,
        )

    def _prompt_logprobs(
        self,
        s: ScheduledRequest,
        k: int,
        hidden: torch.Tensor,
        row_start: int,
        result: RunnerOutput,
    ) -> None:
        """Logprobs of the prompt positions this chunk covers, one entry per position.

        Position ``p`` is scored by the logits at ``p - 1``; for the first position of a later
        chunk that row was computed in the previous step, so its hidden state is kept until then.
        Repeats after a preemption are dropped by the scheduler, which owns that state.
        """
        request = s.request
        rid = request.request_id
        start = s.start
        end = min(start + s.num_new_tokens, request.num_prompt_tokens)
        if start >= end:
            return
        first = max(start, 1)
        # This step's rows score positions start+1 .. end-1.
        rows = hidden[row_start : row_start + end - 1 - start]
        if start > 0:
            previous = self._prompt_tail.pop(rid, None)
            if previous is None:
                raise RuntimeError(
                    f"request {rid}: the hidden state before position {start} is lost"
                )
            rows = torch.cat([previous.unsqueeze(0), rows])
        entries: list = [None] if start == 0 else []
        if end > first:
            targets = torch.tensor(request.prompt_token_ids[first:end], device=self.device)
            entries.extend(compute_prompt_logprobs(self.model.compute_logits(rows), targets, k))
        if end < request.num_prompt_tokens:
            self._prompt_tail[rid] = hidden[row_start + end - 1 - start].clone()
        result.prompt_logprobs[rid] = entries

    def release(self, request_ids: list[str]) -> None:
        """Forget per-request state of finished requests."""
        for rid in request_ids:
            self._generators.pop(rid, None)
            self._prompt_tail.pop(rid, None)
