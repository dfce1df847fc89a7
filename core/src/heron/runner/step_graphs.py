"""Decode steps replayed from recorded kernel launches: the host's counterpart of CUDA graphs.

A single-stream decode step of a small model makes ~300 kernel calls, and the Python around
each (module calls, argument checks, allocation) costs more than a quarter of the step. Where
the platform's kernels can record their launches (``KernelOps.capture_graph``, API 1.4), the
first decode step of each batch size runs with its inputs in fixed buffers while the launches are
recorded; later decode steps of that size copy their inputs into the same buffers and replay the
launches. Nothing is compiled, and a size is recorded on its first use, so start-up pays nothing.
Batch sizes are padded up to :data:`CAPTURE_SIZES` (as vLLM pads to its CUDA-graph sizes): each
graph keeps its intermediate tensors (~0.6 MB per sequence for SmolLM2, 40 MB at 64), so a graph
for every size would hold ~1.3 GB; padded rows have no KV slot (``-1``) and a one-token context.

Recording runs under :class:`_CaptureGuard`, which keeps every tensor the pass allocates (the
recorded addresses must stay valid) and refuses the graph if any torch operation other than an
allocation or a view ran: such work happens outside the recorded kernels and would be silently
skipped on replay. A refused size runs eagerly from then on; the recording pass itself computed
the step normally either way. A recorder that captures all device work (``records_torch_ops``:
CUDA graphs on the GPU backends) needs no guard: its graph holds the torch ops too, and the
device runtime keeps the captured allocations alive in the graph's memory pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from heron.runner.input_batch import StepInputs
from heron_interfaces import AttentionMetadata
from heron_interfaces.kernel_ops import KernelOps, StepGraph

logger = logging.getLogger(__name__)

ModelForward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor]
"""``(input_ids, positions, metadata) -> hidden`` with the runner's KV caches bound."""

CAPTURE_SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64)
"""Decode batch sizes that get a graph; a step of another size up to the last runs in the next
larger one. Larger steps run eagerly (their Python is a smaller share of the step)."""

_aten = torch.ops.aten
_ALLOCATIONS = frozenset(
    {
        _aten.empty.memory_format,
        _aten.empty_strided.default,
        _aten.new_empty.default,
        _aten.new_empty_strided.default,
        _aten.empty_like.default,
    }
)


def _storages(tree: Any) -> set[int]:
    return {
        t.untyped_storage().data_ptr() for t in tree_leaves(tree) if isinstance(t, torch.Tensor)
    }


class _CaptureGuard(TorchDispatchMode):
    """Sees every torch operation of the recorded pass (the backend's kernels are not torch ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[torch.Tensor] = []
        self.unrecorded: list[str] = []

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ to keep dynamo out of it, and that wrapper
        # imports torch._dynamo on its first call: ~1 s inside the server's first request (the
        # first decode step records its graph). Nothing is compiled under this guard.
        return False

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in _ALLOCATIONS:
            self.kept.append(out)
            return out
        outputs = _storages(out)
        # A view reads nothing at run time; anything else (a copy, arithmetic, a mutation, a
        # Python number read back) is work that a replay would not redo.
        if func._schema.is_mutable or not outputs or not outputs <= _storages((args, kwargs)):
            self.unrecorded.append(str(func))
        return out


@dataclass(slots=True)
class _Recorded:
    """One batch size's graph, the fixed buffers its launches read and write, and its tensors."""

    graph: StepGraph
    input_ids: torch.Tensor
    positions: torch.Tensor
    metadata: AttentionMetadata
    hidden: torch.Tensor
    kept: list[torch.Tensor]

    def load(self, inputs: StepInputs) -> bool:
        """Copy a step's inputs into the buffers; False if its block table is wider than them.

        Rows past the step's sequences are padding: no KV slot and a one-token context (their
        ids, positions and block-table rows are whatever an earlier step left, all valid).
        """
        md, fixed = inputs.metadata, self.metadata
        n, width = md.num_seqs, md.block_tables.shape[1]
        if width > fixed.block_tables.shape[1]:
            return False
        self.input_ids[:n].copy_(inputs.input_ids)
        self.positions[:n].copy_(inputs.positions)
        fixed.seq_lens[:n].copy_(md.seq_lens)
        fixed.slot_mapping[:n].copy_(md.slot_mapping)
        fixed.block_tables[:n, :width].copy_(md.block_tables)
        if n < fixed.num_seqs:
            fixed.seq_lens[n:].fill_(1)
            fixed.slot_mapping[n:].fill_(-1)
        if fixed.seq_lens_cpu is not None and fixed.seq_lens_cpu is not fixed.seq_lens:
            fixed.seq_lens_cpu.copy_(fixed.seq_lens)
        return True


