"""Bidirectional attention of a pooling step's whole prompts, without the KV cache.

An encoder prompt is computed whole in one step and pooled at once, so nothing ever reads its
keys and values again: writing them to the paged KV cache is pure cost. Such a step is an
:class:`EncoderStep`, and each encoder layer attends it in the first way that works:

1. the backend's own kernel, ``KernelOps.encoder_attention`` (heron_interfaces 1.13; heron-cpu's
   C++ kernel reads q/k/v in place from the fused projection, no padding);
2. on a backend whose non-causal mode is torch's SDPA over the step's rows anyway (heron-cpu,
   for a dtype its kernel declines), the same SDPA computed here from the fused projection,
   planned into padded groups once per step instead of once per layer;
3. otherwise the backend's non-causal attention layer, as for any model.

The plan sorts the step's prompts by length and cuts them into groups whose padding stays small.
A group of equally long prompts that sit next to each other in the flattened step (what
``LLM.embed`` produces: it submits inputs sorted by length) is a view of the projection, with no
gather, no mask and no scatter; any other group gathers its rows into a padded batch with a
key-padding mask.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MAX_PADDING = 0.125
"""A group grows while its padded tokens stay within this fraction of its real tokens."""


@dataclass(frozen=True, slots=True)
class PromptGroup:
    """Prompts attended in one SDPA call, padded to ``length``.

    ``rows`` is ``None`` for a contiguous run of equally long prompts starting at row ``start``;
    otherwise ``[batch, length]`` row indices (padding reads row 0), with ``valid`` marking the
    real ones and ``mask`` the keys each query may see.
    """

    start: int
    batch: int
    length: int
    rows: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class EncoderStep:
    """What a pooling step's encoder layers share: the prompts' bounds, and (made on first use,
    only when the backend's kernel declines) the padded SDPA plan."""

    def __init__(self, starts: list[int], query_start_loc: torch.Tensor, sdpa: bool) -> None:
        self.starts = starts
        self.num_tokens = starts[-1]
        """Rows in prompts; a step padded past them (``heron.models.bert.ROW_ALIGN``) has more."""
        self.query_start_loc = query_start_loc
        """int32 ``[num_prompts + 1]`` on the step's device, as ``KernelOps.encoder_attention``
        takes it."""
        self.sdpa = sdpa
        """Whether the encoder may attend through torch's SDPA itself (step 2 above)."""

    @functools.cached_property
    def groups(self) -> list[PromptGroup]:
        return plan_groups(self.starts, self.query_start_loc.device)


def plan_groups(query_start_loc: list[int], device: torch.device) -> list[PromptGroup]:
    """The step's prompts (``query_start_loc``, each a whole prompt) as padded SDPA groups."""
    lengths = [b - a for a, b in itertools.pairwise(query_start_loc)]
    order = sorted((i for i in range(len(lengths)) if lengths[i] > 0), key=lengths.__getitem__)
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups:
            members = groups[-1]
            padded = lengths[i] * (len(members) + 1)
            if padded - (real + lengths[i]) <= MAX_PADDING * (real + lengths[i]):
                members.append(i)
                real += lengths[i]
                continue
        groups.append([i])
        real = lengths[i]
    return [_group(members, query_start_loc, lengths, device) for members in groups]


def _group(
    members: list[int], starts: list[int], lengths: list[int], device: torch.device
) -> PromptGroup:
    longest = max(lengths[i] for i in members)
    members = sorted(members)
    contiguous = all(lengths[i] == longest for i in members) and members == list(
        range(members[0], members[-1] + 1)
    )
    if contiguous:
        return PromptGroup(start=starts[members[0]], batch=len(members), length=longest)
    positions = torch.arange(longest, device=device)
    first = torch.tensor([starts[i] for i in members], device=device).unsqueeze(1)
    size = torch.tensor([lengths[i] for i in members], device=device).unsqueeze(1)
    valid = positions.unsqueeze(0) < size
    rows = torch.where(valid, first + positions, 0)
    return PromptGroup(
        start=0,
        batch=len(members),
        length=longest,
        rows=rows,
        valid=valid,
        mask=valid[:, None, None, :],
    )


def attend(
    qkv: torch.Tensor,
    groups: list[PromptGroup],
    num_heads: int,
    head_size: int,
    scale: float,
    out: torch.Tensor,
) -> torch.Tensor:
    """``out`` ``[num_tokens, num_heads * head_size]``: every prompt attending to all of itself.

    ``qkv`` is the fused projection ``[num_tokens, 3 * num_heads * head_size]`` (q, then k, then
    v, heads inside each), as the encoder's ``qkv_proj`` computes it.
    """
    width = num_heads * head_size
    for g in groups:
        if g.rows is None:
            part = qkv[g.start : g.start + g.batch * g.length]
        else:
            part = qkv[g.rows.flatten()]
        heads = part.view(g.batch, g.length, 3, num_heads, head_size)
        q, k, v = (heads[:, :, j].transpose(1, 2) for j in range(3))
        result = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask, scale=scale)
        result = result.transpose(1, 2)  # [batch, length, heads, head_size]
        if g.rows is None:
            out[g.start : g.start + g.batch * g.length].view(
                g.batch, g.length, num_heads, head_size
            ).copy_(result)
        else:
            out[g.rows[g.valid]] = result[g.valid].reshape(-1, width).to(out.dtype)
    return out
