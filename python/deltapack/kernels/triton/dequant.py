"""Prefill path for long segment groups: each group's delta factors dequantized to the
activation dtype (one Triton launch per packed operand, straight from the table's descriptors),
then cuBLAS GEMMs. A group of many rows re-reads its delta's tiles once per row block in the
tile path (:func:`~.delta_gemm.apply_kernel` with ``BLOCK_M ≥ 16``), dequantizing them again each
time on CUDA cores; here each code is decoded once per call and the products run on tensor
cores, the way quantized-GEMM libraries serve prefill (dequantize above a row count, fused GEMV
below). The exact math is the reference's (:func:`deltapack.kernels.reference.delta_apply`):
low-rank parts as ``((x[:, perm] · V̂ᵀ) ⊙ s) · Ûᵀ`` (never the dense ``[out, in]``), dense and
2:4 parts as ``x · Ŵᵀ``.

The loop runs over the batch's segment groups on the host (``RowGroups.host_segments``, kept by
``RowGroups.segments``): one dequantization per part of each group's delta, so it pays where
groups are long (prefill), not for many short ones, which stay on the one-launch kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..packed import A_BITS, B_BITS, DeltaTable, LowRankPart, RowGroups
from .delta_gemm import A_IDX, A_ISTRIDE, F_S, _deq_s24_tile, _deq_tile, _deq_u_tile, _operand

BLOCK_R, BLOCK_C = 32, 128
MODE_COLS, MODE_UT, MODE_S24 = 0, 1, 2
FALLBACK_TILES = {MODE_COLS: (8, 512), MODE_UT: (32, 128), MODE_S24: (8, 512)}


@triton.jit
def dequant_kernel(e, out, stride_o, rows, cols, FB: tl.constexpr, BITS: tl.constexpr, MODE: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, S: tl.constexpr):
    """out[r, c] = the operand's value at (r, c) for a tile of rows × columns. MODE_COLS: an
    operand stored along its columns (Vt [rank, in], dense W [out, in]); MODE_UT: Ut read
    rank-major, rows = outputs and columns = ranks (Û [out, rank]); MODE_S24: a 2:4 operand
    expanded to its dense columns. ``S`` (MODE_UT): times the part's singular values s_c."""
    pr = tl.program_id(0)
    pc = tl.program_id(1)
    r = pr * BR + tl.arange(0, BR)
    rmask = r < rows
    c0 = pc * BC
    codes, stride, scales, srow, group, zeros, zc = _operand(e, FB)
    if MODE == 0:
        v = _deq_tile(codes, stride, scales, srow, group, zeros, zc, r, rmask, c0, cols, BR, BC, BITS, True)
    elif MODE == 1:
        v = _deq_u_tile(codes, stride, scales, srow, group, zeros, zc, r, rmask, 0, c0, cols, BR, BC, BITS, True)
        if S:
            cc = c0 + tl.arange(0, BC)
            v = v * tl.load(tl.load(e + F_S).to(tl.pointer_type(tl.float16)) + cc, mask=cc < cols, other=0.0).to(tl.float32)[None, :]
    else:
        ip = tl.load(e + A_IDX)
        istride = tl.load(e + A_ISTRIDE)
        v = _deq_s24_tile(codes, stride, scales, srow, group, zeros, zc, ip, istride, r, rmask, c0, cols, BR, BC, BITS, True)
    c = c0 + tl.arange(0, BC)
    tl.store(out + r[:, None] * stride_o + c[None, :], v.to(out.dtype.element_ty), mask=rmask[:, None] & (c < cols)[None, :])


