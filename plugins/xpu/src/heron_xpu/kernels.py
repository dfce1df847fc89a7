"""The Triton kernels of heron-xpu: one source for Intel GPUs, any GPU Triton compiles for, and
Triton's CPU interpreter.

Conventions shared by every kernel, so that the same source is right on a device and in the
interpreter:

* Values are loaded in their storage dtype and widened to float32 before any arithmetic. The
  interpreter stores bfloat16 as raw 16-bit integers, so arithmetic on unwidened bfloat16 would be
  arithmetic on bit patterns there; on a device the widening is what the hardware does anyway.
* Elementwise kernels round to the storage dtype exactly where the plain-torch reference
  (``heron_interfaces.kernel_ops.KernelOps``) rounds, so half-precision results are bit-identical
  to it apart from rare one-ulp differences of summation order.
* ``tl.dot`` takes float16/bfloat16 operands on a device (its matrix engines multiply those) and
  accumulates in float32. float32 operands use ``input_precision="ieee"`` so that no device
  silently drops to TF32.
* ``EMULATE_BF16`` is set by the host only under the interpreter, whose bfloat16 support is raw
  16-bit integers: it multiplies bfloat16 ``tl.dot`` operands as bit patterns and converts float32
  to bfloat16 by truncation. With the flag, dot operands are widened to float32 (exact: the
  products of two bfloat16 values are exact in float32, as in a device's matrix engine) and
  :func:`round_to` rounds to nearest even in integer arithmetic, as a device's conversion does.
  On a device the flag is off and both are plain Triton operations.

Nothing here knows about torch: the wrappers in :mod:`heron_xpu.ops` check tensors and launch.
Kernel parameters carry no Python type hints on purpose: Triton reads a parameter's annotation as
part of the kernel's signature (``tl.constexpr``, pointer and integer types), so only the
compile-time constants are annotated.
Triton chooses between compiling and interpreting when it decorates a kernel, so the interpreter
switch is applied again right before the decorations: a process that imported ``heron_xpu`` before
``HERON_XPU_INTERPRET`` was set still interprets, as long as this module was not imported yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from heron_xpu.mode import enable_interpreter_if_requested

enable_interpreter_if_requested()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _decorated() -> None:
    """Decorated only to ask Triton which mode it decorates in."""


INTERPRETING: bool = type(_decorated).__name__ == "InterpretedFunction"
"""True when Triton interprets these kernels (``TRITON_INTERPRET=1``) on CPU tensors."""


def _helper(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a helper the kernels call: ``@triton.jit`` when compiling, plain Python when
    interpreting.

    The interpreter runs a kernel as Python on patched ``triton.language`` objects; calling an
    interpreted ``@triton.jit`` function from it re-patches the whole language on every call
    (about 1.5 ms), which made these small helpers most of an interpreted step's time. As plain
    functions they run the same statements on the already patched objects.
    """
    return fn if INTERPRETING else triton.jit(fn)


