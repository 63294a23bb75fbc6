"""Delta-CoMe (arXiv 2406.08903): mixed-precision quantization of the delta's singular
vectors. ΔW = U·Σ·Vᵀ in fp32; the vectors of large singular values get more bits (default
8 bits for the top 2, 3 bits for the next 32, 2 bits for as many as the budget allows, the
rest dropped), with ranks computed per matrix shape (``plan.fit_lowrank_plan``). A 1-bit
group (e.g. schedule ``8:2,3:32,2:64,1``) goes on the sign grid: codes 1 / 0 are ±scale/2
per group of 128 (constant zero 0.5), since an asymmetric 1-bit grid cannot hold a sign.

Each bit group k is quantized with GPTQ, from high bits to low:
  1. V̂ₖᵀ ← GPTQ(Vₖᵀ) with the layer input X as GPTQ input (Hessian H = XXᵀ) — done for all
     groups in one pass with per-row bit widths, as rows share only the Hessian;
  2. Ûₖ ← GPTQ(Uₖ*) with input Σₖ·V̂ₖᵀ·X (Hessian Σₖ V̂ₖᵀ H V̂ₖ Σₖ).
The paper merges each group's quantized contribution before calibrating the next (its public
code swaps the two calibration inputs — a known bug; here they are the right way round). We
do the merge by re-fitting Uₖ* to the remaining residual R = Δ − Σ_{j<k} Ûⱼ Σⱼ V̂ⱼᵀ before its
GPTQ: Uₖ* = argmin ‖(R − U Σₖ V̂ₖᵀ) M^½‖ with M = H + γ·mean(diag H)·I, which also absorbs
V̂ₖ's own quantization error (GPTQ on the original Uₖ cannot see it). The metric matters:
γ = 0 (pure calibration output error) over-fits the calibration set — on the tiny zoo pair
with sampled calibration text the KL to the fine-tune went from 1.41 (no re-fit) to 2.77 —
while a mostly weight-space re-fit helps: γ = 1: 1.73, γ = 10: 1.20, γ = 100: 1.29,
γ = 10⁴: 1.32 (one model, one seed; CPU, 2026-11-22). Default γ = 10.

Act-order permutes Vᵀ's input columns by diag(H); every group shares that one permutation
(they all see the same X), stored once as the delta's ``input_perm``. U needs none: its input
Hessian's diagonal already decreases with the singular values. U is stored transposed
(``ut`` [r, out], docs/FORMAT.md §4) with its scale groups along the output dimension:
r·⌈out/128⌉ scales instead of out·⌈r/128⌉ per block, which at the 8-bit group's r = 2 is the
difference between 2·32 and 4096 scales for a 4096-wide matrix."""

from __future__ import annotations

import torch

from .core import CompressedDelta, QuantPart, RawPart, empty_delta
from .gptq import gptq_quantize, gptq_quantize_transposed
from .lowrank import svd
from .plan import LowRankPlan


