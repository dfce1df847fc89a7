"""The ``gpu`` fixture: one parameter per GPU backend, skipped where it cannot run here."""

from __future__ import annotations

import importlib

import pytest
from gpu_backends import BACKENDS, GpuBackend, import_backend, require_device


@pytest.fixture(params=BACKENDS, scope="session")
def gpu(request: pytest.FixtureRequest) -> GpuBackend:
    import torch

    name = request.param
    import_backend(name)
    require_device(name)
    ops = importlib.import_module(f"heron_{name}.ops")
    attention = importlib.import_module(f"heron_{name}.attention")
    platform = importlib.import_module(f"heron_{name}.platform")
    return GpuBackend(
        name=name,
        ops=ops,
        attention_cls=getattr(attention, f"{name.capitalize()}AttentionBackend"),
        platform=getattr(platform, f"{name.capitalize()}Platform"),
        device=torch.device("cuda", 0),
    )
