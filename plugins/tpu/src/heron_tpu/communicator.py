"""Collectives of the TPU backend.

On a TPU host the collectives are XLA's, reached through ``torch.distributed`` on the process group
core creates with :attr:`TpuPlatform.dist_backend`; torch-tpu registers that backend when it
loads. Where it is not registered the communicator refuses to start and says so, instead of
falling back to host copies that would silently cost a round trip per layer.

In interpreter mode tensors are CPU tensors and the collectives go through gloo.
"""

from __future__ import annotations

from heron_interfaces import CommContext, Communicator

TPU_DIST_BACKEND = "tpu"
"""The torch.distributed backend name the TPU platform asks core to create groups with."""


class TpuCommunicator(Communicator):
    """XLA collectives through torch.distributed (the inherited defaults, on the TPU group)."""

    def __init__(self, ctx: CommContext) -> None:
        if ctx.world_size > 1:
            import torch.distributed as dist

            registered = getattr(dist.Backend, "backend_list", [])
            if TPU_DIST_BACKEND not in registered:
                raise RuntimeError(
                    f"torch.distributed has no {TPU_DIST_BACKEND!r} backend (registered: "
                    f"{registered}); multi-chip TPU serving needs torch-tpu's collectives "
                    "(`pip install torch-tpu`) on a TPU host"
                )
        super().__init__(ctx)


class InterpretCommunicator(Communicator):
    """gloo collectives on CPU tensors (the inherited defaults), for interpreter mode."""
