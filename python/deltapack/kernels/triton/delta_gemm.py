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


# ---- shared helpers ---------------------------------------------------------------------------
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


# ---- decode path (one activation row per program): GEMVs over whole packed words ---------------
# A row of a packed operand is read 32 codes at a time: ``BITS`` consecutive words hold codes
# 32·g … 32·g + 31 of the row for every width (1, 2, 3, 4, 8), so each lane's word index and
# shift are compile-time constants (a 3-bit code that straddles two words is two shifts, no
# branch). A program keeps an [R, KG] tile of such 32-code groups in registers, unrolls the 32
# lanes, and multiplies each lane by the activation it pairs with, a [KG] vector shared by the
# tile's R rows. When a scale group spans whole 32-code groups the scale and zero point are
# applied once per group: Σ_c (q_c − z)·s·x_c = s·(Σ_c q_c·x_c − z·Σ_c x_c).
@triton.jit
def _pick(w0, w1, w2, w3, w4, w5, w6, w7, I: tl.constexpr):
    w = w0
    if I == 1:
        w = w1
    if I == 2:
        w = w2
    if I == 3:
        w = w3
    if I == 4:
        w = w4
    if I == 5:
        w = w5
    if I == 6:
        w = w6
    if I == 7:
        w = w7
    return w


@triton.jit
def _lane(w0, w1, w2, w3, w4, w5, w6, w7, C: tl.constexpr, BITS: tl.constexpr):
    """Code ``C`` (0..31) of each 32-code group held in words ``w0..w{BITS-1}``, as fp32."""
    WI: tl.constexpr = (C * BITS) // 32
    SH: tl.constexpr = (C * BITS) % 32
    lo = _pick(w0, w1, w2, w3, w4, w5, w6, w7, WI)
    if SH + BITS > 32:
        hi = _pick(w0, w1, w2, w3, w4, w5, w6, w7, WI + 1)
        v = (lo >> SH) | (hi << (32 - SH))
    else:
        v = lo >> SH
    return (v & ((1 << BITS) - 1)).to(tl.float32)


@triton.jit
def _group_words(cp, base, g, stride, m, BITS: tl.constexpr):
    """The ``BITS`` words of 32-code groups ``g`` [1, G] of rows at word offsets ``base`` [R, 1]
    (words past the row's end read as 0)."""
    wi = g * BITS
    p = cp + base + wi
    w0 = tl.load(p, mask=m & (wi < stride), other=0).to(tl.uint32, bitcast=True)
    w1 = w0
    w2 = w0
    w3 = w0
    w4 = w0
    w5 = w0
    w6 = w0
    w7 = w0
    if BITS > 1:
        w1 = tl.load(p + 1, mask=m & (wi + 1 < stride), other=0).to(tl.uint32, bitcast=True)
    if BITS > 2:
        w2 = tl.load(p + 2, mask=m & (wi + 2 < stride), other=0).to(tl.uint32, bitcast=True)
    if BITS > 3:
        w3 = tl.load(p + 3, mask=m & (wi + 3 < stride), other=0).to(tl.uint32, bitcast=True)
    if BITS > 4:
        w4 = tl.load(p + 4, mask=m & (wi + 4 < stride), other=0).to(tl.uint32, bitcast=True)
        w5 = tl.load(p + 5, mask=m & (wi + 5 < stride), other=0).to(tl.uint32, bitcast=True)
        w6 = tl.load(p + 6, mask=m & (wi + 6 < stride), other=0).to(tl.uint32, bitcast=True)
        w7 = tl.load(p + 7, mask=m & (wi + 7 < stride), other=0).to(tl.uint32, bitcast=True)
    return w0, w1, w2, w3, w4, w5, w6, w7


