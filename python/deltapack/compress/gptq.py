"""GPTQ (Frantar et al. 2022, arXiv 2210.17323): quantize a linear layer's weight one column at
a time, pushing each column's rounding error onto the not-yet-quantized columns through the
inverse Hessian of the layer-wise loss ‖(W − Ŵ)X‖², so that the layer's *output* on the
calibration inputs is preserved rather than the weights themselves.

Pure torch, float32 math, device-agnostic: everything runs where ``W`` lives.

Conventions (shared with :mod:`deltapack.compress.rtn`):

- value = (code − zero) × scale, codes in [0, 2**bits − 1], scales stored as float16. Scales are
  rounded to float16 *before* codes are computed, so :meth:`GPTQResult.dequantize` reproduces
  exactly what is stored.
- Asymmetric (default): per group lo = min(min w, 0), hi = max(max w, 0),
  scale = (hi − lo) / (2**bits − 1), zero = round(−lo / scale) clamped to [0, 2**bits − 1] (u8).
- Symmetric (``sym=True``): zero is the constant 2**(bits−1) and
  scale = 2·max|w| / (2**bits − 1) (the reference GPTQ rule). The grid is then
  (−2**(bits−1) … 2**(bits−1) − 1) × scale: the span 2·max|w| is cut into 2**bits − 1 steps, so
  −max|w| and +max|w| are both within half a step of a grid point (the positive end is the one
  that rounds down). 1-bit symmetric is refused (its grid {−scale, 0} cannot hold a sign).
- Sign grid (``sign1=True``, 1-bit rows only): the constant zero point 0.5, so codes 1 / 0
  decode to ±scale/2, with scale = 2·mean|w| per group: BitDelta's grid, per group. The
  asymmetric 1-bit grid above is {0, scale} or {−scale, 0} (0 must be on it): it cannot hold
  a sign either, so a 1-bit singular vector (Delta-CoMe's lowest-precision tail) needs this one.
- Scales are floored at 2**−24 (the smallest positive float16), so an all-zero group gets a tiny
  positive scale and exact zero codes instead of 0/0; a scale that overflows float16 raises.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .rtn import group_mean_abs

SUPPORTED_BITS = (1, 2, 3, 4, 8)
_MIN_SCALE = 2.0**-24  # smallest positive float16 (subnormal): never rounds to 0
_MAX_F16 = 65504.0
_DAMP_RETRIES = 4  # damp × 10, up to 10⁴ × the requested damping


class HessianAccumulator:
    """Running H = 2/n Σ x xᵀ over calibration inputs (GPTQ's Hessian of the layer-wise squared
    error). ``add`` takes inputs of any leading shape ``[..., dim]`` (any float dtype) and keeps a
    running mean in float32, so H stays O(|x|²) however many tokens are seen."""

    def __init__(self, dim: int, device: torch.device | str | None = None, tf32: bool = False):
        if int(dim) <= 0:
            raise ValueError(f"HessianAccumulator needs dim > 0, got {dim}")
        # tf32: accumulate with TF32 tensor-core matmuls on a GPU (~1e-3 relative error per
        # batch, far below GPTQ's 1% damping; 8× faster: a 4096-wide layer input over 262k
        # calibration tokens is 8.8 TFLOP).
        self.tf32 = bool(tf32)
        self.dim = int(dim)
        self.device = None if device is None else torch.device(device)
        self.n: int = 0
        self._H: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"HessianAccumulator(dim={self.dim}) got input of shape {tuple(x.shape)}; the last dim must be {self.dim}")
        if self.device is None:
            self.device = x.device
        x = x.detach().reshape(-1, self.dim).to(device=self.device, dtype=torch.float32)
        m = x.shape[0]
        if m == 0:
            return
        if self._H is None:
            self._H = torch.zeros(self.dim, self.dim, dtype=torch.float32, device=self.device)
        total = self.n + m
        # H_new = n/(n+m)·H_old + 2/(n+m)·xᵀx: a running mean, never a growing sum.
        self._H.mul_(self.n / total)
        if self.tf32 and x.is_cuda:
            prev = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                self._H.addmm_(x.T, x, alpha=2.0 / total)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = prev
        else:
            self._H.addmm_(x.T, x, alpha=2.0 / total)
        self.n = total

    @property
    def H(self) -> torch.Tensor:
        """[dim, dim] float32 (zeros before any input). The live buffer, not a copy."""
        if self._H is None:
            return torch.zeros(self.dim, self.dim, dtype=torch.float32, device=self.device)
        return self._H


@dataclass
class GPTQResult:
    codes: torch.Tensor  # uint8 [rows, cols], columns in STORED order (= permuted order under act-order)
    scales: torch.Tensor  # float16 [rows, n_groups], n_groups = ceil(cols / group_size)
    zeros: torch.Tensor | None  # uint8 [rows, n_groups]; None when every row has a constant zero
    perm: torch.Tensor | None  # int64 [cols]: stored column j is original column perm[j]; None = identity
    bits: int
    group_size: int
    # bool [rows]: rows on the sign grid (constant zero 0.5; their ``zeros`` entries are 0 and
    # unused). None: no such row.
    sign_rows: torch.Tensor | None = None

    @property
    def zero_point(self) -> float | None:
        """The constant zero point shared by every row: 2**(bits−1) when symmetric, 0.5 on the
        sign grid; None when zeros are stored."""
        if self.zeros is not None:
            return None
        return 0.5 if self.sign_rows is not None else float(2 ** (self.bits - 1))

    def row_zero_point(self, rows: slice) -> float | None:
        """The constant zero point of ``rows`` when they all share one (sign grid or symmetric),
        None when they have stored zeros. Raises for a slice that mixes the two."""
        if self.sign_rows is None:
            return self.zero_point
        sel = self.sign_rows[rows]
        if bool(sel.all()):
            return 0.5
        if bool(sel.any()):
            raise ValueError(f"rows {rows} mix the sign grid with stored zero points")
        return None

    def dequantize_stored(self) -> torch.Tensor:
        """float32 [rows, cols] in stored (permuted) column order: what the file holds."""
        idx = torch.arange(self.codes.shape[1], device=self.codes.device) // self.group_size
        s = self.scales.float()[:, idx]
        if self.zeros is None:
            z = self.zero_point
        else:
            z = self.zeros.float()[:, idx]
            if self.sign_rows is not None:
                z[self.sign_rows.to(z.device)] = 0.5
        return (self.codes.float() - z) * s

    def dequantize(self) -> torch.Tensor:
        """float32 [rows, cols] in the ORIGINAL column order (the permutation undone)."""
        q = self.dequantize_stored()
        if self.perm is None:
            return q
        out = torch.empty_like(q)
        out[:, self.perm] = q
        return out


def _check_inputs(W: torch.Tensor, H: torch.Tensor, what: str) -> None:
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ValueError(f"{what} expects W as a 2-D [rows, cols] matrix, got shape {tuple(getattr(W, 'shape', ()))}")
    rows, cols = W.shape
    if rows == 0 or cols == 0:
        raise ValueError(f"{what}: W is empty, shape {tuple(W.shape)}")
    if not isinstance(H, torch.Tensor) or tuple(H.shape) != (cols, cols):
        raise ValueError(f"{what}: H must be [cols, cols] = [{cols}, {cols}] for W of shape {tuple(W.shape)}, got {tuple(getattr(H, 'shape', ()))}")
    if not (W.is_floating_point() and H.is_floating_point()):
        raise ValueError(f"{what}: W and H must be floating point, got {W.dtype} and {H.dtype}")
    if not bool(torch.isfinite(W).all()):
        raise ValueError(f"{what}: W has non-finite values (nan/inf)")
    if not bool(torch.isfinite(H).all()):
        raise ValueError(f"{what}: H has non-finite values (nan/inf)")


def _prepare(W: torch.Tensor, H: torch.Tensor, perm: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 copies of W and H on W's device, dead inputs neutralised (H[i,i] = 1, W[:, i] = 0,
    as GPTQ does: a weight whose input is always 0 cannot affect the calibration output),
    columns permuted when ``perm`` is given."""
    W = W.detach().to(dtype=torch.float32, copy=True)
    H = H.detach().to(device=W.device, dtype=torch.float32, copy=True)
    dead = torch.diagonal(H) == 0
    if bool(dead.any()):
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
    if perm is not None:
        W = W[:, perm]
        H = H[perm][:, perm]
    return W, H


