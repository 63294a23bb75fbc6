"""Scale distillation: freeze what a compressed delta stores except its scales, and train those
so that the compressed model's logits match the fine-tune's on the calibration tokens. The
student is the fine-tune with every compressed matrix replaced by W_base + Δ̂(scales) through a
weight parametrization (any module type works); one training loop serves two forms:

* BitDelta (arXiv 2402.10193 §3.2; form 'dense', one 1-bit part): Δ̂ = α·sign(Δ), the
  per-matrix α trained directly (AdamW, cosine decay; the paper's lr 1e-4).
* low-rank (Delta-CoMe, lowrank; form 'low_rank'): Δ̂ = Û·diag(s)·V̂ᵀ with the input
  permutation undone. Û and V̂ are dequantized exactly as the file stores them — the deltas
  are written to a scratch .dpk and read back through the reference path
  (``nn.delta.read_delta``, ``LowRankDelta.dense``) — and stay fixed; the per-rank singular
  values are trained as s = s₀·m with the multiplier m (init 1) the trained parameter, so a
  step moves every singular value by the same relative amount whatever its size (they span
  orders of magnitude). Delta-CoMe stores s as fp16 parts ``s{k}``: the trained s is written
  there (same bytes, same format, kernels unchanged); lowrank stores U·diag(s) in fp16 and no
  s, so m is folded into U (same bytes).
* group scales (Delta-CoMe only, ``cfg.distill_scales``): the fp16 group scales of the packed
  factors (Vᵀ's and Uᵀ's ``QuantPart`` scales) are trained too, each as scale₀·m with its own
  multiplier m (init 1), beside the singular values' multipliers. The student decodes Û and V̂
  from the stored codes and zeros as the reference path's ``dequantize`` does, with the scaled
  scales (``_QuantFactor``), so with every m = 1 it is the reference path's Δ̂. The trained
  scales are written back as fp16 into the same parts (``set_quant_factors``): same bytes, same
  format; codes and zeros unchanged.
* codes (Delta-CoMe only, ``cfg.distill_codes``): quantization-aware training of the packed
  factors' codes themselves. Each stored code gets a latent float copy (init: the code); the
  student decodes ``(clamp(round(latent), 0, 2^b − 1) − zero) · scale`` with a straight-through
  round (the gradient passes the rounding unchanged), so a code moves to a neighbouring level
  only once the loss has pushed its latent across the half-way point, i.e. after a sustained
  gradient of one sign. The stored grid (scales, zeros, bit width) is kept, and the rounded
  codes are written back into the same parts (same bytes, same format, kernels unchanged).
  With ``distill_scales`` the group scales train beside them. Training holds ~24 bytes per code
  (latent, gradient, AdamW's two moments, the zero point, the guard's initial copy): a 7B delta
  at 1 bit holds ~3.5 G codes, so this is for models whose deltas fit on the device whole.

Matrices a budget left without a delta use the base weight in the student (as in the compressed
model); tensors stored whole (norms, raw embeddings) are the fine-tune's. The loss is
``cfg.distill_loss``: 'kl' (KL(teacher ‖ student) of the next-token distributions, mean per
token) or 'mse' (on the logits, the BitDelta paper's). A held-out eighth of the calibration
sequences measures the loss before and after training; if training did not lower it, the
initial scales are kept (a guard against divergence)."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..format import DeltaFile, DeltaWriter, PackedTensor
from ..kernels.reference import code_offsets, scale_offsets, unpack_rows
from ..nn.delta import LowRankDelta, lowrank_blocks, lowrank_dense, read_delta
from .bitdelta import set_bitdelta_scale
from .core import CompressedDelta, QuantPart, RawPart, write_delta

LOSSES = ("kl", "mse")
# default learning rates per parametrization: BitDelta's α (absolute; the paper's 1e-4) and the
# low-rank multipliers m (relative; on the tiny zoo, 200 steps, 1e-3 moved them too little,
# 3e-2 and 1e-1 ended level: docs/notes/2026-11-22-quality.md, session 6). The group scales'
# multipliers (relative too, ``distill_scales``) start at the singular values' 3e-2, not tuned:
# one CPU smoke run on the tiny zoo (code task, 200 steps, KL on held-out task text; singular
# values alone 0.0538 at 1 bit, 0.1003 at 0.25) gave 0.0578 / 0.0873 at 3e-2 and 0.0527 /
# 0.0899 at 1e-2 — to be measured on the real zoo. ``cfg.distill_lr``, when given, sets all.
DEFAULT_LR = {"bitdelta": 1e-4, "low_rank": 3e-2, "group_scales": 3e-2}
# the codes' latents move in code units (one level = 1.0; a code flips after its latent has
# travelled 0.5): with AdamW's ~lr per step and the cosine decay, 200 steps move a latent by at
# most ~3 levels at 3e-2 (``cfg.distill_codes_lr`` sets it; ``distill_lr`` does not). Session 14,
# CPU `small` zoo, format task, 200 problems, 200 steps (bench/results/quality_cpu_small/s14):
# at 0.125 bit 1e-2 / 3e-2 / 1e-1 kept 80.0 / 83.1 / 75.0 % (KL 0.098 / 0.090 / 0.152; group
# scales alone 73.1 %, 0.126); at 0.25 bit 93.1 / 95.6 / 92.5 % (scales alone 92.5 %). At 1e-1
# the calibration hold-out still improved while the task text's KL rose: over-fitting the
# calibration sequences, which the hold-out guard does not see
DEFAULT_CODES_LR = 3e-2
BATCH = 4  # sequences per step (the paper's)


# Both parametrizations take W_base from the parametrized tensor itself (``w``): the student's
# weight is overwritten with the base's before registering, so the student holds one copy of
# each matrix, not the fine-tune's plus the base's. ``base`` is given only for a weight tied to
# another module (its tensor must keep the fine-tune's values for the other use).


class _ScaledSign(nn.Module):
    """W = W_base + α·sign(Δ), the signs kept as one bool per weight."""

    def __init__(self, codes: torch.Tensor, alpha: float, base: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("positive", codes.to(torch.bool))  # code 1: +α, code 0: −α
        self.register_buffer("base", base)
        self.alpha = nn.Parameter(torch.tensor(float(alpha), dtype=torch.float32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        b = w if self.base is None else self.base
        a = self.alpha.to(b.dtype)
        return torch.where(self.positive, b + a, b - a)

    def trained(self) -> list[nn.Parameter]:
        return [self.alpha]


class _ScaledLowRank(nn.Module):
    """W = W_base + Û·diag(s₀·m)·V̂ᵀ (input permutation undone): the reference path's
    reconstruction with a trainable per-rank multiplier m. ``delta``: a ``LowRankDelta`` (Û, V̂
    fixed) or a ``_GroupScaledLowRank`` (Û, V̂ decoded with trainable group scales)."""

    def __init__(self, delta: nn.Module, base: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("base", base)
        self.delta = delta  # nn.delta.LowRankDelta, float32
        self.mult = nn.Parameter(torch.ones_like(delta.s, dtype=torch.float32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        b = w if self.base is None else self.base
        d = self.delta.dense(self.delta.s.float() * self.mult)
        return (b.float() + d).to(b.dtype)

    def trained(self) -> list[nn.Parameter]:
        """The singular values' multipliers first, then the group scales' (if any)."""
        extra = self.delta.trained() if isinstance(self.delta, _GroupScaledLowRank) else []
        return [self.mult, *extra]


class _QuantFactor(nn.Module):
    """One packed factor of a low-rank block as the file stores it (Vᵀ [r, in] or Uᵀ [r, out]),
    decoded as the reference path's ``dequantize`` does, with every stored group scale times a
    multiplier (init 1: exactly the stored scales), trainable when ``scales``. Without
    ``codes`` the codes and zeros stay fixed: their offsets (code − zero, float32: the memory of
    the decoded factor that the singular values' path keeps) are unpacked once and a step only
    multiplies them by the scales. With ``codes`` each code has a trainable latent (init: the
    code) that is rounded onto the grid on the way in, straight through (module docstring)."""

    def __init__(self, packed: PackedTensor, device: torch.device, scales: bool = True, codes: bool = False):
        super().__init__()
        if packed.indices is not None:
            raise ValueError(f"{packed.info.name}: a 2:4 sparse factor has no group scales or dense codes to distill")
        self.info = packed.info
        self.levels = (1 << packed.info.bits) - 1
        self.register_buffer("scales", packed.scales.to(device, copy=True))  # stored dtype (fp16)
        z = None if packed.zeros is None else packed.zeros.to(device)
        offsets = code_offsets(PackedTensor(info=packed.info, codes=packed.codes.to(device), scales=self.scales, zeros=z))
        if codes:
            stored = unpack_rows(packed.codes.to(device), packed.info.code_cols, packed.info.bits).to(torch.float32)
            self.register_buffer("zero", stored - offsets)  # each code's zero point, float32
            self.latent = nn.Parameter(stored)
            self.register_buffer("offsets", None)
        else:
            self.register_buffer("offsets", offsets)
            self.latent = None
        mult = torch.ones(packed.scales.shape, dtype=torch.float32, device=device)
        if scales:
            self.mult = nn.Parameter(mult)
        else:
            self.register_buffer("mult", mult)

    def scaled(self) -> torch.Tensor:
        """The trained scales, float32 (differentiable in the multipliers)."""
        return self.scales.float() * self.mult

    def stored(self) -> torch.Tensor:
        """The trained scales as the file would store them (the stored scales' dtype)."""
        return self.scaled().detach().to(self.scales.dtype)

    def codes(self) -> torch.Tensor:
        """The trained codes as the student decodes them and the file will store them (float32
        levels in [0, 2^b − 1])."""
        if self.latent is None:
            raise ValueError(f"{self.info.name}: its codes are not trained")
        return self.latent.detach().clamp(0, self.levels).round()

    def forward(self) -> torch.Tensor:
        if self.latent is None:
            offsets = self.offsets
        else:
            # straight through the round and the clamp alike: torch's clamp passes no gradient
            # at its bounds, which would pin every code at 0 or 2^b − 1 (all 1-bit codes, many
            # 2-bit ones) where it is
            lat = self.latent
            offsets = lat + (lat.detach().clamp(0, self.levels).round() - lat.detach()) - self.zero
        return scale_offsets(self.info, offsets, self.scaled())

    @torch.no_grad()
    def project_(self) -> None:
        """Keep each latent within half a level of the grid ([−0.5, 2^b − 0.5]): beyond it the
        code no longer changes, and a latent left to drift there would have to travel back
        before its code could move the other way."""
        if self.latent is not None:
            self.latent.clamp_(-0.5, self.levels + 0.5)


class _RawFactor(nn.Module):
    """A factor stored raw (fp16): fixed, decoded as the reference path does (to float32)."""

    def __init__(self, t: torch.Tensor, device: torch.device):
        super().__init__()
        self.register_buffer("value", t.to(device, torch.float32, copy=True))

    def forward(self) -> torch.Tensor:
        return self.value


class _GroupScaledLowRank(nn.Module):
    """A low-rank delta Û·diag(s)·V̂ᵀ whose packed factors decode with trainable group scales;
    ``LowRankDelta``'s interface (``s``, ``perm``, ``u``, ``vt``, ``dense(s)``). Block k's
    factors are ``us[k]`` (U, or Uᵀ where ``transposed[k]``) and ``vts[k]``, in ``cd.blocks``'s
    order (the scratch file is written from it)."""

    def __init__(self, us: list[nn.Module], transposed: list[bool], s: torch.Tensor, vts: list[nn.Module], perm: torch.Tensor | None):
        super().__init__()
        self.us, self.vts, self.transposed = nn.ModuleList(us), nn.ModuleList(vts), list(transposed)
        self.register_buffer("s", s)
        self.register_buffer("perm", None if perm is None else perm.long())

    @property
    def u(self) -> torch.Tensor:
        return torch.cat([f().T if t else f() for f, t in zip(self.us, self.transposed, strict=True)], 1)

    @property
    def vt(self) -> torch.Tensor:
        return torch.cat([f() for f in self.vts], 0)

    def dense(self, s: torch.Tensor | None = None) -> torch.Tensor:
        return lowrank_dense(self.u, self.s if s is None else s, self.vt, self.perm)

    def quant_factors(self) -> list[tuple[int, str, _QuantFactor]]:
        """(block index, 'u' or 'vt', factor) of every packed factor (those with group scales)."""
        every = [(k, "u", f) for k, f in enumerate(self.us)] + [(k, "vt", f) for k, f in enumerate(self.vts)]
        return [(k, w, f) for k, w, f in every if isinstance(f, _QuantFactor)]

    def trained(self) -> list[nn.Parameter]:
        """The group scales' multipliers, then the latent codes (those trained)."""
        scales = [f.mult for _, _, f in self.quant_factors() if isinstance(f.mult, nn.Parameter)]
        return scales + [f.latent for _, _, f in self.quant_factors() if f.latent is not None]


def _group_scaled(f: DeltaFile, entry: dict[str, Any], device: torch.device, scales: bool = True, codes: bool = False) -> _GroupScaledLowRank:
    """``nn.delta.read_delta``'s walk over a low-rank entry's blocks, with each packed factor
    kept packed (``_QuantFactor``, its scales and / or codes trainable) instead of decoded once."""

    def factor(name: str) -> nn.Module:
        return _RawFactor(f.raw(name), device) if f.info(name).is_raw else _QuantFactor(f.packed(name), device, scales, codes)

    us, transposed, ss, vts = [], [], [], []
    for u_name, t, s_name, vt_name in lowrank_blocks(entry):
        us.append(factor(u_name))
        transposed.append(t)
        vts.append(factor(vt_name))
        r = f.info(vt_name).shape[0]
        ss.append(f.raw(s_name).to(device, torch.float32) if s_name else torch.ones(r, device=device))
    perm = f.raw(entry["input_perm"]).to(device, copy=True) if entry.get("input_perm") else None
    return _GroupScaledLowRank(us, transposed, torch.cat(ss), vts, perm)


@dataclass
class DistillResult:
    loss: str  # 'kl' or 'mse'
    before: float  # held-out loss with the initial scales
    after: float  # ... with the trained ones (the guard compares the two)
    kept: bool  # True: the trained scales were written; False: the initial ones were kept
    steps: int
    lr: float
    matrices: int
    seconds: float
    checkpointed: bool = False  # the layers' activations were recomputed in the backward pass
    scales: bool = False  # the packed factors' group scales were trained too (distill_scales)
    scales_lr: float | None = None  # their multipliers' learning rate
    codes: bool = False  # the packed factors' codes were trained too (distill_codes)
    codes_lr: float | None = None  # their latents' learning rate
    codes_changed: float | None = None  # share of the trained codes written with a new value

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def distill_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """'mse' on the logits, or 'kl': KL(teacher ‖ student) of the next-token distributions,
    summed over the vocabulary, mean over tokens."""
    s, t = student.float(), teacher.float()
    if kind == "mse":
        return nn.functional.mse_loss(s, t)
    if kind == "kl":
        lt, ls = torch.log_softmax(t, -1), torch.log_softmax(s, -1)
        return (lt.exp() * (lt - ls)).sum(-1).mean()
    raise ValueError(f"distill loss must be one of {', '.join(LOSSES)}, not '{kind}'")


def _checkpointable(model: nn.Module) -> bool:
    """Whether the student can recompute its layers in the backward pass without changing the
    loss: a transformers model that supports gradient checkpointing (it needs train mode) and
    has no active dropout (train mode would switch it on)."""
    if not getattr(model, "supports_gradient_checkpointing", False) or not (hasattr(model, "activation_checkpointing_enable") or hasattr(model, "gradient_checkpointing_enable")):
        return False
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        return False
    cfg = getattr(model, "config", None)
    return all(float(getattr(cfg, k, 0.0) or 0.0) == 0.0 for k in ("attention_dropout", "hidden_dropout", "dropout"))


def _lowrank_modules(
    deltas: dict[str, CompressedDelta], device: torch.device, workdir: str | Path | None, group_scales: bool = False, codes: bool = False
) -> dict[str, nn.Module]:
    """The reference path's LowRankDelta (float32, on ``device``) of each low-rank delta: the
    parts go through a scratch .dpk and back, so Û and V̂ are dequantized as the file stores
    them (codes, group scales and zeros, the act-order permutation). ``group_scales`` and / or
    ``codes``: a ``_GroupScaledLowRank`` instead, which decodes them on each call with trainable
    scales and / or codes."""
    if not deltas:
        return {}
    with tempfile.TemporaryDirectory(prefix="deltapack-distill-", dir=workdir) as td:
        path = Path(td) / "scratch.dpk"
        with DeltaWriter(path) as w:
            entries = {name: write_delta(w, name, cd, {}) for name, cd in deltas.items()}
            w.finish(method="scratch", base_name="", finetune_name="", deltas=list(entries.values()))
        f = DeltaFile(path)
        if group_scales or codes:
            return {name: _group_scaled(f, e, device, group_scales, codes) for name, e in entries.items()}
        return {name: read_delta(f, e, device, torch.float32) for name, e in entries.items()}


def set_lowrank_scales(cd: CompressedDelta, delta: nn.Module, s: torch.Tensor) -> None:
    """Write trained singular values ``s`` (all blocks, concatenated) into a low-rank delta:
    as the fp16 ``s{k}`` parts where the blocks have them, else folded into the fp16 U. Updates
    ``cd.approx`` to what the reference path reconstructs from the new parts."""
    s = s.detach().float().cpu()
    us, ss = [], []
    start = 0
    for u_name, s_name, v_name in cd.blocks:
        v = cd.parts[v_name]
        r = (v.codes if isinstance(v, QuantPart) else v.tensor).shape[0]
        sl = slice(start, start + r)
        start += r
        if s_name is not None:
            old = cd.parts[s_name]
            assert isinstance(old, RawPart)
            new = s[sl].to(old.tensor.dtype)
            cd.parts[s_name] = RawPart(new)
            us.append(delta.u[:, sl].cpu())
            ss.append(new.float())
        else:
            u = cd.parts[u_name]
            if not (isinstance(u, RawPart) and not u_name.startswith("ut")):
                raise ValueError(f"block ({u_name}, {v_name}) has no singular values and a quantized U: nothing to write trained scales into")
            new_u = (u.tensor.float() * s[sl]).to(u.tensor.dtype)
            cd.parts[u_name] = RawPart(new_u)
            us.append(new_u.float())
            ss.append(torch.ones(r))
    assert start == s.numel(), (start, s.numel())
    perm = delta.perm.cpu() if delta.perm is not None else None
    cd.approx = LowRankDelta(torch.cat(us, 1), torch.cat(ss), delta.vt.cpu(), perm).dense()


@torch.no_grad()
def set_quant_factors(cd: CompressedDelta, delta: _GroupScaledLowRank) -> tuple[float, float | None]:
    """Write the trained group scales (stored scale × multiplier, rounded to the stored dtype,
    fp16) and, where trained, the codes (the latents rounded to the grid, uint8) of ``delta``'s
    packed factors into the ``QuantPart``s of ``cd``'s blocks: same shapes, same bytes; zeros
    and bit widths untouched. ``delta`` is then reset to what was written (scales the new ones,
    multipliers 1, latents the written codes), so that its ``u``/``vt`` decode as the file
    will: call ``set_lowrank_scales`` after this one to write s and update ``cd.approx``. The
    kernels need nothing more: the rank-major copy of Uᵀ they read is re-packed from the
    stored codes at load (kernels/packed.py ``rank_major_codes``) and reads Uᵀ's scales from
    the part as stored. Returns the relative change of all the scales (norm of the change /
    norm of the old) and the share of the trained codes that changed (None: none trained)."""
    diff = norm = 0.0
    moved = total = 0
    for k, which, fac in delta.quant_factors():
        u_name, _, v_name = cd.blocks[k]
        name = u_name if which == "u" else v_name
        part = cd.parts[name]
        if not isinstance(part, QuantPart) or part.scales.numel() != fac.scales.numel() or tuple(part.codes.shape) != (fac.info.rows, fac.info.code_cols):
            raise ValueError(f"part '{name}' is not the quantized factor whose {fac.scales.numel()} group scales were trained")
        new = fac.stored()
        old = fac.scales.float()
        diff += float((new.float() - old).square().sum())
        norm += float(old.square().sum())
        codes = part.codes
        if fac.latent is not None:
            c = fac.codes()
            codes = c.to(torch.uint8).cpu()
            moved += int((codes != part.codes).sum())
            total += codes.numel()
            fac.latent.copy_(c)
        cd.parts[name] = QuantPart(codes=codes, bits=part.bits, scales=new.cpu().reshape(part.scales.shape).to(part.scales.dtype), zeros=part.zeros, zero_point=part.zero_point, group_size=part.group_size)
        fac.scales.copy_(new)
        fac.mult.fill_(1.0)
    return math.sqrt(diff / max(norm, 1e-30)), (moved / total if total else None)


def distill(
    base_dir: str | Path,
    ft_dir: str | Path,
    deltas: dict[str, CompressedDelta],
    cfg,
    device: torch.device,
    *,
    without_delta: list[str] | tuple[str, ...] = (),
    tokens: torch.Tensor | None = None,
    workdir: str | Path | None = None,
) -> DistillResult:
    """Train the scales of every delta in ``deltas`` (BitDelta or low-rank; updated in place:
    parts, ``approx``, ``info``), with ``cfg.distill_scales`` the low-rank deltas' group scales
    too. ``without_delta``: matrices the compressed model takes from the base. ``tokens``: the
    calibration sequences (made from ``cfg`` when None)."""
    from transformers import AutoModelForCausalLM

    from .hf import ModelDir

    t0 = time.perf_counter()
    if tokens is None:
        from .calib import load_tokenizer, read_calib_text, sample_tokens, tokens_from_text

        if cfg.calib:
            tokens = tokens_from_text(load_tokenizer(ft_dir), read_calib_text(cfg.calib), cfg.n_samples, cfg.seq_len, cfg.seed)
        else:
            tokens = sample_tokens(ft_dir, cfg.n_samples, cfg.seq_len, cfg.seed, device=device)
    kind = getattr(cfg, "distill_loss", "kl")
    if kind not in LOSSES:
        raise ValueError(f"distill loss must be one of {', '.join(LOSSES)}, not '{kind}'")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    teacher = AutoModelForCausalLM.from_pretrained(str(ft_dir), dtype=dtype).to(device).eval()
    student = AutoModelForCausalLM.from_pretrained(str(ft_dir), dtype=dtype).to(device)
    student.requires_grad_(False)
    base = ModelDir(base_dir)
    params = dict(student.named_parameters())
    with torch.no_grad():
        for name in without_delta:
            if name in params:
                params[name].copy_(base.get(name).to(device, dtype))

    forms = {"bitdelta" if cd.form == "dense" else "low_rank" for cd in deltas.values()}
    for name, cd in deltas.items():
        if cd.form == "dense":
            part = cd.parts.get("delta")
            if not (isinstance(part, QuantPart) and part.bits == 1 and "alpha" in cd.info):
                raise ValueError(f"{name}: scale distillation needs a BitDelta (1-bit, one scale) or a low-rank delta")
        elif cd.form != "low_rank":
            raise ValueError(f"{name}: scale distillation does not apply to form '{cd.form}'")
    group_scales = bool(getattr(cfg, "distill_scales", False))
    codes = bool(getattr(cfg, "distill_codes", False))
    if group_scales or codes:
        flag, what = ("distill_scales", "group scales") if group_scales else ("distill_codes", "codes")
        for name, cd in deltas.items():
            if cd.form != "low_rank" or not any(isinstance(cd.parts[p], QuantPart) for u, _, v in cd.blocks for p in (u, v)):
                raise ValueError(f"{name}: {flag} trains the {what} of quantized low-rank factors (delta-come); this delta has none")
    lowrank = _lowrank_modules({n: cd for n, cd in deltas.items() if cd.form == "low_rank" and n in params}, device, workdir, group_scales, codes)
    users: dict[int, int] = {}  # tensors named more than once are tied to another module
    for _, t in student.named_parameters(remove_duplicate=False):
        users[id(t)] = users.get(id(t), 0) + 1
    pars: dict[str, nn.Module] = {}
    for name, cd in deltas.items():
        if name not in params:
            continue  # tied weights: distilled through their owner
        mod_name, _, pname = name.rpartition(".")
        b = base.get(name).to(device, dtype)
        tied = users[id(params[name])] > 1
        if not tied:  # the parametrized tensor becomes W_base: one copy of the matrix in the student
            with torch.no_grad():
                params[name].copy_(b)
            b = None
        if cd.form == "dense":
            p: nn.Module = _ScaledSign(cd.parts["delta"].codes.to(device), cd.info["alpha"], base=b)
        else:
            p = _ScaledLowRank(lowrank[name], base=b)
        parametrize.register_parametrization(student.get_submodule(mod_name), pname, p, unsafe=True)
        pars[name] = p
    primary = [p.trained()[0] for p in pars.values()]  # α or the singular values' multipliers
    factors = [f for p in pars.values() if isinstance(p, _ScaledLowRank) and isinstance(p.delta, _GroupScaledLowRank) for _, _, f in p.delta.quant_factors()]
    scale_mults = [f.mult for f in factors if isinstance(f.mult, nn.Parameter)]  # the group scales' (distill_scales)
    latents = [f.latent for f in factors if f.latent is not None]  # the codes' (distill_codes)
    trained = primary + scale_mults + latents
    initial = [t.detach().clone() for t in trained]
    lr = cfg.distill_lr if cfg.distill_lr is not None else min((DEFAULT_LR[f] for f in forms), default=DEFAULT_LR["bitdelta"])
    scales_lr = (cfg.distill_lr if cfg.distill_lr is not None else DEFAULT_LR["group_scales"]) if group_scales else None
    codes_lr = (getattr(cfg, "distill_codes_lr", None) or DEFAULT_CODES_LR) if codes else None

    n = len(tokens)
    n_hold = n // 8 if n >= 8 else 0
    held, train = (tokens[:n_hold], tokens[n_hold:]) if n_hold else (tokens, tokens)

    def held_loss() -> float:
        tot = 0.0
        with torch.no_grad():
            for i in range(0, len(held), BATCH):
                x = held[i : i + BATCH].to(device)
                tot += float(distill_loss(kind, student(x).logits, teacher(x).logits)) * len(x)
        return tot / len(held)

    before = held_loss()
    steps = cfg.distill_steps
    ckpt = bool(getattr(cfg, "distill_checkpoint", True) and trained and steps > 0 and _checkpointable(student))
    if ckpt:  # only the layers' inputs are kept for the backward pass
        if hasattr(student, "activation_checkpointing_enable"):  # transformers ≥ 5.x's name
            student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if trained and steps > 0:
        student.train(ckpt)  # transformers checkpoints in train mode only (no dropout: _checkpointable)
        groups = [{"params": primary, "lr": lr}] + ([{"params": scale_mults, "lr": scales_lr}] if scale_mults else [])
        groups += [{"params": latents, "lr": codes_lr}] if latents else []
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
        g = torch.Generator().manual_seed(cfg.seed)
        for _ in range(steps):
            idx = torch.randint(0, len(train), (min(BATCH, len(train)),), generator=g)
            x = train[idx].to(device)
            with torch.no_grad():
                target = teacher(x).logits
            loss = distill_loss(kind, student(x).logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for f in factors:
                f.project_()
        student.eval()
    after = held_loss() if trained and steps > 0 else before
    kept = math.isfinite(after) and after < before and all(bool(torch.isfinite(t).all()) for t in trained)
    # the group scales are written as fp16: a trained one out of its range is a divergence too
    kept = kept and all(bool(torch.isfinite(f.stored()).all()) for f in factors)
    if not kept:
        with torch.no_grad():
            for t, v in zip(trained, initial):
                t.copy_(v)

    moved = total = 0
    for name, p in pars.items():
        cd = deltas[name]
        if cd.form == "dense":
            set_bitdelta_scale(cd, float(p.alpha.detach()))
        elif kept:  # unchanged parts otherwise: bit for bit what was compressed
            s0 = p.delta.s.float()
            s = s0 * p.mult.detach()
            if isinstance(p.delta, _GroupScaledLowRank):  # first: set_lowrank_scales reads Û, V̂ as written
                n_codes = sum(f.latent.numel() for _, _, f in p.delta.quant_factors() if f.latent is not None)
                cd.info["scale_change"], changed = set_quant_factors(cd, p.delta)
                if changed is not None:
                    cd.info["codes_changed"] = changed
                    moved += changed * n_codes
                    total += n_codes
            with torch.no_grad():
                set_lowrank_scales(cd, p.delta, s)
            cd.info["s_change"] = float((s - s0).norm() / s0.norm().clamp(min=1e-30))
    changed_share = (moved / total if total else 0.0) if codes else None
    res = DistillResult(kind, before, after, kept, steps, lr, len(pars), time.perf_counter() - t0, ckpt, group_scales, scales_lr, codes, codes_lr, changed_share)
    del teacher, student, pars, lowrank
    return res


def distill_bitdelta(base_dir: str | Path, ft_dir: str | Path, deltas: dict[str, CompressedDelta], cfg, device: torch.device) -> dict[str, float]:
    """Train the α of every BitDelta matrix in ``deltas`` (updated in place); returns them."""
    distill(base_dir, ft_dir, deltas, cfg, device)
    return {name: float(cd.info["alpha"]) for name, cd in deltas.items()}