@triton.jit
def _gemv_x(codes, stride, scales, srow, group, zeros, zc, rows, rmask, xrow, xl, perm, K, k_lo, k_hi, R: tl.constexpr, KG: tl.constexpr, BITS: tl.constexpr, GATHER: tl.constexpr, PERM: tl.constexpr, LM: tl.constexpr):
    """Σ_k W[rows, k] · x[perm(k)] [R] over k_lo ≤ k < k_hi (k_lo a multiple of 32) for a
    packed operand stored along k (Vt, dense W). ``LM``: read x lane-major (``xl`` [32, G]:
    x[32·g + c] at c·G + g, zero-padded), so each lane's values over the tile's groups are
    contiguous instead of 32 elements apart."""
    cp = codes.to(tl.pointer_type(tl.int32))
    ngrp = tl.cdiv(k_hi, 32)
    base = rows[:, None] * stride
    acc = tl.zeros((R, KG), tl.float32)
    for g0 in range(k_lo // 32, ngrp, KG):
        gk = g0 + tl.arange(0, KG)
        m2 = rmask[:, None] & (gk < ngrp)[None, :]
        w0, w1, w2, w3, w4, w5, w6, w7 = _group_words(cp, base, gk[None, :], stride, m2, BITS)
        inner = tl.zeros((R, KG), tl.float32)
        xs = tl.zeros((KG,), tl.float32)
        for c in tl.static_range(32):
            col = gk * 32 + c
            cm = col < K
            xi = col
            if PERM:
                hp = perm != 0
                xi = tl.where(hp, tl.load(perm.to(tl.pointer_type(tl.int32)) + col, mask=tl.where(hp, cm, False), other=0), col)
            if LM:
                xv = tl.load(xl + c * tl.cdiv(K, 32) + gk, mask=cm, other=0.0).to(tl.float32)
            else:
                xv = tl.load(xrow + xi, mask=cm, other=0.0).to(tl.float32)
            q = _lane(w0, w1, w2, w3, w4, w5, w6, w7, c, BITS)
            if GATHER:
                s, z = _scale_zero(scales, srow, group, zeros, zc, rows[:, None], col[None, :], m2 & cm[None, :])
                acc += (q - z) * s * xv[None, :]
            else:
                inner += q * xv[None, :]
                xs += xv
        if not GATHER:
            s, z = _scale_zero(scales, srow, group, zeros, zc, rows[:, None], (gk * 32)[None, :], m2)
            acc += s * (inner - z * xs[None, :])
    return tl.sum(acc, axis=1)


@triton.jit
def _gemv_u(codes, stride, scales, srow, group, zeros, zc, rows, rmask, n0, trow, rank, R: tl.constexpr, KG: tl.constexpr, BITS: tl.constexpr, GATHER: tl.constexpr):
    """Σ_j U[rows, j] · t[j] [R] for Ut read rank-major (``u_codes``): value (n, j) is
    (q − z[j, n // group]) · s[j, n // group]. Unless ``GATHER``, the tile's rows lie in one
    scale group along n (the one of ``n0``): the scale folds into t, the zero point into one
    sum per tile, a = s ⊙ t, Σ_j (q − z)·a = Σ_j q·a − Σ_j z·a."""
    cp = codes.to(tl.pointer_type(tl.int32))
    ngrp = tl.cdiv(rank, 32)
    base = rows[:, None] * stride
    acc = tl.zeros((R, KG), tl.float32)
    zacc = tl.zeros((KG,), tl.float32)
    for g0 in range(0, ngrp, KG):
        gj = g0 + tl.arange(0, KG)
        m2 = rmask[:, None] & (gj < ngrp)[None, :]
        w0, w1, w2, w3, w4, w5, w6, w7 = _group_words(cp, base, gj[None, :], stride, m2, BITS)
        for c in tl.static_range(32):
            j = gj * 32 + c
            jm = j < rank
            tv = tl.load(trow + j, mask=jm, other=0.0)
            q = _lane(w0, w1, w2, w3, w4, w5, w6, w7, c, BITS)
            if GATHER:
                s, z = _scale_zero(scales, srow, group, zeros, zc, j[None, :], rows[:, None], m2 & jm[None, :])
                acc += (q - z) * s * tv[None, :]
            else:
                s, z = _scale_zero(scales, srow, group, zeros, zc, j, n0, jm)
                a = s * tv
                acc += q * a[None, :]
                zacc += a * z
    return tl.sum(acc, axis=1) - tl.sum(zacc, axis=0)


@triton.jit
def _gemv_s24(codes, stride, scales, srow, group, zeros, zc, ip, istride, rows, rmask, xrow, K, R: tl.constexpr, KG: tl.constexpr, BITS: tl.constexpr, GATHER: tl.constexpr):
    """Σ_k W[rows, k] · x[k] [R] for a 2:4 operand (§3.3): kept value κ of a row sits at
    dense column 4·(κ // 2) + idx(κ), its 2-bit position read from the index stream."""
    cp = codes.to(tl.pointer_type(tl.int32))
    ipp = ip.to(tl.pointer_type(tl.int32))
    nk = tl.cdiv(K, 2)
    ngrp = tl.cdiv(nk, 32)
    base = rows[:, None] * stride
    ibase = rows[:, None] * istride
    acc = tl.zeros((R, KG), tl.float32)
    for g0 in range(0, ngrp, KG):
        gk = g0 + tl.arange(0, KG)
        m2 = rmask[:, None] & (gk < ngrp)[None, :]
        w0, w1, w2, w3, w4, w5, w6, w7 = _group_words(cp, base, gk[None, :], stride, m2, BITS)
        i0, i1, _i2, _i3, _i4, _i5, _i6, _i7 = _group_words(ipp, ibase, gk[None, :], istride, m2, 2)
        inner = tl.zeros((R, KG), tl.float32)
        xs = tl.zeros((R, KG), tl.float32)
        for c in tl.static_range(32):
            q = _lane(w0, w1, w2, w3, w4, w5, w6, w7, c, BITS)
            idx = _lane(i0, i1, i1, i1, i1, i1, i1, i1, c, 2).to(tl.int32)
            col = (gk * 64 + 4 * (c // 2))[None, :] + idx
            xv = tl.load(xrow + col, mask=m2 & (col < K), other=0.0).to(tl.float32)
            if GATHER:
                kk = gk * 32 + c
                s, z = _scale_zero(scales, srow, group, zeros, zc, rows[:, None], kk[None, :], m2 & (kk < nk)[None, :])
                acc += (q - z) * s * xv
            else:
                inner += q * xv
                xs += xv
        if not GATHER:
            s, z = _scale_zero(scales, srow, group, zeros, zc, rows[:, None], (gk * 32)[None, :], m2)
            acc += s * (inner - z * xs)
    return tl.sum(acc, axis=1)


@triton.jit
def _gemv_raw(wp, stride, rows, rmask, vrow, perm, lo, hi, R: tl.constexpr, KG: tl.constexpr, PERM: tl.constexpr):
    """Σ_c W[rows, c] · v[perm(c)] [R] for raw fp16 values ``W`` [*, stride], lo ≤ c < hi."""
    BK: tl.constexpr = KG * 32
    w16 = wp.to(tl.pointer_type(tl.float16))
    acc = tl.zeros((R, BK), tl.float32)
    for k0 in range(lo, hi, BK):
        kc = k0 + tl.arange(0, BK)
        km = kc < hi
        vi = kc
        if PERM:
            hp = perm != 0
            vi = tl.where(hp, tl.load(perm.to(tl.pointer_type(tl.int32)) + kc, mask=tl.where(hp, km, False), other=0), kc)
        v = tl.load(vrow + vi, mask=km, other=0.0).to(tl.float32)
        w = tl.load(w16 + rows[:, None] * stride + kc[None, :], mask=rmask[:, None] & km[None, :], other=0.0).to(tl.float32)
        acc += w * v[None, :]
    return tl.sum(acc, axis=1)


@triton.jit
def _gemv_base(w_ptr, stride_wn, rows, rmask, xrow, K, R: tl.constexpr, BK: tl.constexpr):
    """Σ_k W[rows, k] · x[k] [R] for the base weight (activation dtype, row-major): the fused
    path computes the base GEMV in the program that adds the delta, so the output is written
    once and no separate base launch runs."""
    acc = tl.zeros((R, BK), tl.float32)
    for k0 in range(0, K, BK):
        kc = k0 + tl.arange(0, BK)
        km = kc < K
        xv = tl.load(xrow + kc, mask=km, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * stride_wn + kc[None, :], mask=rmask[:, None] & km[None, :], other=0.0)
        acc += w.to(tl.float32) * xv[None, :]
    return tl.sum(acc, axis=1)


# Runtime bit width → the loop specialized for it. ``MASK`` (bit b set: width b occurs in the
# table) prunes the widths a launch does not need at compile time.
@triton.jit
def _gemv_x_bits(e, rows, rmask, xrow, xl, perm, K, k_lo, k_hi, R: tl.constexpr, KG: tl.constexpr, MASK: tl.constexpr, GATHER: tl.constexpr, PERM: tl.constexpr, LM: tl.constexpr):
    codes, stride, scales, srow, group, zeros, zc = _operand(e, A_BITS)
    bits = tl.load(e + A_BITS)
    out = tl.zeros((R,), tl.float32)
    if MASK & 2:
        if bits == 1:
            out = _gemv_x(codes, stride, scales, srow, group, zeros, zc, rows, rmask, xrow, xl, perm, K, k_lo, k_hi, R, KG, 1, GATHER, PERM, LM)
    if MASK & 4:
        if bits == 2:
            out = _gemv_x(codes, stride, scales, srow, group, zeros, zc, rows, rmask, xrow, xl, perm, K, k_lo, k_hi, R, KG, 2, GATHER, PERM, LM)
    if MASK & 8:
        if bits == 3:
            out = _gemv_x(codes, stride, scales, srow, group, zeros, zc, rows, rmask, xrow, xl, perm, K, k_lo, k_hi, R, KG, 3, GATHER, PERM, LM)
    if MASK & 16:
        if bits == 4:
            out = _gemv_x(codes, stride, scales, srow, group, zeros, zc, rows, rmask, xrow, xl, perm, K, k_lo, k_hi, R, KG, 4, GATHER, PERM, LM)
    if MASK & 256:
        if bits == 8:
            out = _gemv_x(codes, stride, scales, srow, group, zeros, zc, rows, rmask, xrow, xl, perm, K, k_lo, k_hi, R, KG, 8, GATHER, PERM, LM)
    if MASK & 65536:
        if bits == 16:
            out = _gemv_raw(codes, stride, rows, rmask, xrow, perm, k_lo, k_hi, R, KG, PERM)
    return out


@triton.jit
def _gemv_u_bits(e, rows, rmask, n0, trow, rank, R: tl.constexpr, KG: tl.constexpr, MASK: tl.constexpr, GATHER: tl.constexpr):
    codes, stride, scales, srow, group, zeros, zc = _operand(e, B_BITS)
    bits = tl.load(e + B_BITS)
    out = tl.zeros((R,), tl.float32)
    if MASK & 2:
        if bits == 1:
            out = _gemv_u(codes, stride, scales, srow, group, zeros, zc, rows, rmask, n0, trow, rank, R, KG, 1, GATHER)
    if MASK & 4:
        if bits == 2:
            out = _gemv_u(codes, stride, scales, srow, group, zeros, zc, rows, rmask, n0, trow, rank, R, KG, 2, GATHER)
    if MASK & 8:
        if bits == 3:
            out = _gemv_u(codes, stride, scales, srow, group, zeros, zc, rows, rmask, n0, trow, rank, R, KG, 3, GATHER)
    if MASK & 16:
        if bits == 4:
            out = _gemv_u(codes, stride, scales, srow, group, zeros, zc, rows, rmask, n0, trow, rank, R, KG, 4, GATHER)
    if MASK & 256:
        if bits == 8:
            out = _gemv_u(codes, stride, scales, srow, group, zeros, zc, rows, rmask, n0, trow, rank, R, KG, 8, GATHER)
    if MASK & 65536:
        if bits == 16:
            out = _gemv_raw(codes, stride, rows, rmask, trow, 0, 0, rank, R, KG, False)
    return out


@triton.jit
def _gemv_s24_bits(e, rows, rmask, xrow, K, R: tl.constexpr, KG: tl.constexpr, MASK: tl.constexpr, GATHER: tl.constexpr):
    codes, stride, scales, srow, group, zeros, zc = _operand(e, A_BITS)
    bits = tl.load(e + A_BITS)
    ip = tl.load(e + A_IDX)
    istride = tl.load(e + A_ISTRIDE)
    out = tl.zeros((R,), tl.float32)
    if MASK & 2:
        if bits == 1:
            out = _gemv_s24(codes, stride, scales, srow, group, zeros, zc, ip, istride, rows, rmask, xrow, K, R, KG, 1, GATHER)
    if MASK & 4:
        if bits == 2:
            out = _gemv_s24(codes, stride, scales, srow, group, zeros, zc, ip, istride, rows, rmask, xrow, K, R, KG, 2, GATHER)
    if MASK & 8:
        if bits == 3:
            out = _gemv_s24(codes, stride, scales, srow, group, zeros, zc, ip, istride, rows, rmask, xrow, K, R, KG, 3, GATHER)
    if MASK & 16:
        if bits == 4:
            out = _gemv_s24(codes, stride, scales, srow, group, zeros, zc, ip, istride, rows, rmask, xrow, K, R, KG, 4, GATHER)
    if MASK & 256:
        if bits == 8:
            out = _gemv_s24(codes, stride, scales, srow, group, zeros, zc, ip, istride, rows, rmask, xrow, K, R, KG, 8, GATHER)
    return out


# ---- tile path (row groups of ≥ 16 rows): tiles dequantized to the activation dtype, tl.dot ---
@triton.jit
def _deq_tile(codes, stride, scales, srow, group, zeros, zc, rows, rmask, c0, ncols, R: tl.constexpr, C: tl.constexpr, BITS: tl.constexpr, GATHER: tl.constexpr):
    """fp32 values [R, C] at ``rows`` × ``c0 .. c0 + C`` of an operand stored along its
    columns (per-element word loads: any width); scales per tile row unless ``GATHER``."""
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
def _deq_u_tile(codes, stride, scales, srow, group, zeros, zc, rows, rmask, n0, j0, rank, R: tl.constexpr, J: tl.constexpr, BITS: tl.constexpr, GATHER: tl.constexpr):
    """fp32 values [R, J] of Ut read rank-major at outputs ``rows`` × ranks ``j0 .. j0 + J``;
    scales per rank column for the tile's n-group (that of ``n0``) unless ``GATHER``."""
    cols = j0 + tl.arange(0, J)
    cm = (cols < rank)[None, :]
    r2 = rows[:, None]
    m2 = rmask[:, None] & cm
    if BITS == 16:
        v = tl.load(codes.to(tl.pointer_type(tl.float16)) + r2 * stride + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    else:
        q = _codes_at(codes.to(tl.pointer_type(tl.int32)), stride, r2, cols[None, :], m2, BITS)
        if GATHER:
            s, z = _scale_zero(scales, srow, group, zeros, zc, cols[None, :], r2, m2)
        else:
            s, z = _scale_zero(scales, srow, group, zeros, zc, cols[None, :], n0, cm)
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
def _x_tile(x_ptr, stride_xm, rows_x, mmask, k0, K, perm, BLOCK_K: tl.constexpr, PERM: tl.constexpr):
    """x[rows, perm[k0 .. k0 + BLOCK_K]] (act-order blocks read the input permuted; ``perm``
    0: no permutation)."""
    kc = k0 + tl.arange(0, BLOCK_K)
    kmask = kc < K
    xc = kc
    if PERM:
        hp = perm != 0
        xc = tl.where(hp, tl.load(perm.to(tl.pointer_type(tl.int32)) + kc, mask=tl.where(hp, kmask, False), other=0), kc)
    return tl.load(x_ptr + rows_x[:, None] * stride_xm + xc[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)


@triton.jit
def _shrink_dot(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BITS: tl.constexpr, GATHER: tl.constexpr, PERM: tl.constexpr, PREC: tl.constexpr):
    codes, stride, scales, srow, group, zeros, zc = _operand(e, A_BITS)
    acc = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        xt = _x_tile(x_ptr, stride_xm, rows_x, mmask, k0, K, perm, BLOCK_K, PERM)
        w = _deq_tile(codes, stride, scales, srow, group, zeros, zc, offs_r, rmask, k0, K, BLOCK_R, BLOCK_K, BITS, GATHER)
        acc = tl.dot(xt, tl.trans(w.to(xt.dtype)), acc, input_precision=PREC)
    return acc


@triton.jit
def _expand_dot(acc, e, t_ptr, stride_tm, rows_x, mmask, offs_n, nmask, n0, rank, roff, BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr, BITS: tl.constexpr, GATHER: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr):
    codes, stride, scales, srow, group, zeros, zc = _operand(e, B_BITS)
    for j0 in range(0, rank, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        jmask = offs_j < rank
        tt = tl.load(t_ptr + rows_x[:, None] * stride_tm + roff + offs_j[None, :], mask=mmask[:, None] & jmask[None, :], other=0.0)
        u = _deq_u_tile(codes, stride, scales, srow, group, zeros, zc, offs_n, nmask, n0, j0, rank, BLOCK_N, BLOCK_J, BITS, GATHER)
        acc = tl.dot(tt.to(DT), tl.trans(u.to(DT)), acc, input_precision=PREC)
    return acc


@triton.jit
def _dense_dot(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BITS: tl.constexpr, SPARSE24: tl.constexpr, GATHER: tl.constexpr, PREC: tl.constexpr):
    codes, stride, scales, srow, group, zeros, zc = _operand(e, A_BITS)
    ip = tl.load(e + A_IDX)
    istride = tl.load(e + A_ISTRIDE)
    for k0 in range(0, K, BLOCK_K):
        xt = _x_tile(x_ptr, stride_xm, rows_x, mmask, k0, K, 0, BLOCK_K, False)
        if SPARSE24:
            w = _deq_s24_tile(codes, stride, scales, srow, group, zeros, zc, ip, istride, offs_n, nmask, k0, K, BLOCK_N, BLOCK_K, BITS, GATHER)
        else:
            w = _deq_tile(codes, stride, scales, srow, group, zeros, zc, offs_n, nmask, k0, K, BLOCK_N, BLOCK_K, BITS, GATHER)
        acc = tl.dot(xt, tl.trans(w.to(xt.dtype)), acc, input_precision=PREC)
    return acc


@triton.jit
def _shrink_dot_bits(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, bits, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, MASK: tl.constexpr, GATHER: tl.constexpr, PERM: tl.constexpr, PREC: tl.constexpr):
    acc = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)
    if MASK & 2:
        if bits == 1:
            acc = _shrink_dot(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M, BLOCK_R, BLOCK_K, 1, GATHER, PERM, PREC)
    if MASK & 4:
        if bits == 2:
            acc = _shrink_dot(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M, BLOCK_R, BLOCK_K, 2, GATHER, PERM, PREC)
    if MASK & 8:
        if bits == 3:
            acc = _shrink_dot(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M, BLOCK_R, BLOCK_K, 3, GATHER, PERM, PREC)
    if MASK & 16:
        if bits == 4:
            acc = _shrink_dot(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M, BLOCK_R, BLOCK_K, 4, GATHER, PERM, PREC)
    if MASK & 256:
        if bits == 8:
            acc = _shrink_dot(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M, BLOCK_R, BLOCK_K, 8, GATHER, PERM, PREC)
    if MASK & 65536:
        if bits == 16:
            acc = _shrink_dot(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, BLOCK_M, BLOCK_R, BLOCK_K, 16, GATHER, PERM, PREC)
    return acc


@triton.jit
def _expand_dot_bits(acc, e, t_ptr, stride_tm, rows_x, mmask, offs_n, nmask, n0, rank, roff, bits, BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr, MASK: tl.constexpr, GATHER: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr):
    if MASK & 2:
        if bits == 1:
            acc = _expand_dot(acc, e, t_ptr, stride_tm, rows_x, mmask, offs_n, nmask, n0, rank, roff, BLOCK_N, BLOCK_J, 1, GATHER, PREC, DT)
    if MASK & 4:
        if bits == 2:
            acc = _expand_dot(acc, e, t_ptr, stride_tm, rows_x, mmask, offs_n, nmask, n0, rank, roff, BLOCK_N, BLOCK_J, 2, GATHER, PREC, DT)
    if MASK & 8:
        if bits == 3:
            acc = _expand_dot(acc, e, t_ptr, stride_tm, rows_x, mmask, offs_n, nmask, n0, rank, roff, BLOCK_N, BLOCK_J, 3, GATHER, PREC, DT)
    if MASK & 16:
        if bits == 4:
            acc = _expand_dot(acc, e, t_ptr, stride_tm, rows_x, mmask, offs_n, nmask, n0, rank, roff, BLOCK_N, BLOCK_J, 4, GATHER, PREC, DT)
    if MASK & 256:
        if bits == 8:
            acc = _expand_dot(acc, e, t_ptr, stride_tm, rows_x, mmask, offs_n, nmask, n0, rank, roff, BLOCK_N, BLOCK_J, 8, GATHER, PREC, DT)
    if MASK & 65536:
        if bits == 16:
            acc = _expand_dot(acc, e, t_ptr, stride_tm, rows_x, mmask, offs_n, nmask, n0, rank, roff, BLOCK_N, BLOCK_J, 16, GATHER, PREC, DT)
    return acc


@triton.jit
def _dense_dot_bits(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, bits, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MASK: tl.constexpr, SPARSE24: tl.constexpr, GATHER: tl.constexpr, PREC: tl.constexpr):
    if MASK & 2:
        if bits == 1:
            acc = _dense_dot(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_N, BLOCK_K, 1, SPARSE24, GATHER, PREC)
    if MASK & 4:
        if bits == 2:
            acc = _dense_dot(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_N, BLOCK_K, 2, SPARSE24, GATHER, PREC)
    if MASK & 8:
        if bits == 3:
            acc = _dense_dot(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_N, BLOCK_K, 3, SPARSE24, GATHER, PREC)
    if MASK & 16:
        if bits == 4:
            acc = _dense_dot(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_N, BLOCK_K, 4, SPARSE24, GATHER, PREC)
    if MASK & 256:
        if bits == 8:
            acc = _dense_dot(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_N, BLOCK_K, 8, SPARSE24, GATHER, PREC)
    if MASK & 65536:
        if bits == 16:
            acc = _dense_dot(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, BLOCK_N, BLOCK_K, 16, SPARSE24, GATHER, PREC)
    return acc


# ---- the two kernels ------------------------------------------------------------------------
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
    xl_ptr, stride_xl, K, tiles_per_part,
    MAX_PARTS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    VT_BITS: tl.constexpr, GATHER_K: tl.constexpr, PERM: tl.constexpr, PREC: tl.constexpr, SPLIT_K: tl.constexpr,
    LM: tl.constexpr,
):  # fmt: skip
    g = tl.program_id(0)
    pid1 = tl.program_id(1) // SPLIT_K
    ks = tl.program_id(1) % SPLIT_K
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
        if BLOCK_M == 1:
            # SPLIT_K programs share a row tile, each a slice of 32-code groups of k, and add
            # into t (zeroed by the launcher): more programs in flight for small ranks
            row = tl.sum(rows_x, axis=0)
            xrow = x_ptr + row * stride_xm
            kspan = tl.cdiv(tl.cdiv(K, 32), SPLIT_K) * 32
            k_lo = ks * kspan
            k_hi = tl.minimum(K, k_lo + kspan)
            acc = _gemv_x_bits(e, offs_r, rmask, xrow, xl_ptr + row * stride_xl, perm, K, k_lo, k_hi, BLOCK_R, BLOCK_K // 32, VT_BITS, GATHER_K, PERM, LM)[None, :]
        else:
            bits = tl.load(e + A_BITS)
            acc = _shrink_dot_bits(e, x_ptr, stride_xm, rows_x, mmask, perm, offs_r, rmask, K, bits, BLOCK_M, BLOCK_R, BLOCK_K, VT_BITS, GATHER_K, PERM, PREC)
        sp = tl.load(e + F_S)
        hs = sp != 0
        s = tl.load(sp.to(tl.pointer_type(tl.float16)) + offs_r, mask=tl.where(hs, rmask, False), other=1.0).to(tl.float32)
        roff = tl.load(e + F_ROFF)
        tp = t_ptr + rows_x[:, None] * stride_tm + roff + offs_r[None, :]
        if SPLIT_K > 1:
            tl.atomic_add(tp, acc * s[None, :], mask=mmask[:, None] & rmask[None, :], sem="relaxed")
        else:
            tl.store(tp, acc * s[None, :], mask=mmask[:, None] & rmask[None, :])


@triton.jit
def apply_kernel(
    x_ptr, stride_xm, y_ptr, stride_ym, t_ptr, stride_tm, tab_ptr, row_idx_ptr, gstart_ptr, glen_ptr, gslot_ptr,
    w_ptr, stride_wn, xl_ptr, stride_xl, N, K,
    MAX_PARTS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr,
    UT_BITS: tl.constexpr, DENSE_BITS: tl.constexpr, S24_BITS: tl.constexpr, GATHER_K: tl.constexpr, GATHER_N: tl.constexpr,
    GATHER_S24: tl.constexpr, PREC: tl.constexpr, FUSE_BASE: tl.constexpr, BLOCK_KB: tl.constexpr, LM: tl.constexpr,
):  # fmt: skip
    """``y[rows] += Δ·x`` per row group; with ``FUSE_BASE`` (decode, every row its own group,
    rows without a delta included) ``y = W·x + Δ·x`` with ``W`` the base weight."""
    g = tl.program_id(0)
    nt = tl.program_id(1)
    mb = tl.program_id(2)
    slot = tl.load(gslot_ptr + g)
    n = tl.load(glen_ptr + g) - mb * BLOCK_M
    if ((slot >= 0) | FUSE_BASE) & (n > 0):
        DT: tl.constexpr = x_ptr.dtype.element_ty
        rows_x, mmask = _rows_of_group(row_idx_ptr, gstart_ptr, g, mb, n, BLOCK_M)
        n0 = nt * BLOCK_N
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        row = tl.sum(rows_x, axis=0)  # BLOCK_M == 1: the program's one row
        if FUSE_BASE:
            acc += _gemv_base(w_ptr, stride_wn, offs_n, nmask, x_ptr + row * stride_xm, K, BLOCK_N, BLOCK_KB)[None, :]
        nparts = tl.where(slot >= 0, MAX_PARTS, 0)
        for part in range(nparts):
            e = tab_ptr + (slot * MAX_PARTS + part) * NF
            kind = tl.load(e + F_KIND)
            if kind == KIND_LOWRANK:
                rank = tl.load(e + F_RANK)
                roff = tl.load(e + F_ROFF)
                if BLOCK_M == 1:
                    acc += _gemv_u_bits(e, offs_n, nmask, n0, t_ptr + row * stride_tm + roff, rank, BLOCK_N, BLOCK_J // 32, UT_BITS, GATHER_N)[None, :]
                else:
                    bits = tl.load(e + B_BITS)
                    acc = _expand_dot_bits(acc, e, t_ptr, stride_tm, rows_x, mmask, offs_n, nmask, n0, rank, roff, bits, BLOCK_N, BLOCK_J, UT_BITS, GATHER_N, PREC, DT)
            if kind == KIND_DENSE:
                if BLOCK_M == 1:
                    acc += _gemv_x_bits(e, offs_n, nmask, x_ptr + row * stride_xm, xl_ptr + row * stride_xl, 0, K, 0, K, BLOCK_N, BLOCK_K // 32, DENSE_BITS, GATHER_K, False, LM)[None, :]
                else:
                    bits = tl.load(e + A_BITS)
                    acc = _dense_dot_bits(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, bits, BLOCK_N, BLOCK_K, DENSE_BITS, False, GATHER_K, PREC)
            if kind == KIND_SPARSE24:
                if BLOCK_M == 1:
                    acc += _gemv_s24_bits(e, offs_n, nmask, x_ptr + row * stride_xm, K, BLOCK_N, BLOCK_K // 32, S24_BITS, GATHER_S24)[None, :]
                else:
                    bits = tl.load(e + A_BITS)
                    acc = _dense_dot_bits(acc, e, x_ptr, stride_xm, rows_x, mmask, offs_n, nmask, K, bits, BLOCK_N, BLOCK_K, S24_BITS, True, GATHER_K, PREC)
        yp = y_ptr + rows_x[:, None] * stride_ym + offs_n[None, :]
        m2 = mmask[:, None] & nmask[None, :]
        if FUSE_BASE:
            tl.store(yp, acc.to(y_ptr.dtype.element_ty), mask=m2)
        else:
            yv = tl.load(yp, mask=m2, other=0.0)
            tl.store(yp, (yv.to(tl.float32) + acc).to(yv.dtype), mask=m2)
