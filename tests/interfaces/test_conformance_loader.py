"""How the conformance suite finds a backend without core, and whether its checks have teeth."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest
import torch

from heron_interfaces import BackendSpec, hookimpl
from heron_interfaces.testing import BackendLoadError, discover_backends, load_platform
from heron_interfaces.testing.attention_suite import check_forward
from heron_interfaces.testing.batches import Scenario, make_batch

SELFTEST = "test_conformance_selftest"


@hookimpl
def heron_register_backends(registry) -> None:  # type: ignore[no-untyped-def]
    """This module doubles as a backend entry point: a usable toy, an unusable one, an old one."""
    registry.register(
        BackendSpec(
            name="toy", api_version=(1, 0), platform=f"{SELFTEST}:ToyPlatform", probe=lambda: 5
        )
    )
    registry.register(
        BackendSpec(
            name="absent",
            api_version=(1, 0),
            platform=f"{SELFTEST}:ToyPlatform",
            probe=lambda: 0,
            unavailable_reason=lambda: "no such device",
        )
    )
    registry.register(
        BackendSpec(name="ancient", api_version=(0, 9), platform="x:Y", probe=lambda: 1)
    )


def _eps() -> list[EntryPoint]:
    group = "heron.backends"
    return [
        EntryPoint(name="toys", value=__name__, group=group),
        EntryPoint(name="broken", value="heron_no_such_module_xyz", group=group),
    ]


@pytest.fixture(autouse=True)
def _selftest_importable() -> None:
    pytest.importorskip(SELFTEST)


def test_discover_reports_specs_and_broken_entry_points() -> None:
    specs, errors = discover_backends(_eps())
    assert set(specs) == {"toy", "absent", "ancient"}
    (label,) = errors
    assert label.startswith("broken") and "ModuleNotFoundError" in errors[label]


def test_load_platform_by_name() -> None:
    platform, spec = load_platform(name="toy", eps=_eps())
    assert platform.name == "toy" and spec is not None and spec.name == "toy"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("absent", "no such device"),
        ("ancient", "major versions differ"),
        ("missing", "registered: absent, ancient, toy"),
    ],
)
def test_load_platform_explains_failures(name: str, message: str) -> None:
    with pytest.raises(BackendLoadError, match=message):
        load_platform(name=name, eps=_eps())


def test_load_platform_by_reference() -> None:
    platform, spec = load_platform(platform=f"{SELFTEST}:ToyPlatform")
    assert platform.name == "toy" and spec is None
    with pytest.raises(BackendLoadError, match="not a Platform"):
        load_platform(platform=f"{SELFTEST}:ToyAttention")
    with pytest.raises(BackendLoadError, match="cannot import"):
        load_platform(platform="heron_no_such_module_xyz:Platform")


def test_suite_catches_a_wrong_gqa_mapping() -> None:
    """A backend that maps query heads to KV heads round-robin instead of in groups must fail."""
    from test_conformance_selftest import ToyAttention

    class WrongGroups(ToyAttention):
        def forward(self, query, key, value, kv_cache, metadata, out):  # type: ignore[no-untyped-def]
            kv_heads = kv_cache.shape[3]
            order = torch.arange(query.shape[1]).view(kv_heads, -1).t().reshape(-1)
            return super().forward(query[:, order], key, value, kv_cache, metadata, out)

    s = Scenario(
        seqs=((20, 1), (9, 9)),
        num_heads=4,
        num_kv_heads=2,
        head_size=64,
        block_size=16,
        dtype="float32",
    )
    check_forward(ToyAttention, make_batch(s))
    with pytest.raises(AssertionError):
        check_forward(WrongGroups, make_batch(s))


def test_suite_catches_reads_past_the_context() -> None:
    """A backend that attends over whole blocks (past ``seq_lens``) meets the NaN-filled slots."""
    from test_conformance_selftest import ToyAttention

    class WholeBlocks(ToyAttention):
        def forward(self, query, key, value, kv_cache, metadata, out):  # type: ignore[no-untyped-def]
            bs = kv_cache.shape[2]
            metadata.seq_lens = (metadata.seq_lens + bs - 1) // bs * bs
            return super().forward(query, key, value, kv_cache, metadata, out)

    s = Scenario(
        seqs=((21, 1),), num_heads=2, num_kv_heads=2, head_size=64, block_size=16, dtype="float32"
    )
    with pytest.raises(AssertionError):
        check_forward(WholeBlocks, make_batch(s))


def test_command_line_selection(tmp_path: pytest.TempPathFactory) -> None:
    """``--heron-backend-platform`` wires the plugin's fixture to the collected suite module."""
    import test_conformance_selftest

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--pyargs",
            "heron_interfaces.testing.conformance",
            "--heron-backend-platform",
            f"{SELFTEST}:ToyPlatform",
            "-k",
            "platform_identity or kv_cache_layout",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env={
            **__import__("os").environ,
            "PYTHONPATH": test_conformance_selftest.__file__.rsplit("/", 1)[0],
        },
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_without_selection_the_suite_skips(tmp_path: pytest.TempPathFactory) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--pyargs",
            "heron_interfaces.testing.conformance",
            "-k",
            "platform_identity",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout


def test_a_backend_that_cannot_load_stops_the_run_with_one_message(
    tmp_path: pytest.TempPathFactory,
) -> None:
    """Not one setup error per test of the suite: pytest's usage-error status and the reason."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "heron_interfaces.testing",
            "no-such-backend",
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    assert output.count("no backend named 'no-such-backend'") == 1, output
    assert "registered:" in output and "ERROR at setup" not in output
