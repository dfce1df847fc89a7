"""The Heron backend conformance suite, as one collectable test module.

Run with ``pytest --pyargs heron_interfaces.testing.conformance --heron-backend NAME`` (see
:mod:`heron_interfaces.testing.plugin`), or star-import it into a backend's own test module. The
tests live in the ``*_suite`` modules next to this one; pytest collects the imported names here.
"""

from __future__ import annotations

from heron_interfaces.testing.attention_suite import (
    attention_backend_cls,
    capabilities,
    test_forward_block_boundaries,
    test_forward_fresh_prefill_matches_dense,
    test_forward_long_context,
    test_forward_matches_reference,
    test_forward_strided_qkv,
    test_kv_cache_layout,
    test_write_kv_matches_reference,
)
from heron_interfaces.testing.comm_suite import (
    collective_errors,
    test_collective,
    test_single_process_communicator_is_identity,
)
from heron_interfaces.testing.encoder_attention_suite import (
    test_default_has_no_encoder_attention,
    test_encoder_attention_matches_reference,
)
from heron_interfaces.testing.kernel_ops_suite import (
    kernel_ops,
    reference_ops,
    test_embedding_matches_reference,
    test_embedding_shard_matches_reference,
    test_gelu_matches_reference,
    test_layer_norm_matches_reference,
    test_linear_matches_reference,
    test_mean_pool_matches_reference,
    test_rms_norm_matches_reference,
    test_rotary_matches_reference,
    test_silu_and_mul_matches_reference,
    test_step_graph_replays_recorded_ops,
)
from heron_interfaces.testing.memory_suite import (
    profiler,
    test_peak_follows_allocation_and_resets,
    test_snapshot_is_sane,
)
from heron_interfaces.testing.moe_suite import (
    test_default_has_no_fused_experts,
    test_fused_moe_matches_reference,
)
from heron_interfaces.testing.noncausal_suite import (
    test_non_causal_forward_matches_reference,
    test_non_causal_prompt_matches_dense,
    test_non_causal_support_is_declared_honestly,
)
from heron_interfaces.testing.platform_suite import (
    test_attention_backend_agrees_with_capabilities,
    test_backend_spec,
    test_capabilities_are_consistent,
    test_platform_identity,
)
from heron_interfaces.testing.quantized_suite import test_quantized_linear_matches_dequantized
from heron_interfaces.testing.static_shapes_suite import (
    test_check_config_keeps_steps_within_buckets,
    test_padded_step_matches_unpadded,
    test_padding_buckets_are_declared,
)
from heron_interfaces.testing.window_suite import (
    test_sliding_window_matches_reference,
    test_sliding_window_prompt_matches_dense,
    test_soft_cap_matches_reference,
    test_window_and_soft_cap_support_are_declared_honestly,
)

__all__ = [
    "attention_backend_cls",
    "capabilities",
    "collective_errors",
    "kernel_ops",
    "profiler",
    "reference_ops",
    "test_attention_backend_agrees_with_capabilities",
    "test_backend_spec",
    "test_capabilities_are_consistent",
    "test_check_config_keeps_steps_within_buckets",
    "test_collective",
    "test_default_has_no_encoder_attention",
    "test_default_has_no_fused_experts",
    "test_embedding_matches_reference",
    "test_embedding_shard_matches_reference",
    "test_encoder_attention_matches_reference",
    "test_forward_block_boundaries",
    "test_forward_fresh_prefill_matches_dense",
    "test_forward_long_context",
    "test_forward_matches_reference",
    "test_forward_strided_qkv",
    "test_fused_moe_matches_reference",
    "test_gelu_matches_reference",
    "test_kv_cache_layout",
    "test_layer_norm_matches_reference",
    "test_linear_matches_reference",
    "test_mean_pool_matches_reference",
    "test_non_causal_forward_matches_reference",
    "test_non_causal_prompt_matches_dense",
    "test_non_causal_support_is_declared_honestly",
    "test_padded_step_matches_unpadded",
    "test_padding_buckets_are_declared",
    "test_peak_follows_allocation_and_resets",
    "test_platform_identity",
    "test_quantized_linear_matches_dequantized",
    "test_rms_norm_matches_reference",
    "test_rotary_matches_reference",
    "test_silu_and_mul_matches_reference",
    "test_single_process_communicator_is_identity",
    "test_sliding_window_matches_reference",
    "test_sliding_window_prompt_matches_dense",
    "test_snapshot_is_sane",
    "test_soft_cap_matches_reference",
    "test_step_graph_replays_recorded_ops",
    "test_window_and_soft_cap_support_are_declared_honestly",
    "test_write_kv_matches_reference",
]
