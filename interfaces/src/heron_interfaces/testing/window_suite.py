"""Conformance tests of sliding-window attention and logit soft-capping, API 1.9.

A backend that declares ``supports_sliding_window`` must match the reference on windowed layers:
decodes, fresh prefills and chunks on top of cached blocks, windows smaller and larger than the
context, windows ending on and just off block boundaries. Blocks lying wholly before a sequence's
window are "freed" in these batches: their block-table entries name a block of NaNs (core hands
such blocks to other sequences), so a kernel that reads one, even to multiply it by zero, fails.
A backend that declares ``supports_logits_soft_cap`` must match the reference with a cap, alone
and together with a window (Gemma 2's local layers). A backend that declares neither must refuse
such layers in ``check_support``, so core names it instead of computing something else.
"""

from __future__ import annotations

import pytest
import torch

from heron_interfaces.attention import AttentionBackend
from heron_interfaces.platform import Capabilities, Platform
from heron_interfaces.testing.attention_suite import DTYPES, _require_dtype, _sizes, check_forward
from heron_interfaces.testing.batches import Scenario, make_batch


def _scenario(
    cls: type[AttentionBackend], caps: Capabilities, seqs: tuple[tuple[int, int], ...], **kw: object
) -> Scenario:
    """A small layer of the backend's first block and head size in the platform's dtype."""
    block_sizes, head_sizes = _sizes(cls, caps)
    fields: dict = {
        "seqs": seqs,
        "num_heads": 4,
        "num_kv_heads": 2,
        "head_size": head_sizes[0],
        "block_size": block_sizes[0],
        "dtype": caps.default_dtype,
    }
    fields.update(kw)
    return Scenario(**fields)


def test_window_and_soft_cap_support_are_declared_honestly(
    attention_backend_cls: type[AttentionBackend], capabilities: Capabilities
) -> None:
    """``check_support`` refuses a windowed (soft-capped) layer exactly when the backend does not
    declare the feature."""
    cls = attention_backend_cls
    windowed = _scenario(cls, capabilities, ((4, 1),), sliding_window=3).layer_spec()
    reasons = cls.check_support(windowed)
    if cls.supports_sliding_window:
        assert not reasons, reasons
    else:
        assert any("sliding-window" in r for r in reasons), reasons
    capped = _scenario(cls, capabilities, ((4, 1),), logits_soft_cap=30.0).layer_spec()
    reasons = cls.check_support(capped)
    if cls.supports_logits_soft_cap:
        assert not reasons, reasons
    else:
        assert any("soft-capping" in r for r in reasons), reasons


def _window_batches(bs: int) -> list[tuple[int, tuple[tuple[int, int], ...]]]:
    """``(window, seqs)`` cases in units of the block size ``bs``: windows smaller than the
    context (several whole blocks freed), larger than it (nothing freed), of one token, and
    windows whose start falls on, just before and just after a block boundary."""
    mixed = (
        (3 * bs + 5, 1),  # decodes
        (2 * bs, 1),
        (bs + 1, 1),
        (2 * bs + 3, 2 * bs + 3),  # a fresh prefill longer than the window
        (4 * bs + 2, bs + 3),  # a chunk on top of cached blocks
        (3, 3),
    )
    return [
        (bs + 3, mixed),
        (1, mixed),
        (bs, ((4 * bs, 1), (4 * bs + 1, 1), (3 * bs + 1, bs + 1), (2 * bs, 2 * bs))),
        (2 * bs + 1, ((4 * bs, 1), (4 * bs - 1, 1), (5 * bs, 2 * bs), (bs + 2, bs + 2))),
        (10 * bs, mixed),  # larger than every context: the same as full attention
    ]


