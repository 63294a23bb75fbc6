"""GPTQ's inner loop as one Triton launch per block of columns.

Within a block of B columns, GPTQ quantizes column i, then pushes its error onto columns
j > i through row i of the block's normalised inverse-Hessian factor R (R[i, i] = 1, zero
below the diagonal). Rows of W never interact — they only share R — so a program takes a
tile of rows and walks it through the B columns in registers: B sequential steps of
elementwise work, with no launch per column. The torch loop in ``gptq.py`` is the reference
(tests/compress/test_gptq_triton.py compares them under TRITON_INTERPRET=1 on the CPU).

Rounding is half-to-even, like torch.round."""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch on Linux
    triton = None


if triton is not None:

    @triton.jit
    def _gptq_block_kernel(
        W,  # [rows, B] fp32: the block's current weights (read only)
        R,  # [B, B] fp32: normalised upper inverse-Cholesky rows, R[i, i] = 1
        D,  # [B] fp32: diagonal of the block's upper inverse-Cholesky factor
        S,  # [rows] fp32 scale of the block's group
        Z,  # [rows] fp32 zero point
        MAXQ,  # [rows] fp32 largest code
        CODES,  # [rows, B] uint8 out
        ERR,  # [rows, B] fp32 out: (w - q) / D[i], for the update of later blocks
        rows,
        stride_w,
        stride_c,
        stride_e,
        B: tl.constexpr,
        BR: tl.constexpr,
    ):
        pid = tl.program_id(0)
        r = pid * BR + tl.arange(0, BR)
        rmask = r < rows
        cols = tl.arange(0, B)
        tile = tl.load(W + r[:, None] * stride_w + cols[None, :], mask=rmask[:, None], other=0.0)
        s = tl.load(S + r, mask=rmask, other=1.0)
        z = tl.load(Z + r, mask=rmask, other=0.0)
        maxq = tl.load(MAXQ + r, mask=rmask, other=0.0)
        codes = tl.zeros((BR, B), dtype=tl.float32)
        errs = tl.zeros((BR, B), dtype=tl.float32)
        for i in range(0, B):
            onehot = cols[None, :] == i
            w = tl.sum(tl.where(onehot, tile, 0.0), axis=1)
            x = w / s + z
            q = tl.floor(x + 0.5)
            # round half to even, as torch.round does
            tie = (q - x) == 0.5
            odd = (q - 2.0 * tl.floor(q * 0.5)) == 1.0
            q = tl.where(tie & odd, q - 1.0, q)
            c = tl.minimum(tl.maximum(q, 0.0), maxq)
            err = w - (c - z) * s
            rrow = tl.load(R + i * B + cols)
            tile = tile - err[:, None] * rrow[None, :]
            d = tl.load(D + i)
            codes = tl.where(onehot, c[:, None], codes)
            errs = tl.where(onehot, (err / d)[:, None], errs)
        tl.store(CODES + r[:, None] * stride_c + cols[None, :], codes.to(tl.uint8), mask=rmask[:, None])
        tl.store(ERR + r[:, None] * stride_e + cols[None, :], errs, mask=rmask[:, None])


def available(t: torch.Tensor) -> bool:
    """The fused path runs on CUDA tensors (or anywhere under TRITON_INTERPRET=1)."""
    import os

    return triton is not None and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def gptq_block(W1: torch.Tensor, U1: torch.Tensor, s: torch.Tensor, z: torch.Tensor, maxq: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize one block W1 [rows, B] whose columns share one (scale, zero) per row.
    Returns (codes uint8 [rows, B], Err [rows, B] = (w − q)/U1[i, i] at each column's turn)."""
    rows, B = W1.shape
    if B & (B - 1):
        raise ValueError(f"block width {B} must be a power of two for the fused kernel")
    d = torch.diagonal(U1).contiguous()
    R = (U1 / d.unsqueeze(1)).contiguous()
    W1 = W1.contiguous()
    maxq_t = maxq if isinstance(maxq, torch.Tensor) else torch.full((rows,), float(maxq), device=W1.device)
    codes = torch.empty(rows, B, dtype=torch.uint8, device=W1.device)
    err = torch.empty(rows, B, dtype=torch.float32, device=W1.device)
    BR = 16
    _gptq_block_kernel[(triton.cdiv(rows, BR),)](
        W1, R, d, s.float().contiguous(), z.float().contiguous(), maxq_t.float().contiguous(), codes, err, rows, W1.stride(0), codes.stride(0), err.stride(0), B=B, BR=BR
    )
    return codes, err
