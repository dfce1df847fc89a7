"""Find an installed backend the way core does, without importing core.

A vendor runs the conformance suite with only ``heron-interfaces`` and their own backend installed,
so the suite cannot use core's plugin loader. This module repeats the small part of it the suite
needs: load each ``heron.backends`` entry point inside a guard, call its
``heron_register_backends`` hookimpl through pluggy with a local registrar, and resolve the chosen
spec's platform.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

import pluggy

from heron_interfaces import API_VERSION, BACKENDS_ENTRY_POINT_GROUP, PROJECT_NAME, hookspecs
from heron_interfaces.registries import BackendSpec

if TYPE_CHECKING:
    from heron_interfaces.platform import Platform


class BackendLoadError(RuntimeError):
    """The requested backend cannot be loaded; the message says why and what else is installed."""


class _Registrar:
    """The ``registry`` argument of ``heron_register_backends``: records specs, stamps the dist."""

    def __init__(self, dist_name: str | None) -> None:
        self._dist_name = dist_name
        self.specs: list[BackendSpec] = []

    def register(self, spec: BackendSpec) -> None:
        if not isinstance(spec, BackendSpec):
            raise TypeError(f"registry.register() takes a BackendSpec, got {type(spec).__name__}")
        if spec.dist_name is None and self._dist_name is not None:
            spec = dataclasses.replace(spec, dist_name=self._dist_name)
        self.specs.append(spec)


def _dist_name(ep: EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else None


def discover_backends(
    eps: Iterable[EntryPoint] | None = None,
) -> tuple[dict[str, BackendSpec], dict[str, str]]:
    """Every registered backend spec by name, and the load error of every entry point that failed.

    Each entry point gets its own :class:`pluggy.PluginManager`, so one broken plugin neither hides
    the others nor is blamed on them. The first spec registered under a name wins, as in core.
    """
    if eps is None:
        eps = entry_points(group=BACKENDS_ENTRY_POINT_GROUP)
    specs: dict[str, BackendSpec] = {}
    errors: dict[str, str] = {}
    for ep in eps:
        dist = _dist_name(ep)
        label = f"{ep.name} ({dist or ep.value})"
        registrar = _Registrar(dist)
        try:
            module = ep.load()
            manager = pluggy.PluginManager(PROJECT_NAME)
            manager.add_hookspecs(hookspecs)
            manager.register(module, name=f"{BACKENDS_ENTRY_POINT_GROUP}:{ep.name}")
            manager.hook.heron_register_backends(registry=registrar)
        except Exception as exc:  # a broken plugin is reported, never fatal
            errors[label] = f"{type(exc).__name__}: {exc}"
            continue
        for spec in registrar.specs:
            specs.setdefault(spec.name, spec)
    return specs, errors


def resolve_ref(ref: object) -> object:
    """Resolve a lazy ``"package.module:Attribute"`` reference; anything else is returned as is."""
    if not isinstance(ref, str):
        return ref
    module_name, sep, attr_path = ref.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"reference {ref!r} is not of the form 'package.module:Attribute'")
    obj: object = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def platform_ref(platform: type[Platform]) -> str:
    """The ``"module:Qualname"`` string of a platform class, to re-resolve it in a child process."""
    return f"{platform.__module__}:{platform.__qualname__}"


def _as_platform(obj: object, origin: str) -> type[Platform]:
    from heron_interfaces.platform import Platform

    if not (isinstance(obj, type) and issubclass(obj, Platform)):
        raise BackendLoadError(f"{origin} resolved to {obj!r}, which is not a Platform subclass")
    return obj


def load_platform(
    name: str | None = None,
    platform: str | None = None,
    eps: Iterable[EntryPoint] | None = None,
) -> tuple[type[Platform], BackendSpec | None]:
    """The platform under test, chosen by backend ``name`` or by a ``"pkg.mod:Class"`` reference.

    Selecting by name also checks what core would check: the API major matches and ``probe()`` says
    the backend is usable here (a backend that cannot run cannot be tested).
    """
    if (name is None) == (platform is None):
        raise ValueError("give exactly one of a backend name or a platform reference")
    if platform is not None:
        try:
            obj = resolve_ref(platform)
        except (ImportError, AttributeError, ValueError) as exc:
            raise BackendLoadError(f"cannot import platform {platform!r}: {exc}") from exc
        return _as_platform(obj, repr(platform)), None

    specs, errors = discover_backends(eps)
    spec = specs.get(name)  # type: ignore[arg-type]
    if spec is None:
        found = ", ".join(sorted(specs)) or "none"
        failed = "".join(f"\n  {label}: {err}" for label, err in errors.items())
        raise BackendLoadError(
            f"no backend named {name!r} in entry-point group {BACKENDS_ENTRY_POINT_GROUP!r} "
            f"(registered: {found})"
            + (f"; entry points that failed to load:{failed}" if failed else "")
        )
    if spec.api_version[0] != API_VERSION[0]:
        raise BackendLoadError(
            f"backend {name!r} ({spec.dist_name}) declares API {spec.api_version}, but "
            f"heron-interfaces is {API_VERSION}: the major versions differ"
        )
    score = spec.probe()
    if score <= 0:
        reason = spec.unavailable_reason() if spec.unavailable_reason else "probe() returned 0"
        raise BackendLoadError(f"backend {name!r} ({spec.dist_name}) is unavailable here: {reason}")
    try:
        obj = resolve_ref(spec.platform)
    except (ImportError, AttributeError, ValueError) as exc:
        raise BackendLoadError(f"backend {name!r}: cannot import its platform: {exc}") from exc
    return _as_platform(obj, f"backend {name!r}"), spec
