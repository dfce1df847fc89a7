"""Collectives for the XPU backend: oneCCL, reached through torch.distributed's ``xccl`` backend.

torch (2.8 and newer XPU builds) ships the ``xccl`` process-group backend, which runs collectives
on Intel GPUs with oneCCL; core creates the group with ``XpuPlatform.dist_backend`` and the default
:class:`~heron_interfaces.Communicator` issues every collective through it. In interpreter mode
the tensors are on the CPU and the group is gloo. This subclass exists so that the backend owns
the class core instantiates: an accelerated all-reduce (Xe Link peer-to-peer, say) lands here.
"""

from __future__ import annotations

from heron_interfaces import Communicator


class XpuCommunicator(Communicator):
    """Collectives through torch.distributed on the group's backend (xccl on a device): the
    inherited defaults, until an accelerated collective is worth its own code."""
