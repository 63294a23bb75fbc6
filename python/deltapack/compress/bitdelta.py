"""BitDelta (arXiv 2402.10193): Δ̂ = α·sign(Δ) with one scale per matrix, α initialised to
mean|Δ| (the L2-optimal scale for fixed signs). Stored as q1 with a per-tensor scale 2α and
the constant zero point 0.5, so codes 1 / 0 decode to +α / −α. Scale distillation (training
the α's against the fine-tune's logits) lives in ``distill.py``."""

from __future__ import annotations

import torch

from .core import CompressedDelta, QuantPart


def compress_bitdelta(delta: torch.Tensor, alpha: float | None = None) -> CompressedDelta:
    d = delta.float()
    a = float(d.abs().mean()) if alpha is None else float(alpha)
    codes = (d > 0).to(torch.uint8)
    scale = torch.tensor([2 * a], dtype=torch.float16)
    a16 = float(scale.float()) / 2  # what the file stores
    approx = torch.where(d > 0, a16, -a16)
    part = QuantPart(codes=codes, bits=1, scales=scale, zero_point=0.5, group_size=0)
    return CompressedDelta(form="dense", parts={"delta": part}, approx=approx, info={"alpha": a16})


def set_bitdelta_scale(cd: CompressedDelta, alpha: float) -> None:
    """Replace the scale of a compressed BitDelta matrix (after distillation)."""
    part = cd.parts["delta"]
    assert isinstance(part, QuantPart)
    part.scales = torch.tensor([2 * alpha], dtype=torch.float16)
    a16 = float(part.scales.float()) / 2
    cd.approx = torch.where(part.codes.to(cd.approx.device) > 0, a16, -a16)
    cd.info["alpha"] = a16
