"""Low-rank truncation (the practitioners' baseline, e.g. mergekit-extract-lora): the top-r
SVD of Δ stored at 16 bits as U·diag(s) [out, r] and Vᵀ [r, in] — exactly a LoRA adapter
(B = U·diag(s), A = Vᵀ), which ``export-lora`` writes for PEFT."""

from __future__ import annotations

import torch

from .core import CompressedDelta, RawPart, empty_delta
from .plan import fp16_lowrank_rank


def svd(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full fp32 SVD (on the tensor's device): U [out, k], s [k], Vh [k, in]."""
    return torch.linalg.svd(delta.float(), full_matrices=False)


def compress_lowrank(delta: torch.Tensor, bits_per_param: float, factors=None, dtype: torch.dtype = torch.float16) -> CompressedDelta:
    out, inp = delta.shape
    r = fp16_lowrank_rank(out, inp, bits_per_param)
    if r == 0:
        return empty_delta((out, inp), delta.device)
    u, s, vh = factors if factors is not None else svd(delta)
    b = (u[:, :r] * s[:r]).to(dtype)
    a = vh[:r].to(dtype)
    return CompressedDelta(
        form="low_rank",
        parts={"u": RawPart(b.cpu()), "vt": RawPart(a.cpu())},
        blocks=[("u", None, "vt")],
        approx=b.float() @ a.float(),
        info={"rank": r},
    )
