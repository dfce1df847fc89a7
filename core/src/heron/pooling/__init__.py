"""Embeddings: the pooling runner mode of the engine (``runner="pooling"``).

``LLM.embed`` / ``AsyncLLM.encode`` and the server's ``/v1/embeddings`` run a model whose last
hidden states are pooled (mean, CLS or last token) instead of sampled; see :mod:`.config` for how
the pooler is chosen and :mod:`.scheduler` for how requests are batched.
"""

from heron.pooling.config import PoolerConfig, PoolerConfigError
from heron.pooling.outputs import (
    EmbeddingOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
)
from heron.pooling.params import PoolingParams, PoolingParamsError

__all__ = [
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "PoolerConfig",
    "PoolerConfigError",
    "PoolingOutput",
    "PoolingParams",
    "PoolingParamsError",
    "PoolingRequestOutput",
]
