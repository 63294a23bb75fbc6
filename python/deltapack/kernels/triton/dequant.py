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

import os

import torch
import triton
import triton.language as tl

from ..packed import A_BITS, B_BITS, DeltaTable, LowRankPart, RowGroups
from .delta_gemm import A_IDX, A_ISTRIDE, F_S, _deq_s24_tile, _deq_tile, _deq_u_tile, _operand, _scale_zero

BLOCK_R, BLOCK_C = 32, 128
MODE_COLS, MODE_UT, MODE_S24 = 0, 1, 2
FALLBACK_TILES = {MODE_COLS: (8, 512), MODE_UT: (32, 128), MODE_S24: (8, 512)}
S24_WORD_ROWS, S24_WORD_TILES = 16, (256, 128, 64)  # dequant_s24_words_kernel: rows per program, dense columns tried widest first
T_TILES = (64, 128)  # dequant_t_kernel: ranks × input columns per program (runs of 64 values per output row)


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
def _row_words(wp, stride, r, rmask, w0, BR: tl.constexpr, BW: tl.constexpr, BITS: tl.constexpr):
    """The codes (uint32) [BR, BW · 32 / BITS] that BW words from word ``w0`` of rows ``r`` hold,
    a word's code k at bits k · BITS (words past a row's ``stride`` read as 0)."""
    PER: tl.constexpr = 32 // BITS
    w = w0 + tl.arange(0, BW)
    words = tl.load(wp.to(tl.pointer_type(tl.int32)) + r[:, None] * stride + w[None, :], mask=rmask[:, None] & (w < stride)[None, :], other=0)
    q = (words.to(tl.uint32, bitcast=True)[:, :, None] >> (tl.arange(0, PER) * BITS).to(tl.uint32)[None, None, :]) & ((1 << BITS) - 1)
    return tl.reshape(q, (BR, BW * PER))


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
    q = _row_words(codes, stride, r, rmask, pc * BW, BR, BW, BITS).to(tl.float32)
    c = pc * BC + tl.arange(0, BC)
    cmask = c < cols
    if MODE == 0:
        sv, zv = _scale_zero(scales, srow, group, zeros, zc, r, pc * BC, rmask)  # [BR]: one group per tile row
        v = (q - zv[:, None]) * sv[:, None]
    else:
        sv, zv = _scale_zero(scales, srow, group, zeros, zc, c, pr * BR, cmask)  # [BC]: Ut's rows are the ranks
        if S:
            sv = sv * tl.load(tl.load(e + F_S).to(tl.pointer_type(tl.float16)) + c, mask=cmask, other=0.0).to(tl.float32)
        v = (q - zv[None, :]) * sv[None, :]
    tl.store(out + r[:, None] * stride_o + c[None, :], v.to(out.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


@triton.jit
def dequant_s24_words_kernel(e, out, stride_o, rows, cols, FB: tl.constexpr, BITS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """MODE_S24 for 2/4/8-bit kept values, whole words at a time: a tile of BR rows × BC dense
    columns reads its BC / 2 kept values' code words and position words (2 bits each) once,
    then puts each pair of kept values at its two positions in its 4 dense columns. The tile's
    kept values lie in one scale group (the host checks)."""
    KC: tl.constexpr = BC // 2
    PER: tl.constexpr = 32 // BITS
    BW: tl.constexpr = KC // PER
    IW: tl.constexpr = KC // 16
    pr = tl.program_id(0)
    pc = tl.program_id(1)
    r = pr * BR + tl.arange(0, BR)
    rmask = r < rows
    codes, stride, scales, srow, group, zeros, zc = _operand(e, FB)
    q = _row_words(codes, stride, r, rmask, pc * BW, BR, BW, BITS).to(tl.float32)
    pos = _row_words(tl.load(e + A_IDX), tl.load(e + A_ISTRIDE), r, rmask, pc * IW, BR, IW, 2).to(tl.int32)
    sv, zv = _scale_zero(scales, srow, group, zeros, zc, r, pc * KC, rmask)
    v = (q - zv[:, None]) * sv[:, None]
    v0, v1 = tl.split(tl.reshape(v, (BR, BC // 4, 2)))
    p0, p1 = tl.split(tl.reshape(pos, (BR, BC // 4, 2)))
    lane = tl.arange(0, 4)[None, None, :]
    d = tl.where(p0[:, :, None] == lane, v0[:, :, None], tl.where(p1[:, :, None] == lane, v1[:, :, None], 0.0))
    d = tl.reshape(d, (BR, BC))
    c = pc * BC + tl.arange(0, BC)
    tl.store(out + r[:, None] * stride_o + c[None, :], d.to(out.dtype.element_ty), mask=rmask[:, None] & (c < cols)[None, :])


@triton.jit
def dequant_t_kernel(e, perm, out, stride_o, rows, cols, FB: tl.constexpr, BITS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, WORDS: tl.constexpr, PERM: tl.constexpr):
    """A MODE_COLS operand (V̂ [rows, cols]) dequantized transposed, its act-order permutation
    undone on the way: ``out[perm[c], r] = V̂[r, c]`` (``out`` [cols, ≥ rows], row stride
    ``stride_o``), so that ``x · out = x[:, perm] · V̂ᵀ``. The codes are read as stored (whole
    words with ``WORDS``: 1/2/4/8 bits and a tile in one scale group; else code by code); each
    tile column lands as a contiguous run of BR values in the row ``perm[c]`` of ``out``."""
    pr = tl.program_id(0)
    pc = tl.program_id(1)
    r = pr * BR + tl.arange(0, BR)
    rmask = r < rows
    c = pc * BC + tl.arange(0, BC)
    cmask = c < cols
    codes, stride, scales, srow, group, zeros, zc = _operand(e, FB)
    if WORDS:
        BW: tl.constexpr = BC * BITS // 32
        q = _row_words(codes, stride, r, rmask, pc * BW, BR, BW, BITS).to(tl.float32)
        sv, zv = _scale_zero(scales, srow, group, zeros, zc, r, pc * BC, rmask)
        v = (q - zv[:, None]) * sv[:, None]
    else:
        v = _deq_tile(codes, stride, scales, srow, group, zeros, zc, r, rmask, pc * BC, cols, BR, BC, BITS, True)
    if PERM:
        dest = tl.load(perm + c, mask=cmask, other=0)
    else:
        dest = c
    tl.store(out + dest[None, :] * stride_o + r[:, None], v.to(out.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


def dequantize_vt_t(tab: DeltaTable, slot: int, part: int, out: torch.Tensor) -> torch.Tensor:
    """The (slot, part) low-rank block's V̂ into ``out`` [in, rank] (a column slice of a larger
    buffer, unit stride along its columns), transposed and in x's column order
    (:func:`dequant_t_kernel`)."""
    p = tab.deltas[slot].parts[part]
    rows, cols, bits = p.rank, tab.in_features, p.vt.bits
    if out.shape != (cols, rows) or out.stride(1) != 1:
        raise ValueError(f"out {tuple(out.shape)} (strides {out.stride()}) is not a [{cols}, {rows}] view with unit column stride")
    if not (rows and cols):
        return out
    br, bc = T_TILES
    words = bits in (1, 2, 4, 8) and (p.vt.group % bc == 0 or p.vt.group >= cols)
    perm = p.perm if p.perm is not None else out  # never read without PERM
    grid = (triton.cdiv(rows, br), triton.cdiv(cols, bc))
    dequant_t_kernel[grid](tab.table[slot, part], perm, out, out.stride(0), rows, cols, FB=A_BITS, BITS=bits, BR=br, BC=bc, WORDS=words, PERM=p.perm is not None)
    return out


def dequantize_operand(
    tab: DeltaTable,
    slot: int,
    part: int,
    which: str,
    rows: int,
    cols: int,
    bits: int,
    dtype: torch.dtype,
    mode: int,
    with_s: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One operand of ``tab``'s (slot, part) entry as a dense ``[rows, cols]`` tensor of ``dtype``
    (``which``: 'a' = Vt / W, 'b' = Ut; ``with_s``: Û's columns times the part's s), written
    into ``out`` where given (a ``[rows, cols]`` view with unit stride along its columns: a slice
    of a larger buffer)."""
    if out is None:
        out = torch.empty((rows, cols), device=tab.table.device, dtype=dtype)
    elif out.shape != (rows, cols) or out.stride(1) != 1:
        raise ValueError(f"out {tuple(out.shape)} (strides {out.stride()}) is not a [{rows}, {cols}] view with unit column stride")
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
    if mode == MODE_S24 and bits in (2, 4, 8):
        # whole words: the widest tile whose kept values (half its columns) lie in one scale group
        group = int(_group_of(tab, slot, part, which))
        for bc in S24_WORD_TILES:
            if group % (bc // 2) == 0 or group >= cols // 2:
                grid = (triton.cdiv(rows, S24_WORD_ROWS), triton.cdiv(cols, bc))
                dequant_s24_words_kernel[grid](e, out, out.stride(0), rows, cols, FB=fb, BITS=bits, BR=S24_WORD_ROWS, BC=bc)
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


RANK_ALIGN = 8  # the stacked rank is padded to this many (16-byte rows of t and Û in 16-bit dtypes: cuBLAS's aligned kernels)


def stacked_lowrank(tab: DeltaTable, slot: int, dtype: torch.dtype, transposed: bool = True) -> list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]]:
    """The low-rank parts of ``slot``'s delta (Delta-CoMe's 8/3/2-bit blocks) stacked into factor
    pairs ``(perm, A, Û diag s [out, R'])``, so that one pair of GEMMs reads x once for all
    blocks. ``transposed``: one stack, ``A = V̂ᵀ`` [in, R'] with every block's act-order
    permutation undone as it is written (:func:`dequant_t_kernel`; ``Δ·x = Û s · (x · A)``,
    perm None); else ``A = V̂`` [R', in] in its stored order, one stack per permutation (a
    delta's blocks share one), for ``x[:, perm]``. ``R'`` is the summed rank rounded up to
    :data:`RANK_ALIGN` (zero rows / columns). ``[]`` without low-rank parts."""
    stacks: dict[int, list[tuple[int, LowRankPart]]] = {}
    for j, p in enumerate(tab.deltas[slot].parts):
        if isinstance(p, LowRankPart):
            stacks.setdefault(-1 if transposed or p.perm is None else p.perm.data_ptr(), []).append((j, p))
    dev, K, N = tab.table.device, tab.in_features, tab.out_features
    res = []
    for key, members in stacks.items():
        rank = sum(p.rank for _, p in members)
        rp = -(-rank // RANK_ALIGN) * RANK_ALIGN
        a = torch.empty((K, rp) if transposed else (rp, K), device=dev, dtype=dtype)
        u = torch.empty((N, rp), device=dev, dtype=dtype)
        if rp > rank:
            (a[:, rank:] if transposed else a[rank:]).zero_()
            u[:, rank:].zero_()
        off = 0
        for j, p in members:
            if transposed:
                dequantize_vt_t(tab, slot, j, a[:, off : off + p.rank])
            else:
                dequantize_operand(tab, slot, j, "a", p.rank, K, p.vt.bits, dtype, MODE_COLS, out=a[off : off + p.rank])
            dequantize_operand(tab, slot, j, "b", N, p.rank, p.ut.bits, dtype, MODE_UT, with_s=p.s is not None, out=u[:, off : off + p.rank])
            off += p.rank
        res.append((None if key == -1 else members[0][1].perm, a, u))
    return res


def transposed_stack() -> bool:
    """Whether act-order (permuted) low-rank blocks take V̂ᵀ dequantized in x's column order
    (:func:`dequant_t_kernel`) rather than V̂ as stored and a gather of x's permuted columns:
    always, unless ``DELTAPACK_PREFILL_VT=rows`` (benchmarks, tests). H100,
    bench/results/kernels_h100_s8/ (calls 6 and 7), one Delta-CoMe delta at 1 bit, 4096×11008:
    with L2 flushed before each call (bench/kernels.py) V̂ᵀ wins (145 vs 163 µs at 16 rows,
    195 vs 308 at 512): the gather reads x 2 bytes at a time from DRAM. With x in L2 (a warm
    profile) the gather wins at 64 rows (88 vs 109 µs) and loses at 2048 (310 vs 235)."""
    return os.environ.get("DELTAPACK_PREFILL_VT", "").strip() != "rows"


def apply_segments(x: torch.Tensor, y: torch.Tensor, tab: DeltaTable, groups: RowGroups) -> torch.Tensor:
    """``y[rows] += Δ_slot · x[rows]`` for every segment group, by dequantized factors and
    cuBLAS: per stack of low-rank parts (:func:`stacked_lowrank`) ``t = x[:, perm] · V̂ᵀ`` (for
    act-order blocks V̂ᵀ already in x's column order: :func:`transposed_stack`)
    and ``y += t · (Û diag s)ᵀ``, per dense part ``y += x · Ŵᵀ``, each product accumulated into
    y's rows by ``addmm_`` (fp32 accumulation inside the GEMM). Rows stay in place where the
    batch is in slot order (``RowGroups.rows_in_order``), else the group's rows are gathered and
    scattered back."""
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
        transposed = any(isinstance(p, LowRankPart) and p.perm is not None for p in tab.deltas[slot].parts) and transposed_stack()
        for perm, a, u in stacked_lowrank(tab, slot, dt, transposed):
            if transposed:
                yg.addmm_(xg @ a, u.T)
            else:
                yg.addmm_((xg if perm is None else xg.index_select(1, perm.long())) @ a.T, u.T)
        for j, p in enumerate(tab.deltas[slot].parts):
            if not isinstance(p, LowRankPart):
                wd = dequantize_operand(tab, slot, j, "a", tab.out_features, tab.in_features, p.w.bits, dt, MODE_S24 if p.w.sparse24 else MODE_COLS)
                yg.addmm_(xg, wd.T)
        if rows is not None:
            y.index_copy_(0, rows, yg)
    return y
