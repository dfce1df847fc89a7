"""Discovery of backends and general plugins through pluggy and entry points.

Every entry point loads inside a guard: a plugin that fails to import, fails to register, or was
written against another major version of ``heron-interfaces`` is skipped and reported with its
distribution, never allowed to stop Heron from starting (the failure mode vLLM plugin users report
most). Probing is cheap by contract, so every backend is probed and the highest score wins.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from heron_interfaces import (
    API_VERSION,
    BACKENDS_ENTRY_POINT_GROUP,
    PLUGINS_ENTRY_POINT_GROUP,
    PROJECT_NAME,
    BackendSpec,
    Platform,
    hookspecs,
)

logger = logging.getLogger(__name__)

KNOWN_BACKEND_PACKAGES = ("heron-cpu", "heron-cuda", "heron-rocm", "heron-xpu")
BUILTIN_BACKEND_MODULES = ("heron.backends.reference",)


class NoBackendError(RuntimeError):
    """No installed backend can run here (or the forced one cannot)."""


@dataclass(slots=True, kw_only=True)
class PluginRecord:
    """One entry point as the user should see it in ``heron plugins``."""

    name: str
    group: str
    dist_name: str
    dist_version: str
    error: str | None = None

    @property
    def loaded(self) -> bool:
        return self.error is None


@dataclass(slots=True, kw_only=True)
class BackendRecord:
    spec: BackendSpec
    dist_name: str
    dist_version: str
    score: int = 0
    reason: str | None = None
    """Why the backend is unusable here, when ``score`` is 0."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def available(self) -> bool:
        return self.score > 0


class _BackendRegistrar:
    """The registrar handed to ``heron_register_backends``: records specs with their origin."""

    def __init__(self, host: PluginHost) -> None:
        self._host = host
        self.current: PluginRecord | None = None

    def register(self, spec: BackendSpec) -> None:
        origin = self.current
        dist_name = spec.dist_name or (origin.dist_name if origin else "heron-core")
        dist_version = origin.dist_version if origin else _dist_version("heron-core")
        major, minor = spec.api_version
        if major != API_VERSION[0]:
            self._host.report_failure(
                origin,
                f"backend {spec.name!r} declares heron-interfaces API {major}.{minor}, "
                f"but this core speaks {API_VERSION[0]}.x",
            )
            return
        if minor > API_VERSION[1]:
            warnings.warn(
                f"backend {spec.name!r} ({dist_name}) was written for heron-interfaces "
                f"{major}.{minor}, newer than this core's {API_VERSION[0]}.{API_VERSION[1]}; "
                "features it relies on may be missing",
                stacklevel=2,
            )
        if spec.name in self._host.backends:
            self._host.report_failure(
                origin,
                f"backend name {spec.name!r} is already registered by "
                f"{self._host.backends[spec.name].dist_name}",
            )
            return
        self._host.backends[spec.name] = BackendRecord(
            spec=spec, dist_name=dist_name, dist_version=dist_version
        )


