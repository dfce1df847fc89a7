"""Core's pure-torch backend: always available, slow, and the oracle of the conformance suite.

It registers through the same ``heron_register_backends`` hook as any out-of-tree backend, with the
lowest score, so that any real backend wins when installed and Heron still runs anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from heron_interfaces import (
    API_VERSION,
    BackendRegistry,
    BackendSpec,
    Capabilities,
    MemoryProfiler,
    Platform,
    hookimpl,
)

if TYPE_CHECKING:
    pass

REFERENCE_SCORE = 1
KV_SPACE_ENV = "HERON_KVCACHE_SPACE"
DEFAULT_KV_SPACE_GIB = 1.0


class ReferencePlatform(Platform):
    name = "reference"
    device_type = "cpu"
    dist_backend = "gloo"

    @classmethod
    def device_count(cls) -> int:
        return 1

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            dtypes=("float32", "bfloat16", "float16"),
            kv_cache_dtypes=("float32", "bfloat16", "float16"),
            block_sizes=(16, 8, 32, 64, 128),
            default_dtype="float32",
        )

    @classmethod
    def attention_backend(cls) -> str:
        return "heron_interfaces.reference:ReferenceAttention"

    @classmethod
    def memory_profiler(cls) -> MemoryProfiler:
        from heron_interfaces.host_memory import HostMemoryProfiler

        return HostMemoryProfiler(env_var=KV_SPACE_ENV, default_gib=DEFAULT_KV_SPACE_GIB)

    @classmethod
    def memory_budget_hint(cls) -> str:
        return "set HERON_KVCACHE_SPACE (GiB) higher, or lower max_model_len / max_num_seqs"


@hookimpl
def heron_register_backends(registry: BackendRegistry) -> None:
    registry.register(
        BackendSpec(
            name="reference",
            api_version=API_VERSION,
            platform=ReferencePlatform,
            probe=lambda: REFERENCE_SCORE,
            dist_name="heron-core",
        )
    )
