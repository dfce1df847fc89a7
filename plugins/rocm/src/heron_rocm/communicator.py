"""Collectives for the ROCm backend: RCCL, reached through torch.distributed's "nccl" backend.

ROCm builds of torch implement the "nccl" process-group backend with RCCL, so the default
:class:`~heron_interfaces.Communicator` (every collective through ``torch.distributed``) already
runs on the GPUs. This subclass exists so that the backend owns the class core instantiates: a
custom all-reduce (XGMI peer-to-peer, say) lands here without touching core.
"""

from __future__ import annotations

from heron_interfaces import Communicator


class RocmCommunicator(Communicator):
    """RCCL collectives through torch.distributed (inherited defaults)."""

    dist_backend = "nccl"