@dataclass
class PluginHost:
    """Loads plugins once per process and answers which backend runs and which models exist."""

    pm: pluggy.PluginManager = field(default_factory=lambda: pluggy.PluginManager(PROJECT_NAME))
    plugins: list[PluginRecord] = field(default_factory=list)
    backends: dict[str, BackendRecord] = field(default_factory=dict)
    _origins: dict[int, PluginRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pm.add_hookspecs(hookspecs)

    # -- loading ---------------------------------------------------------------------------------
    def load(self, allowed: set[str] | None = None) -> PluginHost:
        """Register core's built-ins, then every allowed entry point, each inside a guard."""
        for module_name in BUILTIN_BACKEND_MODULES:
            module = importlib.import_module(module_name)
            self._register(
                module,
                PluginRecord(
                    name=module_name.rsplit(".", 1)[-1],
                    group=BACKENDS_ENTRY_POINT_GROUP,
                    dist_name="heron-core",
                    dist_version=_dist_version("heron-core"),
                ),
            )
        for group in (BACKENDS_ENTRY_POINT_GROUP, PLUGINS_ENTRY_POINT_GROUP):
            for ep in entry_points(group=group):
                if allowed is not None and ep.name not in allowed:
                    continue
                self._load_entry_point(ep, group)
        self._collect_backends()
        return self

    def _load_entry_point(self, ep: EntryPoint, group: str) -> None:
        dist = ep.dist
        record = PluginRecord(
            name=ep.name,
            group=group,
            dist_name=dist.name if dist else "?",
            dist_version=dist.version if dist else "?",
        )
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must never stop Heron
            self.report_failure(record, f"import failed: {type(exc).__name__}: {exc}")
            return
        if self.pm.is_registered(module):
            return  # core's built-in, also declared as an entry point of heron-core
        self._register(module, record)

    def _register(self, module: ModuleType, record: PluginRecord) -> None:
        try:
            self.pm.register(module, name=f"{record.group}:{record.name}")
        except Exception as exc:
            self.report_failure(record, f"registration failed: {type(exc).__name__}: {exc}")
            return
        self.plugins.append(record)
        self._origins[id(module)] = record

    def report_failure(self, record: PluginRecord | None, error: str) -> None:
        if record is None:
            logger.warning("Skipping a plugin: %s", error)
            return
        record.error = error
        if record not in self.plugins:
            self.plugins.append(record)
        logger.warning(
            "Skipping plugin %r from %s %s: %s",
            record.name,
            record.dist_name,
            record.dist_version,
            error,
        )

    def _collect_backends(self) -> None:
        registrar = _BackendRegistrar(self)
        for impl in self.pm.hook.heron_register_backends.get_hookimpls():
            registrar.current = self._origins.get(id(impl.plugin))
            try:
                impl.function(registry=registrar)
            except Exception as exc:
                self.report_failure(
                    registrar.current, f"heron_register_backends raised {type(exc).__name__}: {exc}"
                )
        for record in self.backends.values():
            record.score, record.reason = _probe(record.spec)

    def register_models(self, registry: Any) -> None:
        """Let every plugin add model architectures; one failing plugin is reported and skipped."""
        for impl in self.pm.hook.heron_register_models.get_hookimpls():
            try:
                impl.function(registry=registry)
            except Exception as exc:
                self.report_failure(
                    self._origins.get(id(impl.plugin)),
                    f"heron_register_models raised {type(exc).__name__}: {exc}",
                )

    # -- selection -------------------------------------------------------------------------------
    def select_backend(self, forced: str | None = None) -> BackendRecord:
        """The forced backend, else the available one with the highest probe score."""
        if forced:
            record = self.backends.get(forced)
            if record is None:
                known = ", ".join(sorted(self.backends)) or "none"
                raise NoBackendError(
                    f"HERON_BACKEND={forced!r} names no installed backend (installed: {known}). "
                    f"Backend packages: {', '.join(KNOWN_BACKEND_PACKAGES)}."
                )
            if not record.available:
                raise NoBackendError(f"backend {forced!r} is not available here: {record.reason}")
            return record
        usable = [r for r in self.backends.values() if r.available]
        if not usable:
            details = "; ".join(f"{r.name}: {r.reason}" for r in self.backends.values()) or "none"
            raise NoBackendError(
                "no usable Heron backend is installed (found: "
                f"{details}). Install one: pip install {' or '.join(KNOWN_BACKEND_PACKAGES)}"
            )
        return max(usable, key=lambda r: r.score)


def _probe(spec: BackendSpec) -> tuple[int, str | None]:
    try:
        score = int(spec.probe())
    except Exception as exc:
        return 0, f"probe() raised {type(exc).__name__}: {exc}"
    if score > 0:
        return score, None
    reason = "probe() returned 0"
    if spec.unavailable_reason is not None:
        try:
            reason = spec.unavailable_reason()
        except Exception as exc:
            reason = f"unavailable_reason() raised {type(exc).__name__}: {exc}"
    return 0, reason


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "(not installed)"


def allowed_plugins_from_env() -> set[str] | None:
    """``HERON_PLUGINS=a,b`` limits which entry points load; set but empty means none."""
    value = os.environ.get("HERON_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def load_plugins() -> PluginHost:
    """A fresh host with every allowed plugin loaded (cheap: no device is touched)."""
    return PluginHost().load(allowed_plugins_from_env())


def resolve_platform(record: BackendRecord) -> type[Platform]:
    """The selected backend's Platform class, importing a lazy reference only now."""
    return resolve_reference(record.spec.platform)


def resolve_reference(ref: Any) -> Any:
    """``"package.module:Name"`` to the object; anything else is returned as is."""
    if not isinstance(ref, str):
        return ref
    module_name, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def select_platform(host: PluginHost | None = None) -> tuple[type[Platform], BackendRecord]:
    """Load plugins, pick the backend (``HERON_BACKEND`` wins), and log what was chosen."""
    host = host or load_plugins()
    record = host.select_backend(os.environ.get("HERON_BACKEND") or None)
    platform = resolve_platform(record)
    others = [r.name for r in host.backends.values() if r.available and r is not record]
    logger.info(
        "Backend: %s (%s %s, score %d)%s",
        record.name,
        record.dist_name,
        record.dist_version,
        record.score,
        f"; also available: {', '.join(others)}" if others else "",
    )
    return platform, record
