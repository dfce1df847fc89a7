"""Turn a SchedulerOutput into the flat tensors of one step (token ids, positions, attention metadata).

Done with numpy on whole arrays rather than per-token Python loops: the per-step host work is on the
critical path of every decode step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from heron.sched.output import SchedulerOutput
from heron_interfaces import AttentionMetadata
from heron_interfaces.static_shapes import pad_metadata


@dataclass(slots=True)
class StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    metadata: AttentionMetadata
    query_start_loc: np.ndarray
    """Host copy of the cumulative query lengths (num_seqs + 1)."""


def build_step_inputs(out: SchedulerOutput, block_size: int, device: torch.device) -> StepInputs:
    scheduled = out.scheduled
    num_seqs = len(scheduled)
    q_lens = np.fromiter((s.num_new_tokens for s in scheduled), dtype=np.int64, count=num_seqs)
    starts = np.fromiter((s.start for s in scheduled), dtype=np.int64, count=num_seqs)

    token_ids: list[int] = []
    for s in scheduled:
        if (
            s.num_new_tokens == 1
            and s.request.output_token_ids
            and s.start == s.request.num_tokens - 1
        ):
            token_ids.append(s.request.output_token_ids[-1])
        else:
            known = s.num_new_tokens - len(s.draft_token_ids)
            token_ids.extend(s.request.token_ids_range(s.start, s.start + known))
            token_ids.extend(s.draft_token_ids)  # speculative decoding: verified this step

    longest = int((starts + q_lens).max()) if num_seqs else 0
    max_blocks = max(1, -(-longest // block_size))
    block_table = np.zeros((num_seqs, max_blocks), dtype=np.int32)
    for i, s in enumerate(scheduled):
        ids = s.request.block_ids[:max_blocks]
        block_table[i, : len(ids)] = ids
    # Through numpy: torch.tensor() of a 2,048-int list took 109 us here, numpy 32.
    input_ids = torch.from_numpy(np.array(token_ids, dtype=np.int64)).to(device)
    return _assemble(q_lens, starts, block_table, input_ids, block_size, device)


def _assemble(
    q_lens: np.ndarray,
    starts: np.ndarray,
    block_table: np.ndarray,
    input_ids: torch.Tensor,
    block_size: int,
    device: torch.device,
) -> StepInputs:
    """Positions, slots and attention metadata of a step from per-sequence arrays.

    Sequence ``i`` computes ``q_lens[i]`` tokens from position ``starts[i]`` on, over the blocks
    of ``block_table[i]``.
    """
    num_seqs = len(q_lens)
    cu = np.zeros(num_seqs + 1, dtype=np.int64)
    np.cumsum(q_lens, out=cu[1:])
    total = int(cu[-1])
    positions = np.arange(total, dtype=np.int64) - np.repeat(cu[:-1] - starts, q_lens)
    seq_lens = starts + q_lens
    rows = np.repeat(np.arange(num_seqs), q_lens)
    slots = block_table[rows, positions // block_size].astype(np.int64) * block_size + (
        positions % block_size
    )
    num_decode_tokens = int(q_lens[q_lens == 1].sum())

    qsl = torch.from_numpy(cu.astype(np.int32))
    lens = torch.from_numpy(seq_lens.astype(np.int32))
    metadata = AttentionMetadata(
        query_start_loc=qsl.to(device),
        seq_lens=lens.to(device),
        block_tables=torch.from_numpy(block_table).to(device),
        slot_mapping=torch.from_numpy(slots).to(device),
        max_query_len=int(q_lens.max()) if num_seqs else 0,
        max_seq_len=int(seq_lens.max()) if num_seqs else 0,
        num_prefill_tokens=total - num_decode_tokens,
        num_decode_tokens=num_decode_tokens,
        num_seqs=num_seqs,
        query_start_loc_cpu=qsl,
        seq_lens_cpu=lens,
    )
    return StepInputs(
        input_ids=input_ids,
        positions=torch.from_numpy(positions).to(device),
        metadata=metadata,
        query_start_loc=cu,
    )


def build_profile_inputs(
    num_tokens: int, num_seqs: int, max_model_len: int, block_size: int, device: torch.device
) -> tuple[StepInputs, int]:
    """The largest prefill step the scheduler may build, over a scratch block range.

    ``num_tokens`` prompt tokens split as evenly as possible over ``num_seqs`` sequences (more
    where one would exceed ``max_model_len``), each on its own consecutive blocks starting at 0.
    Returns the inputs and the number of KV blocks they address.
    """
    num_tokens = max(1, num_tokens)
    count = max(1, min(num_seqs, num_tokens), -(-num_tokens // max_model_len))
    lens = np.full(count, num_tokens // count, dtype=np.int64)
    lens[: num_tokens % count] += 1
    blocks = -(-lens // block_size)
    first_block = np.zeros(count, dtype=np.int64)
    np.cumsum(blocks[:-1], out=first_block[1:])
    width = int(blocks.max())
    # Columns past a sequence's own blocks point at its neighbours' (valid, never read).
    block_table = (first_block[:, None] + np.arange(width)[None, :]).astype(np.int32)
    num_blocks = int(blocks.sum()) + width
    input_ids = torch.zeros(num_tokens, dtype=torch.long, device=device)
    starts = np.zeros(count, dtype=np.int64)
    return _assemble(lens, starts, block_table, input_ids, block_size, device), num_blocks


def pad_step_inputs(
    inputs: StepInputs, num_tokens: int, num_seqs: int, max_blocks: int
) -> StepInputs:
    """``inputs`` padded to a bucket for a compile-first platform (API 1.6).

    Padding tokens have id 0 at position 0 and write no KV (slot -1); padding sequences are
    empty (see :mod:`heron_interfaces.static_shapes`). ``query_start_loc`` (the host copy the
    sampler reads) keeps the real sequences only, so padded rows are never sampled.
    """

    def pad(t: torch.Tensor) -> torch.Tensor:
        extra = num_tokens - t.shape[0]
        return torch.cat([t, t.new_zeros(extra)]) if extra else t

    return StepInputs(
        input_ids=pad(inputs.input_ids),
        positions=pad(inputs.positions),
        metadata=pad_metadata(
            inputs.metadata, num_tokens=num_tokens, num_seqs=num_seqs, max_blocks=max_blocks
        ),
        query_start_loc=inputs.query_start_loc,
    )


def build_warmup_inputs(
    num_tokens: int, num_seqs: int, max_blocks: int, block_size: int, device: torch.device
) -> StepInputs:
    """A step of exactly ``num_tokens`` tokens over ``num_seqs`` sequences that writes no KV.

    Its shapes are those of a real step padded to these buckets, so running it compiles what such
    a step needs; every slot is -1 and every block id 0, so the live cache is left untouched.
    """
    count = max(1, min(num_seqs, num_tokens))
    lens = np.full(count, num_tokens // count, dtype=np.int64)
    lens[: num_tokens % count] += 1
    lens = np.minimum(lens, max_blocks * block_size)
    table = np.zeros((count, 1), dtype=np.int32)
    inputs = _assemble(
        lens,
        np.zeros(count, dtype=np.int64),
        table.repeat(max(1, -(-int(lens.max()) // block_size)), axis=1),
        torch.zeros(int(lens.sum()), dtype=torch.long, device=device),
        block_size,
        device,
    )
    inputs.metadata.slot_mapping.fill_(-1)
    return pad_step_inputs(inputs, num_tokens, num_seqs, max_blocks)