def whitened_svd(delta: torch.Tensor, H: torch.Tensor, blend: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activation-aware SVD: the SVD of Δ·M^½ in the metric M = H + blend·mean(diag H)·I, so
    that the top-r components are the best rank-r approximation of Δ in ‖(Δ − Δ̂)M^½‖ — the
    calibration outputs' error for blend = 0, the weights' for blend → ∞ (plain SVD). Returns
    (U, s, Vh) with Δ = U·diag(s)·Vh, Vh = V'ᵀ·M^-½ (rows no longer orthonormal)."""
    inp = delta.shape[1]
    Hf = H.double()
    M = Hf + blend * torch.diagonal(Hf).mean().clamp(min=1e-30) * torch.eye(inp, dtype=torch.float64, device=H.device)
    lam, Q = torch.linalg.eigh(M)
    lam = lam.clamp(min=float(lam.max()) * 1e-10)
    root = (Q * lam.sqrt()) @ Q.T
    inv_root = (Q * lam.rsqrt()) @ Q.T
    U, s, Vh = svd((delta.double() @ root).float())
    return U, s, (Vh.double() @ inv_root).float()


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.cpu()


def compress_delta_come(
    delta: torch.Tensor,
    H: torch.Tensor | None,
    plan: LowRankPlan,
    *,
    damp: float = 0.01,
    factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    refit: bool = True,
    refit_blend: float = 10.0,
    whiten: float | None = None,
) -> CompressedDelta:
    out, inp = delta.shape
    dev = delta.device
    if plan.rank == 0:
        return empty_delta((out, inp), dev)
    d = delta.float()
    H = torch.eye(inp, device=dev) if H is None else H.float().to(dev)
    if factors is None:  # given factors are used as they are (``whiten`` is for the SVD made here)
        factors = svd(d) if whiten is None else whitened_svd(d, H, whiten)
    U, s, Vh = factors
    perm = torch.argsort(torch.diagonal(H), descending=True) if plan.act_order else None
    residual = d.clone()
    approx = torch.zeros_like(d)
    parts: dict = {}
    blocks = []
    # Every group's Vᵀ sees the same input X, and GPTQ quantizes rows independently given
    # the shared Hessian: one pass over the columns, with per-row bit widths, serves all
    # groups (3× fewer column steps than one pass per group; bench/results/compress.md).
    kept = [g for g in plan.groups if g.rank]
    row_bits = [g.bits for g in kept for _ in range(g.rank)]
    qv_all = gptq_quantize(Vh[: plan.rank].contiguous(), H, row_bits, plan.group_size, act_order=plan.act_order, perm=perm, damp=damp, sign1=True)
    vhat_all = qv_all.dequantize().to(dev)
    start = 0
    for k, g in enumerate(plan.groups):
        if g.rank == 0:
            continue
        sl = slice(start, start + g.rank)
        start += g.rank
        s16 = s[sl].half()
        A = vhat_all[sl] * s16.float().to(dev)[:, None]  # Σₖ V̂ₖᵀ, [r, in]
        AH = A @ H
        Hu = AH @ A.T  # Hessian of U's input Σₖ V̂ₖᵀ X
        if refit:
            # in the metric H + γ·mean(diag H)·I: output error blended with weight error
            Hb = H + refit_blend * torch.diagonal(H).mean() * torch.eye(inp, device=dev)
            AHb = A @ Hb
            Hub = AHb @ A.T
            lam = damp * torch.diagonal(Hub).mean().clamp(min=1e-12)
            target = torch.linalg.solve(Hub + lam * torch.eye(g.rank, device=dev), (residual @ AHb.T).T).T
        else:
            target = U[:, sl] * 1.0
        qu = gptq_quantize_transposed(target.contiguous(), Hu, g.bits, plan.group_size, damp=damp, sign1=True)
        contrib = qu.dequantize().to(dev) @ A
        residual -= contrib
        approx += contrib
        parts[f"ut{k}"] = QuantPart(codes=qu.codes.cpu(), bits=g.bits, scales=qu.scales.cpu(), zeros=_cpu(qu.zeros), zero_point=qu.zero_point, group_size=plan.group_size)
        parts[f"s{k}"] = RawPart(s16.cpu())
        vz = qv_all.row_zero_point(sl)
        parts[f"vt{k}"] = QuantPart(codes=qv_all.codes[sl].cpu(), bits=g.bits, scales=qv_all.scales[sl].cpu(), zeros=None if vz is not None else qv_all.zeros[sl].cpu(), zero_point=vz, group_size=plan.group_size)
        blocks.append((f"ut{k}", f"s{k}", f"vt{k}"))
    if perm is not None:
        parts["perm"] = RawPart(perm.to(torch.int32).cpu())
    return CompressedDelta(form="low_rank", parts=parts, blocks=blocks, approx=approx, info={"plan": plan.describe(), "rank": plan.rank})
