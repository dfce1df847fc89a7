"""The token embedding, split over the vocabulary under tensor parallelism.

Each rank holds a contiguous range of the vocabulary's rows (the last range padded with zero rows
when the vocabulary does not divide evenly). A lookup gives zeros for ids outside this rank's
range and the group sums the ranks' results, so every rank ends with every token's row; the same
shard, as the tied output projection, gives this rank's columns of the logits.
"""

from __future__ import annotations

import torch
from torch import nn

from heron.distributed.tensor_parallel import SINGLE, TensorParallel
from heron.layers.linear import copy_padded_rows
from heron_interfaces.kernel_ops import KernelOps


class VocabParallelEmbedding(nn.Module):
    """Token embedding table ``[vocab_size, hidden_size]`` (this rank's rows of it)."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        *,
        dtype: torch.dtype,
        ops: KernelOps | None = None,
        tp: TensorParallel = SINGLE,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.tp = tp
        self.row_start, rows = tp.padded_split(vocab_size)
        self.weight = nn.Parameter(torch.empty(rows, hidden_size, dtype=dtype), requires_grad=False)
        self.ops = ops or KernelOps()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return self.ops.embedding(input_ids, self.weight)
        return self.tp.all_reduce(self.ops.embedding_shard(input_ids, self.weight, self.row_start))

    def load_tensor(self, kind: str, loaded: torch.Tensor, name: str) -> None:
        copy_padded_rows(self.weight, loaded, self.row_start, self.vocab_size, name)
        from heron.loader.quantized import QuantizedTensor  # heron.loader imports the models

        if isinstance(loaded, QuantizedTensor) and self.tp.size == 1:
            # Lookups read the table; a tied output projection may keep the blocks (causal_lm).
            self.__dict__["quantized_source"] = loaded.quantized()
