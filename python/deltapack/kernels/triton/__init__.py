"""Triton launchers for the multi-delta kernels of :mod:`.delta_gemm`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

from ..packed import (
    DeltaTable,
    RowGroups,
    block_for_groups,
    next_pow2,
)
from . import delta_gemm


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes; ``None`` picks them from the batch and the table (see :func:`pick_config`)."""

    block_m: int | None = None
    block_r: int | None = None  # shrink: rank rows per program
    block_k: int | None = None  # reduction tile along the input dim
    block_n: int | None = None  # apply: outputs per program
    block_j: int | None = None  # apply: rank rows per step
    num_warps: int | None = None
    num_stages: int | None = None
    split_k: int | None = None  # decode shrink: programs per row tile along k (atomics into t)
    block_kb: int | None = None  # fused base GEMV: reduction tile along the input dim
    lane_major: bool | None = None  # decode: read x lane-major (a [32, in/32] copy per row)
    apply_warps: int | None = None  # warps of the apply launch (default: num_warps)
    dequant_min_rows: int | None = None  # segment groups this long run dequantize + cuBLAS (default: DEQUANT_MIN_ROWS)


# Segment batches whose longest group has at least this many rows run the prefill path of
# :mod:`.dequant` (factors dequantized once, cuBLAS GEMMs) when the groups are known on the host
# (``RowGroups.host_segments``). DELTAPACK_TRITON_DEQUANT_MIN_ROWS overrides (0: never).
DEQUANT_MIN_ROWS = 16


def dequant_min_rows(cfg: LaunchConfig | None) -> int:
    if cfg is not None and cfg.dequant_min_rows is not None:
        return cfg.dequant_min_rows
    env = os.environ.get("DELTAPACK_TRITON_DEQUANT_MIN_ROWS")
    return int(env) if env else DEQUANT_MIN_ROWS


# Row groups of up to this many rows run the decode path: one program per row, whole packed
# words, CUDA-core FMAs (a group's delta tiles are re-read per row, from L2). Longer groups
# run the tile path: tiles dequantized to the activation dtype and tl.dot.
DECODE_MAX_ROWS = 16
TARGET_PROGRAMS = 1056  # 8 per SM on an H100: the decode shrink splits k until it has about these


def _apply_warps(bm: int, programs: int, fused: bool) -> int:
    """Warps of the decode apply launch. H100 sweep (bench/results/kernels_h100_s3/
    tune_apply_warps.log): with few programs (B = 1: 128) 4 warps beat 2 and 1 (delta-come
    40 vs 63 vs 67 µs; BitDelta 44 vs 50 vs 288), with many (B = D = 32: 4096) 1 warp beats 4
    (245 vs 732 µs); fused with the base GEMV, 8 warps (BitDelta B = 1: 34 µs for base + delta
    against 23 + 44 unfused)."""
    if bm != 1:
        return 4
    if fused:
        return 8 if programs < 512 else 2
    return 4 if programs < 512 else (2 if programs < 2048 else 1)


