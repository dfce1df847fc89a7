"""The attention part of the conformance suite on every other ISA variant this CPU can run.

The variant is a process-wide switch of the compiled module, so each test sets it and puts the
automatic choice back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from heron_cpu import _kernels
from heron_cpu.platform import CpuPlatform
from heron_interfaces import Platform
from heron_interfaces.testing.attention_suite import (
    attention_backend_cls,
    capabilities,
    test_forward_block_boundaries,
    test_forward_long_context,
    test_forward_matches_reference,
    test_forward_strided_qkv,
    test_write_kv_matches_reference,
)
from heron_interfaces.testing.window_suite import (
    test_sliding_window_matches_reference,
    test_soft_cap_matches_reference,
)

__all__ = [
    "attention_backend_cls",
    "capabilities",
    "test_forward_block_boundaries",
    "test_forward_long_context",
    "test_forward_matches_reference",
    "test_forward_strided_qkv",
    "test_sliding_window_matches_reference",
    "test_soft_cap_matches_reference",
    "test_write_kv_matches_reference",
]


@pytest.fixture(scope="session")
def backend_platform() -> type[Platform]:
    return CpuPlatform


@pytest.fixture(autouse=True, params=["portable", "avx2"])
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param not in _kernels.available_isas():
        pytest.skip(f"this CPU cannot run the {request.param} variant")
    _kernels.set_isa(request.param)
    try:
        yield request.param
    finally:
        _kernels.set_isa("auto")
