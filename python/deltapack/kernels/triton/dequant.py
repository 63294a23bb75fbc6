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
from .delta_gemm import A_IDX, A_ISTRIDE, F_S, _codes_at, _deq_s24_tile, _deq_tile, _deq_u_tile, _operand, _scale_zero

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


@triton.jit
def dequant_unperm_kernel(e, inv, out, stride_o, rows, cols, FB: tl.constexpr, BITS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """MODE_COLS with an act-order permutation undone: ``out[r, j] = V̂[r, inv[j]]`` (``inv`` =
    perm⁻¹), so that ``x · outᵀ = x[:, perm] · V̂ᵀ`` without permuting x. The codes of a row are
    gathered (a row's words stay in L1 / L2), the writes stay coalesced; scales by the source
    column's group."""
    pr = tl.program_id(0)
    pc = tl.program_id(1)
    r = pr * BR + tl.arange(0, BR)
    j = pc * BC + tl.arange(0, BC)
    jmask = j < cols
    src = tl.load(inv + j, mask=jmask, other=0)
    codes, stride, scales, srow, group, zeros, zc = _operand(e, FB)
    r2 = r[:, None]
    m2 = (r < rows)[:, None] & jmask[None, :]
    if BITS == 16:
        v = tl.load(codes.to(tl.pointer_type(tl.float16)) + r2 * stride + src[None, :], mask=m2, other=0.0).to(tl.float32)
    else:
        q = _codes_at(codes.to(tl.pointer_type(tl.int32)), stride, r2, src[None, :], m2, BITS)
        sv, zv = _scale_zero(scales, srow, group, zeros, zc, r2, src[None, :], m2)
        v = (q.to(tl.float32) - zv) * sv
    tl.store(out + r2 * stride_o + j[None, :], v.to(out.dtype.element_ty), mask=m2)


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
    inv_perm: torch.Tensor | None = None,
) -> torch.Tensor:
    """One operand of ``tab``'s (slot, part) entry as a dense ``[rows, cols]`` tensor of ``dtype``
    (``which``: 'a' = Vt / W, 'b' = Ut; ``with_s``: Û's columns times the part's s), written
    into ``out`` where given (a ``[rows, cols]`` view with unit stride along its columns: a slice
    of a larger buffer). ``inv_perm`` (MODE_COLS): the inverse of the part's act-order
    permutation, whose columns are put back in x's order (:func:`dequant_unperm_kernel`)."""
    if out is None:
        out = torch.empty((rows, cols), device=tab.table.device, dtype=dtype)
    elif out.shape != (rows, cols) or out.stride(1) != 1:
        raise ValueError(f"out {tuple(out.shape)} (strides {out.stride()}) is not a [{rows}, {cols}] view with unit column stride")
    if not (rows and cols):
        return out
    e = tab.table[slot, part]
    fb = A_BITS if which == "a" else B_BITS
    if inv_perm is not None:
        if mode != MODE_COLS or inv_perm.shape != (cols,):
            raise ValueError(f"a permutation of {tuple(inv_perm.shape)} applies to MODE_COLS operands of {cols} columns only")
        br, bc = FALLBACK_TILES[MODE_COLS]
        dequant_unperm_kernel[(triton.cdiv(rows, br), triton.cdiv(cols, bc))](e, inv_perm, out, out.stride(0), rows, cols, FB=fb, BITS=bits, BR=br, BC=bc)
        return out
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


RANK_ALIGN = 8  # the stacked rank is padded to this many (16-byte rows of t and Û in 16-bit dtypes: cuBLAS's aligned kernels)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[perm[c]] = c`` (int32, perm's device)."""
    p = perm.long()
    return torch.empty_like(p).scatter_(0, p, torch.arange(p.numel(), device=p.device)).to(torch.int32)


