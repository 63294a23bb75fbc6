"""(base model, fine-tuned model) → .dpk, streamed one decoder layer at a time.

Peak memory is about one layer of each model, the calibration hidden states and the method's
working set: tensors are read memory-mapped from the safetensors files as each layer comes up.
With a bit budget, every stored byte counts: tensors kept raw (norms, biases, and embeddings
unless compressed) are paid for first and the matrices share the rest."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..format import DeltaWriter, fingerprint
from .allocate import Option, allocate
from .bitdelta import compress_bitdelta
from .core import CompressedDelta, RawPart, empty_delta, rel_error, write_delta
from .delta_come import compress_delta_come
from .deltazip import compress_deltazip
from .hf import ModelDir, check_pair, layer_index
from .lowrank import compress_lowrank, svd
from .plan import DELTA_COME_SCHEDULE, LowRankPlan, fit_lowrank_plan, lowrank_plan_bytes, parse_schedules, quantized_bytes, sparse24_bytes
from .rtn import compress_rtn, quantize_rtn, quantize_sign

METHODS = ("delta-come", "bitdelta", "deltazip", "lowrank", "rtn")
CALIBRATED = ("delta-come", "deltazip")
DISTILLED = ("bitdelta", "delta-come", "lowrank")  # methods whose scales --distill can train
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "wte", "embed_out")


@dataclass
class CompressConfig:
    method: str = "delta-come"
    bits_per_param: float | None = None  # None: the method's natural rate (delta-come/lowrank: 1.0)
    plan: str = "fixed"  # delta-come: 'fixed' (schedule per shape) or 'auto' (allocated by error)
    # delta-come bit groups: bits:max_rank, the last one fills the budget; '|' separates
    # alternatives (the fixed plan takes the first, --plan auto chooses per matrix)
    schedule: str = "8:2,3:32,2"
    group_size: int = 128
    # delta-come: factor Δ by the SVD of Δ·M^½, M = H + whiten·mean(diag H)·I (activation-aware:
    # the best rank-r fit of the calibration outputs, blended with the weights') instead of
    # the SVD of Δ; None: plain SVD (Delta-CoMe's). refit_blend: γ of Û's re-fit metric.
    whiten: float | None = None
    refit_blend: float = 10.0
    bits: int | None = None  # rtn / deltazip bit width when no budget is given
    embeddings: str = "compress"  # 'compress' (like any matrix, no calibration) or 'raw' (stored whole)
    # how a budgeted allocation (rtn, bitdelta, deltazip, delta-come --plan auto) weighs one
    # matrix's relative error against another's: 'size' (by its parameter count) or 'kl' (also
    # by the KL to the fine-tune that leaving its delta out causes on calibration text,
    # measured once per matrix with the whole fine-tune loaded: see kl_weights)
    sensitivity: str = "size"
    calib: str | None = None  # .txt / .jsonl; None: sample from the fine-tune
    n_samples: int = 128
    seq_len: int = 2048
    damp: float = 0.01
    # bitdelta, delta-come, lowrank: train the scales (BitDelta's α, the low-rank deltas'
    # singular values) against the fine-tune's logits on the calibration tokens (distill.py)
    distill: bool = False
    distill_steps: int = 200
    distill_lr: float | None = None  # None: distill.DEFAULT_LR (bitdelta 1e-4, low-rank 3e-2)
    # delta-come with distill: train the packed singular vectors' fp16 group scales too (a
    # relative multiplier per stored scale, written back in the same bytes; distill.py)
    distill_scales: bool = False
    # delta-come with distill: quantization-aware training of the packed singular vectors' codes
    # (a latent per code, rounded straight through onto the stored grid; written back in the same
    # bytes; distill.py). distill_codes_lr: the latents' learning rate in code levels (None:
    # distill.DEFAULT_CODES_LR)
    distill_codes: bool = False
    distill_codes_lr: float | None = None
    # 'kl': KL(fine-tune ‖ compressed) of the next-token distributions; 'mse': of the logits (the
    # BitDelta paper's). KL ended closer to the fine-tune on held-out text on two tiny zoos
    # (docs/notes/2026-11-22-quality.md, session 6)
    distill_loss: str = "kl"
    # recompute each decoder layer's activations in the backward pass instead of keeping them
    # (transformers' gradient checkpointing; for models without active dropout): at 7B, 4 × 2048
    # tokens keep ~40 GB of activations otherwise
    distill_checkpoint: bool = True
    device: str | None = None
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method '{self.method}' (choose from {', '.join(METHODS)})")
        if self.plan not in ("fixed", "auto"):
            raise ValueError(f"plan must be 'fixed' or 'auto', not '{self.plan}'")
        if self.plan == "auto" and self.method != "delta-come":
            raise ValueError("--plan auto applies to delta-come only")
        if self.whiten is not None and (self.method != "delta-come" or not self.whiten >= 0):
            raise ValueError(f"--whiten takes a blend ≥ 0 and applies to delta-come only (got {self.whiten} with {self.method})")
        if not self.refit_blend >= 0:
            raise ValueError(f"refit_blend must be ≥ 0, got {self.refit_blend}")
        if self.sensitivity not in ("size", "kl"):
            raise ValueError(f"sensitivity must be 'size' or 'kl', not '{self.sensitivity}'")
        if self.embeddings not in ("compress", "raw"):
            raise ValueError("embeddings must be 'compress' or 'raw'")
        if self.bits_per_param is not None and not (0 < self.bits_per_param <= 16):
            raise ValueError(f"bits per param must be in (0, 16], got {self.bits_per_param}")
        if self.distill and self.method not in DISTILLED:
            raise ValueError(f"--distill applies to {', '.join(DISTILLED)} only, not {self.method}")
        if self.distill_scales and not self.distill:
            raise ValueError("--distill-scales trains the group scales within scale distillation: it needs --distill")
        if self.distill_scales and self.method != "delta-come":
            raise ValueError(f"--distill-scales applies to delta-come only (its quantized singular vectors' group scales), not {self.method}")
        if self.distill_codes and not self.distill:
            raise ValueError("--distill-codes trains the codes within scale distillation: it needs --distill")
        if self.distill_codes and self.method != "delta-come":
            raise ValueError(f"--distill-codes applies to delta-come only (its quantized singular vectors' codes), not {self.method}")
        if self.distill_codes_lr is not None and not self.distill_codes_lr > 0:
            raise ValueError(f"distill_codes_lr must be > 0, got {self.distill_codes_lr}")
        if self.distill_loss not in ("kl", "mse"):
            raise ValueError(f"distill loss must be 'kl' or 'mse', not '{self.distill_loss}'")
        if self.bits is not None and self.bits not in (1, 2, 3, 4, 8):
            raise ValueError(f"bits must be one of 1, 2, 3, 4, 8, got {self.bits}")
        if self.method == "deltazip" and self.bits == 1:
            raise ValueError("deltazip supports 2, 3, 4 or 8 bits")
        parse_schedules(self.schedule)


@dataclass
class Target:
    name: str
    shape: list[int]
    kind: str  # 'matrix' (compressed), 'raw' (stored whole, op replace)
    calibrated: bool = False  # has a layer-input Hessian

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class CompressReport:
    path: str
    method: str
    seconds: float
    params: int
    stored_bytes: int
    bits_per_param: float
    matrices: list[dict[str, Any]] = field(default_factory=list)


def _is_embedding(name: str) -> bool:
    return any(f"{e}." in name or name.startswith(e) for e in EMBEDDING_NAMES)


def plan_targets(base: ModelDir, ft: ModelDir, cfg: CompressConfig) -> list[Target]:
    """Every tensor that gets an entry, in file order: layers first, then the rest. Small
    tensors identical in both models get none (the base is used unchanged)."""
    layers, rest = ft.layer_groups()
    out: list[Target] = []
    for name in [n for _, names in layers.items() for n in names] + rest:
        shape = ft.shape(name)
        matrix = len(shape) == 2 and name.endswith(".weight")
        if matrix and _is_embedding(name):
            kind = "matrix" if cfg.embeddings == "compress" else "raw"
        else:
            kind = "matrix" if matrix else "raw"
        if kind == "raw" and torch.equal(base.get(name), ft.get(name)):
            continue
        out.append(Target(name, shape, kind, calibrated=matrix and layer_index(name) is not None and cfg.method in CALIBRATED))
    return out


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (looked up once: find_library runs ldconfig)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def _release_memory() -> None:
    """Hand freed heap memory back to the OS after a layer (glibc keeps freed mid-size blocks
    in the heap, so a long compression's RSS would creep up by a few MB per layer)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _device(cfg: CompressConfig) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Progress:
    def __init__(self, enabled: bool, total: int, label: str):
        self.p = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self.p.start()
            self.task = self.p.add_task(label, total=total)

    def advance(self, n: int = 1, label: str | None = None) -> None:
        if self.p:
            self.p.update(self.task, advance=n, **({"description": label} if label else {}))

    def close(self) -> None:
        if self.p:
            self.p.stop()


# ---------------------------------------------------------------------------- menus (budgets)
def _dc_error_model(delta: torch.Tensor, s: torch.Tensor, Vh: torch.Tensor, group_size: int) -> Callable[[LowRankPlan], float]:
    """Squared error of a delta-come plan, estimated from the spectrum: dropped components
    cost σ², kept ones σ²·c_b where c_b is the relative error of b-bit group RTN measured on
    this matrix's own singular vectors (×2: both U and V are quantized; 1 bit on the sign
    grid that Delta-CoMe's 1-bit groups use)."""
    s2 = (s.float() ** 2).cpu()
    k = min(64, Vh.shape[0])
    c = {}
    v = Vh[:k].float()
    for b in (1, 2, 3, 4, 8):
        q = quantize_sign(v, group_size) if b == 1 else quantize_rtn(v, b, group_size).dequantize().to(v.device)
        c[b] = 2 * float(((q - v).norm(dim=1) ** 2).mean())
    csum = torch.cat([torch.zeros(1), torch.cumsum(s2, 0)])

    def err(plan: LowRankPlan) -> float:
        e, start = 0.0, 0
        for g in plan.groups:
            e += c[g.bits] * float(csum[start + g.rank] - csum[start])
            start += g.rank
        return e + float(csum[-1] - csum[start])

    return err


AUTO_BUDGETS = (0.03125, 0.0625, 0.125, 0.1875, 0.25, 0.375, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)


def _menu(delta: torch.Tensor, cfg: CompressConfig, schedules, weight: float | None = None) -> list[Option]:
    """Options for one matrix with their squared errors, normalised by the matrix's own delta
    energy and weighted by its parameter count (or by ``weight``, its measured sensitivity):
    absolute errors of different matrices are not comparable in model-output terms (on the
    tiny zoo pair, allocating by absolute Frobenius error gave delta-come a KL to the
    fine-tune of 1.89 against the fixed plan's 1.39)."""
    opts = _menu_abs(delta, cfg, schedules)
    norm = (delta.numel() if weight is None else weight) / max(opts[0].error, 1e-30)
    return [Option(o.nbytes, o.error * norm, o.choice) for o in opts]


def _menu_abs(delta: torch.Tensor, cfg: CompressConfig, schedules) -> list[Option]:
    out, inp = delta.shape
    d = delta.float()
    total = float((d**2).sum())
    opts = [Option(0, total, None)]
    g = cfg.group_size
    if cfg.method == "rtn":
        for b in (1, 2, 3, 4, 8):
            q = quantize_rtn(d, b, g)
            opts.append(Option(quantized_bytes(out, inp, b, g), float(((q.dequantize().to(d.device) - d) ** 2).sum()), b))
    elif cfg.method == "bitdelta":
        a = d.abs().mean()
        from .. import _core

        opts.append(Option(_core.packed_len(out, inp, 1) + 2, total - float(a**2) * d.numel(), 1))
    elif cfg.method == "deltazip":
        for b in (2, 3, 4, 8):
            opts.append(Option(sparse24_bytes(out, inp // 2, b), _magnitude_24_error(d, b), b))
    elif cfg.method == "delta-come":
        _, s, Vh = svd(d)
        err = _dc_error_model(d, s, Vh, g)
        seen = set()
        for schedule in schedules:
            for bpp in AUTO_BUDGETS:
                plan = fit_lowrank_plan(out, inp, bpp, schedule, g)
                if plan.rank and plan not in seen:
                    seen.add(plan)
                    opts.append(Option(lowrank_plan_bytes(out, inp, plan), err(plan), plan))
    return opts


SENS_SAMPLES, SENS_LEN = 8, 512  # calibration sequences and tokens each for the drop-one KLs


@torch.no_grad()
def drop_one_kl(base: ModelDir, ft_dir: str | Path, names: list[str], tokens: torch.Tensor, dev: torch.device) -> dict[str, float]:
    """For each matrix: mean KL(fine-tune ‖ fine-tune with that matrix's delta left out) per
    token over a few calibration sequences — how much the model's output depends on it. Loads
    the whole fine-tune once; one forward per matrix."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(ft_dir), dtype=dtype).to(dev).eval()
    params = dict(model.named_parameters())
    x = tokens[:SENS_SAMPLES, :SENS_LEN].to(dev)

    def logp() -> torch.Tensor:
        return torch.log_softmax(model(input_ids=x).logits.float(), dim=-1)

    ref = logp()
    out: dict[str, float] = {}
    for name in names:
        p = params.get(name)
        if p is None:
            continue
        keep = p.detach().clone()
        p.copy_(base.get(name).to(dev, p.dtype))
        out[name] = float((ref.exp() * (ref - logp())).sum(-1).mean())
        p.copy_(keep)
    del model, ref
    return out


def kl_weights(kl: dict[str, float], numel: dict[str, int]) -> dict[str, float]:
    """Allocation weights from drop-one KLs: the geometric mean of a matrix's parameter count
    and its KL (scaled to the same total), with a floor so that no matrix weighs nothing.

    The KL alone over-spends on the matrices whose delta matters most when left out entirely:
    on the tiny zoo at 0.125-0.25 bit/param it gave the MLPs no delta at all and ended worse
    than weighting by size; the geometric mean was best or level at every budget (KL to the
    fine-tune at 1 bit: arith 0.112 → 0.068, code 0.136 → 0.091, format 0.404 → 0.203)."""
    floor = 1e-3 * max(max(kl.values(), default=0.0), 1e-12)
    w = {k: max(kl.get(k, 0.0), floor) for k in numel}
    scale = sum(numel.values()) / sum(w.values())
    return {k: math.sqrt(numel[k] * w[k] * scale) for k in numel}


def _magnitude_24_error(d: torch.Tensor, bits: int) -> float:
    """Error of magnitude 2:4 pruning + symmetric per-row RTN: the menu's cheap estimate of
    what calibrated SparseGPT reaches (it does better; the ranking is what matters)."""
    out, inp = d.shape
    if inp % 4:
        return float("inf")
    blocks = d.reshape(out, inp // 4, 4)
    keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(2, blocks.abs().topk(2, dim=2).indices, True)
    kept = torch.where(keep, blocks, torch.zeros_like(blocks)).reshape(out, inp)
    half = 2 ** (bits - 1)
    scale = (kept.abs().amax(dim=1, keepdim=True) / max(half - 1, 1)).clamp(min=1e-12).half().float()
    q = torch.clamp(torch.round(kept / scale), -half, half - 1) * scale
    q = torch.where(keep.reshape(out, inp), q, torch.zeros_like(q))
    return float(((q - d) ** 2).sum())


# ---------------------------------------------------------------------------- one matrix
_UNALLOCATED = object()


def compress_matrix(delta: torch.Tensor, H: torch.Tensor | None, cfg: CompressConfig, choice: Any, bpp: float | None, schedule) -> CompressedDelta:
    """Compress one matrix's delta. ``choice`` is the allocator's pick (bits, plan, or None
    for 'no delta') when a budget was allocated by menus, else ``_UNALLOCATED``; ``bpp`` is
    the per-matrix budget of uniformly budgeted methods."""
    shape = tuple(delta.shape)
    if choice is None:
        return empty_delta(shape, delta.device)
    if cfg.method == "delta-come":
        plan = choice if isinstance(choice, LowRankPlan) else fit_lowrank_plan(*shape, bpp if bpp is not None else 1.0, schedule, cfg.group_size)
        return compress_delta_come(delta, H, plan, damp=cfg.damp, whiten=cfg.whiten, refit_blend=cfg.refit_blend)
    if cfg.method == "lowrank":
        return compress_lowrank(delta, bpp if bpp is not None else 1.0)
    if choice is _UNALLOCATED:
        choice = None
    if cfg.method == "rtn":
        return compress_rtn(delta, choice or cfg.bits or 2, cfg.group_size)
    if cfg.method == "bitdelta":
        return compress_bitdelta(delta)
    if cfg.method == "deltazip":
        if shape[1] % 4:
            return empty_delta(shape, delta.device)
        return compress_deltazip(delta, H, choice or cfg.bits or 2, damp=cfg.damp)
    raise AssertionError(cfg.method)


# ---------------------------------------------------------------------------- the pipeline
def _calib_tokens(cfg: CompressConfig, ft_dir: str | Path, dev: torch.device) -> torch.Tensor:
    """The calibration token sequences: from ``cfg.calib``, or sampled from the fine-tune."""
    from .calib import load_tokenizer, read_calib_text, sample_tokens, tokens_from_text

    if cfg.calib:
        return tokens_from_text(load_tokenizer(ft_dir), read_calib_text(cfg.calib), cfg.n_samples, cfg.seq_len, cfg.seed)
    return sample_tokens(ft_dir, cfg.n_samples, cfg.seq_len, cfg.seed, device=dev)


def compress(base_dir: str | Path, ft_dir: str | Path, out: str | Path, cfg: CompressConfig | None = None, **overrides: Any) -> CompressReport:
    """Compress ``ft_dir``'s delta against ``base_dir`` into the .dpk ``out``."""
    cfg = cfg or CompressConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise TypeError(f"unknown option '{k}'")
        setattr(cfg, k, v)
    cfg.validate()
    t0 = time.perf_counter()
    base, ft = ModelDir(base_dir), ModelDir(ft_dir)
    check_pair(base, ft)  # before any work
    dev = _device(cfg)
    schedules = parse_schedules(cfg.schedule) if cfg.schedule else [DELTA_COME_SCHEDULE]
    schedule = schedules[0]  # the fixed plan's
    targets = plan_targets(base, ft, cfg)
    matrices = [t for t in targets if t.kind == "matrix"]
    raw_bytes = sum(ft.nbytes(t.name) for t in targets if t.kind == "raw")
    total_params = sum(t.numel for t in targets)

    # --- budget
    per_matrix_bpp: float | None = None
    tokens: torch.Tensor | None = None  # calibration tokens, made once if the allocation needs them too
    choices: dict[str, Any] = {}
    budget_note: dict[str, Any] = {}
    if cfg.bits_per_param is not None or cfg.method in ("delta-come", "lowrank"):
        bpp = cfg.bits_per_param if cfg.bits_per_param is not None else 1.0
        matrix_budget = bpp * total_params / 8 - raw_bytes
        if matrix_budget <= 0:
            raise ValueError(f"a budget of {bpp} bits/param ({bpp * total_params / 8:.0f} bytes) does not even cover the {raw_bytes} bytes of tensors stored raw; use --embeddings compress or a larger budget")
        mparams = sum(t.numel for t in matrices)
        per_matrix_bpp = matrix_budget * 8 / max(mparams, 1)
        budget_note = {"bits_per_param": bpp, "raw_bytes": raw_bytes, "matrix_bits_per_param": per_matrix_bpp}
        menu_based = cfg.method in ("rtn", "bitdelta", "deltazip") or (cfg.method == "delta-come" and cfg.plan == "auto")
        if menu_based and cfg.bits_per_param is not None:
            weights: dict[str, float] = {}
            if cfg.sensitivity == "kl":
                tokens = _calib_tokens(cfg, ft_dir, dev)
                kl = drop_one_kl(base, ft_dir, [t.name for t in matrices], tokens, dev)
                weights = kl_weights(kl, {t.name: t.numel for t in matrices})
                budget_note["sensitivity_kl"] = {k: round(v, 6) for k, v in kl.items()}
            menus = {}
            prog = _Progress(cfg.progress, len(matrices), "measuring (allocation pass)")
            for t in matrices:
                d = ft.get(t.name).to(dev, torch.float32) - base.get(t.name).to(dev, torch.float32)
                menus[t.name] = _menu(d, cfg, schedules, weights.get(t.name))
                prog.advance()
            prog.close()
            picked = allocate(menus, matrix_budget)
            choices = {k: o.choice for k, o in picked.items()}

    # --- calibration
    stream = None
    if cfg.method in CALIBRATED and any(t.calibrated for t in targets):
        from .calib import LayerStream

        tokens = tokens if tokens is not None else _calib_tokens(cfg, ft_dir, dev)
        stream = LayerStream(ft, tokens, dev)

    # --- compression pass (each delta is written as soon as it is made, unless distillation
    # needs every scale at once; the writer stages data on disk, not in memory)
    deferred: list[tuple[Target, CompressedDelta, dict[str, float]]] = []
    without_delta: list[str] = []  # matrices the budget left without a delta (the base's weight)
    deltas: list[dict[str, Any]] = []
    fingerprints: dict[str, dict[str, Any]] = {}
    report_rows: list[dict[str, Any]] = []
    by_layer: dict[int | None, list[Target]] = {}
    for t in targets:
        by_layer.setdefault(layer_index(t.name), []).append(t)
    with DeltaWriter(out) as w:

        def emit(t: Target, cd: CompressedDelta, stats: dict[str, float]) -> None:
            if cd.form == "none":
                without_delta.append(t.name)
                return
            if cfg.distill and cd.op == "add":
                deferred.append((t, cd, stats))
                return
            entry = write_delta(w, t.name, cd, stats)
            if entry is not None:
                deltas.append(entry)

        prog = _Progress(cfg.progress, len(by_layer), f"compressing ({cfg.method})")
        for li, group in by_layer.items():
            Hs: dict[str, torch.Tensor] = {}
            if stream is not None and li is not None:
                Hs = stream.hessians(stream.build_layer(li, ft.get))
            approx_weights: dict[str, torch.Tensor] = {}
            for t in group:
                b = base.get(t.name)
                fingerprints[t.name] = fingerprint(b)
                if t.kind == "raw":
                    ftt = ft.get(t.name)
                    emit(t, CompressedDelta(form="dense", op="replace", parts={"delta": RawPart(ftt)}, approx=torch.empty(0)), {})
                    continue
                delta = ft.get(t.name).to(dev, torch.float32) - b.to(dev, torch.float32)
                if not bool(delta.any()):
                    continue
                module = t.name.split(f"layers.{li}.", 1)[1].rsplit(".weight", 1)[0] if li is not None else None
                cd = compress_matrix(delta, Hs.get(module) if module else None, cfg, choices.get(t.name) if choices else _UNALLOCATED, per_matrix_bpp, schedule)
                approx = cd.approx.to(dev)
                stats = {"rel_error": rel_error(approx, delta), "bits_per_param": 8 * cd.nbytes / t.numel}
                if module and module in Hs:  # relative output error on the calibration inputs
                    H = Hs[module]
                    e = approx - delta
                    stats["rel_output_error"] = float(torch.sqrt((e @ H * e).sum().clamp(min=0) / (delta @ H * delta).sum().clamp(min=1e-30)))
                if stream is not None:
                    approx_weights[t.name] = b.to(dev, torch.float32) + approx
                cd.approx = cd.approx.cpu() if cfg.distill else torch.empty(0)
                report_rows.append({"name": t.name, "shape": t.shape, **stats, **{k: v for k, v in cd.info.items() if isinstance(v, (int, float, str))}})
                emit(t, cd, stats)
            if stream is not None and li is not None:
                stream.advance(stream.build_layer(li, lambda n: approx_weights[n] if n in approx_weights else ft.get(n)))
            approx_weights.clear()  # free this layer's weights and Hessians before trimming the heap
            Hs.clear()
            _release_memory()
            prog.advance(label=f"compressing ({cfg.method}) layer {li}" if li is not None else f"compressing ({cfg.method}) embeddings/head")
        prog.close()
        del stream

        if deferred:
            from .distill import distill

            res = distill(base_dir, ft_dir, {t.name: cd for t, cd, _ in deferred}, cfg, dev, without_delta=without_delta, tokens=tokens, workdir=Path(out).parent)
            budget_note["distill_result"] = res.as_dict()
            rows = {r["name"]: r for r in report_rows}
            for t, cd, stats in deferred:
                stats["rel_error"] = rel_error(cd.approx, ft.get(t.name).float() - base.get(t.name).float())
                for k in ("alpha", "s_change", "scale_change", "codes_changed"):
                    if k in cd.info:
                        stats[k] = float(cd.info[k])
                if res.kept and cd.form == "low_rank":
                    stats.pop("rel_output_error", None)  # measured before distillation
                if t.name in rows:
                    rows[t.name].update(stats)
                entry = write_delta(w, t.name, cd, stats)
                if entry is not None:
                    deltas.append(entry)

        params = {k: v for k, v in asdict(cfg).items() if k not in ("progress", "device")}
        params.update(budget_note)
        manifest = w.finish(
            method=cfg.method,
            method_params=params,
            base_name=base.name,
            finetune_name=ft.name,
            base_fingerprints=fingerprints,
            deltas=deltas,
            metadata={"base_model_type": base.model_type, "tensor_targets": len(targets), "matrices": len(matrices)},
        )
    stored = sum(sum(s["length"] for s in t["segments"].values()) for t in manifest["tensors"])
    return CompressReport(
        path=str(out),
        method=cfg.method,
        seconds=time.perf_counter() - t0,
        params=total_params,
        stored_bytes=stored,
        bits_per_param=8 * stored / max(total_params, 1),
        matrices=report_rows,
    )
