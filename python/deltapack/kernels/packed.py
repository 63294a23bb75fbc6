"""Deltas as the GPU kernels read them: the packed segments of a .dpk, on a device, unchanged.

A manifest delta entry (docs/FORMAT.md §4) becomes a :class:`KernelDelta`: a list of parts,
each one of

- :class:`LowRankPart`: one block of a low-rank delta, ``Δx += Ut^T · (s ⊙ (Vt · x[perm]))``,
  with ``Vt`` ``[r, in]`` and ``Ut`` ``[r, out]`` packed along their rows exactly as stored
  (a stored ``u`` ``[out, r]`` is raw f16 and is transposed on upload: raw values, no
  dequantization). The kernels read ``Vt`` as stored and ``Ut`` through ``u_codes``: the same
  codes re-packed along the rank (``[out, r]``, one bit stream per output row, same bit width,
  Ut's own scale and zero grids), so that both products reduce along a packed row — the
  layout a GEMV reads whole words of;
- :class:`DensePart`: a dense packed ``[out, in]`` delta (BitDelta's ``q1``, RTN's ``q{b}``,
  a raw f16 matrix) or a 2:4 sparse one (DeltaZip's ``s24q{b}``).

Every part holds :class:`Operand` s: the packed codes viewed as int32 words (the format pads
rows to 32-bit words, §3.4), the scale grid and the zero points as stored. The kernels read
fp16 scales and u8 or constant zero points, which is what every deltapack compressor writes;
a file with other scale / zero dtypes is accepted only when the conversion to fp16 is exact,
otherwise :class:`~deltapack.errors.UnsupportedError` (the caller falls back to the reference).

A :class:`DeltaTable` packs the parts of many deltas of one layer into one int64 tensor of
descriptors (pointers, bit widths, strides): one kernel launch then serves a batch whose rows
use different deltas, of different methods and bit widths.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import UnsupportedError
from ..format import DeltaFile, PackedTensor
from .reference import dequantize, pack_rows, unpack_rows

# A "group" larger than any matrix dimension: tensor and row granularity read one scale per row.
WHOLE_ROW = 1 << 30
RAW_F16_BITS = 16  # operand "bit width" of raw fp16 values (no scale, no zero)
KERNEL_BITS = (1, 2, 3, 4, 8, RAW_F16_BITS)


def _exact_f16(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.dtype == torch.float16:
        return t
    h = t.to(torch.float16)
    if not torch.equal(h.to(t.dtype), t):
        raise UnsupportedError(f"{what}: {t.dtype} values are not exactly representable in float16; the kernels read float16 (use the reference backend)")
    return h


def _words(codes: torch.Tensor) -> torch.Tensor:
    """uint8 [rows, row_bytes] → int32 [rows, row_bytes/4], the same bytes (little-endian)."""
    if codes.shape[1] % 4:
        raise UnsupportedError("packed rows are not whole 32-bit words (docs/FORMAT.md §3.4)")
    return codes.contiguous().view(torch.int32)


@dataclass
class Operand:
    """One matrix ``[rows, cols]`` exactly as a kernel reads it. ``cols`` counts logical
    columns; for a 2:4 operand the codes hold ``cols / 2`` kept values per row."""

    rows: int
    cols: int
    bits: int
    codes: torch.Tensor  # int32 words [rows, stride] (packed) or float16 [rows, cols] (raw)
    scales: torch.Tensor | None = None  # float16 grid [rows or 1, n_groups]
    scale_row_stride: int = 0  # scale index = row * scale_row_stride + col // group
    group: int = WHOLE_ROW
    zeros: torch.Tensor | None = None  # uint8 grid like scales, or None for ``zero_const``
    zero_const: float = 0.0
    indices: torch.Tensor | None = None  # 2:4 positions: int32 words [rows, stride]
    source: PackedTensor | torch.Tensor | None = field(default=None, repr=False)

    @property
    def sparse24(self) -> bool:
        return self.indices is not None

    @property
    def stride(self) -> int:
        return self.codes.shape[1] if self.codes.dim() == 2 else 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.zeros, self.indices) if t is not None)

    def dense(self) -> torch.Tensor:
        """float32 values [rows, cols] by the reference decoder (the kernels' ground truth)."""
        if isinstance(self.source, PackedTensor):
            return dequantize(self.source).reshape(self.rows, self.cols)
        assert self.bits == RAW_F16_BITS
        return self.codes.float()

    @classmethod
    def from_packed(cls, p: PackedTensor, device: torch.device | str, transpose_raw: bool = False) -> Operand:
        info, q = p.info, p.info.quant or {}
        if info.bits not in KERNEL_BITS:
            raise UnsupportedError(f"{info.name}: {info.bits}-bit codes have no kernel")
        gran = q["granularity"]
        group = int(q["group_size"]) if gran == "group" else WHOLE_ROW
        srow = p.scales.shape[1] if gran in ("group", "row") else 0
        zeros, zc = None, 0.0
        if q["zero"]["kind"] == "constant":
            zc = float(q["zero"]["value"])
        elif p.zeros is not None and p.zeros.dtype == torch.uint8:
            zeros = p.zeros.to(device).contiguous()
        else:
            raise UnsupportedError(f"{info.name}: stored {q['zero']['dtype']} zero points have no kernel (u8 or constant)")
        moved = PackedTensor(
            info=info,
            codes=p.codes.to(device),
            scales=p.scales.to(device),
            zeros=zeros,
            indices=None if p.indices is None else p.indices.to(device),
        )
        return cls(
            rows=info.rows,
            cols=info.cols,
            bits=info.bits,
            codes=_words(moved.codes),
            scales=_exact_f16(moved.scales, f"{info.name} scales").contiguous(),
            scale_row_stride=srow,
            group=group,
            zeros=zeros,
            zero_const=zc,
            indices=None if moved.indices is None else _words(moved.indices),
            source=moved,
        )

    @classmethod
    def from_raw(cls, t: torch.Tensor, device: torch.device | str, name: str = "raw") -> Operand:
        if t.dim() != 2 or not t.is_floating_point():
            raise UnsupportedError(f"{name}: a raw operand must be a 2-D float matrix")
        v = _exact_f16(t.to(device), name).contiguous()
        return cls(rows=v.shape[0], cols=v.shape[1], bits=RAW_F16_BITS, codes=v, source=v)


def rank_major_codes(ut: Operand) -> torch.Tensor:
    """``Ut`` ``[r, out]`` → its codes re-packed as ``[out, r]``: int32 words, one little-endian
    bit stream per output row (padded to a word), for packed operands; the f16 values
    ``[out, r]`` for raw ones. Value ``(n, j)`` reads Ut's scale at ``j · srow + n // group``."""
    if ut.bits == RAW_F16_BITS:
        return ut.codes.T.contiguous()
    assert isinstance(ut.source, PackedTensor)
    codes = unpack_rows(ut.source.codes, ut.cols, ut.bits)  # uint8 [r, out]
    return _words(pack_rows(codes.T.contiguous(), ut.bits))


@dataclass
class LowRankPart:
    """One low-rank block. ``ut`` keeps Ut's shape, bit width and scale / zero grids; its codes
    live only in ``u_codes`` (rank-major): the copy as stored is released after the re-pack, so
    the device holds each code once."""

    vt: Operand  # [r, in]
    ut: Operand  # [r, out] (codes released: see u_codes)
    s: torch.Tensor | None  # float16 [r] (None: ones)
    perm: torch.Tensor | None  # int32 [in]: the block reads x[perm]
    u_codes: torch.Tensor | None = None  # ut's codes [out, r] (rank_major_codes), made if None

    def __post_init__(self) -> None:
        if self.u_codes is None:
            self.u_codes = rank_major_codes(self.ut)
        if self.ut.codes.numel():
            self.ut = replace(self.ut, codes=self.ut.codes.new_empty((0,)), source=None)

    @property
    def rank(self) -> int:
        return self.vt.rows

    @property
    def u_stride(self) -> int:
        return self.u_codes.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes the kernels read: Vt, Ut's codes (rank-major), Ut's scales / zeros, s, perm."""
        extra = sum(t.numel() * t.element_size() for t in (self.s, self.perm, self.u_codes) if t is not None)
        return self.vt.nbytes + self.ut.nbytes + extra

    def ut_dense(self) -> torch.Tensor:
        """float32 Ut ``[r, out]`` decoded from the rank-major codes and Ut's grids as stored:
        value (j, n) = (code − zero) × scale at grid index j · srow + n // group."""
        ut = self.ut
        if ut.bits == RAW_F16_BITS:
            return self.u_codes.T.float()
        codes = unpack_rows(self.u_codes.view(torch.uint8), ut.rows, ut.bits).T.float()  # [r, out]
        j = torch.arange(ut.rows, device=codes.device)[:, None]
        n = torch.arange(ut.cols, device=codes.device)[None, :]
        si = j * ut.scale_row_stride + n // ut.group
        s = ut.scales.flatten().float()[si]
        z = ut.zeros.flatten().float()[si] if ut.zeros is not None else ut.zero_const
        return (codes - z) * s

    def dense(self) -> torch.Tensor:
        ut, vt = self.ut_dense(), self.vt.dense()
        if self.s is not None:
            ut = ut * self.s.float()[:, None]
        m = ut.T @ vt
        if self.perm is None:
            return m
        out = torch.zeros_like(m)
        out[:, self.perm.long()] = m
        return out


@dataclass
class DensePart:
    w: Operand  # [out, in], packed, raw f16 or 2:4

    @property
    def nbytes(self) -> int:
        return self.w.nbytes

    def dense(self) -> torch.Tensor:
        return self.w.dense()


Part = LowRankPart | DensePart


@dataclass
class KernelDelta:
    """One linear layer's delta ``[out, in]`` as parts the kernels read."""

    out_features: int
    in_features: int
    parts: list[Part]
    name: str = ""

    @property
    def rank(self) -> int:
        return sum(p.rank for p in self.parts if isinstance(p, LowRankPart))

    @property
    def nbytes(self) -> int:
        """Bytes the kernels read for one pass over this delta."""
        return sum(p.nbytes for p in self.parts)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """``Δ·x`` (float32) the plain PyTorch way: dequantize each part's factors, then
        matmuls (low-rank parts never form the dense ``[out, in]`` matrix)."""
        xf = x.float()
        out = torch.zeros(*x.shape[:-1], self.out_features, dtype=torch.float32, device=x.device)
        for p in self.parts:
            if isinstance(p, LowRankPart):
                xp = xf if p.perm is None else xf.index_select(-1, p.perm.long())
                t = xp @ p.vt.dense().T
                if p.s is not None:
                    t = t * p.s.float()
                out += t @ p.ut_dense()
            else:
                out += xf @ p.w.dense().T
        return out

    def to(self, device: torch.device | str) -> KernelDelta:
        """A copy on ``device`` (a distinct copy even on the same device)."""

        def mv(t):
            return None if t is None else t.to(device, copy=True)

        def op(o: Operand) -> Operand:
            src = o.source
            if isinstance(src, PackedTensor):
                src = PackedTensor(info=src.info, codes=mv(src.codes), scales=mv(src.scales), zeros=mv(src.zeros), indices=mv(src.indices))
                return Operand.from_packed(src, device)
            return Operand.from_raw(mv(o.codes), device)

        parts: list[Part] = []
        for p in self.parts:
            if isinstance(p, LowRankPart):
                ut = replace(p.ut, scales=mv(p.ut.scales), zeros=mv(p.ut.zeros))
                parts.append(LowRankPart(vt=op(p.vt), ut=ut, s=mv(p.s), perm=mv(p.perm), u_codes=mv(p.u_codes)))
            else:
                parts.append(DensePart(op(p.w)))
        return KernelDelta(self.out_features, self.in_features, parts, self.name)

    def dense(self) -> torch.Tensor:
        """float32 ``ΔW`` by the reference decoder."""
        out = torch.zeros(self.out_features, self.in_features, dtype=torch.float32, device=self._device())
        for p in self.parts:
            out += p.dense().to(out.device)
        return out

    def _device(self) -> torch.device:
        p = self.parts[0] if self.parts else None
        if p is None:
            return torch.device("cpu")
        return (p.vt if isinstance(p, LowRankPart) else p.w).codes.device

    @classmethod
    def from_entry(cls, f: DeltaFile, entry: dict[str, Any], shape: tuple[int, int], device: torch.device | str = "cuda") -> KernelDelta:
        """Upload one manifest delta entry of a linear weight ``[out, in]``; raises
        UnsupportedError for entries the kernels cannot read (``op: replace``, float zeros)."""
        out_f, in_f = shape
        target = entry.get("target", "?")
        if entry.get("op", "add") != "add":
            raise UnsupportedError(f"{target}: op '{entry.get('op')}' is not a kernel delta")

        def operand(name: str, transpose_raw: bool = False) -> Operand:
            info = f.info(name)
            if info.is_raw:
                t = f.raw(name)
                return Operand.from_raw(t.T if transpose_raw else t, device, name)
            return Operand.from_packed(f.packed(name), device)

        if entry["form"] == "dense":
            w = operand(entry["tensor"])
            if (w.rows, w.cols) != (out_f, in_f):
                raise UnsupportedError(f"{target}: dense delta {w.rows}×{w.cols} does not match the layer {out_f}×{in_f}")
            return cls(out_f, in_f, [DensePart(w)], target)
        perm = None
        if entry.get("input_perm"):
            perm = f.raw(entry["input_perm"]).to(device=device, dtype=torch.int32).contiguous()
        parts: list[Part] = []
        for b in entry["blocks"]:
            vt = operand(b["vt"])
            ut = operand(b["ut"]) if b.get("ut") else operand(b["u"], transpose_raw=True)
            s = _exact_f16(f.raw(b["s"]).to(device), f"{b['s']}").contiguous() if b.get("s") else None
            if vt.cols != in_f or ut.cols != out_f or vt.rows != ut.rows or vt.sparse24 or ut.sparse24:
                raise UnsupportedError(f"{target}: low-rank block shapes {ut.rows}×{ut.cols} / {vt.rows}×{vt.cols} do not match the layer {out_f}×{in_f}")
            parts.append(LowRankPart(vt=vt, ut=ut, s=s, perm=perm))
        return cls(out_f, in_f, parts, target)


# ---------------------------------------------------------------------------------------------
# The descriptor table: one int64 row of NF fields per (slot, part). The kernels read it with
# the same field numbers (kernels/triton/delta_gemm.py imports them from here). Operand A is a
# low-rank part's Vt or a dense part's W, as stored; operand B is a low-rank part's Ut with
# B_CODES / B_STRIDE pointing at its rank-major copy (LowRankPart.u_codes) and the other B_
# fields describing Ut's scale and zero grids as stored.
KIND_NONE, KIND_LOWRANK, KIND_DENSE, KIND_SPARSE24 = 0, 1, 2, 3
(
    F_KIND,
    F_RANK,
    F_ROFF,
    F_PERM,
    F_S,
    A_BITS,
    A_CODES,
    A_STRIDE,
    A_SCALES,
    A_SROW,
    A_GROUP,
    A_ZEROS,
    A_ZCONST,
    A_IDX,
    A_ISTRIDE,
    B_BITS,
    B_CODES,
    B_STRIDE,
    B_SCALES,
    B_SROW,
    B_GROUP,
    B_ZEROS,
    B_ZCONST,
    NF,
) = range(24)


def _f32_bits(v: float) -> int:
    """The IEEE float32 bit pattern of ``v`` as an int (kernels bitcast it back)."""
    return struct.unpack("<i", struct.pack("<f", v))[0]


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _operand_fields(op: Operand, first: int) -> dict[int, int]:
    a = first - A_BITS  # same field order for A_ and B_
    return {
        A_BITS + a: op.bits,
        A_CODES + a: _ptr(op.codes),
        A_STRIDE + a: op.stride,
        A_SCALES + a: _ptr(op.scales),
        A_SROW + a: op.scale_row_stride,
        A_GROUP + a: op.group,
        A_ZEROS + a: _ptr(op.zeros),
        A_ZCONST + a: _f32_bits(op.zero_const),
    }


@dataclass
class DeltaTable:
    """The deltas of one linear layer resident on a device, as kernel descriptors.
    ``slot`` i is ``deltas[i]``; rows of a batch name slots (−1: no delta)."""

    deltas: list[KernelDelta]
    table: torch.Tensor  # int64 [n_slots, max_parts, NF]
    max_parts: int
    max_rank: int  # largest total rank of a slot: the width of the shrink buffer
    max_part_rank: int
    group_k: int  # gcd of the scale groups along the input dim (A operands)
    group_n: int  # gcd of the scale groups along the output dim (Ut operands)
    group_s24: int  # gcd of the 2:4 parts' scale groups, in kept values
    has_perm: bool  # some low-rank block reads x through an act-order permutation
    has_lowrank: bool
    out_features: int
    in_features: int
    # which bit widths occur (bit b set for width b) per operand role: the kernels compile only
    # those specializations; taken here from the host copy, so no launch needs a device sync
    vt_bits: int = 0
    ut_bits: int = 0
    dense_bits: int = 0
    s24_bits: int = 0

    @classmethod
    def build(cls, deltas: list[KernelDelta], device: torch.device | str | None = None) -> DeltaTable:
        if not deltas:
            raise ValueError("a DeltaTable needs at least one delta")
        out_f, in_f = deltas[0].out_features, deltas[0].in_features
        for d in deltas:
            if (d.out_features, d.in_features) != (out_f, in_f):
                raise ValueError(f"delta {d.name} is {d.out_features}×{d.in_features}, the table is {out_f}×{in_f}")
        max_parts = max(1, max(len(d.parts) for d in deltas))
        rows = torch.zeros(len(deltas), max_parts, NF, dtype=torch.int64)
        max_rank = max_part_rank = 0
        gk = gn = gs = WHOLE_ROW
        has_perm = False
        masks = {"vt_bits": 0, "ut_bits": 0, "dense_bits": 0, "s24_bits": 0}
        for i, d in enumerate(deltas):
            roff = 0
            for j, p in enumerate(d.parts):
                fields: dict[int, int]
                if isinstance(p, LowRankPart):
                    fields = {F_KIND: KIND_LOWRANK, F_RANK: p.rank, F_ROFF: roff, F_PERM: _ptr(p.perm), F_S: _ptr(p.s)}
                    fields |= _operand_fields(p.vt, A_BITS) | _operand_fields(p.ut, B_BITS)
                    fields |= {B_CODES: _ptr(p.u_codes), B_STRIDE: p.u_stride}  # kernels read Ut rank-major
                    roff += p.rank
                    has_perm |= p.perm is not None
                    max_part_rank = max(max_part_rank, p.rank)
                    gk, gn = math.gcd(gk, p.vt.group), math.gcd(gn, p.ut.group)
                    masks["vt_bits"] |= 1 << p.vt.bits
                    masks["ut_bits"] |= 1 << p.ut.bits
                else:
                    kind = KIND_SPARSE24 if p.w.sparse24 else KIND_DENSE
                    fields = {F_KIND: kind, **_operand_fields(p.w, A_BITS), A_IDX: _ptr(p.w.indices), A_ISTRIDE: p.w.indices.shape[1] if p.w.sparse24 else 0}
                    gk = math.gcd(gk, p.w.group * (2 if p.w.sparse24 else 1))  # s24 groups count kept values
                    if p.w.sparse24:
                        gs = math.gcd(gs, p.w.group)
                    masks["s24_bits" if p.w.sparse24 else "dense_bits"] |= 1 << p.w.bits
                for k, v in fields.items():
                    rows[i, j, k] = v
            max_rank = max(max_rank, roff)
        dev = device if device is not None else deltas[0]._device()
        return cls(
            deltas=deltas,
            table=rows.to(dev),
            max_parts=max_parts,
            max_rank=max_rank,
            max_part_rank=max_part_rank,
            group_k=gk,
            group_n=gn,
            group_s24=gs,
            has_perm=has_perm,
            has_lowrank=max_rank > 0,
            out_features=out_f,
            in_features=in_f,
            **masks,
        )

    @property
    def n_slots(self) -> int:
        return len(self.deltas)

    def nbytes(self, slots: list[int] | None = None) -> int:
        """Bytes the kernels read for the given distinct slots (all by default)."""
        idx = range(self.n_slots) if slots is None else sorted(set(s for s in slots if s >= 0))
        return sum(self.deltas[i].nbytes for i in idx)


def block_for_groups(group_gcd: int, want: int, floor: int = 32) -> tuple[int, bool]:
    """A tile width along a grouped dimension and whether scales must be gathered per
    element: a power of two ≤ ``want`` dividing every group reads one scale per tile row."""
    b = want
    while b >= floor:
        if group_gcd % b == 0:
            return b, False
        b //= 2
    return want, True


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


@dataclass
class RowGroups:
    """Which rows of a batch use which delta slot, as the kernels read it: groups of rows
    (``row_idx[start[g] : start[g] + length[g]]``) that share slot ``slot[g]`` (−1: none).

    ``per_row`` (decode, gather style: row i uses ``slots[i]``; no sort, no host sync, safe
    under CUDA graphs) and ``segments`` (prefill, segment style: rows sorted by slot on the
    host so a group's delta tiles are read once for up to ``max_len`` rows) build it."""

    row_idx: torch.Tensor  # int32 [M]
    start: torch.Tensor  # int32 [G]
    length: torch.Tensor  # int32 [G]
    slot: torch.Tensor  # int32 [G]
    max_len: int  # host-side bound on length (sizes the grid)
    identity: bool = False  # row g is group g (per_row): kernels may skip row_idx / start
    # groups lie one after another along row_idx (start ascending, no overlap) and row_idx is a
    # permutation of the batch's rows: what the CUDA path's per-row conversion needs
    contiguous_groups: bool = False
    # (start, length, slot) of every group on the host, when the builder knows them without a
    # sync (segments, single): what the prefill path's per-group loop needs
    host_segments: tuple[tuple[int, int, int], ...] | None = None
    rows_in_order: bool = False  # row_idx is 0 .. M − 1 (a batch already in slot order)

    @property
    def n_groups(self) -> int:
        return self.slot.shape[0]

    @classmethod
    def per_row(cls, slots: torch.Tensor) -> RowGroups:
        s = slots.to(torch.int32).reshape(-1)
        m = s.shape[0]
        ar = torch.arange(m, dtype=torch.int32, device=s.device)
        return cls(row_idx=ar, start=ar, length=torch.ones_like(ar), slot=s, max_len=1, identity=True, contiguous_groups=True)

    @classmethod
    def segments(cls, slots: list[int] | torch.Tensor, device: torch.device | str) -> RowGroups:
        s = torch.as_tensor(slots, dtype=torch.int64).reshape(-1).cpu()
        order = torch.argsort(s, stable=True)
        uniq, counts = torch.unique_consecutive(s[order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        keep = uniq >= 0
        to = {"device": device, "dtype": torch.int32}
        return cls(
            row_idx=order.to(**to),
            start=starts[keep].to(**to),
            length=counts[keep].to(**to),
            slot=uniq[keep].to(**to),
            max_len=int(counts[keep].max()) if bool(keep.any()) else 0,
            contiguous_groups=True,
            host_segments=tuple(zip(starts[keep].tolist(), counts[keep].tolist(), uniq[keep].tolist())),
            rows_in_order=bool(torch.equal(order, torch.arange(len(order)))),
        )

    @classmethod
    def single(cls, m: int, device: torch.device | str, slot: int = 0) -> RowGroups:
        """All ``m`` rows use one slot."""
        to = {"device": device, "dtype": torch.int32}
        return cls(row_idx=torch.arange(m, **to), start=torch.zeros(1, **to), length=torch.full((1,), m, **to), slot=torch.full((1,), slot, **to), max_len=m, contiguous_groups=True,
                   host_segments=((0, m, slot),), rows_in_order=True)
