"""Result output shared by every ``heron bench`` subcommand: a readable table and a JSON file.

The JSON holds plain numbers (non-finite ones become ``null``, since ``NaN`` is not JSON and breaks
strict parsers such as ``jq``), the command's arguments and the environment, so that a result file
alone says what was measured and how.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TABLE_WIDTH = 60


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def environment() -> dict[str, Any]:
    """Where the numbers came from: versions, CPU count and the threading knobs that change them."""
    env: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    try:
        from heron import __version__

        env["heron"] = __version__
    except ImportError:  # pragma: no cover - heron is this package's own distribution
        env["heron"] = None
    for name in ("OMP_NUM_THREADS", "HERON_BACKEND", "HERON_CPU_KVCACHE_SPACE"):
        if name in os.environ:
            env[name] = os.environ[name]
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    return env


def write_json(path: str | Path, result: Mapping[str, Any]) -> None:
    """Write ``result`` as indented JSON, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(result), indent=1) + "\n", encoding="utf-8")


def fmt(value: Any, spec: str = ".2f") -> str:
    """A number for the table; ``n/a`` for missing or non-finite values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return format(value, spec)


def format_table(title: str, rows: Sequence[tuple[str, Any] | str]) -> str:
    """vLLM's result layout: a titled block of ``label: value`` rows; a bare string is a section
    header. Values that are not strings go through :func:`fmt`."""
    lines = [f" {title} ".center(TABLE_WIDTH, "=")]
    for row in rows:
        if isinstance(row, str):
            lines.append(f" {row} ".center(TABLE_WIDTH, "-"))
            continue
        label, value = row
        text = value if isinstance(value, str) else fmt(value)
        lines.append(f"{label + ':':<{TABLE_WIDTH - 16}}{text:>16}")
    lines.append("=" * TABLE_WIDTH)
    return "\n".join(lines)


def print_table(title: str, rows: Sequence[tuple[str, Any] | str]) -> None:
    print(format_table(title, rows), flush=True)
