"""DeltaLinear: y = x·W_baseᵀ + b + Δ(x), the base weight shared and the delta compressed;
MultiDeltaLinear: one base weight and many deltas, each row of a batch on its own delta."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import ops
from ..kernels.packed import DeltaTable, KernelDelta, RowGroups


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


class DeltaLinear(nn.Module):
    """Base linear plus one delta. ``delta`` is either a torch module computing Δ·x from
    dequantized factors (the reference path, used on the CPU) or a :class:`KernelDelta` kept
    packed and applied by the kernels (``backend``: see :mod:`deltapack.kernels.ops`)."""

    def __init__(self, base: nn.Linear, delta: nn.Module | KernelDelta, backend: str | None = None):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # shared with the base model, not copied
        self.bias = base.bias
        self.backend = backend
        if isinstance(delta, KernelDelta):
            self.delta = None
            self.table: DeltaTable | None = DeltaTable.build([delta])
        else:
            self.delta = delta
            self.table = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x, self.weight, self.bias)
        if self.table is None:
            return y + self.delta(x)
        x2, y2 = _rows(x), y.reshape(-1, self.out_features)
        ops.delta_apply(x2, y2, self.table, RowGroups.single(x2.shape[0], x2.device), backend=self.backend)
        return y2.reshape(y.shape)

    def extra_repr(self) -> str:
        kind = type(self.delta).__name__ if self.delta is not None else f"packed {self.table.nbytes()} B"
        return f"in_features={self.in_features}, out_features={self.out_features}, delta={kind}"


class MultiDeltaLinear(nn.Module):
    """One base linear and the packed deltas of many fine-tunes (slots 0..n−1). ``forward(x,
    groups)`` adds, for each row, the delta of its slot (−1: base only) in one kernel launch
    pair whatever the mix of methods and bit widths; ``groups`` from ``RowGroups.per_row``
    (decode) or ``RowGroups.segments`` (prefill), or set once for a whole model with
    :meth:`use_rows` when the module sits inside a transformers model."""

    def __init__(self, base: nn.Linear, deltas: list[KernelDelta], backend: str | None = None):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.backend = backend
        self.table = DeltaTable.build(deltas)
        self.groups: RowGroups | None = None

    def use_rows(self, groups: RowGroups | None) -> None:
        self.groups = groups

    def forward(self, x: torch.Tensor, groups: RowGroups | None = None) -> torch.Tensor:
        groups = groups or self.groups
        y = nn.functional.linear(x, self.weight, self.bias)
        if groups is None:
            return y
        x2, y2 = _rows(x), y.reshape(-1, self.out_features)
        ops.delta_apply(x2, y2, self.table, groups, backend=self.backend)
        return y2.reshape(y.shape)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, deltas={self.table.n_slots}"