@_helper
def round_to(x, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """float32 ``x`` rounded to nearest even in ``dtype`` (see ``EMULATE_BF16`` above)."""
    if EMULATE_BF16 and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@_helper
def dot_operand(x, EMULATE_BF16: tl.constexpr):
    """``x`` as a ``tl.dot`` operand: itself, or widened where the interpreter needs it."""
    if EMULATE_BF16 and x.dtype == tl.bfloat16:
        x = x.to(tl.float32)
    return x


@triton.jit
def write_kv_kernel(
    key_ptr,
    value_ptr,
    key_cache_ptr,
    value_cache_ptr,
    slot_mapping_ptr,
    num_tokens,
    num_slots,
    stride_key_token,
    stride_key_head,
    stride_value_token,
    stride_value_head,
    stride_cache_block,
    stride_cache_pos,
    stride_cache_head,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    FEATURES_PAD: tl.constexpr,
    TOKENS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    """``TOKENS`` tokens per program: copy each one's keys and values (all KV heads) to its slot.

    A token's heads and head dimensions form one axis of ``FEATURES_PAD`` (heads padded to a power
    of two times ``HEAD_PAD``). A negative slot is padding and writes nothing; a slot past the cache
    is skipped too, since a kernel cannot raise without a device synchronisation. Values are copied
    bit for bit.
    """
    tokens = tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)
    token_ok = tokens < num_tokens
    slots = tl.load(slot_mapping_ptr + tokens, mask=token_ok, other=-1).to(tl.int64)
    slot_ok = token_ok & (slots >= 0) & (slots < num_slots)
    features = tl.arange(0, FEATURES_PAD)
    heads = features // HEAD_PAD
    dims = features % HEAD_PAD
    feature_ok = (heads < NUM_KV_HEADS) & (dims < HEAD_SIZE)
    mask = slot_ok[:, None] & feature_ok[None, :]
    rows = tokens.to(tl.int64)[:, None]
    src_k = rows * stride_key_token + (heads * stride_key_head + dims)[None, :]
    src_v = rows * stride_value_token + (heads * stride_value_head + dims)[None, :]
    blocks = slots // BLOCK_SIZE
    offsets = slots % BLOCK_SIZE
    dst = (blocks * stride_cache_block + offsets * stride_cache_pos)[:, None] + (
        heads * stride_cache_head + dims
    )[None, :]
    tl.store(key_cache_ptr + dst, tl.load(key_ptr + src_k, mask=mask), mask=mask)
    tl.store(value_cache_ptr + dst, tl.load(value_ptr + src_v, mask=mask), mask=mask)


@triton.jit
def paged_attention_kernel(
    out_ptr,
    query_ptr,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    scale,
    stride_query_token,
    stride_query_head,
    stride_out_token,
    stride_out_head,
    stride_cache_block,
    stride_cache_pos,
    stride_cache_head,
    stride_tables_seq,
    QUERIES_PER_KV: tl.constexpr,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    KV_BLOCK_SIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    TILE_N: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
    CAUSAL: tl.constexpr = True,
    WINDOW: tl.constexpr = 0,
    SOFT_CAP: tl.constexpr = 0.0,
):
    """Causal attention of one tile of query tokens of one sequence, for one KV head; with
    ``CAUSAL`` false (API 1.7's non-causal layers, encoders) every query sees its whole context.
    API 1.9: ``WINDOW`` > 0 limits the query at position ``p`` to positions ``> p - WINDOW`` (the
    key loop starts at the tile's first window start, so blocks before it, which core frees, are
    never read); ``SOFT_CAP`` > 0 caps scaled scores with ``SOFT_CAP * tanh(score / SOFT_CAP)``.

    Grid: ``(num_seqs, query tiles of the longest query, num_kv_heads)``. A tile holds ``BLOCK_Q``
    consecutive query tokens times the ``QUERIES_PER_KV`` query heads that share the KV head
    (grouped-query attention), flattened into ``BLOCK_M`` rows, so that one K/V tile loaded from
    the cache serves every head of the group. Prefill chunks and decodes are the same case: the
    sequence's query tokens are the last ``q_len`` of its ``seq_len`` positions. Tiles past a
    sequence's query length get an empty key range and store nothing.

    Keys and values are gathered ``TILE_N`` positions at a time through the block table (a tile
    may span several cache blocks), with an online softmax in float32.
    """
    seq = tl.program_id(0)
    q_tile = tl.program_id(1)
    kv_head = tl.program_id(2)

    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len  # positions already in the cache before this step's tokens

    rows = tl.arange(0, BLOCK_M)
    token = q_tile * BLOCK_Q + rows // QUERIES_PER_KV
    head = kv_head * QUERIES_PER_KV + rows % QUERIES_PER_KV
    row_ok = (rows < BLOCK_Q * QUERIES_PER_KV) & (token < q_len)
    query_pos = context_len + token
    dims = tl.arange(0, HEAD_PAD)
    dim_ok = dims < HEAD_SIZE

    q_rows = (q_start + token).to(tl.int64)
    q_offsets = q_rows[:, None] * stride_query_token + head[:, None] * stride_query_head
    q = tl.load(
        query_ptr + q_offsets + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0
    )
    q = dot_operand(q, EMULATE_BF16)

    # The last query token of this tile sees every position up to its own (all of them when not
    # causal); an empty tile none.
    tile_first = q_tile * BLOCK_Q
    if CAUSAL:  # noqa: SIM108 (a constexpr branch: Triton compiles only one side)
        kv_end = tl.minimum(seq_len, context_len + tile_first + BLOCK_Q)
    else:
        kv_end = seq_len
    kv_end = tl.where(tile_first < q_len, kv_end, 0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, HEAD_PAD], 0.0, dtype=tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_tables_seq
    kv_start = 0
    if WINDOW > 0:  # the first position any row of the tile sees
        kv_start = tl.maximum(context_len + tile_first - WINDOW + 1, 0)
    for start in range(kv_start, kv_end, TILE_N):
        pos = start + tl.arange(0, TILE_N)
        pos_ok = pos < kv_end
        block = tl.load(table + pos // KV_BLOCK_SIZE, mask=pos_ok, other=0).to(tl.int64)
        kv_offsets = (
            block * stride_cache_block
            + (pos % KV_BLOCK_SIZE) * stride_cache_pos
            + kv_head * stride_cache_head
        )
        kv_mask = pos_ok[:, None] & dim_ok[None, :]
        k = tl.load(key_cache_ptr + kv_offsets[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(value_cache_ptr + kv_offsets[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(dot_operand(k, EMULATE_BF16)), input_precision="ieee") * scale
        if SOFT_CAP > 0.0:  # tanh from exp: 1 - 2 / (e^2x + 1) saturates cleanly at +-1
            scores = SOFT_CAP * (1.0 - 2.0 / (tl.exp(2.0 * (scores / SOFT_CAP)) + 1.0))
        if CAUSAL:
            visible = (pos[None, :] <= query_pos[:, None]) & pos_ok[None, :]
            if WINDOW > 0:
                visible = visible & (pos[None, :] > query_pos[:, None] - WINDOW)
        else:
            visible = pos_ok[None, :] & row_ok[:, None]
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        # A row that has seen no position yet (before its window) keeps m = -inf: use 0 then.
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        # Probabilities are rounded to the cache dtype for the P @ V product, as a device's
        # matrix engine needs (a no-op for float32).
        p_dot = dot_operand(round_to(p, v.dtype, EMULATE_BF16), EMULATE_BF16)
        acc = acc * alpha[:, None] + tl.dot(
            p_dot, dot_operand(v, EMULATE_BF16), input_precision="ieee"
        )
        m_i = m_new

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_offsets = q_rows[:, None] * stride_out_token + head[:, None] * stride_out_head
    tl.store(
        out_ptr + o_offsets + dims[None, :],
        round_to(out, out_ptr.dtype.element_ty, EMULATE_BF16),
        mask=row_ok[:, None] & dim_ok[None, :],
    )


@triton.jit
def rms_norm_kernel(
    out_ptr,
    summed_ptr,
    x_ptr,
    residual_ptr,
    weight_ptr,
    eps,
    num_rows,
    inner_rows,
    stride_x_outer,
    stride_x_inner,
    stride_res_outer,
    stride_res_inner,
    stride_out_row,
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    ADD_RESIDUAL: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
):
    """``ROWS`` rows per program: ``weight * rms_normalised(x [+ residual])`` of each.

    Rows are addressed as ``(row // inner_rows) * stride_outer + (row % inner_rows) * stride_inner``
    so that a 2-D strided slice and a 3-D per-head view (Qwen3's q/k norms on a fused projection)
    need no copy. With ``ADD_RESIDUAL`` the sum ``x + residual`` is rounded to the dtype, stored to
    ``summed_ptr`` and normalised, as a decoder layer's residual stream does. Statistics are float32;
    the normalised value is rounded to the dtype before the weight multiply, as Hugging Face does.
    """
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    outer = rows // inner_rows
    inner = rows % inner_rows
    cols = tl.arange(0, BLOCK)
    mask = (rows < num_rows)[:, None] & (cols < HIDDEN)[None, :]
    x_offsets = (outer * stride_x_outer + inner * stride_x_inner)[:, None] + cols[None, :]
    out_offsets = (rows * stride_out_row)[:, None] + cols[None, :]
    x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0)
    dtype = x.dtype
    x = x.to(tl.float32)
    if ADD_RESIDUAL:
        res_offsets = (outer * stride_res_outer + inner * stride_res_inner)[:, None] + cols[None, :]
        r = tl.load(residual_ptr + res_offsets, mask=mask, other=0.0).to(tl.float32)
        summed = round_to(x + r, dtype, EMULATE_BF16)
        tl.store(summed_ptr + out_offsets, summed, mask=mask)
        x = summed.to(tl.float32)
    mean_square = tl.sum(x * x, 1) / HIDDEN
    rstd = 1.0 / tl.sqrt_rn(mean_square + eps)
    normed = round_to(x * rstd[:, None], dtype, EMULATE_BF16).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=cols < HIDDEN, other=0.0).to(tl.float32)
    tl.store(out_ptr + out_offsets, round_to(w[None, :] * normed, dtype, EMULATE_BF16), mask=mask)


@triton.jit
def silu_and_mul_kernel(
    out_ptr,
    x_ptr,
    num_rows,
    width,
    stride_x_row,
    stride_out_row,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
):
    """Grid ``(row blocks, column blocks)``: ``silu(gate) * up`` for ``x = [gate | up]`` per row.

    The SiLU result is rounded to the dtype before the multiply, as the two torch ops round.
    """
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = (rows < num_rows)[:, None] & (cols < width)[None, :]
    x_offsets = (rows * stride_x_row)[:, None] + cols[None, :]
    gate = tl.load(x_ptr + x_offsets, mask=mask, other=0.0)
    dtype = gate.dtype
    gate = gate.to(tl.float32)
    up = tl.load(x_ptr + x_offsets + width, mask=mask, other=0.0).to(tl.float32)
    silu = round_to(gate / (1.0 + tl.exp(-gate)), dtype, EMULATE_BF16).to(tl.float32)
    out_offsets = (rows * stride_out_row)[:, None] + cols[None, :]
    tl.store(out_ptr + out_offsets, round_to(silu * up, dtype, EMULATE_BF16), mask=mask)


@triton.jit
def rotary_kernel(
    out_ptr,
    heads_ptr,
    positions_ptr,
    cos_sin_ptr,
    num_tokens,
    num_heads,
    stride_heads_token,
    stride_heads_head,
    stride_cache_pos,
    HEAD_SIZE: tl.constexpr,
    HALF_ROTARY: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    TOKENS: tl.constexpr,
    HALF_PAD: tl.constexpr,
    REST_PAD: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
):
    """GPT-NeoX rotation of every head of ``TOKENS`` tokens per program.

    A program's rows are (token, head) pairs, ``HEADS_PAD`` per token. ``out`` is a contiguous
    ``[tokens, heads, HEAD_SIZE]``; channels past the rotary dimension are copied unchanged. cos/sin
    come from the model's table, in the heads' dtype, and each product and sum is rounded to that
    dtype, exactly as the reference's torch ops round.
    """
    pairs = tl.arange(0, TOKENS * HEADS_PAD)
    tokens = tl.program_id(0).to(tl.int64) * TOKENS + pairs // HEADS_PAD
    heads = pairs % HEADS_PAD
    row_ok = (tokens < num_tokens) & (heads < num_heads)
    pos = tl.load(positions_ptr + tokens, mask=row_ok, other=0).to(tl.int64)
    half = tl.arange(0, HALF_PAD)
    mask = row_ok[:, None] & (half < HALF_ROTARY)[None, :]
    table = cos_sin_ptr + (pos * stride_cache_pos)[:, None] + half[None, :]
    c = tl.load(table, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(table + HALF_ROTARY, mask=mask, other=0.0).to(tl.float32)
    src = heads_ptr + (tokens * stride_heads_token + heads * stride_heads_head)[:, None]
    dst = out_ptr + ((tokens * num_heads + heads) * HEAD_SIZE)[:, None]
    x1 = tl.load(src + half[None, :], mask=mask, other=0.0)
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = tl.load(src + HALF_ROTARY + half[None, :], mask=mask, other=0.0).to(tl.float32)
    x1c = round_to(x1 * c, dtype, EMULATE_BF16).to(tl.float32)
    x2s = round_to(x2 * s, dtype, EMULATE_BF16).to(tl.float32)
    x2c = round_to(x2 * c, dtype, EMULATE_BF16).to(tl.float32)
    x1s = round_to(x1 * s, dtype, EMULATE_BF16).to(tl.float32)
    tl.store(dst + half[None, :], round_to(x1c - x2s, dtype, EMULATE_BF16), mask=mask)
    tl.store(dst + HALF_ROTARY + half[None, :], round_to(x2c + x1s, dtype, EMULATE_BF16), mask=mask)
    if REST_PAD > 0:
        rest = 2 * HALF_ROTARY + tl.arange(0, REST_PAD)
        rest_mask = row_ok[:, None] & (rest < HEAD_SIZE)[None, :]
        kept = tl.load(src + rest[None, :], mask=rest_mask, other=0.0)
        tl.store(dst + rest[None, :], kept, mask=rest_mask)
