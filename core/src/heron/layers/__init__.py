"""Building blocks of Heron's models: plain torch modules over flattened tokens."""

from heron.layers.activation import SiluAndMul
from heron.layers.embedding import VocabParallelEmbedding
from heron.layers.linear import (
    ColumnParallelLinear,
    FusedLinear,
    Linear,
    RowParallelLinear,
    copy_weight,
)
from heron.layers.norm import RMSNorm
from heron.layers.rotary import RotaryEmbedding, rope_parameters

__all__ = [
    "ColumnParallelLinear",
    "FusedLinear",
    "Linear",
    "RMSNorm",
    "RotaryEmbedding",
    "RowParallelLinear",
    "SiluAndMul",
    "VocabParallelEmbedding",
    "copy_weight",
    "rope_parameters",
]