def stacked_lowrank(tab: DeltaTable, slot: int, dtype: torch.dtype, unpermute: bool = True) -> list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]]:
    """The low-rank parts of ``slot``'s delta (Delta-CoMe's 8/3/2-bit blocks) stacked into factor
    pairs ``(perm, V̂ [R', in], Û diag s [out, R'])`` with ``Δ·x = Û diag s · V̂ · x[perm]``:
    ``unpermute`` undoes each block's act-order permutation in its rows of V̂
    (:func:`dequant_unperm_kernel`: one stack, perm None), else the blocks stack per permutation
    (a delta's blocks share one) in their stored column order. ``R'`` is the summed rank rounded
    up to :data:`RANK_ALIGN` (zero rows and columns). One pair of GEMMs then reads x once for all
    blocks, at an aligned rank."""
    stacks: dict[int, list[tuple[int, LowRankPart]]] = {}
    for j, p in enumerate(tab.deltas[slot].parts):
        if isinstance(p, LowRankPart):
            key = -1 if unpermute or p.perm is None else p.perm.data_ptr()
            stacks.setdefault(key, []).append((j, p))
    inverses: dict[int, torch.Tensor] = {}  # one inverse per permutation
    res = []
    for key, members in stacks.items():
        rank = sum(p.rank for _, p in members)
        rp = -(-rank // RANK_ALIGN) * RANK_ALIGN
        vt = torch.empty((rp, tab.in_features), device=tab.table.device, dtype=dtype)
        u = torch.empty((tab.out_features, rp), device=tab.table.device, dtype=dtype)
        if rp > rank:
            vt[rank:].zero_()
            u[:, rank:].zero_()
        off = 0
        for j, p in members:
            inv = None
            if unpermute and p.perm is not None:
                inv = inverses.get(p.perm.data_ptr())
                if inv is None:
                    inv = inverses[p.perm.data_ptr()] = inverse_permutation(p.perm)
            dequantize_operand(tab, slot, j, "a", p.rank, tab.in_features, p.vt.bits, dtype, MODE_COLS, out=vt[off : off + p.rank], inv_perm=inv)
            dequantize_operand(tab, slot, j, "b", tab.out_features, p.rank, p.ut.bits, dtype, MODE_UT, with_s=p.s is not None, out=u[:, off : off + p.rank])
            off += p.rank
        res.append((None if key == -1 else members[0][1].perm, vt, u))
    return res


def apply_segments(x: torch.Tensor, y: torch.Tensor, tab: DeltaTable, groups: RowGroups) -> torch.Tensor:
    """``y[rows] += Δ_slot · x[rows]`` for every segment group, by dequantized factors and
    cuBLAS: per stack of low-rank parts (:func:`stacked_lowrank`) ``t = x[:, perm] · V̂ᵀ`` and
    ``y += t · (Û diag s)ᵀ``, per dense part ``y += x · Ŵᵀ``, each product accumulated into y's
    rows by ``addmm_`` (fp32 accumulation inside the GEMM). The act-order permutation moves the
    smaller operand: x's columns are gathered for a group of at most as many rows as the delta's
    summed rank, else V̂'s are put back in x's order as they are dequantized (H100, 4096×11008,
    rank 1333: at 512 rows the gather of x costs 38 µs and the permuted dequantization 105; at
    2048 rows the latter 119 µs, bench/results/kernels_h100_s8/). Rows stay in place where the
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
        rank = sum(p.rank for p in tab.deltas[slot].parts if isinstance(p, LowRankPart))
        for perm, vt, u in stacked_lowrank(tab, slot, dt, unpermute=length > rank):
            xp = xg if perm is None else xg.index_select(1, perm.long())
            yg.addmm_(xp @ vt.T, u.T)
        for j, p in enumerate(tab.deltas[slot].parts):
            if not isinstance(p, LowRankPart):
                wd = dequantize_operand(tab, slot, j, "a", tab.out_features, tab.in_features, p.w.bits, dt, MODE_S24 if p.w.sparse24 else MODE_COLS)
                yg.addmm_(xg, wd.T)
        if rows is not None:
            y.index_copy_(0, rows, yg)
    return y
