"""Triton kernels: ``y += Δ_{slot(row)} · x_row`` for a batch whose rows use different deltas,
read straight from the packed .dpk layout (docs/FORMAT.md §3: little-endian bit stream per
row, rows padded to 32-bit words, ``value = (code − zero) × scale``). The exact math is
:func:`deltapack.kernels.reference.delta_apply`; tests check these kernels against it.

Two launches serve any mix of deltas, methods and bit widths, with no per-delta loop:

1. ``shrink`` (only when a slot has low-rank parts): ``t[row, off_b + j] = s_j · Σ_k
   Vt_b[j, k] · x[row, perm(k)]`` for every low-rank block ``b`` of the row's delta. Grid:
   (row group, part × rank tile, row block).
2. ``apply``: ``y[row, n] += Σ_b Σ_j t[row, off_b + j] · Ut_b[j, n]`` (low-rank parts) ``+ Σ_k
   W[n, k] · x[row, k]`` (dense ``q{b}`` / raw / 2:4 ``s24q{b}`` parts). Grid: (row group,
   output tile, row block); each program owns its outputs, so ``y`` needs no atomics.

Rows come in groups that share a slot (:class:`~deltapack.kernels.packed.RowGroups`): a group
of one row is the gather (BGMV) style of decode, a long group the segment (SGMV) style of
prefill; ``BLOCK_M == 1`` reduces with CUDA-core FMAs in fp32, ``BLOCK_M ≥ 16`` uses
``tl.dot`` on tiles dequantized to the activation dtype, accumulating in fp32.

The descriptor table (:class:`~deltapack.kernels.packed.DeltaTable`) carries each part's kind,
bit width and pointers; the bit width is a runtime value dispatched once per part, outside the
inner loop, to a loop specialized for it. Which (kind, bit width) specializations a launch
compiles is a constexpr mask taken from the table, so a Delta-CoMe-only batch does not compile
the 2:4 path.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .. import packed as _p

# Layout constants of the descriptor table (defined once, in packed.py), as constexpr globals.
A_BITS = tl.constexpr(_p.A_BITS)
A_IDX = tl.constexpr(_p.A_IDX)
A_ISTRIDE = tl.constexpr(_p.A_ISTRIDE)
B_BITS = tl.constexpr(_p.B_BITS)
F_KIND = tl.constexpr(_p.F_KIND)
F_PERM = tl.constexpr(_p.F_PERM)
F_RANK = tl.constexpr(_p.F_RANK)
F_ROFF = tl.constexpr(_p.F_ROFF)
F_S = tl.constexpr(_p.F_S)
KIND_DENSE = tl.constexpr(_p.KIND_DENSE)
KIND_LOWRANK = tl.constexpr(_p.KIND_LOWRANK)
KIND_SPARSE24 = tl.constexpr(_p.KIND_SPARSE24)
NF = tl.constexpr(_p.NF)
# Field offsets inside an operand's run of fields (A_BITS.. or B_BITS..), see packed.py.
_O_CODES = tl.constexpr(_p.A_CODES - _p.A_BITS)
_O_STRIDE = tl.constexpr(_p.A_STRIDE - _p.A_BITS)
_O_SCALES = tl.constexpr(_p.A_SCALES - _p.A_BITS)
_O_SROW = tl.constexpr(_p.A_SROW - _p.A_BITS)
_O_GROUP = tl.constexpr(_p.A_GROUP - _p.A_BITS)
_O_ZEROS = tl.constexpr(_p.A_ZEROS - _p.A_BITS)
_O_ZCONST = tl.constexpr(_p.A_ZCONST - _p.A_BITS)


@triton.jit
def _codes_at(cp, stride, r2, j2, mask, BITS: tl.constexpr):
    """Codes of rows ``r2`` [R, 1] at code columns ``j2`` by bit offset: any width, including
    3-bit codes that straddle two words (§3.4)."""
    bit = j2 * BITS
    sh = (bit & 31).to(tl.uint32)
    p = cp + r2 * stride + (bit >> 5)
    w0 = tl.load(p, mask=mask, other=0).to(tl.uint32, bitcast=True)
    if BITS == 3:
        w1 = tl.load(p + 1, mask=mask & (sh > 29), other=0).to(tl.uint32, bitcast=True)
        v = (w0 >> sh) | (w1 << ((32 - sh) & 31))
    else:
        v = w0 >> sh
    return (v & ((1 << BITS) - 1)).to(tl.int32)


@triton.jit
def _operand(e, FB: tl.constexpr):
    """An operand's descriptor fields, loaded once per part (not per tile: a load inside the
    inner loop would put a dependent global load in front of every tile's data)."""
    codes = tl.load(e + FB + _O_CODES)
    stride = tl.load(e + FB + _O_STRIDE)
    scales = tl.load(e + FB + _O_SCALES).to(tl.pointer_type(tl.float16))
    srow = tl.load(e + FB + _O_SROW)
    group = tl.load(e + FB + _O_GROUP)
    zeros = tl.load(e + FB + _O_ZEROS)
    zc = tl.load(e + FB + _O_ZCONST).to(tl.int32).to(tl.float32, bitcast=True)
    return codes, stride, scales, srow, group, zeros, zc


