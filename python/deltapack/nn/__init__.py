"""torch modules over compressed deltas and transformers integration."""

from .delta import DenseDelta, LowRankDelta, read_delta
from .delta_linear import DeltaLinear, MultiDeltaLinear
from .load import load, materialize

__all__ = ["DeltaLinear", "MultiDeltaLinear", "DenseDelta", "LowRankDelta", "read_delta", "load", "materialize"]
