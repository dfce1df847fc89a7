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
from heron_interfaces.kernel_ops import KernelOps


def pool(
    hidden: torch.Tensor, query_start_loc: torch.Tensor, pooling_type: str, ops: KernelOps
) -> torch.Tensor:
    """``[num_seqs, hidden]`` float32 pooled rows of ``hidden`` ``[num_tokens, hidden]``.

    Sequence ``i`` owns rows ``query_start_loc[i]:query_start_loc[i+1]`` and they must be its
    whole prompt (the pooling scheduler computes a prompt in one step). The mean is the backend's
    ``KernelOps.mean_pool`` (heron_interfaces 1.15; the reference is one segment sum in float32).
    """
    starts = query_start_loc[:-1].long()
    ends = query_start_loc[1:].long()
    if pooling_type == "CLS":
        return hidden[starts].float()
    if pooling_type == "LAST":
        return hidden[ends - 1].float()
    if pooling_type == "MEAN":
        return ops.mean_pool(hidden, query_start_loc)
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