@triton.jit
def _scale_zero(scales, srow, group, zeros, zc, r, gcol, m):
    """Scale and zero point (fp32) of rows ``r`` at columns ``gcol`` (any broadcastable
    shapes): the scale grid index is row · srow + col // group (docs/FORMAT.md §3.2)."""
    si = r * srow + gcol // group
    s = tl.load(scales + si, mask=m, other=0.0).to(tl.float32)
    hz = zeros != 0
    z = tl.load(zeros.to(tl.pointer_type(tl.uint8)) + si, mask=tl.where(hz, m, False), other=0).to(tl.float32)
    return s, tl.where(hz, z, zc)


@triton.jit
def _deq_words(codes, stride, scales, srow, group, zeros, zc, rows, rmask, c0, ncols, KW: tl.constexpr, BITS: tl.constexpr, GATHER: tl.constexpr):
    """fp32 values [R, KW, 32 / BITS] of columns ``c0 + w · (32 / BITS) + lane`` (1, 2, 4, 8
    bits; ``c0`` word-aligned): each word is loaded once and split with shifts, scales are read
    once per word (a group spans whole words), and the tile stays 3-D so no layout shuffle
    through shared memory is needed (the decode path)."""
    CPW: tl.constexpr = 32 // BITS
    cp = codes.to(tl.pointer_type(tl.int32))
    wc = c0 // CPW + tl.arange(0, KW)
    wm = rmask[:, None] & (wc[None, :] < stride)
    w = tl.load(cp + rows[:, None] * stride + wc[None, :], mask=wm, other=0).to(tl.uint32, bitcast=True)
    sh = (tl.arange(0, CPW) * BITS).to(tl.uint32)
    q = (w[:, :, None] >> sh[None, None, :]) & ((1 << BITS) - 1)
    cols3 = (c0 + tl.arange(0, KW)[:, None] * CPW + tl.arange(0, CPW)[None, :])[None, :, :]
    m3 = rmask[:, None, None] & (cols3 < ncols)
    if GATHER:
        s, z = _scale_zero(scales, srow, group, zeros, zc, rows[:, None, None], cols3, m3)
    else:
        s2, z2 = _scale_zero(scales, srow, group, zeros, zc, rows[:, None], (wc * CPW)[None, :], wm)
        s = s2[:, :, None]
        z = z2[:, :, None]
    return tl.where(m3, (q.to(tl.float32) - z) * s, 0.0)


