"""Uniform k-bit round-to-nearest quantization with per-group affine scales: the baseline
every other method is compared with, and the building block the others' scales reuse."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GroupQuantized:
    """Codes of a [rows, cols] matrix with one (scale, zero) per ``group_size`` columns."""

    codes: torch.Tensor  # uint8 [rows, cols]
    scales: torch.Tensor  # float16 [rows, n_groups]
    zeros: torch.Tensor  # uint8 [rows, n_groups], in code units
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        idx = torch.arange(self.codes.shape[1], device=self.codes.device) // self.group_size
        s = self.scales.float()[:, idx]
        z = self.zeros.float()[:, idx]
        return (self.codes.float() - z) * s


def quantize_rtn(w: torch.Tensor, bits: int, group_size: int = 128) -> GroupQuantized:
    """Asymmetric min/max RTN of ``w`` ([rows, cols]) per group of ``group_size`` columns.
    Scales are rounded to float16 before the codes are computed, so what is stored is
    exactly what was used."""
    if w.dim() != 2:
        raise ValueError(f"quantize_rtn expects a 2-D matrix, got shape {tuple(w.shape)}")
    if bits not in (1, 2, 3, 4, 8):
        raise ValueError(f"unsupported bit width {bits}")
    rows, cols = w.shape
    n_groups = -(-cols // group_size)
    pad = n_groups * group_size - cols
    wf = w.float()
    # Pad the short last group with copies of its own first element so min/max are its own.
    padded = torch.cat([wf, wf[:, -1:].expand(rows, pad)], dim=1) if pad else wf
    g = padded.reshape(rows, n_groups, group_size)
    lo = g.amin(dim=2).clamp(max=0.0)
    hi = g.amax(dim=2).clamp(min=0.0)
    maxq = (1 << bits) - 1
    # floor at the smallest positive float16 (2**-24): a smaller floor rounds to 0 in fp16 and
    # an all-zero group would get scale 0 and a NaN zero point
    scale = ((hi - lo) / maxq).clamp(min=2.0**-24).half()
    sf = scale.float()
    zero = torch.round(-lo / sf).clamp(0, maxq)
    codes = torch.round(g / sf.unsqueeze(2) + zero.unsqueeze(2)).clamp(0, maxq)
    codes = codes.reshape(rows, n_groups * group_size)[:, :cols]
    return GroupQuantized(codes=codes.to(torch.uint8), scales=scale, zeros=zero.to(torch.uint8), bits=bits, group_size=group_size)


def quantize_sign(w: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """float32 ±a per group of ``group_size`` columns, a = mean|w| of the group in float16:
    the sign grid (codes 1 / 0 at the constant zero point 0.5, scale 2a) that Delta-CoMe's
    1-bit groups use, without GPTQ's error feedback. Returns the dequantized values."""
    if w.dim() != 2:
        raise ValueError(f"quantize_sign expects a 2-D matrix, got shape {tuple(w.shape)}")
    scale = (2 * group_mean_abs(w, group_size)).clamp(min=2.0**-24).half().float()  # what the file would store
    half = scale.repeat_interleave(group_size, dim=1)[:, :w.shape[1]] / 2
    return torch.where(w > 0, half, -half)


def group_mean_abs(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """float32 [rows, ceil(cols / group_size)]: mean|w| over each group of ``group_size``
    columns, the short last group's over its own values (the sign grid's scale / 2)."""
    rows, cols = w.shape
    n_groups = -(-cols // group_size)
    pad = n_groups * group_size - cols
    a = torch.nn.functional.pad(w.float().abs(), (0, pad)).reshape(rows, n_groups, group_size).sum(dim=2)
    counts = torch.full((n_groups,), float(group_size), device=w.device)
    counts[-1] = group_size - pad
    return a / counts


def compress_rtn(delta: torch.Tensor, bits: int, group_size: int = 128):
    """The uniform low-bit baseline: the whole delta at ``bits`` with group RTN."""
    from .core import CompressedDelta, QuantPart

    q = quantize_rtn(delta, bits, group_size)
    part = QuantPart(codes=q.codes, bits=bits, scales=q.scales, zeros=q.zeros, group_size=group_size)
    return CompressedDelta(form="dense", parts={"delta": part}, approx=q.dequantize(), info={"bits": bits})
