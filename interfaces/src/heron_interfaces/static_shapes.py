"""How a step is padded to a bucket for a compile-first device (API 1.6).

A platform whose ``Capabilities.static_shapes`` is True runs compiled programs of fixed shapes, so
core pads each step to the smallest token bucket and sequence bucket that hold it (see
:func:`~heron_interfaces.platform.padding_bucket`). One definition of the padding, used by core
and by the conformance suite, so that what a backend is tested on is what core hands it:

* tokens past the real ones have slot ``-1`` (their keys and values are not written) and belong to
  no sequence; their output rows are unspecified (core never reads them);
* sequences past the real ones are empty: ``query_start_loc`` repeats the real token count and
  their ``seq_lens`` are 0;
* ``block_tables`` is widened to a fixed number of columns (the longest sequence the engine
  allows), new entries 0;
* the Python numbers (``num_seqs``, ``max_query_len``, ...) keep describing the real step, so a
  kernel of a static-shape backend must take its shapes from the tensors, never from them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from heron_interfaces.attention import AttentionMetadata

if TYPE_CHECKING:
    import torch


def _pad(tensor: torch.Tensor, length: int, value: int) -> torch.Tensor:
    import torch

    extra = length - tensor.shape[0]
    if extra < 0:
        raise ValueError(f"cannot pad {tensor.shape[0]} entries down to {length}")
    if extra == 0:
        return tensor
    fill = torch.full((extra, *tensor.shape[1:]), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([tensor, fill])


def pad_metadata(
    metadata: AttentionMetadata, *, num_tokens: int, num_seqs: int, max_blocks: int
) -> AttentionMetadata:
    """``metadata`` padded to ``num_tokens`` tokens, ``num_seqs`` sequences and ``max_blocks``
    block-table columns, as the module docstring says."""
    import torch

    qsl = metadata.query_start_loc
    total = (
        int(qsl[-1])
        if metadata.query_start_loc_cpu is None
        else int(metadata.query_start_loc_cpu[-1])
    )
    tables = metadata.block_tables
    if tables.shape[1] > max_blocks:
        raise ValueError(f"block table has {tables.shape[1]} columns, more than {max_blocks}")
    widened = torch.zeros((num_seqs, max_blocks), dtype=tables.dtype, device=tables.device)
    widened[: tables.shape[0], : tables.shape[1]] = tables
    padded_qsl = _pad(qsl, num_seqs + 1, total)
    padded_lens = _pad(metadata.seq_lens, num_seqs, 0)
    return dataclasses.replace(
        metadata,
        query_start_loc=padded_qsl,
        seq_lens=padded_lens,
        block_tables=widened,
        slot_mapping=_pad(metadata.slot_mapping, num_tokens, -1),
        query_start_loc_cpu=padded_qsl.cpu(),
        seq_lens_cpu=padded_lens.cpu(),
    )


__all__ = ["pad_metadata"]