@triton.jit
def dequant_words_kernel(e, out, stride_o, rows, cols, FB: tl.constexpr, BITS: tl.constexpr, MODE: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr, S: tl.constexpr):
    """MODE_COLS / MODE_UT for 1, 2, 4 and 8-bit codes, a whole word at a time (one load per
    32 / BITS codes), with one scale and zero per tile row (MODE_COLS: the tile's columns lie in
    one scale group) or per tile column (MODE_UT: its rows, the outputs, lie in one group); the
    host checks the alignment. ``S`` as in :func:`dequant_kernel`."""
    PER: tl.constexpr = 32 // BITS
    BC: tl.constexpr = BW * PER
    pr = tl.program_id(0)
    pc = tl.program_id(1)
    r = pr * BR + tl.arange(0, BR)
    rmask = r < rows
    codes, stride, scales, srow, group, zeros, zc = _operand(e, FB)
    w = pc * BW + tl.arange(0, BW)
    words = tl.load(codes.to(tl.pointer_type(tl.int32)) + r[:, None] * stride + w[None, :], mask=rmask[:, None] & (w < stride)[None, :], other=0)
    sh = (tl.arange(0, PER) * BITS).to(tl.uint32)
    q = (words.to(tl.uint32, bitcast=True)[:, :, None] >> sh[None, None, :]) & ((1 << BITS) - 1)
    q = tl.reshape(q, (BR, BC)).to(tl.float32)
    c = pc * BC + tl.arange(0, BC)
    cmask = c < cols
    hz = zeros != 0
    zp = zeros.to(tl.pointer_type(tl.uint8))
    if MODE == 0:
        si = r * srow + (pc * BC) // group  # [BR]
        sv = tl.load(scales + si, mask=rmask, other=0.0).to(tl.float32)
        zv = tl.where(hz, tl.load(zp + si, mask=tl.where(hz, rmask, False), other=0).to(tl.float32), zc)
        v = (q - zv[:, None]) * sv[:, None]
    else:
        si = c * srow + (pr * BR) // group  # [BC]
        sv = tl.load(scales + si, mask=cmask, other=0.0).to(tl.float32)
        zv = tl.where(hz, tl.load(zp + si, mask=tl.where(hz, cmask, False), other=0).to(tl.float32), zc)
        if S:
            sv = sv * tl.load(tl.load(e + F_S).to(tl.pointer_type(tl.float16)) + c, mask=cmask, other=0.0).to(tl.float32)
        v = (q - zv[None, :]) * sv[None, :]
    tl.store(out + r[:, None] * stride_o + c[None, :], v.to(out.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


def dequantize_operand(tab: DeltaTable, slot: int, part: int, which: str, rows: int, cols: int, bits: int, dtype: torch.dtype, mode: int, with_s: bool = False) -> torch.Tensor:
    """One operand of ``tab``'s (slot, part) entry as a dense ``[rows, cols]`` tensor of ``dtype``
    (``which``: 'a' = Vt / W, 'b' = Ut; ``with_s``: Û's columns times the part's s)."""
    out = torch.empty((rows, cols), device=tab.table.device, dtype=dtype)
    if not (rows and cols):
        return out
    e = tab.table[slot, part]
    fb = A_BITS if which == "a" else B_BITS
    if bits in (1, 2, 4, 8) and mode != MODE_S24:
        # whole words, a scale per tile row / column: the tile must lie in one scale group
        group = int(_group_of(tab, slot, part, which))
        bc = BLOCK_C
        if mode == MODE_COLS and group % bc == 0 or mode == MODE_UT and group % BLOCK_R == 0 or group >= (cols if mode == MODE_COLS else rows):
            bw = bc * bits // 32
            grid = (triton.cdiv(rows, BLOCK_R), triton.cdiv(cols, bc))
            dequant_words_kernel[grid](e, out, out.stride(0), rows, cols, FB=fb, BITS=bits, MODE=mode, BR=BLOCK_R, BW=bw, S=with_s)
            return out
    # element by element (3-bit codes, 2:4, raw, groups that split a tile): a wide tile along the
    # packed rows (H100, bench/results/kernels_h100_s6/call6: Vt 32×4096 3-bit 9.7 µs at 8×512, 26.7 at 32×128)
    br, bc = FALLBACK_TILES[mode]
    grid = (triton.cdiv(rows, br), triton.cdiv(cols, bc))
    dequant_kernel[grid](e, out, out.stride(0), rows, cols, FB=fb, BITS=bits, MODE=mode, BR=br, BC=bc, S=with_s)
    return out


def _group_of(tab: DeltaTable, slot: int, part: int, which: str) -> int:
    """The scale group (along a packed row) of an operand, from the host-side parts."""
    p = tab.deltas[slot].parts[part]
    if isinstance(p, LowRankPart):
        return (p.vt if which == "a" else p.ut).group
    return p.w.group


def apply_segments(x: torch.Tensor, y: torch.Tensor, tab: DeltaTable, groups: RowGroups) -> torch.Tensor:
    """``y[rows] += Δ_slot · x[rows]`` for every segment group, by dequantized factors and
    cuBLAS: per low-rank part ``t = x[:, perm] · V̂ᵀ`` and ``y += t · (Û diag s)ᵀ``, per dense
    part ``y += x · Ŵᵀ``, each product accumulated into y's rows by ``addmm_`` (fp32
    accumulation inside the GEMM). Rows stay in place where the batch is in slot order
    (``RowGroups.rows_in_order``), else the group's rows are gathered and scattered back."""
    assert groups.host_segments is not None
    dt = x.dtype
    for start, length, slot in groups.host_segments:
        if slot < 0 or length == 0:
            continue
        if groups.rows_in_order:
            rows = None
            xg, yg = x.narrow(0, start, length), y.narrow(0, start, length)
        else:
            rows = groups.row_idx[start : start + length].long()
            xg, yg = x.index_select(0, rows), y.index_select(0, rows)
        permuted: dict[int, torch.Tensor] = {}  # x's columns gathered once per permutation (a delta's blocks share one)
        for j, p in enumerate(tab.deltas[slot].parts):
            if isinstance(p, LowRankPart):
                vt = dequantize_operand(tab, slot, j, "a", p.rank, tab.in_features, p.vt.bits, dt, MODE_COLS)
                if p.perm is None:
                    xp = xg
                else:
                    key = p.perm.data_ptr()
                    if key not in permuted:
                        permuted[key] = xg.index_select(1, p.perm.long())
                    xp = permuted[key]
                u = dequantize_operand(tab, slot, j, "b", tab.out_features, p.rank, p.ut.bits, dt, MODE_UT, with_s=p.s is not None)
                yg.addmm_(xp @ vt.T, u.T)
            else:
                wd = dequantize_operand(tab, slot, j, "a", tab.out_features, tab.in_features, p.w.bits, dt, MODE_S24 if p.w.sparse24 else MODE_COLS)
                yg.addmm_(xg, wd.T)
        if rows is not None:
            y.index_copy_(0, rows, yg)
    return y