def pick_config(tab: DeltaTable, groups: RowGroups, cfg: LaunchConfig | None = None, fuse_hint: bool = False) -> dict[str, int | bool]:
    """Tile sizes and flags of one launch pair; ``fuse_hint``: the apply launch also computes
    the base GEMV."""
    cfg = cfg or LaunchConfig()
    max_len = max(1, groups.max_len)
    m_blocks = max_len  # decode: a program per row; the tile path recomputes it below
    bm = cfg.block_m or (1 if max_len <= DECODE_MAX_ROWS else min(64, max(16, next_pow2(max_len))))
    if bm == 1:
        # Decode: 32-code groups of words; a scale per group of 32 codes when every scale group
        # is a whole number of them, else per code (gather). Ut (rank-major) needs the output
        # tile inside one scale group along n. Tiles from the H100 sweep
        # (bench/results/kernels_h100_s3/tune_first.log and tune.log): K 512 beat 256 and 128, J 64 beat 32.
        bk, bj = cfg.block_k or 512, cfg.block_j or 64
        if bk % 32 or bj % 32:
            raise ValueError("decode tiles: block_k and block_j must be multiples of 32")
        bn, gather_n = block_for_groups(tab.group_n, cfg.block_n or 32, floor=8)
        gather_k, gather_s24 = tab.group_k % 32 != 0, tab.group_s24 % 32 != 0
    else:
        bk, gather_k = block_for_groups(tab.group_k, cfg.block_k or 128)
        bn, gather_n = block_for_groups(tab.group_n, cfg.block_n or 64)
        bj, gather_s24 = cfg.block_j or 32, gather_k
    if bm != 1:
        m_blocks = -(-max_len // bm)
    br = cfg.block_r or (16 if bm == 1 else 32)
    split = 1
    if bm == 1:
        # a decode shrink is latency-bound per program (its row tile walks all of k): split k
        # across programs until about 8 small programs per SM are in flight (H100 sweep: 32 → 9.5 µs
        # at split 4 for a rank-900 delta at B = 1)
        programs = max(1, groups.n_groups * max_len * tab.max_parts * -(-tab.max_part_rank // br))
        split = cfg.split_k or max(1, min(8, TARGET_PROGRAMS // programs, -(-tab.in_features // bk)))
    return {
        "BLOCK_M": bm,
        "BLOCK_R": br,
        "BLOCK_K": bk,
        "BLOCK_N": bn,
        "BLOCK_J": bj,
        "GATHER_K": gather_k,
        "GATHER_N": gather_n,
        "GATHER_S24": gather_s24,
        "SPLIT_K": split,
        "BLOCK_KB": cfg.block_kb or 512,
        # act-order blocks gather x through their permutation: no lane-major copy for them
        "LM": bm == 1 and not tab.has_perm and (cfg.lane_major if cfg.lane_major is not None else True),
        "num_warps": cfg.num_warps or 4,
        "apply_warps": cfg.apply_warps or cfg.num_warps or _apply_warps(bm, groups.n_groups * m_blocks * -(-tab.out_features // bn), fuse_hint),
        "num_stages": cfg.num_stages or 2,
    }


# Rows up to which the base GEMV is fused into the delta launch. Each row's blocks read the base
# weight again (from L2 at best), which pays at a row or two and not beyond: the decode step over
# 7B layers at B = D = 32 took 23.3 ms fused against 9.1 ms cuBLAS + delta on the H100
# (bench/results/kernels_h100_s4/, _s5/call6), and in session 7's sweep the Triton-served methods
# fused at 4-16 rows took 1.7-28x their unfused time (4096², lowrank@1 B = D = 4 / 8 / 16: 489 /
# 862 / 1576 µs against 52 / 58 / 57; deltazip@2 B = D = 4 / 8: 138 / 251 against 79 / 128;
# bench/results/kernels_h100_s7/), while at 1-2 rows the two are within 10 %.
FUSE_MAX_ROWS = 2


def fusable(groups: RowGroups, m: int) -> bool:
    """Whether ``delta_apply(..., base=W)`` computes the base GEMV inside the delta launch:
    decode batches in gather style that name every row (``RowGroups.per_row``) of at most
    :data:`FUSE_MAX_ROWS` rows."""
    return groups.max_len == 1 and groups.n_groups == m and m <= FUSE_MAX_ROWS


def delta_apply(
    x: torch.Tensor,
    y: torch.Tensor,
    tab: DeltaTable,
    groups: RowGroups,
    cfg: LaunchConfig | None = None,
    t: torch.Tensor | None = None,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y[row] += Δ_{slot(row)} · x[row]`` in place; returns ``y``. Two Triton launches
    (shrink, apply), plus at decode a small lane-major copy of x and, when the shrink splits k,
    a memset of ``t``: none of them syncs with the host, so the call can be graph-captured.
    ``x`` [M, in] and ``y`` [M, out] with unit stride along the features; ``t`` an optional
    fp32 [M, tab.max_rank] scratch for the low-rank intermediate. With ``base`` (the base
    weight [out, in], x's dtype) ``y = x·baseᵀ + Δx`` instead: for per-row decode batches in
    the same launch that adds the delta (:func:`fusable`), otherwise a cuBLAS GEMM first."""
    M, K = x.shape
    N = y.shape[1]
    if K != tab.in_features or N != tab.out_features or y.shape[0] != M:
        raise ValueError(f"x {tuple(x.shape)} / y {tuple(y.shape)} do not match the table's {tab.out_features}×{tab.in_features}")
    if x.stride(1) != 1 or y.stride(1) != 1:
        raise ValueError("x and y need unit stride along the feature dimension")
    if base is not None:
        if base.shape != (N, K) or base.dtype != x.dtype or base.stride(1) != 1:
            raise ValueError(f"base weight {tuple(base.shape)} {base.dtype} does not match {N}×{K} {x.dtype} with unit stride along the input")
    fuse = base is not None and fusable(groups, M)
    dmin = dequant_min_rows(cfg)
    if not fuse and groups.host_segments is not None and 0 < dmin <= groups.max_len:
        from .dequant import apply_segments

        if base is not None:
            torch.matmul(x, base.T, out=y)
        return apply_segments(x, y, tab, groups)
    c = pick_config(tab, groups, cfg, fuse_hint=fuse)
    fuse = fuse and c["BLOCK_M"] == 1
    if base is not None and not fuse:
        torch.matmul(x, base.T, out=y)
    if M == 0 or (groups.n_groups == 0 and not fuse):
        return y
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    xl = x
    if c["LM"]:  # x lane-major: xl[m, c, g] = x[m, 32·g + c], zero-padded to whole groups
        ng = triton.cdiv(K, 32)
        xp = x if ng * 32 == K else torch.nn.functional.pad(x, (0, ng * 32 - K))
        xl = xp.unflatten(1, (ng, 32)).transpose(1, 2).contiguous().view(M, 32 * ng)
    m_blocks = triton.cdiv(max(1, groups.max_len), c["BLOCK_M"])  # decode: a program per row
    if tab.has_lowrank:
        if t is None:
            t = torch.empty((M, tab.max_rank), device=x.device, dtype=torch.float32)
        if c["SPLIT_K"] > 1:
            t.zero_()
        tiles = triton.cdiv(tab.max_part_rank, c["BLOCK_R"])
        grid = (groups.n_groups, tab.max_parts * tiles * c["SPLIT_K"], m_blocks)
        delta_gemm.shrink_kernel[grid](
            x, x.stride(0), t, t.stride(0), tab.table, groups.row_idx, groups.start, groups.length, groups.slot,
            xl, xl.stride(0), K, tiles,
            MAX_PARTS=tab.max_parts, BLOCK_M=c["BLOCK_M"], BLOCK_R=c["BLOCK_R"], BLOCK_K=c["BLOCK_K"],
            VT_BITS=tab.vt_bits, GATHER_K=c["GATHER_K"], PERM=tab.has_perm, PREC=prec, SPLIT_K=c["SPLIT_K"], LM=c["LM"],
            num_warps=c["num_warps"], num_stages=c["num_stages"],
        )  # fmt: skip
    else:
        t = x  # never read: no low-rank part in the table
    w = base if fuse else x  # never read unless fused
    grid = (groups.n_groups, triton.cdiv(N, c["BLOCK_N"]), m_blocks)
    delta_gemm.apply_kernel[grid](
        x, x.stride(0), y, y.stride(0), t, t.stride(0), tab.table, groups.row_idx, groups.start, groups.length, groups.slot,
        w, w.stride(0), xl, xl.stride(0), N, K,
        MAX_PARTS=tab.max_parts, BLOCK_M=c["BLOCK_M"], BLOCK_N=c["BLOCK_N"], BLOCK_K=c["BLOCK_K"], BLOCK_J=c["BLOCK_J"],
        UT_BITS=tab.ut_bits, DENSE_BITS=tab.dense_bits, S24_BITS=tab.s24_bits, GATHER_K=c["GATHER_K"], GATHER_N=c["GATHER_N"],
        GATHER_S24=c["GATHER_S24"], PREC=prec, FUSE_BASE=fuse, BLOCK_KB=c["BLOCK_KB"], LM=c["LM"],
        num_warps=c["apply_warps"], num_stages=c["num_stages"],
    )  # fmt: skip
    return y
