"""The test-only device switch of the XPU tests, in a module of its own name so that test modules
can import it (``from conftest import ...`` would find whichever conftest was imported last)."""

from __future__ import annotations

import os

DEVICE_ENV = "HERON_XPU_DEVICE"
DEVICE: str = os.environ.get(DEVICE_ENV, "cpu").strip() or "cpu"
"""``cpu`` (Triton's interpreter, the default), ``xpu`` (an Intel GPU) or ``cuda`` (any GPU that
upstream Triton compiles for)."""