def _inverse_cholesky_upper(H: torch.Tensor, damp: float, what: str) -> torch.Tensor:
    """Upper Cholesky factor U of (H + λI)⁻¹ (so (H + λI)⁻¹ = UᵀU), λ = damp · mean(diag H).
    If a factorisation fails (singular or ill-conditioned H), λ grows ×10 a few times, with a
    warning. Raises ValueError only for an H no damping can fix (not positive semi-definite)."""
    if damp < 0 or not math.isfinite(damp):
        raise ValueError(f"{what}: damp must be a finite number >= 0, got {damp}")
    n = H.shape[0]
    mean_diag = float(torch.diagonal(H).mean())
    if not mean_diag > 0:
        raise ValueError(f"{what}: H has a non-positive mean diagonal ({mean_diag}); it is not a valid Hessian (2/n Σ x xᵀ)")
    eye = torch.eye(n, dtype=H.dtype, device=H.device)
    frac = damp
    for attempt in range(_DAMP_RETRIES + 1):
        Hd = H + (frac * mean_diag) * eye
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0 and bool(torch.isfinite(U).all()):
                if attempt:
                    warnings.warn(f"{what}: Cholesky of the damped Hessian failed at damp={damp}; succeeded with damp={frac:g}", RuntimeWarning, stacklevel=3)
                return U
        frac = frac * 10 if frac > 0 else 1e-4
    raise ValueError(f"{what}: H is not positive semi-definite (Cholesky failed even with damp={frac / 10:g})")


