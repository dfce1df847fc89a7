"""Heron: fast LLM inference and serving.

``from heron import LLM, SamplingParams`` is the offline API; ``AsyncLLM`` serves asyncio apps.
Imports are lazy so that ``heron plugins`` and the CLI start without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from heron.engine.async_llm import AsyncLLM
    from heron.engine.llm import LLM
    from heron.outputs import CompletionOutput, RequestOutput
    from heron.pooling import EmbeddingRequestOutput, PoolingParams
    from heron.sampling_params import SamplingParams

_LAZY = {
    "LLM": "heron.engine.llm",
    "AsyncLLM": "heron.engine.async_llm",
    "SamplingParams": "heron.sampling_params",
    "RequestOutput": "heron.outputs",
    "CompletionOutput": "heron.outputs",
    "EngineArgs": "heron.config",
    "PoolingParams": "heron.pooling",
    "EmbeddingRequestOutput": "heron.pooling",
}

__all__ = [
    "LLM",
    "AsyncLLM",
    "CompletionOutput",
    "EmbeddingRequestOutput",
    "EngineArgs",
    "PoolingParams",
    "RequestOutput",
    "SamplingParams",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'heron' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
