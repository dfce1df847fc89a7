"""The TPU backend's non-attention kernels: RMSNorm and the fused residual-add + RMSNorm in Pallas.

Everything else (matmuls, rotary, SiLU gate, embedding) stays the plain-torch reference of
:class:`~heron_interfaces.kernel_ops.KernelOps`: on a TPU those are what the compiler fuses on its
own, while a norm is a row reduction that benefits from a hand-tiled kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from heron_interfaces.kernel_ops import KernelOps

if TYPE_CHECKING:
    import jax
    import torch


def _norm(x: jax.Array, weight: jax.Array, *, eps: float, interpret: Any) -> jax.Array:
    from heron_tpu.kernels.rms_norm import rms_norm

    return rms_norm(x, weight, eps, interpret=interpret)


def _add_norm(
    x: jax.Array, residual: jax.Array, weight: jax.Array, *, eps: float, interpret: Any
) -> tuple[jax.Array, jax.Array]:
    from heron_tpu.kernels.rms_norm import rms_norm

    return rms_norm(x, weight, eps, residual, interpret=interpret)


class TpuKernelOps(KernelOps):
    """RMSNorm through Pallas; the rest inherited from the torch reference."""

    name = "tpu-pallas"

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        from heron_tpu import runtime

        shape = x.shape
        fn = runtime.jitted(_norm, eps=float(eps), interpret=runtime.kernel_interpret())
        out = fn(runtime.to_jax(x.reshape(-1, shape[-1])), runtime.to_jax(weight))
        runtime.check_races("RMSNorm")
        return runtime.to_torch(out).reshape(shape)

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from heron_tpu import runtime

        shape = x.shape
        fn = runtime.jitted(_add_norm, eps=float(eps), interpret=runtime.kernel_interpret())
        out, summed = fn(
            runtime.to_jax(x.reshape(-1, shape[-1])),
            runtime.to_jax(residual.reshape(-1, shape[-1])),
            runtime.to_jax(weight),
        )
        runtime.check_races("add + RMSNorm")
        return runtime.to_torch(out).reshape(shape), runtime.to_torch(summed).reshape(shape)
