"""A stored delta as a torch module computing Δ·x (reference path: plain torch on the
dequantized factors). The manifest entry's semantics are docs/FORMAT.md §4."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..format import DeltaFile
from ..kernels.reference import dequantize


def _tensor(f: DeltaFile, name: str, device, dtype) -> torch.Tensor:
    info = f.info(name)
    t = f.raw(name) if info.is_raw else dequantize(f.packed(name))
    return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)


class DenseDelta(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.to(x.dtype))

    def dense(self) -> torch.Tensor:
        return self.weight


class LowRankDelta(nn.Module):
    """Δ·x = U·diag(s)·Vᵀ·x[perm], blocks concatenated along the rank."""

    def __init__(self, u: torch.Tensor, s: torch.Tensor, vt: torch.Tensor, perm: torch.Tensor | None):
        super().__init__()
        self.register_buffer("u", u)
        self.register_buffer("s", s)
        self.register_buffer("vt", vt)
        self.register_buffer("perm", perm.long() if perm is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        t = nn.functional.linear(x, self.vt.to(x.dtype)) * self.s.to(x.dtype)
        return nn.functional.linear(t, self.u.to(x.dtype))

    def dense(self, s: torch.Tensor | None = None) -> torch.Tensor:
        """The dense float32 Δ [out, in]; with ``s``, that vector of singular values instead
        of the stored one (differentiable in ``s``: scale distillation trains it)."""
        return lowrank_dense(self.u, self.s if s is None else s, self.vt, self.perm)


def lowrank_dense(u: torch.Tensor, s: torch.Tensor, vt: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """Δ = U·diag(s)·Vᵀ in float32 [out, in], Vᵀ's input columns put back from the stored
    (act-order) order: stored column j is input column ``perm[j]``. Differentiable in every
    argument (scale distillation trains s and the factors' group scales through it)."""
    m = (u.float() * s.float()) @ vt.float()
    if perm is None:
        return m
    out = torch.empty_like(m)
    out[:, perm.long()] = m
    return out


def read_delta(f: DeltaFile, entry: dict[str, Any], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """The module computing one manifest delta entry's Δ·x."""
    if entry["form"] == "dense":
        return DenseDelta(_tensor(f, entry["tensor"], device, dtype))
    us, ss, vts = [], [], []
    for u_name, transposed, s_name, vt_name in lowrank_blocks(entry):
        u = _tensor(f, u_name, device, dtype)
        u = u.T if transposed else u
        us.append(u)
        vts.append(_tensor(f, vt_name, device, dtype))
        ss.append(_tensor(f, s_name, device, dtype) if s_name else torch.ones(u.shape[1], device=device, dtype=dtype))
    perm = _tensor(f, entry["input_perm"], device, dtype) if entry.get("input_perm") else None
    return LowRankDelta(torch.cat(us, 1), torch.cat(ss), torch.cat(vts, 0), perm)


def lowrank_blocks(entry: dict[str, Any]) -> list[tuple[str, bool, str | None, str]]:
    """Per block of a low-rank manifest entry (docs/FORMAT.md §4): the tensor names of its U
    factor — ``u`` [out, r], or ``ut`` [r, out] (then ``True``: stored transposed) — its singular
    values ``s`` (None: all ones) and its ``vt``."""
    return [(b["u"], False, b.get("s"), b["vt"]) if b.get("u") else (b["ut"], True, b.get("s"), b["vt"]) for b in entry["blocks"]]
