"""Discovery of an out-of-tree backend that is a real installed distribution with entry points.

One distribution ships three entry points: a working backend, one whose import fails, and one
written against a future API major. Each is checked in a fresh subprocess, as a user would see it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DIST = "heron-dummy-backend"

PYPROJECT = f"""
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{DIST}"
version = "0.3.1"
dependencies = ["heron-interfaces>=1.0,<2"]

[project.entry-points."heron.backends"]
dummy = "heron_dummy"
broken = "heron_dummy_broken"
future = "heron_dummy_future"

[project.entry-points."heron.plugins"]
dummy_models = "heron_dummy_models"

[tool.setuptools]
py-modules = ["heron_dummy", "heron_dummy_broken", "heron_dummy_future", "heron_dummy_models"]
"""

GOOD = """
from heron_interfaces import API_VERSION, BackendSpec, hookimpl

@hookimpl
def heron_register_backends(registry):
    registry.register(BackendSpec(
        name="dummy", api_version=API_VERSION,
        platform="heron.backends.reference:ReferencePlatform", probe=lambda: 1000,
    ))
"""

MODELS = """
from heron_interfaces import hookimpl

@hookimpl
def heron_register_models(registry):
    registry.register("HeronDummyForCausalLM", "heron.models.llama:LlamaForCausalLM")
"""

BROKEN = "import a_module_that_does_not_exist  # noqa\n"

FUTURE = """
from heron_interfaces import BackendSpec, hookimpl

@hookimpl
def heron_register_backends(registry):
    registry.register(BackendSpec(
        name="future", api_version=(2, 0), platform="x:Y", probe=lambda: 5000,
    ))
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("dummy_src")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "heron_dummy.py").write_text(GOOD)
    (src / "heron_dummy_broken.py").write_text(BROKEN)
    (src / "heron_dummy_future.py").write_text(FUTURE)
    (src / "heron_dummy_models.py").write_text(MODELS)
    target = tmp_path_factory.mktemp("dummy_site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
    )
    return target


def run_heron(plugin_path: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HERON_")}
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(plugin_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )


REPORT = """
import json
from heron.plugins import load_plugins
import os
host = load_plugins()
selected = host.select_backend(os.environ.get("HERON_BACKEND") or None).name
print(json.dumps({
    "selected": selected,
    "backends": {n: [b.dist_name, b.dist_version, b.score] for n, b in host.backends.items()},
    "plugins": {p.name: [p.dist_name, p.dist_version, p.error] for p in host.plugins},
}))
"""


def test_discovered_selected_and_failures_reported(plugin_path: Path) -> None:
    proc = run_heron(plugin_path, REPORT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["selected"] == "dummy"  # highest score wins
    assert report["backends"]["dummy"] == [DIST, "0.3.1", 1000]
    assert "reference" in report["backends"]
    broken = report["plugins"]["broken"]
    assert broken[:2] == [DIST, "0.3.1"]
    assert "a_module_that_does_not_exist" in broken[2]
    future = report["plugins"]["future"]
    assert "API 2.0" in future[2] and "1.x" in future[2]
    assert "future" not in report["backends"]
    # the skipped plugins are logged with their distribution, not raised
    assert DIST in proc.stderr


def test_forced_backend(plugin_path: Path) -> None:
    proc = run_heron(plugin_path, REPORT, HERON_BACKEND="reference")
    assert json.loads(proc.stdout)["selected"] == "reference"
    proc = run_heron(plugin_path, REPORT, HERON_BACKEND="nosuch")
    assert proc.returncode != 0
    assert "HERON_BACKEND='nosuch' names no installed backend" in proc.stderr
    assert "heron-cpu" in proc.stderr


def test_allow_list_limits_loading(plugin_path: Path) -> None:
    proc = run_heron(plugin_path, REPORT, HERON_PLUGINS="dummy")
    report = json.loads(proc.stdout)
    assert "broken" not in report["plugins"] and "future" not in report["plugins"]
    assert report["selected"] == "dummy"
    proc = run_heron(plugin_path, REPORT, HERON_PLUGINS="")
    report = json.loads(proc.stdout)
    assert set(report["backends"]) == {"reference"}  # core's own backend is always there


def test_heron_plugins_command(plugin_path: Path) -> None:
    proc = run_heron(
        plugin_path,
        "import sys; from heron.cli import main; sys.exit(main(['plugins']))",
        HERON_BACKEND="dummy",
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "* dummy" in out and f"{DIST} 0.3.1" in out
    assert "SKIPPED: import failed" in out
    assert "Selected backend: dummy" in out
    # Which communicator each available backend's ranks use (tensor/pipeline parallelism).
    assert "communicator Communicator (gloo)" in out


def test_forced_backend_that_probes_zero_is_explained() -> None:
    from heron.plugins import BackendRecord, NoBackendError, PluginHost, _probe
    from heron_interfaces import BackendSpec

    spec = BackendSpec(
        name="gone",
        api_version=(1, 0),
        platform="x:Y",
        probe=lambda: 0,
        unavailable_reason=lambda: "no device found",
    )
    host = PluginHost()
    score, reason = _probe(spec)
    host.backends["gone"] = BackendRecord(
        spec=spec, dist_name="d", dist_version="1", score=score, reason=reason
    )
    with pytest.raises(NoBackendError, match="no device found"):
        host.select_backend("gone")
    with pytest.raises(NoBackendError, match="pip install heron-cpu"):
        host.select_backend()


def test_out_of_tree_model_architecture(plugin_path: Path) -> None:
    code = """
from heron.models import builtin_registry
from heron.plugins import load_plugins
registry = builtin_registry()
load_plugins().register_models(registry)
print(registry.resolve(["HeronDummyForCausalLM"]).__name__)
print("HeronDummyForCausalLM" in registry.supported())
"""
    proc = run_heron(plugin_path, code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["LlamaForCausalLM", "True"]
