"""The CPU backend's :class:`KernelOps`: fused per-token kernels and the matmul paths.

- Matmuls, bfloat16 weights, one of two arrangements chosen per CPU (``HERON_CPU_GEMM``):
  - ``packed`` (AVX512-BF16 without AMX, e.g. AMD Zen 4): every matmul runs heron-cpu's packed
    GEMM on one layout packed at load (:mod:`heron_cpu.gemm`), faster than oneDNN there at every
    row count from a single sequence to a prefill chunk.
  - ``onednn`` (AMX CPUs, whose tile kernels oneDNN uses best; also CPUs without AVX512-BF16):
    weights are prepacked once into oneDNN's blocked layout (oneDNN would reorder them on every
    call otherwise), and decode steps with only a few rows go to heron-cpu's own GEMV kernel
    instead, which streams the plain weight at close to the memory bandwidth where oneDNN's
    small-M path does not (see :mod:`heron_cpu.gemv`).
- RMSNorm (+ residual add), SiLU-and-mul and rotary embedding: one compiled call each instead of
  half a dozen torch calls, rounding where the torch reference rounds (csrc/elementwise.cpp).
- An encoder's LayerNorm (+ residual add) in one compiled call, in place (torch's add and norm
  make two passes and allocate), and its bfloat16 GELU as a lookup in a table of every bfloat16
  value (torch evaluates erf per element).

Anything these kernels do not cover (other dtypes, odd layouts) falls back to the torch reference
of the base class, so the ops are always correct and only sometimes fast.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from heron_cpu import encoder_attention, gemm, gemv, moe, quant
from heron_cpu._kernels import _C
from heron_cpu.launch import LaunchGraph, launch, launch_torch
from heron_cpu.memory import RETAIN_HEAP_ENV, HugePageArena, retain_freed_heap
from heron_cpu.ops import DTYPE_CODES
from heron_interfaces.kernel_ops import KernelOps
from heron_interfaces.quantization import QuantizedWeight

logger = logging.getLogger(__name__)

# Rows per matmul oneDNN's packed layout is tuned for: a decode step of a busy batch.
PACK_BATCH_HINT = 64

GEMM_ENV = "HERON_CPU_GEMM"
"""``auto`` (default), ``packed`` or ``onednn``: which matmul arrangement the backend uses."""
GEMM_CHOICES = ("auto", "packed", "onednn")


def choose_gemm(environ: Any = None) -> str:
    """``packed`` or ``onednn`` for this CPU, honouring ``HERON_CPU_GEMM``.

    ``auto`` takes the packed GEMM where it runs and AMX does not: on AMX CPUs oneDNN's tile
    kernels beat AVX512-BF16 dot products at every row count past a few. Asking for ``packed`` on
    a CPU without AVX512-BF16 is an error rather than a silent slow path.
    """
    raw = (os.environ if environ is None else environ).get(GEMM_ENV, "auto").strip().lower()
    if raw not in GEMM_CHOICES:
        raise ValueError(f"{GEMM_ENV}={raw!r}: expected one of {', '.join(GEMM_CHOICES)}")
    if raw == "packed" and not gemm.available():
        raise ValueError(f"{GEMM_ENV}=packed: this CPU has no AVX512-BF16")
    if raw == "auto":
        return "packed" if gemm.available() and not gemv.kernel_paths()["amx"] else "onednn"
    return raw


def onednn_bf16_available() -> bool:
    """Whether torch's oneDNN can run (and prepack for) bfloat16 GEMMs on this CPU."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@dataclass(frozen=True, slots=True)
class PreparedLinear:
    """A bfloat16 weight in both layouts: plain for the GEMV kernel, packed for oneDNN."""

    weight: torch.Tensor
    packed: torch.Tensor | None


def _rows_ok(x: torch.Tensor) -> bool:
    """A 2-D CPU tensor of a kernel dtype whose rows are contiguous (any row stride)."""
    return x.dim() == 2 and x.dtype in DTYPE_CODES and x.stride(1) == 1 and x.is_cpu


