"""What the installed torch was built for, read from its ``version.py`` without importing torch.

Probing must stay cheap (importing torch takes seconds and may touch drivers), yet "this torch is a
CPU-only build" is the most common reason a GPU backend cannot run. torch records its build in a
plain ``version.py`` (``cuda = '12.8'``, ``hip = None``), which :mod:`ast` reads safely.

This module is shared verbatim by heron_cuda and heron_rocm (plugins/rocm's CMake installs it).
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TorchBuild:
    """The build fields of torch/version.py; ``None`` where torch was built without that runtime."""

    version: str | None
    cuda: str | None
    hip: str | None


def installed_torch_build() -> TorchBuild | None:
    """The installed torch's build; ``None`` if torch is missing or its version file unreadable."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "version.py"
        if path.is_file():
            return _parse_version_file(path)
    return None


def _parse_version_file(path: Path) -> TorchBuild | None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    fields: dict[str, str | None] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if (
            isinstance(target, ast.Name)
            and isinstance(value, ast.Constant)
            and (value.value is None or isinstance(value.value, str))
        ):
            fields[target.id] = value.value
    return TorchBuild(
        version=fields.get("__version__"), cuda=fields.get("cuda"), hip=fields.get("hip")
    )