@pytest.mark.parametrize("case", range(5))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sliding_window_matches_reference(
    attention_backend_cls: type[AttentionBackend],
    capabilities: Capabilities,
    backend_platform: type[Platform],
    backend_device: torch.device,
    dtype: str,
    case: int,
) -> None:
    """Mixed decode/prefill/chunk batches under a window, freed blocks full of NaN."""
    cls = attention_backend_cls
    if not cls.supports_sliding_window:
        pytest.skip(f"{cls.name} declares no sliding-window attention (such models are refused)")
    _require_dtype(capabilities, dtype)
    block_sizes, head_sizes = _sizes(cls, capabilities)
    bs = block_sizes[case % len(block_sizes)]
    window, seqs = _window_batches(bs)[case]
    scenario = _scenario(
        cls,
        capabilities,
        seqs,
        num_kv_heads=1 if case % 2 else 2,
        head_size=head_sizes[case % len(head_sizes)],
        block_size=bs,
        dtype=dtype,
        seed=900 + case,
        sliding_window=window,
    )
    check_forward(
        cls, make_batch(scenario), device=backend_device, synchronize=backend_platform.synchronize
    )


@pytest.mark.parametrize("windowed", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_cap_matches_reference(
    attention_backend_cls: type[AttentionBackend],
    capabilities: Capabilities,
    backend_platform: type[Platform],
    backend_device: torch.device,
    dtype: str,
    windowed: bool,
) -> None:
    """A cap small enough to bend the scores (queries scaled up), alone and with a window."""
    cls = attention_backend_cls
    if not cls.supports_logits_soft_cap:
        pytest.skip(f"{cls.name} declares no logit soft-capping (such models are refused)")
    if windowed and not cls.supports_sliding_window:
        pytest.skip(f"{cls.name} declares no sliding-window attention")
    _require_dtype(capabilities, dtype)
    bs = _sizes(cls, capabilities)[0][0]
    seqs = ((3 * bs + 1, 1), (2 * bs + 5, 2 * bs + 5), (3 * bs + 2, bs + 1))
    scenario = _scenario(
        cls,
        capabilities,
        seqs,
        dtype=dtype,
        seed=950 + windowed,
        logits_soft_cap=2.0,
        sliding_window=bs + 2 if windowed else None,
    )
    batch = make_batch(scenario)
    batch.query.mul_(4)  # scores of several units: tanh bends them
    check_forward(cls, batch, device=backend_device, synchronize=backend_platform.synchronize)


def test_sliding_window_prompt_matches_dense(
    attention_backend_cls: type[AttentionBackend],
    capabilities: Capabilities,
    backend_platform: type[Platform],
    backend_device: torch.device,
) -> None:
    """The reference's window is the dense oracle's, and differs from full causal attention."""
    from heron_interfaces.reference import dense_causal_attention
    from heron_interfaces.testing.attention_suite import _new_cache
    from heron_interfaces.testing.batches import TOLERANCES, batch_to

    cls = attention_backend_cls
    if not cls.supports_sliding_window:
        pytest.skip(f"{cls.name} declares no sliding-window attention")
    bs = _sizes(cls, capabilities)[0][0]
    length, window = 3 * bs + 3, bs + 1
    s = _scenario(cls, capabilities, ((length, length),), seed=31, sliding_window=window)
    batch = make_batch(s)
    scale = s.head_size**-0.5
    dense = dense_causal_attention(
        batch.query, batch.key, batch.value, scale, sliding_window=window
    )
    full = dense_causal_attention(batch.query, batch.key, batch.value, scale)
    on_device = batch_to(batch, backend_device)
    kv_cache, _, _ = _new_cache(cls, batch, backend_device)
    out = torch.empty_like(on_device.query)
    cls(s.layer_spec()).forward(
        on_device.query, on_device.key, on_device.value, kv_cache, on_device.metadata, out
    )
    backend_platform.synchronize()
    atol, rtol = TOLERANCES[s.dtype]
    torch.testing.assert_close(out.cpu(), dense, atol=atol, rtol=rtol)
    torch.testing.assert_close(out.cpu()[:window], full[:window], atol=atol, rtol=rtol)
    assert not torch.allclose(out.cpu()[window:], full[window:], atol=atol, rtol=rtol)
