"""Pool a step's flattened hidden states into one vector per sequence, and finish them.

Pooling runs on the device for the whole step at once (one segment sum, one gather), not per
sequence in Python; what is left per request (Matryoshka truncation, normalisation) is a few
hundred floats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from heron.pooling.config import PoolerConfig
from heron.pooling.params import PoolingParams


def pool(hidden: torch.Tensor, query_start_loc: torch.Tensor, pooling_type: str) -> torch.Tensor:
    """``[num_seqs, hidden]`` float32 pooled rows of ``hidden`` ``[num_tokens, hidden]``.

    Sequence ``i`` owns rows ``query_start_loc[i]:query_start_loc[i+1]`` and they must be its
    whole prompt (the pooling scheduler computes a prompt in one step).
    """
    starts = query_start_loc[:-1].long()
    ends = query_start_loc[1:].long()
    if pooling_type == "CLS":
        return hidden[starts].float()
    if pooling_type == "LAST":
        return hidden[ends - 1].float()
    if pooling_type == "MEAN":
        lengths = ends - starts
        segment = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
        sums = torch.zeros(
            len(lengths), hidden.shape[-1], dtype=torch.float32, device=hidden.device
        )
        sums.index_add_(0, segment, hidden[: int(ends[-1])].float())
        return sums / lengths.unsqueeze(1).to(torch.float32)
    raise ValueError(f"pooling_type must be one of MEAN, CLS, LAST; got {pooling_type!r}")


def finish_embedding(
    pooled: torch.Tensor, config: PoolerConfig, params: PoolingParams
) -> torch.Tensor:
    """Truncate to ``params.dimensions`` (Matryoshka), then L2-normalise if asked (vLLM's order:
    a truncated Matryoshka vector is renormalised, so it is still a unit vector)."""
    if params.dimensions is not None:
        pooled = pooled[..., : params.dimensions]
    normalize = config.normalize if params.normalize is None else params.normalize
    if normalize:
        pooled = F.normalize(pooled, p=2, dim=-1)
    return pooled