@triton.jit
def _deq_tile(codes, stride, scales, srow, group, zeros, zc, rows, rmask, c0, ncols, R: tl.constexpr, C: tl.constexpr, BITS: tl.constexpr, GATHER: tl.constexpr):
    """fp32 values [R, C] at ``rows`` × ``c0 .. c0 + C`` (per-element word loads: any width)."""
    cols = c0 + tl.arange(0, C)
    r2 = rows[:, None]
    rmask2 = rmask[:, None]
    m2 = rmask2 & (cols[None, :] < ncols)
    if BITS == 16:
        v = tl.load(codes.to(tl.pointer_type(tl.float16)) + r2 * stride + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    else:
        q = _codes_at(codes.to(tl.pointer_type(tl.int32)), stride, r2, cols[None, :], m2, BITS)
        if GATHER:
            s, z = _scale_zero(scales, srow, group, zeros, zc, r2, cols[None, :], m2)
        else:
            s, z = _scale_zero(scales, srow, group, zeros, zc, r2, c0, rmask2)
        v = tl.where(m2, (q.to(tl.float32) - z) * s, 0.0)
    return v


@triton.jit
def _deq_s24_tile(codes, stride, scales, srow, group, zeros, zc, ip, istride, rows, rmask, c0, ncols, R: tl.constexpr, C: tl.constexpr, BITS: tl.constexpr, GATHER: tl.constexpr):
    """fp32 dense values [R, C] of a 2:4 operand (§3.3): dense column ``4p + i`` holds kept
    value ``2p + k`` when ``idx(2p + k) = i``, else 0."""
    cols = c0 + tl.arange(0, C)
    r2 = rows[:, None]
    rmask2 = rmask[:, None]
    m2 = rmask2 & (cols[None, :] < ncols)
    j0 = ((cols // 4) * 2)[None, :]
    cp = codes.to(tl.pointer_type(tl.int32))
    ipp = ip.to(tl.pointer_type(tl.int32))
    q0 = _codes_at(cp, stride, r2, j0, m2, BITS).to(tl.float32)
    q1 = _codes_at(cp, stride, r2, j0 + 1, m2, BITS).to(tl.float32)
    i0 = _codes_at(ipp, istride, r2, j0, m2, 2)
    i1 = _codes_at(ipp, istride, r2, j0 + 1, m2, 2)
    if GATHER:
        s, z = _scale_zero(scales, srow, group, zeros, zc, r2, j0, m2)
    else:
        s, z = _scale_zero(scales, srow, group, zeros, zc, r2, c0 // 2, rmask2)
    lane = (cols % 4)[None, :]
    v = tl.where(i0 == lane, (q0 - z) * s, tl.where(i1 == lane, (q1 - z) * s, 0.0))
    return tl.where(m2, v, 0.0)


@triton.jit
def _x_tile(x_ptr, stride_xm, rows_x, mmask, k0, K, BLOCK_K: tl.constexpr):
    kc = k0 + tl.arange(0, BLOCK_K)
    kmask = kc < K
    return tl.load(x_ptr + rows_x[:, None] * stride_xm + kc[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)


@triton.jit
def _x_tile_permuted(x_ptr, stride_xm, rows_x, mmask, k0, K, perm, BLOCK_K: tl.constexpr):
    """x[rows, perm[k0 .. k0 + BLOCK_K]] (act-order blocks read the input permuted), or the
    plain tile when the block has no permutation (``perm`` 0)."""
    kc = k0 + tl.arange(0, BLOCK_K)
    kmask = kc < K
    hp = perm != 0
    xc = tl.load(perm.to(tl.pointer_type(tl.int32)) + kc, mask=tl.where(hp, kmask, False), other=0)
    xc = tl.where(hp, xc, kc)
    return tl.load(x_ptr + rows_x[:, None] * stride_xm + xc[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)


@triton.jit
def _acc_rows_by_cols(acc, xt, w, BLOCK_M: tl.constexpr, PREC: tl.constexpr):
    """acc[M, R] += xt[M, K] · w[R, K]ᵀ."""
    if BLOCK_M == 1:
        acc += tl.sum(w * xt.to(tl.float32), axis=1)[None, :]
    else:
        acc = tl.dot(xt, tl.trans(w.to(xt.dtype)), acc, input_precision=PREC)
    return acc


@triton.jit
def _shrink_loop(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BITS: tl.constexpr, GATHER: tl.constexpr, PREC: tl.constexpr):
    if (BLOCK_M == 1) and (BITS != 3) and (BITS != 16):
        # decode: one row, whole packed words, CUDA-core FMAs in fp32
        CPW: tl.constexpr = 32 // BITS
        KW: tl.constexpr = BLOCK_K // CPW
        row = tl.sum(rows_x, axis=0)
        hp = perm != 0
        codes, stride, scales, srow, group, zeros, zc = _operand(e, A_BITS)
        acc1 = tl.zeros((BLOCK_R,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols3 = (k0 + tl.arange(0, KW)[:, None] * CPW + tl.arange(0, CPW)[None, :])[None, :, :]
            km3 = cols3 < K
            xc3 = tl.load(perm.to(tl.pointer_type(tl.int32)) + cols3, mask=tl.where(hp, km3, False), other=0)
            xc3 = tl.where(hp, xc3, cols3)
            x3 = tl.load(x_ptr + row * stride_xm + xc3, mask=km3, other=0.0).to(tl.float32)
            w3 = _deq_words(codes, stride, scales, srow, group, zeros, zc, offs_r, rmask, k0, K, KW, BITS, GATHER)
            acc1 += tl.sum(tl.sum(w3 * x3, axis=2), axis=1)
        acc = acc1[None, :]
    else:
        codes, stride, scales, srow, group, zeros, zc = _operand(e, A_BITS)
        acc = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            xt = _x_tile_permuted(x_ptr, stride_xm, rows_x, mmask, k0, K, perm, BLOCK_K)
            w = _deq_tile(codes, stride, scales, srow, group, zeros, zc, offs_r, rmask, k0, K, BLOCK_R, BLOCK_K, BITS, GATHER or (BLOCK_M == 1))
            acc = _acc_rows_by_cols(acc, xt, w, BLOCK_M, PREC)
    return acc


@triton.jit
def _rows_of_group(row_idx_ptr, gstart_ptr, g, mb, n, BLOCK_M: tl.constexpr):
    offs_m = tl.arange(0, BLOCK_M)
    mmask = offs_m < n
    start = tl.load(gstart_ptr + g)
    rows_x = tl.load(row_idx_ptr + start + mb * BLOCK_M + offs_m, mask=mmask, other=0)
    return rows_x, mmask


@triton.jit
def shrink_kernel(
    x_ptr, stride_xm, t_ptr, stride_tm, tab_ptr, row_idx_ptr, gstart_ptr, glen_ptr, gslot_ptr,
    K, tiles_per_part,
    MAX_PARTS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    VT_BITS: tl.constexpr, GATHER_K: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    g = tl.program_id(0)
    pid1 = tl.program_id(1)
    mb = tl.program_id(2)
    part = pid1 // tiles_per_part
    r0 = (pid1 % tiles_per_part) * BLOCK_R
    slot = tl.load(gslot_ptr + g)
    n = tl.load(glen_ptr + g) - mb * BLOCK_M
    e = tab_ptr + (tl.maximum(slot, 0) * MAX_PARTS + part) * NF
    kind = tl.load(e + F_KIND)
    rank = tl.load(e + F_RANK)
    if (slot >= 0) & (kind == KIND_LOWRANK) & (r0 < rank) & (n > 0):
        rows_x, mmask = _rows_of_group(row_idx_ptr, gstart_ptr, g, mb, n, BLOCK_M)
        offs_r = r0 + tl.arange(0, BLOCK_R)
        rmask = offs_r < rank
        perm = tl.load(e + F_PERM)
        bits = tl.load(e + A_BITS)
        acc = _shrink_bits(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, bits, BLOCK_M, BLOCK_R, BLOCK_K, VT_BITS, GATHER_K, PREC)
        sp = tl.load(e + F_S)
        hs = sp != 0
        s = tl.load(sp.to(tl.pointer_type(tl.float16)) + offs_r, mask=tl.where(hs, rmask, False), other=1.0).to(tl.float32)
        roff = tl.load(e + F_ROFF)
        tp = t_ptr + rows_x[:, None] * stride_tm + roff + offs_r[None, :]
        tl.store(tp, acc * s[None, :], mask=mmask[:, None] & rmask[None, :])


@triton.jit
def _expand_loop(acc, e, t_ptr, stride_tm, rows_x, mmask, n0, N, rank, roff, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr, BITS: tl.constexpr, GATHER: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr):
    codes, stride, scales, srow, group, zeros, zc = _operand(e, B_BITS)
    if (BLOCK_M == 1) and (BITS != 3) and (BITS != 16):
        CPW: tl.constexpr = 32 // BITS
        NW: tl.constexpr = BLOCK_N // CPW
        row = tl.sum(rows_x, axis=0)
        acc3 = tl.zeros((NW, CPW), tl.float32)
        for j0 in range(0, rank, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            jmask = offs_j < rank
            tt = tl.load(t_ptr + row * stride_tm + roff + offs_j, mask=jmask, other=0.0)
            u3 = _deq_words(codes, stride, scales, srow, group, zeros, zc, offs_j, jmask, n0, N, NW, BITS, GATHER)
            acc3 += tl.sum(tt[:, None, None] * u3, axis=0)
        acc += tl.reshape(acc3, (1, BLOCK_N))
    else:
        for j0 in range(0, rank, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            jmask = offs_j < rank
            tt = tl.load(t_ptr + rows_x[:, None] * stride_tm + roff + offs_j[None, :], mask=mmask[:, None] & jmask[None, :], other=0.0)
            u = _deq_tile(codes, stride, scales, srow, group, zeros, zc, offs_j, jmask, n0, N, BLOCK_J, BLOCK_N, BITS, GATHER or (BLOCK_M == 1))
            if BLOCK_M == 1:
                acc += tl.sum(tl.reshape(tt, (BLOCK_J, 1)) * u, axis=0)[None, :]
            else:
                acc = tl.dot(tt.to(DT), u.to(DT), acc, input_precision=PREC)
    return acc


@triton.jit
def _dense_loop(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BITS: tl.constexpr, SPARSE24: tl.constexpr, GATHER: tl.constexpr, PREC: tl.constexpr):
    codes, stride, scales, srow, group, zeros, zc = _operand(e, A_BITS)
    if (BLOCK_M == 1) and (not SPARSE24) and (BITS != 3) and (BITS != 16):
        CPW: tl.constexpr = 32 // BITS
        KW: tl.constexpr = BLOCK_K // CPW
        row = tl.sum(rows_x, axis=0)
        acc1 = tl.zeros((BLOCK_N,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols3 = (k0 + tl.arange(0, KW)[:, None] * CPW + tl.arange(0, CPW)[None, :])[None, :, :]
            x3 = tl.load(x_ptr + row * stride_xm + cols3, mask=cols3 < K, other=0.0).to(tl.float32)
            w3 = _deq_words(codes, stride, scales, srow, group, zeros, zc, offs_n, nmask, k0, K, KW, BITS, GATHER)
            acc1 += tl.sum(tl.sum(w3 * x3, axis=2), axis=1)
        acc += acc1[None, :]
    else:
        ip = tl.load(e + A_IDX)
        istride = tl.load(e + A_ISTRIDE)
        for k0 in range(0, K, BLOCK_K):
            xt = _x_tile(x_ptr, stride_xm, rows_x, mmask, k0, K, BLOCK_K)
            if SPARSE24:
                w = _deq_s24_tile(codes, stride, scales, srow, group, zeros, zc, ip, istride, offs_n, nmask, k0, K, BLOCK_N, BLOCK_K, BITS, GATHER or (BLOCK_M == 1))
            else:
                w = _deq_tile(codes, stride, scales, srow, group, zeros, zc, offs_n, nmask, k0, K, BLOCK_N, BLOCK_K, BITS, GATHER or (BLOCK_M == 1))
            acc = _acc_rows_by_cols(acc, xt, w, BLOCK_M, PREC)
    return acc


# Runtime bit width → the loop specialized for it. ``MASK`` (bit b set: width b occurs in the
# table) prunes the widths a launch does not need at compile time.
@triton.jit
def _shrink_bits(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, bits, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, MASK: tl.constexpr, GATHER: tl.constexpr, PREC: tl.constexpr):
    acc = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)
    if MASK & 2:
        if bits == 1:
            acc = _shrink_loop(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M, BLOCK_R, BLOCK_K, 1, GATHER, PREC)
    if MASK & 4:
        if bits == 2:
            acc = _shrink_loop(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M, BLOCK_R, BLOCK_K, 2, GATHER, PREC)
    if MASK & 8:
        if bits == 3:
            acc = _shrink_loop(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M, BLOCK_R, BLOCK_K, 3, GATHER, PREC)
    if MASK & 16:
        if bits == 4:
            acc = _shrink_loop(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M, BLOCK_R, BLOCK_K, 4, GATHER, PREC)
    if MASK & 256:
        if bits == 8:
            acc = _shrink_loop(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M, BLOCK_R, BLOCK_K, 8, GATHER, PREC)
    if MASK & 65536:
        if bits == 16:
            acc = _shrink_loop(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M, BLOCK_R, BLOCK_K, 16, GATHER, PREC)
    return acc


@triton.jit
def _expand_bits(acc, e, t_ptr, stride_tm, rows_x, mmask, n0, N, rank, roff, bits, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr, MASK: tl.constexpr, GATHER: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr):
    if MASK & 2:
        if bits == 1:
            acc = _expand_loop(acc, e, t_ptr, stride_tm, rows_x, mmask, n0, N, rank, roff, BLOCK_M, BLOCK_N, BLOCK_J, 1, GATHER, PREC, DT)
    if MASK & 4:
        if bits == 2:
            acc = _expand_loop(acc, e, t_ptr, stride_tm, rows_x, mmask, n0, N, rank, roff, BLOCK_M, BLOCK_N, BLOCK_J, 2, GATHER, PREC, DT)
    if MASK & 8:
        if bits == 3:
            acc = _expand_loop(acc, e, t_ptr, stride_tm, rows_x, mmask, n0, N, rank, roff, BLOCK_M, BLOCK_N, BLOCK_J, 3, GATHER, PREC, DT)
    if MASK & 16:
        if bits == 4:
            acc = _expand_loop(acc, e, t_ptr, stride_tm, rows_x, mmask, n0, N, rank, roff, BLOCK_M, BLOCK_N, BLOCK_J, 4, GATHER, PREC, DT)
    if MASK & 256:
        if bits == 8:
            acc = _expand_loop(acc, e, t_ptr, stride_tm, rows_x, mmask, n0, N, rank, roff, BLOCK_M, BLOCK_N, BLOCK_J, 8, GATHER, PREC, DT)
    if MASK & 65536:
        if bits == 16:
            acc = _expand_loop(acc, e, t_ptr, stride_tm, rows_x, mmask, n0, N, rank, roff, BLOCK_M, BLOCK_N, BLOCK_J, 16, GATHER, PREC, DT)
    return acc


@triton.jit
def _dense_bits(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, bits, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MASK: tl.constexpr, SPARSE24: tl.constexpr, GATHER: tl.constexpr, PREC: tl.constexpr):
    if MASK & 2:
        if bits == 1:
            acc = _dense_loop(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_M, BLOCK_N, BLOCK_K, 1, SPARSE24, GATHER, PREC)
    if MASK & 4:
        if bits == 2:
            acc = _dense_loop(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_M, BLOCK_N, BLOCK_K, 2, SPARSE24, GATHER, PREC)
    if MASK & 8:
        if bits == 3:
            acc = _dense_loop(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_M, BLOCK_N, BLOCK_K, 3, SPARSE24, GATHER, PREC)
    if MASK & 16:
        if bits == 4:
            acc = _dense_loop(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_M, BLOCK_N, BLOCK_K, 4, SPARSE24, GATHER, PREC)
    if MASK & 256:
        if bits == 8:
            acc = _dense_loop(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_M, BLOCK_N, BLOCK_K, 8, SPARSE24, GATHER, PREC)
    if MASK & 65536:
        if bits == 16:
            acc = _dense_loop(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_M, BLOCK_N, BLOCK_K, 16, SPARSE24, GATHER, PREC)
    return acc


@triton.jit
def apply_kernel(
    x_ptr, stride_xm, y_ptr, stride_ym, t_ptr, stride_tm, tab_ptr, row_idx_ptr, gstart_ptr, glen_ptr, gslot_ptr,
    N, K,
    MAX_PARTS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr,
    UT_BITS: tl.constexpr, DENSE_BITS: tl.constexpr, S24_BITS: tl.constexpr, GATHER_K: tl.constexpr, GATHER_N: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    g = tl.program_id(0)
    nt = tl.program_id(1)
    mb = tl.program_id(2)
    slot = tl.load(gslot_ptr + g)
    n = tl.load(glen_ptr + g) - mb * BLOCK_M
    if (slot >= 0) & (n > 0):
        DT: tl.constexpr = x_ptr.dtype.element_ty
        rows_x, mmask = _rows_of_group(row_idx_ptr, gstart_ptr, g, mb, n, BLOCK_M)
        n0 = nt * BLOCK_N
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for part in range(MAX_PARTS):
            e = tab_ptr + (slot * MAX_PARTS + part) * NF
            kind = tl.load(e + F_KIND)
            if kind == KIND_LOWRANK:
                bits = tl.load(e + B_BITS)
                rank = tl.load(e + F_RANK)
                roff = tl.load(e + F_ROFF)
                acc = _expand_bits(acc, e, t_ptr, stride_tm, rows_x, mmask, n0, N, rank, roff, bits, BLOCK_M, BLOCK_N, BLOCK_J, UT_BITS, GATHER_N, PREC, DT)
            if kind == KIND_DENSE:
                bits = tl.load(e + A_BITS)
                acc = _dense_bits(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, bits, BLOCK_M, BLOCK_N, BLOCK_K, DENSE_BITS, False, GATHER_K, PREC)
            if kind == KIND_SPARSE24:
                bits = tl.load(e + A_BITS)
                acc = _dense_bits(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, bits, BLOCK_M, BLOCK_N, BLOCK_K, S24_BITS, True, GATHER_K, PREC)
        yp = y_ptr + rows_x[:, None] * stride_ym + offs_n[None, :]
        m2 = mmask[:, None] & nmask[None, :]
        yv = tl.load(yp, mask=m2, other=0.0)
        tl.store(yp, (yv.to(tl.float32) + acc).to(yv.dtype), mask=m2)
