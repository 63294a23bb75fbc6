"""What every compression method produces: stored parts (raw, quantized or 2:4 sparse
tensors), how they combine into one matrix's delta, the exact bytes they cost, and the
dense approximation the pipeline measures error with."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from .. import _core
from ..format import DeltaWriter
from .plan import sparse24_bytes


@dataclass
class RawPart:
    tensor: torch.Tensor


@dataclass
class QuantPart:
    """value = (code - zero) * scale, groups of ``group_size`` columns (None: one per row,
    0: one for the whole tensor); ``zeros`` stored per group, or ``zero_point`` constant."""

    codes: torch.Tensor  # uint8 [rows, cols]
    bits: int
    scales: torch.Tensor
    zeros: torch.Tensor | None = None
    zero_point: float | None = None
    group_size: int | None = None

    @property
    def granularity(self) -> str:
        return "row" if self.group_size is None else ("tensor" if self.group_size == 0 else "group")


@dataclass
class SparsePart:
    codes: torch.Tensor  # uint8 [rows, cols/2]
    indices: torch.Tensor  # uint8 [rows, cols/2]
    bits: int
    scales: torch.Tensor  # [rows, 1]
    zero_point: float
    shape: tuple[int, int]


Part = Union[RawPart, QuantPart, SparsePart]


def part_bytes(p: Part) -> int:
    """Bytes the part occupies in the file (the Rust core's layout rules)."""
    if isinstance(p, RawPart):
        return p.tensor.numel() * p.tensor.element_size()
    if isinstance(p, QuantPart):
        rows, cols = p.codes.shape
        extra = p.scales.numel() * p.scales.element_size() + (0 if p.zeros is None else p.zeros.numel() * p.zeros.element_size())
        return _core.packed_len(rows, cols, p.bits) + extra
    rows, kc = p.codes.shape
    return sparse24_bytes(rows, kc, p.bits)


@dataclass
class CompressedDelta:
    """One target's compressed delta. ``form`` 'dense': parts {'delta'}; 'low_rank': blocks of
    (u or ut, s, vt) part names plus an optional 'perm' part (act-order on the input); a part
    name starting with 'ut' is U stored transposed."""

    form: str
    parts: dict[str, Part]
    approx: torch.Tensor  # dense float32 reconstruction of the delta, for error and propagation
    blocks: list[tuple[str, str | None, str]] = field(default_factory=list)
    op: str = "add"
    info: dict[str, Any] = field(default_factory=dict)  # method-specific facts (plan, ranks)

    @property
    def nbytes(self) -> int:
        return sum(part_bytes(p) for p in self.parts.values())


def empty_delta(shape: tuple[int, ...], device: torch.device | str = "cpu") -> CompressedDelta:
    """No delta at all: the base tensor is used unchanged (a budget may leave a matrix out)."""
    return CompressedDelta(form="none", parts={}, approx=torch.zeros(shape, device=device))


def write_delta(w: DeltaWriter, target: str, cd: CompressedDelta, stats: dict[str, float]) -> dict[str, Any] | None:
    """Write a delta's parts as '<target>.<part>' tensors; return its manifest entry."""
    if cd.form == "none":
        return None
    names = {k: f"{target}.{k}" if cd.op == "add" else target for k in cd.parts}
    for k, p in cd.parts.items():
        n = names[k]
        if isinstance(p, RawPart):
            w.add_raw(n, p.tensor)
        elif isinstance(p, QuantPart):
            w.add_quantized(n, p.codes, p.bits, p.scales, p.zeros, zero_point=p.zero_point, granularity=p.granularity, group_size=p.group_size or None)
        else:
            w.add_sparse24(n, p.codes, p.indices, p.bits, p.scales, zero_point=p.zero_point, granularity="row", shape=p.shape)
    entry: dict[str, Any] = {"target": target, "op": cd.op, "form": cd.form, "stats": stats}
    if cd.form == "dense":
        entry["tensor"] = names["delta"]
    else:
        # a block's first part is U [out, r] ('u...') or U transposed [r, out] ('ut...')
        entry["blocks"] = [{("ut" if u.startswith("ut") else "u"): names[u], **({"s": names[s]} if s else {}), "vt": names[v]} for u, s, v in cd.blocks]
        if "perm" in cd.parts:
            entry["input_perm"] = names["perm"]
    return entry


def rel_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx.float() - exact.float()).norm() / exact.float().norm().clamp(min=1e-30))


def numel(shape: tuple[int, ...] | list[int]) -> int:
    return math.prod(shape)
