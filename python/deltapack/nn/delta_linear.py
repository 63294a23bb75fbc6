"""DeltaLinear: y = x·W_baseᵀ + b + Δ(x), the base weight shared and the delta compressed."""

from __future__ import annotations

import torch
from torch import nn


class DeltaLinear(nn.Module):
    def __init__(self, base: nn.Linear, delta: nn.Module):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # shared with the base model, not copied
        self.bias = base.bias
        self.delta = delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias) + self.delta(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, delta={type(self.delta).__name__}"