def _scale_to_f16(scale: torch.Tensor, what: str) -> torch.Tensor:
    s = scale.clamp(min=_MIN_SCALE).half()
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{what}: weights too large for float16 scales (a scale exceeds {_MAX_F16})")
    return s


def _clamp_codes(x: torch.Tensor, maxq: int | torch.Tensor) -> torch.Tensor:
    """Clamp to [0, maxq] in place; ``maxq`` is a number or a per-row tensor [rows]."""
    if isinstance(maxq, torch.Tensor):
        return torch.minimum(x.clamp_(min=0), maxq.view(-1, *([1] * (x.dim() - 1))), out=x)
    return x.clamp_(0, maxq)


def _group_params(g: torch.Tensor, maxq: int | torch.Tensor, sym: bool, sign: torch.Tensor | bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(float16 scale [rows], float32 zero [rows]) of the weights ``g`` [rows, k];
    ``maxq`` may be per row (mixed bit widths, asymmetric only). ``sign`` (bool, or a bool
    tensor [rows]) puts 1-bit rows on the sign grid: zero 0.5, scale 2·mean|w|."""
    if sym:
        amax = g.abs().amax(dim=1)
        s = _scale_to_f16(2.0 * amax / maxq, "gptq_quantize")
        return s, torch.full_like(amax, float((maxq + 1) // 2))
    lo = g.amin(dim=1).clamp(max=0.0)
    hi = g.amax(dim=1).clamp(min=0.0)
    s = _scale_to_f16((hi - lo) / maxq, "gptq_quantize")
    z = _clamp_codes(torch.round(-lo / s.float()), maxq)
    if isinstance(sign, torch.Tensor) or sign:
        s_sign = _scale_to_f16(2.0 * g.abs().mean(dim=1), "gptq_quantize")
        if not isinstance(sign, torch.Tensor):
            return s_sign, torch.full_like(z, 0.5)
        s = torch.where(sign, s_sign, s)
        z = torch.where(sign, torch.full_like(z, 0.5), z)
    return s, z


def _check_perm(perm: torch.Tensor, cols: int, device: torch.device) -> torch.Tensor:
    if not isinstance(perm, torch.Tensor) or perm.dim() != 1 or perm.numel() != cols:
        raise ValueError(f"gptq_quantize: perm must be a 1-D tensor of {cols} column indices, got shape {tuple(getattr(perm, 'shape', ()))}")
    if perm.is_floating_point() or perm.is_complex() or perm.dtype == torch.bool:
        raise ValueError(f"gptq_quantize: perm must hold integers, got {perm.dtype}")
    p = perm.to(device=device, dtype=torch.int64)
    if not torch.equal(torch.sort(p).values, torch.arange(cols, device=device)):
        raise ValueError(f"gptq_quantize: perm is not a permutation of 0..{cols - 1}")
    return p


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int | list[int] | torch.Tensor,
    group_size: int = 128,
    *,
    act_order: bool = True,
    perm: torch.Tensor | None = None,
    damp: float = 0.01,
    block_size: int = 128,
    sym: bool = False,
    sign1: bool = False,
    backend: str = "auto",
) -> GPTQResult:
    """GPTQ-quantize ``W`` [rows, cols] (out × in) to ``bits`` bits given the Hessian ``H``
    [cols, cols] = 2/n Σ x xᵀ of its inputs, minimising ‖(W − Ŵ)X‖².

    - ``group_size`` consecutive columns in STORED order share a (scale, zero) per row; a group's
      parameters are computed from the current, error-updated weights when the loop reaches its
      first column (GPTQ's act-order "non-static groups"). The last group may be short;
      ``group_size >= cols`` gives one group per row.
    - ``act_order``: columns are processed and stored in order of decreasing diag(H);
      ``perm`` (stored column j = original column perm[j]) overrides that order verbatim, e.g.
      to share one permutation among matrices that see the same input. Without both, the
      natural order is used and ``perm`` of the result is None.
    - ``damp``: λ = damp · mean(diag H) is added to the diagonal; on a failed Cholesky it grows
      ×10 (with a warning) until the factorisation succeeds.
    - ``block_size``: columns per lazy batch update (affects speed, not the result beyond
      float rounding).
    - ``sym``: symmetric grid, zero = 2**(bits−1), scale = 2·max|w| / (2**bits − 1); zeros None.
    - ``sign1``: 1-bit rows go on the sign grid (zero 0.5, scale 2·mean|w| per group; the
      result's ``sign_rows`` marks them, and ``zeros`` is None when every row is 1-bit).
    - ``backend``: 'auto' (fused Triton block kernel on CUDA when group_size == block_size,
      else the torch loop), 'torch', or 'triton'.
    """
    what = "gptq_quantize"
    _check_inputs(W, H, what)
    row_bits = None
    if isinstance(bits, (list, tuple, torch.Tensor)):
        # Mixed precision: one bit width per row (rows are quantized independently; they only
        # share the Hessian, so one pass over the columns serves them all).
        row_bits = torch.as_tensor(bits, dtype=torch.int64).flatten()
        if row_bits.numel() != W.shape[0] or not all(int(b) in SUPPORTED_BITS for b in row_bits.unique()):
            raise ValueError(f"{what}: per-row bits must give one of {SUPPORTED_BITS} for each of the {W.shape[0]} rows")
        if sym:
            raise ValueError(f"{what}: per-row bit widths are supported for asymmetric quantization only")
        bits = int(row_bits.max())
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"{what}: unsupported bit width {bits} (supported: {SUPPORTED_BITS})")
    if sym and bits == 1:
        raise ValueError(f"{what}: 1-bit symmetric quantization has the grid {{-scale, 0}} and cannot hold a sign; use sign1=True")
    if sym and sign1:
        raise ValueError(f"{what}: sign1 is a grid for 1-bit rows of an asymmetric result; drop sym")
    if int(group_size) <= 0:
        raise ValueError(f"{what}: group_size must be > 0, got {group_size}")
    if int(block_size) <= 0:
        raise ValueError(f"{what}: block_size must be > 0, got {block_size}")
    group_size, block_size = int(group_size), int(block_size)
    rows, cols = W.shape
    dev = W.device

    if perm is not None:
        perm = _check_perm(perm, cols, dev)
    elif act_order:
        d = torch.diagonal(H).detach().to(device=dev, dtype=torch.float32).clone()
        d[d == 0] = 1.0  # dead inputs as GPTQ sees them after H[i,i] = 1
        perm = torch.argsort(d, descending=True, stable=True)
    W, H = _prepare(W, H, perm)
    U = _inverse_cholesky_upper(H, damp, what)
    del H

    maxq: int | torch.Tensor = (1 << bits) - 1
    if row_bits is not None:
        maxq = (2.0 ** row_bits.to(device=dev, dtype=torch.float32)) - 1
    sign: torch.Tensor | bool = False
    if sign1:
        sign = (row_bits == 1).to(dev) if row_bits is not None else bits == 1
        if isinstance(sign, torch.Tensor) and not bool(sign.any()):
            sign = False
    n_groups = -(-cols // group_size)
    scales = torch.empty(rows, n_groups, dtype=torch.float16, device=dev)
    zeros = torch.empty(rows, n_groups, dtype=torch.float32, device=dev)
    codes = torch.empty(rows, cols, dtype=torch.uint8, device=dev)
    s = z = None

    from . import gptq_triton

    # One Triton launch per block when the block is one whole group (the default 128/128);
    # the torch loop below is the reference and the path everywhere else.
    fused = backend != "torch" and gptq_triton.available(W) and group_size == block_size and block_size & (block_size - 1) == 0
    if backend == "triton" and not fused:
        raise ValueError(f"{what}: the triton backend needs CUDA (or TRITON_INTERPRET=1) and group_size == block_size, a power of two")
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        count = i2 - i1
        if fused and count == block_size:
            s16, z = _group_params(W[:, i1:i2], maxq, sym, sign)
            scales[:, i1 // group_size] = s16
            zeros[:, i1 // group_size] = z
            mq = maxq if isinstance(maxq, torch.Tensor) else float(maxq)
            C1, Err1 = gptq_triton.gptq_block(W[:, i1:i2], U[i1:i2, i1:i2], s16.float(), z, mq)
            codes[:, i1:i2] = C1
            if i2 < cols:
                W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)
            continue
        W1 = W[:, i1:i2].clone()  # current weights of the block (earlier blocks' errors applied)
        Q1 = torch.empty_like(W1)  # their quantized values
        C1 = torch.empty_like(W1)  # their codes (as floats)
        U1 = U[i1:i2, i1:i2]
        d1 = torch.diagonal(U1)
        R1 = U1 / d1.unsqueeze(1)  # row i: the OBS update direction of column i, R1[i, i] = 1
        for i in range(count):
            col = i1 + i
            if col % group_size == 0:
                gend = min(col + group_size, cols)
                if gend <= i2:
                    grp = W1[:, i : gend - i1]
                else:  # the group runs past this block: apply this block's pending updates to it
                    ahead = W[:, i2:gend] - (W1[:, :i] - Q1[:, :i]).div(d1[:i]) @ U[i1:col, i2:gend]
                    grp = torch.cat([W1[:, i:], ahead], dim=1)
                s16, z = _group_params(grp, maxq, sym, sign)
                scales[:, col // group_size] = s16
                zeros[:, col // group_size] = z
                s = s16.float()
            # Few kernels per column (launch overhead bounds this loop on a GPU): results are
            # written straight into the block buffers; addcdiv computes z + w / s, as RTN does.
            w = W1[:, i]
            c = _clamp_codes(torch.addcdiv(z, w, s, out=C1[:, i]).round_(), maxq)
            q = torch.sub(c, z, out=Q1[:, i]).mul_(s)
            if i + 1 < count:
                # OBS: w's error, spread over the rest of the block (U1[i, j] / U1[i, i]).
                W1[:, i + 1 :].addr_(w - q, R1[i, i + 1 :], alpha=-1.0)
        codes[:, i1:i2] = C1.to(torch.uint8)
        if i2 < cols:
            # W1 still holds each column as it was when quantized: Err = (w − q) / U[i, i].
            Err1 = (W1 - Q1).div_(d1)
            W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)

    sign_rows = None
    if isinstance(sign, torch.Tensor):
        sign_rows = sign.cpu()
        zeros[sign] = 0.0  # the constant 0.5 is not a u8; these entries are unused
    elif sign:
        sign_rows = torch.ones(rows, dtype=torch.bool)
    return GPTQResult(
        codes=codes,
        scales=scales,
        zeros=None if sym or (sign is True) else zeros.to(torch.uint8),
        perm=perm,
        bits=bits if row_bits is None else row_bits,
        group_size=group_size,
        sign_rows=sign_rows,
    )


@dataclass
class GPTQTransposedResult:
    """GPTQ of W [rows, cols] stored transposed: ``codes`` [cols, rows] = Ŵᵀ's codes, with one
    (scale, zero) per column of W and group of ``group_size`` rows — the file's 'group' layout
    of the [cols, rows] matrix Ŵᵀ."""

    codes: torch.Tensor  # uint8 [cols, rows]
    scales: torch.Tensor  # float16 [cols, ceil(rows / group_size)]
    zeros: torch.Tensor | None  # uint8 [cols, ceil(rows / group_size)]; None on the sign grid
    bits: int
    group_size: int

    @property
    def zero_point(self) -> float | None:
        """0.5 on the sign grid (1 bit, ``sign1``), None when zeros are stored."""
        return 0.5 if self.zeros is None else None

    def dequantize_t(self) -> torch.Tensor:
        """float32 Ŵᵀ [cols, rows] (what the file holds)."""
        idx = torch.arange(self.codes.shape[1], device=self.codes.device) // self.group_size
        z = 0.5 if self.zeros is None else self.zeros.float()[:, idx]
        return (self.codes.float() - z) * self.scales.float()[:, idx]

    def dequantize(self) -> torch.Tensor:
        """float32 Ŵ [rows, cols]."""
        return self.dequantize_t().T


def gptq_quantize_transposed(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int = 128, *, damp: float = 0.01, block_size: int = 128, sign1: bool = False) -> GPTQTransposedResult:
    """GPTQ of ``W`` [rows, cols] with input Hessian ``H`` [cols, cols], natural column order,
    where each column gets its own asymmetric (scale, zero) per group of ``group_size`` rows,
    computed from that column's error-updated values when the loop reaches it. For factors
    with few columns and many rows (Delta-CoMe's U: [out, r]) this costs r·⌈out/g⌉ scales
    instead of out·⌈r/g⌉, and stores Ŵᵀ in the [rank, dim] row layout of the other factor.
    ``sign1`` with ``bits`` 1: the sign grid (zero 0.5, scale 2·mean|w| per group; zeros None)."""
    what = "gptq_quantize_transposed"
    _check_inputs(W, H, what)
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"{what}: unsupported bit width {bits} (supported: {SUPPORTED_BITS})")
    if int(group_size) <= 0 or int(block_size) <= 0:
        raise ValueError(f"{what}: group_size and block_size must be > 0")
    W, H = _prepare(W, H, None)
    U = _inverse_cholesky_upper(H, damp, what)
    del H
    rows, cols = W.shape
    dev = W.device
    maxq = (1 << bits) - 1
    sign = bool(sign1) and bits == 1
    ng = -(-rows // group_size)
    pad = ng * group_size - rows
    codes = torch.empty(cols, rows, dtype=torch.uint8, device=dev)
    scales = torch.empty(cols, ng, dtype=torch.float16, device=dev)
    zeros = torch.empty(cols, ng, dtype=torch.float32, device=dev)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.empty_like(W1)
        U1 = U[i1:i2, i1:i2]
        d1 = torch.diagonal(U1)
        R1 = U1 / d1.unsqueeze(1)
        for i in range(i2 - i1):
            w = W1[:, i]
            if sign:  # mean|w| over each group's own values (the last one may be short)
                s16, z = _scale_to_f16(2.0 * group_mean_abs(w[None], group_size)[0], what), torch.full((ng,), 0.5, device=dev)
            else:
                # pad the short last group with its own last value so min/max stay its own
                g = torch.cat([w, w[-1:].expand(pad)]) if pad else w
                s16, z = _group_params(g.reshape(ng, group_size), maxq, sym=False)
            s = s16.float().repeat_interleave(group_size)[:rows]
            zz = z.repeat_interleave(group_size)[:rows]
            c = torch.div(w, s).add_(zz).round_().clamp_(0, maxq)
            q = (c - zz) * s
            codes[i1 + i] = c.to(torch.uint8)
            scales[i1 + i] = s16
            zeros[i1 + i] = z
            Q1[:, i] = q
            if i + 1 < i2 - i1:
                W1[:, i + 1 :].addr_(w - q, R1[i, i + 1 :], alpha=-1.0)
        if i2 < cols:
            W[:, i2:].addmm_((W1 - Q1).div_(d1), U[i1:i2, i2:], alpha=-1.0)
    return GPTQTransposedResult(codes=codes, scales=scales, zeros=None if sign else zeros.to(torch.uint8), bits=bits, group_size=group_size)
