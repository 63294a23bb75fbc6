"""Triton launchers for the multi-delta kernels of :mod:`.delta_gemm`."""

from __future__ import annotations

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


def pick_config(tab: DeltaTable, groups: RowGroups, cfg: LaunchConfig | None = None) -> dict[str, int | bool]:
    cfg = cfg or LaunchConfig()
    max_len = max(1, groups.max_len)
    bm = cfg.block_m or (1 if max_len == 1 else min(64, max(16, next_pow2(max_len))))
    if bm == 1:
        # Decode: 1/2/4/8-bit tiles are split word by word with a scale per word, so a tile may
        # span groups (only a group that is not a whole number of 32-code words gathers per
        # element); the 3-bit and raw paths always read scales per element at BLOCK_M 1.
        # one-at-a-time sweep on an H100 (bench/results/kernels_decode_tuning_h100.log): BLOCK_R 8,
        # BLOCK_K 256, BLOCK_N 32 and 8 warps each beat the earlier R16/K512/N64/4-warp default
        bk, bn = cfg.block_k or 256, cfg.block_n or 32
        gather_k, gather_n = tab.group_k % 32 != 0, tab.group_n % 32 != 0
    else:
        bk, gather_k = block_for_groups(tab.group_k, cfg.block_k or 128)
        bn, gather_n = block_for_groups(tab.group_n, cfg.block_n or 64)
    return {
        "BLOCK_M": bm,
        "BLOCK_R": cfg.block_r or (8 if bm == 1 else 32),
        "BLOCK_K": bk,
        "BLOCK_N": bn,
        "BLOCK_J": cfg.block_j or (64 if bm == 1 else 32),
        "GATHER_K": gather_k,
        "GATHER_N": gather_n,
        "num_warps": cfg.num_warps or (8 if bm == 1 else 4),
        "num_stages": cfg.num_stages or 2,
    }


def delta_apply(x: torch.Tensor, y: torch.Tensor, tab: DeltaTable, groups: RowGroups, cfg: LaunchConfig | None = None, t: torch.Tensor | None = None) -> torch.Tensor:
    """``y[row] += Δ_{slot(row)} · x[row]`` in place (two launches at most); returns ``y``.
    ``x`` [M, in] and ``y`` [M, out] with unit stride along the features; ``t`` an optional
    fp32 [M, tab.max_rank] scratch for the low-rank intermediate."""
    M, K = x.shape
    N = y.shape[1]
    if K != tab.in_features or N != tab.out_features or y.shape[0] != M:
        raise ValueError(f"x {tuple(x.shape)} / y {tuple(y.shape)} do not match the table's {tab.out_features}×{tab.in_features}")
    if x.stride(1) != 1 or y.stride(1) != 1:
        raise ValueError("x and y need unit stride along the feature dimension")
    if groups.n_groups == 0 or M == 0:
        return y
    c = pick_config(tab, groups, cfg)
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    m_blocks = triton.cdiv(max(1, groups.max_len), c["BLOCK_M"])
    if tab.has_lowrank:
        if t is None:
            t = torch.empty((M, tab.max_rank), device=x.device, dtype=torch.float32)
        tiles = triton.cdiv(tab.max_part_rank, c["BLOCK_R"])
        grid = (groups.n_groups, tab.max_parts * tiles, m_blocks)
        delta_gemm.shrink_kernel[grid](
            x, x.stride(0), t, t.stride(0), tab.table, groups.row_idx, groups.start, groups.length, groups.slot,
            K, tiles,
            MAX_PARTS=tab.max_parts, BLOCK_M=c["BLOCK_M"], BLOCK_R=c["BLOCK_R"], BLOCK_K=c["BLOCK_K"],
            VT_BITS=tab.vt_bits, GATHER_K=c["GATHER_K"], PREC=prec, num_warps=c["num_warps"], num_stages=c["num_stages"],
        )  # fmt: skip
    else:
        t = x  # never read: no low-rank part in the table
    grid = (groups.n_groups, triton.cdiv(N, c["BLOCK_N"]), m_blocks)
    delta_gemm.apply_kernel[grid](
        x, x.stride(0), y, y.stride(0), t, t.stride(0), tab.table, groups.row_idx, groups.start, groups.length, groups.slot,
        N, K,
        MAX_PARTS=tab.max_parts, BLOCK_M=c["BLOCK_M"], BLOCK_N=c["BLOCK_N"], BLOCK_K=c["BLOCK_K"], BLOCK_J=c["BLOCK_J"],
        UT_BITS=tab.ut_bits, DENSE_BITS=tab.dense_bits, S24_BITS=tab.s24_bits, GATHER_K=c["GATHER_K"], GATHER_N=c["GATHER_N"],
        PREC=prec, num_warps=c["num_warps"], num_stages=c["num_stages"],
    )  # fmt: skip
    return y
