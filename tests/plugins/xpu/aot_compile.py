"""Compile every heron-xpu kernel ahead of time for a GPU target, without a GPU.

Upstream triton ships the NVIDIA backend's compiler and ``ptxas``, so on any host the kernels can
go through Triton's whole compiler (source -> TTIR -> TTGIR -> LLVM IR -> PTX -> cubin) for an
NVIDIA target. That checks what the interpreter cannot: the compiled front end's typing of every
constexpr branch (the bfloat16 paths included), dot shapes and layouts; and, in the PTX, that the
attention's half-precision dots became tensor-core ``mma`` instructions accumulating in float32
while its float32 dots stayed IEEE FMAs (no TF32). It does not run the code. Intel's XPU target
needs Intel's triton build and is compiled on the device itself.

Run as a script (``python aot_compile.py``) in a process without ``TRITON_INTERPRET``: it prints
one line per compiled kernel configuration and exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from typing import Any

TARGET_ARCH = 90
"""sm_90 (Hopper); the kernels use nothing architecture-specific."""

INDEX_POINTERS = {
    "block_tables_ptr": "*i32",
    "seq_lens_ptr": "*i32",
    "query_start_loc_ptr": "*i32",
    "slot_mapping_ptr": "*i64",
    "positions_ptr": "*i64",
}
FLOAT_SCALARS = {"scale", "eps"}
TRITON_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def configurations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(kernel name, dtype, constexprs)`` covering every constexpr branch of every kernel."""
    for dtype, causal in (
        ("bfloat16", True),
        ("float16", True),
        ("float32", True),
        ("bfloat16", False),
    ):
        yield (
            "paged_attention_kernel",
            dtype,
            dict(
                QUERIES_PER_KV=3,
                HEAD_SIZE=80,
                HEAD_PAD=128,
                KV_BLOCK_SIZE=16,
                BLOCK_Q=5,
                BLOCK_M=16,
                TILE_N=64,
                EMULATE_BF16=False,
                CAUSAL=causal,
            ),
        )
    # API 1.9: sliding window and logit soft-capping (Gemma 2's local layers).
    yield (
        "paged_attention_kernel",
        "bfloat16",
        dict(
            QUERIES_PER_KV=3,
            HEAD_SIZE=80,
            HEAD_PAD=128,
            KV_BLOCK_SIZE=16,
            BLOCK_Q=5,
            BLOCK_M=16,
            TILE_N=64,
            EMULATE_BF16=False,
            CAUSAL=True,
            WINDOW=100,
            SOFT_CAP=50.0,
        ),
    )
    yield (
        "write_kv_kernel",
        "bfloat16",
        dict(
            NUM_KV_HEADS=2, HEAD_SIZE=80, HEAD_PAD=128, FEATURES_PAD=256, TOKENS=16, BLOCK_SIZE=16
        ),
    )
    for add_residual in (False, True):
        yield (
            "rms_norm_kernel",
            "bfloat16",
            dict(HIDDEN=576, BLOCK=1024, ROWS=4, ADD_RESIDUAL=add_residual, EMULATE_BF16=False),
        )
    yield "silu_and_mul_kernel", "bfloat16", dict(BLOCK=1024, ROWS=4, EMULATE_BF16=False)
    for dtype, rest_pad in (("bfloat16", 32), ("float32", 0)):
        yield (
            "rotary_kernel",
            dtype,
            dict(
                HEAD_SIZE=64,
                HALF_ROTARY=16 if rest_pad else 32,
                HEADS_PAD=16,
                TOKENS=4,
                HALF_PAD=16 if rest_pad else 32,
                REST_PAD=rest_pad,
                EMULATE_BF16=False,
            ),
        )


def compile_one(kernel: Any, dtype: str, constexprs: dict[str, Any]) -> dict[str, Any]:
    """Compile ``kernel`` for sm_90 with float pointers of ``dtype``; every stage's output."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for param in kernel.params:
        name = param.name
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in INDEX_POINTERS:
            signature[name] = INDEX_POINTERS[name]
        elif name.endswith("_ptr"):
            signature[name] = "*" + TRITON_DTYPES[dtype]
        elif name in FLOAT_SCALARS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    names = kernel.arg_names
    source = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(names.index(k),): v for k, v in constexprs.items()},
    )
    return dict(triton.compile(source, target=GPUTarget("cuda", TARGET_ARCH, 32)).asm)


def check_attention_dots(dtype: str, ptx: str) -> None:
    """Half precision: tensor-core mma with float32 accumulation; float32: no mma, no TF32."""
    mma = set(re.findall(r"\bw?mma\.[\w.]+", ptx))
    if dtype == "float32":
        if mma or "tf32" in ptx:
            raise AssertionError(f"float32 attention must use IEEE FMAs, found {sorted(mma)}")
        return
    short = {"float16": "f16", "bfloat16": "bf16"}[dtype]
    if not any(f".f32.{short}.{short}.f32" in m for m in mma):
        raise AssertionError(f"{dtype} attention dots are not {short} mma into f32: {sorted(mma)}")


def main() -> int:
    if os.environ.get("TRITON_INTERPRET"):
        print(
            "run without TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr
        )
        return 2
    from heron_xpu import kernels

    for name, dtype, constexprs in configurations():
        stages = compile_one(getattr(kernels, name), dtype, constexprs)
        if name == "paged_attention_kernel":
            check_attention_dots(dtype, stages["ptx"])
        print(f"{name} {dtype}: {' -> '.join(stages)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
