"""Collectives for the CUDA backend: NCCL, reached through torch.distributed's "nccl" backend.

The default :class:`~heron_interfaces.Communicator` already issues every collective through
``torch.distributed`` on the group core created with ``CudaPlatform.dist_backend``; NCCL then runs
them on the GPU. This subclass exists so that the backend owns the class core instantiates: a
custom all-reduce (NVLink peer-to-peer, say) lands here without touching core.
"""

from __future__ import annotations

from heron_interfaces import Communicator


class CudaCommunicator(Communicator):
    """NCCL collectives through torch.distributed (inherited defaults)."""

    dist_backend = "nccl"
