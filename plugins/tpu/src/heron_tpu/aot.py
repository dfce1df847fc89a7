"""Compile every heron-tpu kernel with the real TPU compiler, ahead of time, on a host with no TPU.

Why: Pallas's interpreter runs block shapes, VMEM budgets and layouts that a TPU rejects, so the
interpreter alone cannot tell whether the kernels will compile. libtpu (from ``jax[tpu]``) can
compile for a TPU topology it is only told about: ``get_topology_desc`` describes the chips,
``jax.jit(f).trace(...).lower().compile()`` runs the whole Mosaic and XLA pipeline for them.
Kernels that issue DMAs look up the chip generation while lowering, so they are lowered under an
abstract mesh of the described device.

Usage (in an environment with ``jax[tpu]``; ``nox -s check-tpu`` builds one)::

    python -m heron_tpu.aot                  # every kernel at the engine's shapes, v5e and v6e
    python -m heron_tpu.aot --chips v6e --quick

The shapes are those the engine runs: the TPU platform's padding buckets (tokens x sequences) for
the bundled SmolLM2-135M in bfloat16, plus every dtype, block size and head size the attention
backend declares at one bucket. The run ends with a self-check: a kernel tiled with a block shape
the TPU cannot hold must fail to compile, or this check itself is broken.

Imports only jax and this package's kernels (no torch), so it runs beside libtpu alone.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from heron_tpu.kernels.kv_write import write_kv
from heron_tpu.kernels.ragged_paged_attention import ragged_paged_attention
from heron_tpu.kernels.rms_norm import rms_norm

TOPOLOGIES = {"v5e": "v5e:2x2", "v6e": "v6e:2x2"}
"""Chip generations compiled for, by topology name (one chip of each is the target)."""

TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
SEQ_BUCKETS = (8, 16, 32, 64, 128, 256)
"""The real TPU platform's default buckets (heron_tpu.platform.TpuPlatform), restated here so that
this module needs no torch; tests/plugins/tpu/test_platform.py checks the two agree."""


@dataclass(frozen=True)
class ModelShape:
    """What the kernels see of a model: heads, head size, hidden size, and its longest sequence."""

    name: str
    num_heads: int
    num_kv_heads: int
    head_size: int
    hidden: int
    max_model_len: int


SMOLLM2 = ModelShape("SmolLM2-135M", 9, 3, 64, 576, 2048)
KV_BLOCKS = 1024
"""Pages in the compiled cache: any count compiles alike (the cache stays in HBM)."""


@dataclass(frozen=True)
class Target:
    chip: str
    device: Any
    mesh: Any


def target(chip: str) -> Target:
    """One chip of ``chip``'s topology, described by libtpu (no TPU needed)."""
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(topology_name=TOPOLOGIES[chip], platform="tpu")
    device = topology.devices[0]
    mesh = jax.sharding.Mesh(np.array([device]), ("x",))
    return Target(chip, device, mesh)


def _spec(t: Target, shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=jax.sharding.SingleDeviceSharding(t.device))


def compile_for(t: Target, fn: Callable[..., Any], *specs: jax.ShapeDtypeStruct) -> float:
    """Compile ``fn`` at ``specs`` for ``t``; returns seconds. Raises what the compiler raises."""
    started = time.monotonic()
    with jax.sharding.use_abstract_mesh(t.mesh.abstract_mesh):
        jax.jit(fn).trace(*specs).lower().compile()
    return time.monotonic() - started


@dataclass(frozen=True)
class Job:
    """One kernel at one shape: a line of the report."""

    label: str
    build: Callable[[Target], tuple[Callable[..., Any], list[jax.ShapeDtypeStruct]]]


