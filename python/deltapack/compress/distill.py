"""BitDelta scale distillation (arXiv 2402.10193 §3.2): freeze the signs, train only the
per-matrix scales α so that the compressed model's logits match the fine-tune's (MSE),
AdamW with cosine decay. The student is the fine-tune with every compressed matrix replaced
by W_base + α·sign(Δ) through a weight parametrization, so any module type works."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .bitdelta import set_bitdelta_scale
from .core import CompressedDelta, QuantPart


class _ScaledSign(nn.Module):
    def __init__(self, base: torch.Tensor, codes: torch.Tensor, alpha: float):
        super().__init__()
        self.register_buffer("base", base)
        self.register_buffer("sign", codes.to(base.dtype) * 2 - 1)
        self.alpha = nn.Parameter(torch.tensor(float(alpha), dtype=torch.float32))

    def forward(self, _w: torch.Tensor) -> torch.Tensor:
        return self.base + self.alpha.to(self.base.dtype) * self.sign


def distill_bitdelta(base_dir: str | Path, ft_dir: str | Path, deltas: dict[str, CompressedDelta], cfg, device: torch.device) -> dict[str, float]:
    """Train the α of every BitDelta matrix in ``deltas`` (updated in place); returns them."""
    from transformers import AutoModelForCausalLM

    from .calib import load_tokenizer, read_calib_text, sample_tokens, tokens_from_text
    from .hf import ModelDir

    if cfg.calib:
        tokens = tokens_from_text(load_tokenizer(ft_dir), read_calib_text(cfg.calib), cfg.n_samples, cfg.seq_len, cfg.seed)
    else:
        tokens = sample_tokens(ft_dir, cfg.n_samples, cfg.seq_len, cfg.seed, device=device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    teacher = AutoModelForCausalLM.from_pretrained(str(ft_dir), dtype=dtype).to(device).eval()
    student = AutoModelForCausalLM.from_pretrained(str(ft_dir), dtype=dtype).to(device)
    student.requires_grad_(False)
    base = ModelDir(base_dir)
    params = dict(student.named_parameters())
    scales: dict[str, nn.Parameter] = {}
    for name, cd in deltas.items():
        part = cd.parts["delta"]
        assert isinstance(part, QuantPart) and part.bits == 1
        mod_name, _, pname = name.rpartition(".")
        if name not in params:
            continue  # tied weights: distilled through their owner
        mod = student.get_submodule(mod_name)
        p = _ScaledSign(base.get(name).to(device, dtype), part.codes.to(device), cd.info["alpha"])
        parametrize.register_parametrization(mod, pname, p, unsafe=True)
        scales[name] = p.alpha
    opt = torch.optim.AdamW(scales.values(), lr=cfg.distill_lr, weight_decay=0.0)
    steps, bs = cfg.distill_steps, 4
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    g = torch.Generator().manual_seed(cfg.seed)
    for _ in range(steps):
        idx = torch.randint(0, len(tokens), (min(bs, len(tokens)),), generator=g)
        x = tokens[idx].to(device)
        with torch.no_grad():
            target = teacher(x).logits.float()
        loss = torch.nn.functional.mse_loss(student(x).logits.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    out = {}
    for name, a in scales.items():
        set_bitdelta_scale(deltas[name], float(a.detach()))
        out[name] = float(a.detach())
    del teacher, student
    return out
