"""Bit budgets. Every count here is of bytes the file really stores — packed codes (rows
padded to 32-bit words), scales, zero points, singular values, permutations — computed with
the same rules as the Rust core (docs/FORMAT.md), so a plan made for B bits/param is B
bits/param in `deltapack inspect`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import _core

SCALE_BYTES = 2  # float16 scales
ZERO_BYTES = 1  # uint8 zero points (asymmetric GPTQ / RTN)
S_BYTES = 2  # float16 singular values
PERM_BYTES = 4  # int32 act-order permutation


def quantized_bytes(rows: int, cols: int, bits: int, group_size: int | None, *, stored_zeros: bool = True) -> int:
    """Bytes of a q{bits} tensor [rows, cols] with one scale (and zero) per group of columns
    (``group_size`` None: one per row)."""
    if rows == 0 or cols == 0:
        return 0
    groups = 1 if group_size is None else math.ceil(cols / group_size)
    per_group = SCALE_BYTES + (ZERO_BYTES if stored_zeros else 0)
    return _core.packed_len(rows, cols, bits) + rows * groups * per_group


def sparse24_bytes(rows: int, kept_cols: int, bits: int) -> int:
    """Bytes of an s24q{bits} tensor with ``kept_cols`` kept values per row: codes, 2-bit
    positions and one float16 scale per row (constant zero point)."""
    return _core.packed_len(rows, kept_cols, bits) + _core.packed_len(rows, kept_cols, 2) + rows * SCALE_BYTES


@dataclass(frozen=True)
class BitGroup:
    bits: int
    rank: int


@dataclass(frozen=True)
class LowRankPlan:
    """Singular-vector groups from the largest singular value down, e.g. 8+3+2."""

    groups: tuple[BitGroup, ...]
    group_size: int = 128
    act_order: bool = True

    @property
    def rank(self) -> int:
        return sum(g.rank for g in self.groups)

    def describe(self) -> str:
        return "+".join(f"{g.rank}@{g.bits}b" for g in self.groups if g.rank)


def lowrank_plan_bytes(out: int, inp: int, plan: LowRankPlan) -> int:
    """Stored bytes of a quantized low-rank delta: per group Uᵀ [r, out] and Vt [r, in]
    (scale groups along each row; zero points too, except on 1-bit groups' sign grid),
    singular values, and the act-order permutation."""
    total = 0
    for g in plan.groups:
        if g.rank:
            zeros = g.bits != 1  # 1-bit groups are on the sign grid: constant zero point 0.5
            total += quantized_bytes(g.rank, out, g.bits, plan.group_size, stored_zeros=zeros)
            total += quantized_bytes(g.rank, inp, g.bits, plan.group_size, stored_zeros=zeros)
            total += g.rank * S_BYTES
    if plan.act_order and plan.rank:
        total += inp * PERM_BYTES
    return total


ACT_ORDER_MAX_SHARE = 0.02  # act-order's int32 permutation may take at most this share of a budget


def fit_lowrank_plan(out: int, inp: int, bits_per_param: float, schedule: list[tuple[int, int | None]], group_size: int = 128, act_order: bool | None = None) -> LowRankPlan:
    """Fill ``schedule`` — (bits, max rank or None for 'as many as fit') in order — with
    the largest ranks whose total stays within ``bits_per_param`` · out · in bits.
    Delta-CoMe's default is [(8, 2), (3, 32), (2, None)]: computed per shape, so GQA's
    narrow k/v projections get their own plan rather than a 4096×4096 schedule.
    ``act_order`` None: on unless its permutation would cost more than 2% of the budget
    (0.8% for a 4096-wide input at 1 bit/param; 25% for a 128-wide one)."""
    budget = bits_per_param * out * inp / 8
    if act_order is None:
        act_order = inp * PERM_BYTES <= ACT_ORDER_MAX_SHARE * budget
    max_rank = min(out, inp)
    groups: list[BitGroup] = []

    def cost(extra: BitGroup) -> int:
        return lowrank_plan_bytes(out, inp, LowRankPlan(tuple(groups) + (extra,), group_size, act_order))

    for bits, cap in schedule:
        room = max_rank - sum(g.rank for g in groups)
        hi = room if cap is None else min(cap, room)
        if hi <= 0 or cost(BitGroup(bits, 1)) > budget:
            groups.append(BitGroup(bits, 0))
            continue
        lo = 1  # largest r in [lo, hi] with cost <= budget (cost grows with r)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cost(BitGroup(bits, mid)) <= budget:
                lo = mid
            else:
                hi = mid - 1
        groups.append(BitGroup(bits, lo))
    return LowRankPlan(tuple(groups), group_size, act_order)


DELTA_COME_SCHEDULE: list[tuple[int, int | None]] = [(8, 2), (3, 32), (2, None)]


def parse_schedule(text: str) -> list[tuple[int, int | None]]:
    """'8:2,3:32,2' -> [(8, 2), (3, 32), (2, None)]."""
    out: list[tuple[int, int | None]] = []
    try:
        for part in text.split(","):
            b, _, r = part.strip().partition(":")
            out.append((int(b), int(r) if r else None))
    except ValueError:
        out = []
    if not out or any(b not in (1, 2, 3, 4, 8) for b, _ in out) or any(r is not None and r <= 0 for _, r in out):
        raise ValueError(f"bad schedule '{text}': expected e.g. '8:2,3:32,2' with bit widths in 1,2,3,4,8 and ranks > 0")
    return out


def parse_schedules(text: str) -> list[list[tuple[int, int | None]]]:
    """'8:2,3:32,2|8:2,2:16,1' -> one schedule per '|'-separated alternative. A fixed plan
    uses the first; ``--plan auto`` offers every alternative's plans to the allocation, which
    picks per matrix (e.g. a 1-bit tail where the spectrum is flat)."""
    alts = [parse_schedule(t) for t in text.split("|")]
    if len({tuple(a) for a in alts}) != len(alts):
        raise ValueError(f"bad schedule '{text}': an alternative is repeated")
    return alts


def fp16_lowrank_rank(out: int, inp: int, bits_per_param: float) -> int:
    """Largest rank of a 16-bit (U·diag(s), Vt) factorisation within the budget."""
    per_rank = (out + inp) * 2
    return max(0, min(min(out, inp), int(bits_per_param * out * inp / 8 // per_rank)))