def _bf16_rows(x: torch.Tensor) -> bool:
    """A bfloat16 CPU tensor whose rows are contiguous: what the linear kernels take as x."""
    return x.dtype == torch.bfloat16 and x.stride(-1) == 1 and x.is_cpu


class CpuKernelOps(KernelOps):
    name = "heron-cpu"

    def __init__(self) -> None:
        self.gemm = choose_gemm()
        self._packed = self.gemm == "packed"
        self._onednn = not self._packed and onednn_bf16_available()
        self._gemv_rows = gemv.MAX_ROWS if gemv.available() and not self._packed else 0
        self._arena = HugePageArena()
        self._quant_logged = False
        # The engine's start-up log names the kernels by this: say which matmuls run.
        self.name = f"heron-cpu ({self.gemm} GEMM)"
        logger.info("heron-cpu: bfloat16 matmuls on %s", self._describe_gemm())
        if retain_freed_heap():
            logger.info(
                "heron-cpu: freed activations stay in the heap between steps (glibc mallopt; "
                "%s=0 keeps glibc's defaults)",
                RETAIN_HEAP_ENV,
            )

    def _describe_gemm(self) -> str:
        if self._packed:
            return f"the packed AVX512-BF16 GEMM ({GEMM_ENV}={self.gemm})"
        engine = "oneDNN" if self._onednn else "torch"
        rows = f", the GEMV up to {self._gemv_rows} rows" if self._gemv_rows else ""
        return f"{engine}{rows} ({GEMM_ENV}={self.gemm})"

    # -- step graphs -----------------------------------------------------------------------------
    def capture_graph(self, num_tokens: int) -> LaunchGraph | None:
        """Any size: the packed GEMM is a recorded launch; so is the GEMV, and past its rows oneDNN's
        prepacked GEMM is recorded as a torch launch."""
        fast = self._packed or self._gemv_rows or self._onednn
        return LaunchGraph() if num_tokens > 0 and fast else None

    # -- embedding -------------------------------------------------------------------------------
    def embedding(self, token_ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        if not (
            token_ids.dim() == 1
            and token_ids.dtype == torch.int64
            and token_ids.is_contiguous()
            and token_ids.is_cpu
            and table.dim() == 2
            and table.is_contiguous()
            and table.is_cpu
        ):
            return super().embedding(token_ids, table)
        out = table.new_empty((token_ids.shape[0], table.shape[1]))
        launch(
            _C.embedding,
            token_ids.data_ptr(), table.data_ptr(), out.data_ptr(), token_ids.shape[0],
            table.shape[0], table.shape[1] * table.element_size(),
        )  # fmt: skip
        return out

    def embedding_shard(
        self, token_ids: torch.Tensor, table: torch.Tensor, row_start: int
    ) -> torch.Tensor:
        # Masking ids is torch work: the whole lookup is one recorded call, so tensor-parallel
        # decode steps can be replayed from a graph.
        return launch_torch(super().embedding_shard, token_ids, table, row_start)

    # -- matmuls ---------------------------------------------------------------------------------
    def prepare_linear(self, weight: torch.Tensor) -> Any:
        if weight.dtype != torch.bfloat16 or not weight.is_cpu:
            return weight
        if self._packed:
            return gemm.pack(
                weight.detach(), lambda shape, dtype: self._arena.empty(shape, dtype, "weights")
            )
        # The GEMV streams this copy at the memory bandwidth on every decode step.
        weight = self._arena.adopt(weight).detach().contiguous()
        packed = (
            torch.ops.mkldnn._reorder_linear_weight(weight, PACK_BATCH_HINT)
            if self._onednn
            else None
        )
        return PreparedLinear(weight, packed)

    def prepare_quantized_linear(self, weight: QuantizedWeight) -> quant.PackedQuant | None:
        """GGUF Q8_0/Q4_0/Q4_1 and int8 weights stay in blocks, repacked once for the quantized
        loops of :mod:`heron_cpu.quant` (None: a shape they do not serve, core dequantizes)."""
        if not weight.data.is_cpu:
            return None
        packed = quant.pack(weight)
        if packed is not None and not self._quant_logged:
            self._quant_logged = True
            logger.info("heron-cpu: quantized weights on %s", quant.describe())
        return packed

    def linear(self, x: torch.Tensor, prepared: Any, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(prepared, gemm.PackedWeight):
            return self._linear_packed(x, prepared, bias)
        if isinstance(prepared, quant.PackedQuant):
            return quant.linear(x, prepared, bias)
        if not isinstance(prepared, PreparedLinear):
            return F.linear(x, prepared, bias)
        if x.dim() == 2 and x.shape[0] <= self._gemv_rows and _bf16_rows(x):
            return gemv.linear_small(x, prepared.weight, bias)
        if prepared.packed is not None:
            return launch_torch(
                torch.ops.mkldnn._linear_pointwise, x, prepared.packed, bias, "none", [], ""
            )
        return F.linear(x, prepared.weight, bias)

    @staticmethod
    def _linear_packed(
        x: torch.Tensor, weight: gemm.PackedWeight, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if x.dim() == 2 and _bf16_rows(x):
            return gemm.linear_packed(x, weight, bias)
        if x.dtype != torch.bfloat16:  # torch's own error for mixed dtypes, or its result
            return F.linear(x, weight.unpack(), bias)
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        return gemm.linear_packed(rows, weight, bias).view(*x.shape[:-1], weight.n)

    # -- mixture of experts ----------------------------------------------------------------------
    def prepare_moe(self, w13: torch.Tensor, w2: torch.Tensor) -> moe.PreparedExperts:
        """Each expert's matrices prepared like any linear weight (see :mod:`heron_cpu.moe`)."""
        return moe.prepare_experts(w13, w2, self.prepare_linear)

    def fused_moe(
        self,
        x: torch.Tensor,
        prepared: moe.PreparedExperts,
        topk_ids: torch.Tensor,
        topk_weights: torch.Tensor,
    ) -> torch.Tensor:
        """Tokens grouped by expert, two GEMMs per expert on the prepared weights, weighted sum."""
        return moe.fused_moe(
            x, prepared, topk_ids, topk_weights, linear=self.linear, silu_and_mul=self.silu_and_mul
        )

    # -- encoder attention (API 1.13) --------------------------------------------------------------
    def encoder_attention(
        self,
        qkv: torch.Tensor,
        query_start_loc: torch.Tensor,
        num_heads: int,
        head_size: int,
        scale: float,
    ) -> torch.Tensor | None:
        """The C++ kernel of :mod:`heron_cpu.encoder_attention` (any head size; float32 and
        bfloat16), reading q/k/v in place from the projection; None for other dtypes."""
        if qkv.dtype not in DTYPE_CODES or query_start_loc.dtype != torch.int32:
            return None
        return encoder_attention.encoder_attention(
            qkv, query_start_loc, num_heads, head_size, scale
        )

    # -- pooling (API 1.15) -------------------------------------------------------------------------
    def mean_pool(self, hidden: torch.Tensor, query_start_loc: torch.Tensor) -> torch.Tensor:
        """One pass of float32 sums over each sequence's rows (:mod:`heron_cpu.encoder_attention`);
        the reference's float32 copy of the step and scatter cost 5x more at MiniLM's step."""
        out = encoder_attention.mean_pool(hidden, query_start_loc)
        return super().mean_pool(hidden, query_start_loc) if out is None else out

    # -- normalisation ---------------------------------------------------------------------------
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if not (_rows_ok(x) and weight.dtype == x.dtype and weight.is_contiguous()):
            return super().rms_norm(x, weight, eps)
        rows, hidden = x.shape
        out = torch.empty((rows, hidden), dtype=x.dtype)
        launch(
            _C.rms_norm,
            x.data_ptr(), 0, weight.data_ptr(), out.data_ptr(), 0, rows, hidden,
            x.stride(0), 0, eps, DTYPE_CODES[x.dtype], torch.get_num_threads(),
        )  # fmt: skip
        return out

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not (
            _rows_ok(x)
            and _rows_ok(residual)
            and residual.shape == x.shape
            and residual.dtype == x.dtype == weight.dtype
            and weight.is_contiguous()
        ):
            return super().add_rms_norm(x, residual, weight, eps)
        rows, hidden = x.shape
        out = torch.empty((rows, hidden), dtype=x.dtype)
        summed = torch.empty((rows, hidden), dtype=x.dtype)
        launch(
            _C.rms_norm,
            x.data_ptr(), residual.data_ptr(), weight.data_ptr(), out.data_ptr(), summed.data_ptr(),
            rows, hidden, x.stride(0), residual.stride(0), eps, DTYPE_CODES[x.dtype],
            torch.get_num_threads(),
        )  # fmt: skip
        return out, summed

    # -- encoder layers ----------------------------------------------------------------------------
    def layer_norm(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        eps: float,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not (
            _rows_ok(x)
            and weight.dtype == bias.dtype == x.dtype
            and weight.is_contiguous()
            and bias.is_contiguous()
            and weight.shape == bias.shape == x.shape[1:]
            and (residual is None or (_rows_ok(residual) and residual.shape == x.shape))
            and (residual is None or residual.dtype == x.dtype)
        ):
            return super().layer_norm(x, weight, bias, eps, residual)
        rows, hidden = x.shape
        launch(
            _C.layer_norm,
            x.data_ptr(), 0 if residual is None else residual.data_ptr(), weight.data_ptr(),
            bias.data_ptr(), x.data_ptr(), rows, hidden, x.stride(0),
            0 if residual is None else residual.stride(0), x.stride(0), eps,
            DTYPE_CODES[x.dtype], torch.get_num_threads(),
        )  # fmt: skip
        return x

    def gelu(self, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        # bfloat16 by table lookup; float32 stays with torch (a polynomial kernel was slower).
        if approximate not in ("none", "tanh") or not _rows_ok(x) or x.dtype != torch.bfloat16:
            return super().gelu(x, approximate)
        rows, width = x.shape
        launch(
            _C.gelu,
            x.data_ptr(), x.data_ptr(), rows, width, x.stride(0), x.stride(0),
            int(approximate == "tanh"), DTYPE_CODES[x.dtype], torch.get_num_threads(),
        )  # fmt: skip
        return x

    # -- activation ------------------------------------------------------------------------------
    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        if not _rows_ok(x) or x.shape[1] % 2:
            return super().silu_and_mul(x)
        rows, width = x.shape[0], x.shape[1] // 2
        out = torch.empty((rows, width), dtype=x.dtype)
        launch(
            _C.silu_and_mul,
            x.data_ptr(), out.data_ptr(), rows, width, x.stride(0), DTYPE_CODES[x.dtype],
            torch.get_num_threads(),
        )  # fmt: skip
        return out

    # -- rotary embedding ------------------------------------------------------------------------
    def rotary(
        self, positions: torch.Tensor, heads: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> torch.Tensor:
        if not (
            heads.dim() == 3
            and heads.dtype in DTYPE_CODES
            and heads.stride(2) == 1
            and heads.is_cpu
            and cos_sin_cache.dtype == heads.dtype
            and cos_sin_cache.is_contiguous()
            and cos_sin_cache.shape[1] % 2 == 0
            and cos_sin_cache.shape[1] <= heads.shape[2]
            and positions.dtype == torch.int64
            and positions.is_contiguous()
            and positions.shape[0] == heads.shape[0]
        ):
            return super().rotary(positions, heads, cos_sin_cache)
        tokens, num_heads, head_size = heads.shape
        out = torch.empty((tokens, num_heads, head_size), dtype=heads.dtype)
        launch(
            _C.rotary,
            heads.data_ptr(), cos_sin_cache.data_ptr(), positions.data_ptr(), out.data_ptr(),
            tokens, num_heads, head_size, cos_sin_cache.shape[1], cos_sin_cache.shape[0],
            heads.stride(0), heads.stride(1), DTYPE_CODES[heads.dtype], torch.get_num_threads(),
        )  # fmt: skip
        return out


__all__ = ["CpuKernelOps", "PreparedLinear", "onednn_bf16_available"]
