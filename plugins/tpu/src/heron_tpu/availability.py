"""Can this machine run the TPU backend? Answered from files only: no jax, no libtpu, no device.

Core calls the probe in every process (the API server too) before any worker exists, and
initialising a TPU claims it for the whole process; so every check here is a file lookup:
``find_spec`` locates a package without importing it, and TPU chips are found as Google PCI
devices in sysfs (vendor ``0x1ae0``) or as ``/dev/accel*`` / ``/dev/vfio`` nodes. The first
failing check becomes the user-facing reason.

``HERON_TPU_INTERPRET=1`` replaces the hardware checks: the same Pallas kernels then run in
Pallas's TPU interpreter on CPU tensors, for development and CI on hosts without a TPU. That mode
scores below the CPU backend, so it is only chosen when asked for (``HERON_BACKEND=tpu``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

INTERPRET_ENV = "HERON_TPU_INTERPRET"
PROBE_SCORE = 1000
"""On a TPU host: above the CPU backend (100) and core's reference backend (1)."""
INTERPRET_SCORE = 50
"""Interpreter mode: below the CPU backend (100), above core's reference backend (1)."""
GOOGLE_PCI_VENDOR = "0x1ae0"


def interpret_requested() -> bool:
    """True when ``HERON_TPU_INTERPRET`` asks for Pallas's interpreter instead of a TPU."""
    return os.environ.get(INTERPRET_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def tpu_chips(sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")) -> list[str]:
    """Names of TPU chips visible to this host, from sysfs and /dev only (nothing is opened)."""
    chips = []
    pci = sys_root / "bus" / "pci" / "devices"
    if pci.is_dir():
        for device in sorted(pci.iterdir()):
            try:
                vendor = (device / "vendor").read_text().strip()
            except OSError:
                continue
            if vendor == GOOGLE_PCI_VENDOR:
                chips.append(device.name)
    if not chips and dev_root.is_dir():
        chips = sorted(p.name for p in dev_root.glob("accel[0-9]*"))
    return chips


def unavailable_reason() -> str:
    """Why the TPU backend cannot run here, in plain words; empty when it can."""
    if not _found("jax") or not _found("jaxlib"):
        return "jax is not installed: `pip install heron-tpu` brings jax and jaxlib"
    if interpret_requested():
        return ""
    hint = f"; set {INTERPRET_ENV}=1 to run its Pallas kernels in the TPU interpreter on this CPU"
    if not tpu_chips():
        return (
            "no TPU found (no Google PCI device, vendor 0x1ae0, under /sys/bus/pci/devices and "
            "no /dev/accel*)" + hint
        )
    if not _found("libtpu"):
        return "libtpu is not installed (the TPU runtime; `pip install libtpu`)" + hint
    if not _found("torch_tpu"):
        return (
            "torch-tpu is not installed: the model runs in torch on the 'tpu' device "
            "(`pip install torch-tpu`)" + hint
        )
    return ""


def probe() -> int:
    """Availability score for backend selection; 0 when :func:`unavailable_reason` says why."""
    if unavailable_reason():
        return 0
    return INTERPRET_SCORE if interpret_requested() else PROBE_SCORE