class StepGraphs:
    """Records and replays pure decode steps (one new token per sequence), per batch size."""

    def __init__(
        self,
        *,
        forward: ModelForward,
        kernel_ops: KernelOps,
        device: torch.device,
        block_size: int,
        max_model_len: int,
    ) -> None:
        self._forward = forward
        self._ops = kernel_ops
        self._device = device
        self._block_size = block_size
        self._max_blocks = -(-max_model_len // block_size)
        self._graphs: dict[tuple[int, int], _Recorded] = {}
        self._refused: set[tuple[int, int]] = set()
        self._told_refusal = False
        self.replays = 0

    @property
    def recorded_sizes(self) -> list[int]:
        return sorted(n for n, _ in self._graphs)

    def clear(self) -> None:
        """Forget every graph (their addresses point into KV caches that are being replaced)."""
        self._graphs.clear()
        self._refused.clear()

    def run(self, inputs: StepInputs) -> torch.Tensor | None:
        """The step's final hidden states from a graph, or None: the caller runs it eagerly."""
        md = inputs.metadata
        n = md.num_seqs
        if n == 0 or md.num_prefill_tokens or md.num_decode_tokens != n:
            return None
        size = next((size for size in CAPTURE_SIZES if size >= n), None)
        if size is None:
            return None
        # The kernels were recorded with a thread count; another one needs its own graph.
        key = (size, torch.get_num_threads())
        recorded = self._graphs.get(key)
        if recorded is not None:
            if not recorded.load(inputs):
                return None
            recorded.graph.replay()
            self.replays += 1
            return recorded.hidden[:n]
        if key in self._refused:
            return None
        return self._record(key, inputs)

    def _record(self, key: tuple[int, int], inputs: StepInputs) -> torch.Tensor | None:
        n = key[0]  # the padded size
        graph = self._ops.capture_graph(n)
        if graph is None:
            self._refused.add(key)
            return None
        recorded = self._buffers(graph, n)
        if not recorded.load(inputs):
            return None
        if getattr(graph, "records_torch_ops", False):
            try:
                with graph:
                    hidden = self._forward(
                        recorded.input_ids, recorded.positions, recorded.metadata
                    )
            except Exception as exc:  # a capture the device refused must not fail the request
                self._refused.add(key)
                logger.warning(
                    "%d-sequence decode steps run eagerly: capturing them failed (%s: %s)",
                    n,
                    type(exc).__name__,
                    exc,
                )
                return None
            self._keep(key, recorded, hidden, [], "Captured a device graph")
            return hidden[: inputs.metadata.num_seqs]
        guard = _CaptureGuard()
        with guard, graph:
            hidden = self._forward(recorded.input_ids, recorded.positions, recorded.metadata)
        if guard.unrecorded:
            self._refused.add(key)
            # Once at INFO: the same ops are usually refused at every size (e.g. float32 matmuls).
            logger.log(
                logging.DEBUG if self._told_refusal else logging.INFO,
                "%d-sequence decode steps run eagerly: %s ran outside the backend's kernels",
                n,
                ", ".join(sorted(set(guard.unrecorded))),
            )
            self._told_refusal = True
        else:
            self._keep(key, recorded, hidden, guard.kept, "Recorded a step graph")
        return hidden[: inputs.metadata.num_seqs]

    def _keep(
        self,
        key: tuple[int, int],
        recorded: _Recorded,
        hidden: torch.Tensor,
        kept: list[torch.Tensor],
        what: str,
    ) -> None:
        recorded.hidden, recorded.kept = hidden, kept
        self._graphs[key] = recorded
        logger.info("%s for %d-sequence decode steps", what, key[0])

    def _buffers(self, graph: StepGraph, n: int) -> _Recorded:
        def zeros(*shape: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=self._device)

        query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=self._device)
        seq_lens = zeros(n, dtype=torch.int32)
        on_host = self._device.type == "cpu"
        metadata = AttentionMetadata(
            query_start_loc=query_start_loc,
            seq_lens=seq_lens,
            block_tables=zeros(n, self._max_blocks, dtype=torch.int32),
            slot_mapping=zeros(n, dtype=torch.int64),
            max_query_len=1,
            max_seq_len=self._max_blocks * self._block_size,  # a bound, as the interface says
            num_prefill_tokens=0,
            num_decode_tokens=n,
            num_seqs=n,
            query_start_loc_cpu=query_start_loc if on_host else query_start_loc.cpu(),
            seq_lens_cpu=seq_lens if on_host else torch.zeros(n, dtype=torch.int32),
        )
        return _Recorded(
            graph=graph,
            input_ids=zeros(n, dtype=torch.int64),
            positions=zeros(n, dtype=torch.int64),
            metadata=metadata,
            hidden=torch.empty(0),
            kept=[],
        )


__all__ = ["StepGraphs"]
