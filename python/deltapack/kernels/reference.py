"""Pure-torch reference of the .dpk encodings (docs/FORMAT.md): the ground truth every GPU
kernel is checked against. Works on any device; favours clarity over speed."""

from __future__ import annotations

import torch

from ..format import PackedTensor


def unpack_rows(packed: torch.Tensor, cols: int, bits: int) -> torch.Tensor:
    """Unpack uint8 ``[rows, row_bytes]`` (a little-endian bit stream per row, rows padded to
    32-bit words) into uint8 codes ``[rows, cols]``."""
    if bits not in (1, 2, 3, 4, 8):
        raise ValueError(f"unsupported bit width {bits}")
    rows = packed.shape[0]
    if cols == 0:
        return torch.zeros((rows, 0), dtype=torch.uint8, device=packed.device)
    bit = torch.arange(cols, device=packed.device, dtype=torch.int64) * bits
    byte, shift = bit // 8, bit % 8
    p = packed.to(torch.int32)
    lo = p[:, byte]
    # A code straddles into the next byte when shift + bits > 8 (3-bit codes only); the
    # index is clamped because such a next byte always exists inside the padded row.
    hi = p[:, torch.clamp(byte + 1, max=packed.shape[1] - 1)]
    v = (lo | (hi << 8)) >> shift
    return (v & ((1 << bits) - 1)).to(torch.uint8)


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of :func:`unpack_rows`: codes ``[rows, cols]`` (each < 2**bits) → uint8
    ``[rows, row_bytes]``, each row a little-endian bit stream padded to whole 32-bit words."""
    if bits not in (1, 2, 3, 4, 8):
        raise ValueError(f"unsupported bit width {bits}")
    rows, cols = codes.shape
    nbits = cols * bits
    row_bytes = (nbits + 31) // 32 * 4
    shifts = torch.arange(bits, device=codes.device, dtype=torch.uint8)
    stream = ((codes.to(torch.uint8).unsqueeze(-1) >> shifts) & 1).reshape(rows, nbits)  # LSB first
    stream = torch.nn.functional.pad(stream, (0, row_bytes * 8 - nbits)).reshape(rows, row_bytes, 8)
    weights = (1 << torch.arange(8, device=codes.device, dtype=torch.int32)).to(torch.uint8)
    return (stream * weights).sum(-1, dtype=torch.int32).to(torch.uint8)


def _per_code(info, t: torch.Tensor) -> torch.Tensor:
    """A per-group tensor (scales or zeros, float32) indexed per code: ``[rows, code_cols]`` for
    'group' granularity; 'row' ``[rows, 1]`` and 'tensor' ``[1, 1]`` broadcast as they are."""
    q = info.quant or {}
    if q["granularity"] == "group":
        # each group's value repeated over its codes by a broadcast, not a gather: the same
        # values, and under autograd (distillation trains the scales) the backward is a sum
        # over each group instead of an indexed scatter-add
        g = int(q["group_size"])
        rows, groups = t.shape
        return t.unsqueeze(-1).expand(rows, groups, g).reshape(rows, groups * g)[:, : info.code_cols]
    return t


def code_offsets(p: PackedTensor) -> torch.Tensor:
    """``code − zero`` of every stored code, float32 ``[rows, code_cols]``: the part of
    :func:`dequantize` that does not depend on the scales."""
    q = p.info.quant or {}
    codes = unpack_rows(p.codes, p.info.code_cols, p.info.bits).to(torch.float32)
    if p.zeros is not None:
        zeros = p.zeros.to(torch.float32)
    else:
        zeros = torch.full_like(p.scales, float(q["zero"]["value"]), dtype=torch.float32)
    return codes - _per_code(p.info, zeros)


def scale_offsets(info, offsets: torch.Tensor, scales: torch.Tensor, indices: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense values in the logical shape of ``info`` from :func:`code_offsets` and ``scales``
    (the stored ones, or others: distillation trains them): (code − zero) · scale; ``indices``:
    a 2:4 tensor's positions."""
    vals = offsets * _per_code(info, scales.to(torch.float32))
    if indices is not None:
        idx = unpack_rows(indices, info.code_cols, 2).to(torch.int64)
        pos = (torch.arange(info.code_cols, device=vals.device) // 2 * 4).unsqueeze(0) + idx
        dense = torch.zeros((info.rows, info.cols), dtype=torch.float32, device=vals.device)
        vals = dense.scatter_(1, pos, vals)
    return vals.reshape(info.shape).to(dtype)


def dequantize(p: PackedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense values of a packed tensor in its logical shape: (code - zero) * scale."""
    return scale_offsets(p.info, code_offsets(p), p.scales, p.indices, dtype)


def delta_apply(x: torch.Tensor, y: torch.Tensor, deltas: list[torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
    """The multi-delta op every kernel computes: ``y[i] + ΔW_{slots[i]} · x[i]`` (a new
    tensor, fp32 math, ``y``'s dtype), rows with slot −1 unchanged. ``deltas``: dense float32
    ``[out, in]`` matrices, e.g. ``KernelDelta.dense()``."""
    out = y.float().clone()
    slots = slots.reshape(-1).to(torch.int64)
    for s in torch.unique(slots).tolist():
        if s < 0:
            continue
        rows = (slots == s).nonzero().squeeze(1)
        out[rows] += x[rows].float() @ deltas[s].to(out.device).T
    return out.to(y.dtype)
