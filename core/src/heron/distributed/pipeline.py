"""The pipeline stage a model is built for: which consecutive layers this rank owns, and how
hidden states travel to the next stage.

Stage ``s`` of ``S`` holds layers ``[first_layer, end_layer)``; the first stage also holds the
token embedding, the last the final norm and the logits (with tied embeddings it loads the
embedding table for that). A stage sends its hidden state and residual, stacked into one tensor,
to the rank of the same tensor-parallel position in the next stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from heron.distributed.tensor_parallel import ShardingError

if TYPE_CHECKING:
    import torch

    from heron_interfaces import Communicator


@dataclass(frozen=True, slots=True)
class PipelineStage:
    rank: int = 0
    size: int = 1
    tp_size: int = 1
    """Ranks per stage: the next stage's peer is ``tp_size`` global ranks further on."""
    global_rank: int = 0
    comm: Communicator | None = None
    """A communicator over every rank (point-to-point); ``None`` only with one stage."""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"pipeline stage {self.rank} is outside [0, {self.size})")
        if self.size > 1 and self.comm is None:
            raise ValueError("a pipeline of several stages needs a communicator")

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    def layer_range(self, num_layers: int) -> tuple[int, int]:
        """``[first, end)`` of this stage's layers."""
        return stage_layer_range(num_layers, self.rank, self.size)

    def send_forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> None:
        import torch

        assert self.comm is not None  # __post_init__: several stages have one
        self.comm.send(torch.stack([hidden, residual]), self.global_rank + self.tp_size)

    def recv_forward(
        self, num_tokens: int, hidden_size: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.comm is not None
        both = self.comm.recv((2, num_tokens, hidden_size), dtype, self.global_rank - self.tp_size)
        return both[0], both[1]


def stage_layer_range(num_layers: int, stage: int, num_stages: int) -> tuple[int, int]:
    """``[first, end)`` of stage ``stage``'s layers: equal shares, earlier stages take the rest."""
    if num_layers < num_stages:
        raise ShardingError(
            f"pipeline_parallel_size ({num_stages}) is larger than the number of layers "
            f"({num_layers}); every stage needs at least one"
        )
    base, extra = divmod(num_layers, num_stages)
    first = stage * base + min(stage, extra)
    return first, first + base + (1 if stage < extra else 0)


SINGLE_STAGE = PipelineStage()
