"""Low-rank truncation (the practitioners' baseline, e.g. mergekit-extract-lora): the top-r
SVD of Δ stored at 16 bits as U·diag(s) [out, r] and Vᵀ [r, in] — exactly a LoRA adapter
(B = U·diag(s), A = Vᵀ), which ``export-lora`` writes for PEFT."""

from __future__ import annotations

import torch

from .core import CompressedDelta, RawPart, empty_delta
from .plan import fp16_lowrank_rank


SVD_METHODS = ("svd", "gesvdj", "gram64")


def svd(delta: torch.Tensor, method: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of Δ (on its device): U [out, k], s [k] (descending), Vh [k, in], k = min(out, in).

    - ``svd``: torch.linalg.svd in fp32 (LAPACK gesdd on CPU, cuSOLVER gesvd on GPU);
    - ``gesvdj``: cuSOLVER's Jacobi SVD (GPU only);
    - ``gram64``: eigendecomposition of the smaller Gram matrix ΔᵀΔ (or ΔΔᵀ) in fp64, then the
      other factor as ΔV/σ. Squaring the condition number is harmless in fp64 for the
      components a delta keeps; it is several times faster than fp32 SVD on a GPU
      (bench/results/compress_*.md). Default on CUDA; ``svd`` elsewhere.
    """
    d = delta.float()
    method = method or ("gram64" if d.is_cuda else "svd")
    if method == "svd":
        return torch.linalg.svd(d, full_matrices=False)
    if method == "gesvdj":
        return torch.linalg.svd(d, full_matrices=False, driver="gesvdj" if d.is_cuda else None)
    if method != "gram64":
        raise ValueError(f"unknown SVD method '{method}' (choose from {SVD_METHODS})")
    out, inp = d.shape
    wide = out < inp
    m = d.double()
    g = m @ m.T if wide else m.T @ m
    evals, evecs = torch.linalg.eigh(g)  # ascending
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    s = evals.sqrt()
    inv = torch.where(s > s[0] * 1e-12, 1.0 / s, torch.zeros_like(s))
    if wide:  # evecs are U
        U, Vh = evecs, (evecs.T @ m) * inv[:, None]
    else:  # evecs are V
        U, Vh = (m @ evecs) * inv[None, :], evecs.T
    return U.float(), s.float(), Vh.float()


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
