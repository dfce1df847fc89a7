"""Registrar objects handed to the hooks, and the backend description a backend registers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from heron_interfaces.platform import Platform


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendSpec:
    """What a backend tells core about itself.

    Attributes:
        name: short name users type in ``HERON_BACKEND`` (``"cpu"``, ``"cuda"``).
        api_version: the ``heron_interfaces.API_VERSION`` the backend was written against.
        platform: the :class:`Platform` subclass, or a lazy ``"package.module:Class"`` string so that
            core resolves it only for the selected backend.
        probe: returns an availability score; 0 means unusable. It must not initialise a device.
        unavailable_reason: optional; called when ``probe()`` returns 0 to tell the user why.
        dist_name: the distribution that ships the backend (filled in by core when omitted).
    """

    name: str
    api_version: tuple[int, int]
    platform: type[Platform] | str
    probe: Callable[[], int]
    unavailable_reason: Callable[[], str] | None = None
    dist_name: str | None = field(default=None)


class BackendRegistry(Protocol):
    """The registrar passed to ``heron_register_backends``."""

    def register(self, spec: BackendSpec) -> None:
        """Record ``spec``; a second spec with the same name replaces nothing and is reported."""


class ModelRegistry(Protocol):
    """The registrar passed to ``heron_register_models``."""

    def register(self, architecture: str, model_cls: type | str) -> None:
        """Map a ``config.architectures`` entry to a model class or a lazy ``"pkg.mod:Class"``."""
