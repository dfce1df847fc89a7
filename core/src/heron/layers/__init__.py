"""Building blocks of Heron's models: plain torch modules over flattened tokens."""

from heron.layers.activation import SiluAndMul
from heron.layers.linear import FusedLinear, Linear, copy_weight
from heron.layers.norm import RMSNorm
from heron.layers.rotary import RotaryEmbedding, rope_parameters

__all__ = [
    "FusedLinear",
    "Linear",
    "RMSNorm",
    "RotaryEmbedding",
    "SiluAndMul",
    "copy_weight",
    "rope_parameters",
]
