"""Size of a fine-tune's delta, per matrix type."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

from safetensors.torch import load_file


def delta_stats(base_dir: str | os.PathLike[str], ft_dir: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """Per matrix type (``q_proj``, ..., ``embed_tokens``, ``lm_head``, ``norm``):
    ``rel`` = ‖ΔW‖_F / ‖W_base‖_F over all layers, ``changed`` = the fraction of entries that
    differ, ``min_rel`` = the smallest per-tensor relative delta."""
    base = load_file(str(Path(base_dir) / "model.safetensors"))
    ft = load_file(str(Path(ft_dir) / "model.safetensors"))
    if base.keys() != ft.keys():
        raise ValueError("base and fine-tune have different tensors")
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0, float("inf")])
    for name in sorted(base):
        w, d = base[name].float(), ft[name].float() - base[name].float()
        kind = re.sub(r"^model\.|layers\.\d+\.|self_attn\.|mlp\.|\.weight$", "", name)
        a = acc[kind]
        a[0] += float(d.pow(2).sum())
        a[1] += float(w.pow(2).sum())
        a[2] += float((d != 0).sum())
        a[3] += d.numel()
        a[4] = min(a[4], float(d.norm() / w.norm().clamp(min=1e-30)))
    return {k: {"rel": (a[0] / max(a[1], 1e-30)) ** 0.5, "changed": a[2] / a[3], "min_rel": a[4]} for k, a in acc.items()}
