"""Where the XPU kernel tests run: Triton's interpreter on this CPU, or a GPU Triton compiles for.

``HERON_XPU_DEVICE`` is a test-only switch. Unset (or ``cpu``), the kernels are interpreted on
CPU tensors: ``TRITON_INTERPRET=1`` is set here (``heron_xpu.mode.use_interpreter``), before
anything imports ``heron_xpu.kernels``.
Only Triton reads that variable and nothing else in the test suite uses Triton, so it does not
change other tests; ``HERON_XPU_INTERPRET`` (which makes the backend available to core) is set
per test by the tests that need it. ``HERON_XPU_DEVICE=xpu`` (an Intel GPU) or ``=cuda`` (any GPU
upstream Triton compiles for) runs the same kernel tests compiled for that device.
"""

from __future__ import annotations

import os

import pytest
from xpu_device import DEVICE, DEVICE_ENV

if DEVICE == "cpu":
    try:
        from heron_xpu.mode import use_interpreter
    except ImportError:  # heron-xpu is missing: its tests skip, but set the variable all the same
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        use_interpreter()  # also right if something imported triton already


@pytest.fixture(scope="session")
def device() -> object:
    """The torch device the kernels run on (a ``torch.device``), skipped when it is missing."""
    pytest.importorskip("triton", reason="triton is not installed")
    import torch

    if DEVICE != "cpu":
        backend = getattr(torch, DEVICE, None)
        if backend is None or not backend.is_available():
            pytest.skip(f"{DEVICE_ENV}={DEVICE}: torch sees no {DEVICE} device")
    return torch.device(DEVICE)


@pytest.fixture(scope="session")
def ops(device: object) -> object:
    """:mod:`heron_xpu.ops`, imported after the interpreter switch above."""
    import heron_xpu.ops

    if DEVICE == "cpu":
        assert heron_xpu.ops.INTERPRETED, "heron_xpu.kernels was imported before the switch"
    return heron_xpu.ops
