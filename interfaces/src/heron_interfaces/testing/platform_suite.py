"""Conformance tests of a :class:`~heron_interfaces.Platform`'s description and registration."""

from __future__ import annotations

import pytest

from heron_interfaces import API_VERSION
from heron_interfaces.platform import Capabilities, Platform
from heron_interfaces.registries import BackendSpec

KNOWN_DTYPES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int8", "uint8")


def test_platform_identity(backend_platform: type[Platform]) -> None:
    for attr in ("name", "device_type", "dist_backend"):
        value = getattr(backend_platform, attr, None)
        assert isinstance(value, str) and value, f"Platform.{attr} = {value!r}"
    assert backend_platform.device_count() >= 1
    assert isinstance(backend_platform.memory_budget_hint(), str)
    assert backend_platform.memory_budget_hint()


def test_capabilities_are_consistent(backend_platform: type[Platform]) -> None:
    caps = backend_platform.capabilities()
    assert isinstance(caps, Capabilities)
    assert caps.dtypes and set(caps.dtypes) <= set(KNOWN_DTYPES), caps.dtypes
    assert caps.default_dtype in caps.dtypes, "default_dtype must be one of dtypes"
    assert caps.block_sizes and all(b > 0 for b in caps.block_sizes), caps.block_sizes
    if caps.head_sizes is not None:
        assert caps.head_sizes and all(h > 0 for h in caps.head_sizes), caps.head_sizes


def test_attention_backend_agrees_with_capabilities(backend_platform: type[Platform]) -> None:
    """The sizes the platform advertises to core are ones its attention backend accepts."""
    from heron_interfaces.testing.attention_suite import resolve_attention_backend

    cls = resolve_attention_backend(backend_platform)
    caps = backend_platform.capabilities()
    assert set(caps.block_sizes) <= set(cls.supported_block_sizes())
    heads = cls.supported_head_sizes()
    if heads is not None and caps.head_sizes is not None:
        assert set(caps.head_sizes) <= set(heads)


def test_backend_spec(backend_spec: BackendSpec | None) -> None:
    """The registered spec speaks our API major and probes as usable without touching a device."""
    if backend_spec is None:
        pytest.skip("platform selected directly, not through a registered backend")
    assert backend_spec.api_version[0] == API_VERSION[0]
    score = backend_spec.probe()
    assert isinstance(score, int) and score > 0
    assert backend_spec.dist_name, "the spec should know which distribution ships it"