def attention_job(
    tokens: int,
    seqs: int,
    m: ModelShape,
    dtype: Any,
    block_size: int,
    label: str = "",
    window: int | None = None,
    soft_cap: float | None = None,
    causal: bool = True,
) -> Job:
    from heron_tpu.attention import attention_tiles

    tile_tokens, pages = attention_tiles(tokens, block_size)
    max_blocks = -(-m.max_model_len // block_size)

    def build(t: Target) -> tuple[Callable[..., Any], list[jax.ShapeDtypeStruct]]:
        fn = functools.partial(
            ragged_paged_attention,
            scale=m.head_size**-0.5,
            tile_tokens=tile_tokens,
            pages_per_step=pages,
            sliding_window=window,
            logits_soft_cap=soft_cap,
            causal=causal,
        )
        return fn, [
            _spec(t, (tokens, m.num_heads, m.head_size), dtype),
            _spec(t, (2, m.num_kv_heads, KV_BLOCKS, block_size, m.head_size), dtype),
            _spec(t, (seqs + 1,), jnp.int32),
            _spec(t, (seqs,), jnp.int32),
            _spec(t, (seqs, max_blocks), jnp.int32),
            _spec(t, (1,), jnp.int32),
        ]

    name = label or f"attention T={tokens} S={seqs}"
    return Job(f"{name} {jnp.dtype(dtype).name} bs={block_size} D={m.head_size}", build)


def write_job(tokens: int, m: ModelShape, dtype: Any, block_size: int) -> Job:
    def build(t: Target) -> tuple[Callable[..., Any], list[jax.ShapeDtypeStruct]]:
        kv = (tokens, m.num_kv_heads, m.head_size)
        return write_kv, [
            _spec(t, kv, dtype),
            _spec(t, kv, dtype),
            _spec(t, (2, m.num_kv_heads, KV_BLOCKS, block_size, m.head_size), dtype),
            _spec(t, (tokens,), jnp.int32),
        ]

    return Job(
        f"write_kv T={tokens} {jnp.dtype(dtype).name} bs={block_size} D={m.head_size}", build
    )


def norm_job(tokens: int, hidden: int, dtype: Any, fused: bool, tile_rows: int = 64) -> Job:
    def build(t: Target) -> tuple[Callable[..., Any], list[jax.ShapeDtypeStruct]]:
        row = _spec(t, (tokens, hidden), dtype)
        weight = _spec(t, (hidden,), dtype)
        if fused:
            fn = functools.partial(_add_norm, tile_rows=tile_rows)
            return fn, [row, row, weight]
        return functools.partial(_norm, tile_rows=tile_rows), [row, weight]

    kind = "add_rms_norm" if fused else "rms_norm"
    return Job(f"{kind} T={tokens} H={hidden} {jnp.dtype(dtype).name} tile={tile_rows}", build)


def _norm(x: jax.Array, w: jax.Array, *, tile_rows: int) -> jax.Array:
    return rms_norm(x, w, 1e-5, tile_rows=tile_rows)


def _add_norm(x: jax.Array, r: jax.Array, w: jax.Array, *, tile_rows: int) -> Any:
    return rms_norm(x, w, 1e-5, r, tile_rows=tile_rows)


def engine_jobs(quick: bool = False) -> list[Job]:
    """Every kernel at the shapes the engine runs (``quick``: the smallest and largest buckets)."""
    m, bf16 = SMOLLM2, jnp.bfloat16
    tokens = (TOKEN_BUCKETS[0], TOKEN_BUCKETS[-1]) if quick else TOKEN_BUCKETS
    seqs = (SEQ_BUCKETS[0], SEQ_BUCKETS[-1]) if quick else SEQ_BUCKETS
    jobs = [attention_job(t, s, m, bf16, 16) for t in tokens for s in seqs if s <= t]
    # Sliding window and soft-capping (heron_interfaces 1.9, Gemma 2's local layers).
    jobs.append(attention_job(64, 16, m, bf16, 16, "attention window=100 cap=50", 100, 50.0))
    # Non-causal (heron_interfaces 1.7, encoder layers).
    jobs.append(attention_job(64, 16, m, bf16, 16, "attention non-causal", causal=False))
    jobs += [write_job(t, m, bf16, 16) for t in tokens]
    jobs += [norm_job(t, m.hidden, bf16, fused) for t in tokens for fused in (False, True)]
    # Every dtype, block size and head size the backend declares, at one bucket.
    for dtype in (jnp.bfloat16, jnp.float32):
        for block_size in (16, 32):
            for head_size in (64, 128):
                shape = ModelShape(f"D{head_size}", 8, 2, head_size, 1024, 4096)
                jobs.append(attention_job(64, 16, shape, dtype, block_size, label="attention"))
                jobs.append(write_job(64, shape, dtype, block_size))
        jobs.append(norm_job(64, 1024, dtype, fused=True))
    return jobs


def must_reject(t: Target) -> str:
    """Compile RMSNorm tiled 4 rows at a time (a TPU block's rows must be a multiple of 8).

    Returns the compiler's message; raises ``AssertionError`` if it compiled, since then this
    module could not tell a broken kernel from a good one. The same kernel with 8-row tiles is
    compiled first, so the rejection is the block shape's doing.
    """
    compile_for(t, *_materialise(norm_job(64, 1024, jnp.float32, False, tile_rows=8), t))
    try:
        compile_for(t, *_materialise(norm_job(64, 1024, jnp.float32, False, tile_rows=4), t))
    except Exception as exc:  # the compiler's error types are not public API
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    raise AssertionError(f"the TPU compiler for {t.chip} accepted a (4, 1024) float32 block")


def _materialise(job: Job, t: Target) -> tuple[Callable[..., Any], ...]:
    fn, specs = job.build(t)
    return (fn, *specs)


def run(chips: list[str], quick: bool, out: Any = sys.stdout) -> int:
    """Compile everything for each chip; print one line per kernel; return the failure count."""
    failures = 0
    jobs = engine_jobs(quick)
    for chip in chips:
        t = target(chip)
        started = time.monotonic()
        for job in jobs:
            try:
                seconds = compile_for(t, *_materialise(job, t))
            except Exception as exc:
                failures += 1
                print(f"[{chip}] FAIL {job.label}: {str(exc).splitlines()[0][:300]}", file=out)
                continue
            print(f"[{chip}] ok   {job.label} ({seconds:.2f} s)", file=out)
        print(f"[{chip}] {len(jobs)} kernels in {time.monotonic() - started:.1f} s", file=out)
        print(f"[{chip}] rejected as it must: {must_reject(t)}", file=out)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", default="v5e,v6e", help="comma-separated: v5e, v6e")
    parser.add_argument("--quick", action="store_true", help="smallest and largest buckets only")
    args = parser.parse_args(argv)
    chips = [c.strip() for c in args.chips.split(",") if c.strip()]
    unknown = [c for c in chips if c not in TOPOLOGIES]
    if unknown:
        parser.error(f"unknown chips {unknown}; choose from {sorted(TOPOLOGIES)}")
    failures = run(chips, args.quick)
    if failures:
        print(f"{failures} kernel compiles failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
