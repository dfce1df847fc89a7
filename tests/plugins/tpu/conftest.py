"""Every heron-tpu test runs the kernels in Pallas's TPU interpreter, with race detection on.

Set per test (not at import) so that HERON_TPU_INTERPRET never leaks into other packages' tests
collected in the same pytest process. Without jax the whole directory skips, with the reason.
"""

from __future__ import annotations

import pytest

pytest.importorskip("jax", reason="heron-tpu's tests need jax (pip install ./plugins/tpu)")


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_TPU_INTERPRET", "1")
    monkeypatch.setenv("HERON_TPU_DETECT_RACES", "1")
