"""The contract itself: light to import, and every hook documented for vendors."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import heron_interfaces
from heron_interfaces import hookspecs

README = Path(__file__).resolve().parents[2] / "README.md"


def plugin_guide() -> str:
    text = README.read_text()
    match = re.search(r"^## Plugin guide\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, "README.md has no '## Plugin guide' section"
    return match.group(1)


def test_every_hookspec_is_documented_in_the_plugin_guide() -> None:
    guide = plugin_guide()
    hooks = [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("heron_")
    ]
    assert hooks, "no hook specifications found"
    missing = [h for h in hooks if f"`{h}" not in guide]
    assert not missing, f"hook specifications missing from README's plugin guide: {missing}"


def test_every_hookspec_has_a_docstring() -> None:
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("heron_"):
            assert fn.__doc__ and len(fn.__doc__.strip()) > 40, name


def test_import_is_light() -> None:
    code = (
        "import sys, heron_interfaces, heron_interfaces.testing.plugin;"
        "heavy = [m for m in ('torch', 'numpy', 'heron') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_api_version_shape() -> None:
    major, minor = heron_interfaces.API_VERSION
    assert isinstance(major, int) and isinstance(minor, int) and major >= 1
