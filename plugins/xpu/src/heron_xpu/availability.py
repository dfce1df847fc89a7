"""Can this machine run the XPU backend? Answered without importing torch or touching a device.

Core calls the probe in every process (the API server too, and before workers fork), and Intel's
runtime must be initialised once, in the worker; so every check here is a file or environment
lookup:

* device mode: triton is installed, the installed torch is an XPU build (read from its
  ``torch/version.py``, not imported), an Intel GPU is visible to the kernel's DRM subsystem (a
  render node whose PCI vendor is Intel) and Level Zero, the runtime torch.xpu drives it through,
  is on the library path;
* interpreter mode (``HERON_XPU_INTERPRET=1``): triton and torch are installed. The backend then
  runs on CPU tensors with a score below the ``cpu`` backend's, so it is only chosen by name.

The first failing check becomes the user-facing reason.
"""

from __future__ import annotations

import ast
import ctypes.util
import importlib.util
from pathlib import Path

from heron_xpu.mode import INTERPRET_ENV, interpret_requested

DEVICE_SCORE = 1000
"""A usable Intel GPU: above heron-cpu (100) and core's reference backend (1)."""
INTERPRET_SCORE = 50
"""Interpreter mode: above the reference backend, below heron-cpu, so that setting the variable
on a machine with heron-cpu never moves a user off the fast CPU backend unless HERON_BACKEND=xpu."""

INTEL_PCI_VENDOR = "0x8086"
DRM_CLASS = Path("/sys/class/drm")


def _find_spec(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def torch_build_field(field: str) -> tuple[bool, str | None]:
    """``(torch found, value)`` of a build field (``"xpu"``, ``"__version__"``) of the installed
    torch's ``version.py``, parsed with :mod:`ast` so that probing never imports torch."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return False, None
    if spec is None or not spec.submodule_search_locations:
        return False, None
    for location in spec.submodule_search_locations:
        path = Path(location) / "version.py"
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            target = node.target if isinstance(node, ast.AnnAssign) else None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            value = getattr(node, "value", None)
            if (
                isinstance(target, ast.Name)
                and target.id == field
                and isinstance(value, ast.Constant)
            ):
                return True, value.value if isinstance(value.value, str) else None
        return True, None
    return False, None


def intel_render_nodes(drm_class: Path = DRM_CLASS) -> list[str]:
    """Render nodes (``renderD128``...) whose PCI vendor is Intel, from sysfs."""
    nodes = []
    try:
        entries = sorted(drm_class.glob("renderD*"))
    except OSError:
        return nodes
    for entry in entries:
        try:
            vendor = (entry / "device" / "vendor").read_text().strip().lower()
        except OSError:
            continue
        if vendor == INTEL_PCI_VENDOR:
            nodes.append(entry.name)
    return nodes


def unavailable_reason(drm_class: Path = DRM_CLASS) -> str:
    """Why the XPU backend cannot run here, in plain words; empty when it can."""
    if not _find_spec("triton"):
        return (
            "triton is not installed: the XPU kernels are Triton kernels (`pip install triton`, "
            "or Intel's XPU build of Triton that comes with torch's XPU wheels)"
        )
    torch_found, xpu = torch_build_field("xpu")
    if not torch_found:
        return "torch is not installed (or its torch/version.py is unreadable)"
    if interpret_requested():
        return ""
    hint = f"; {INTERPRET_ENV}=1 runs the kernels in Triton's interpreter on the CPU instead"
    if xpu is None:
        _, version = torch_build_field("__version__")
        return (
            f"the installed torch {version} is not an XPU build (torch.version.xpu is None); "
            "install torch from the XPU wheel index" + hint
        )
    if not intel_render_nodes(drm_class):
        return f"no Intel GPU found (no render node with PCI vendor 8086 under {drm_class})" + hint
    if ctypes.util.find_library("ze_loader") is None:
        return (
            "Intel's Level Zero runtime (libze_loader.so) is not on the library path; install "
            "the Intel GPU driver packages (level-zero)" + hint
        )
    return ""


def probe() -> int:
    """Availability score; 0 when :func:`unavailable_reason` says why."""
    if unavailable_reason():
        return 0
    return INTERPRET_SCORE if interpret_requested() else DEVICE_SCORE


def platform_ref() -> str:
    """The lazy reference of the platform class for the current mode."""
    if interpret_requested():
        return "heron_xpu.platform:XpuInterpretPlatform"
    return "heron_xpu.platform:XpuPlatform"
