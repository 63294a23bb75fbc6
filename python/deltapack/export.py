"""Export a low-rank .dpk as a PEFT LoRA adapter directory (B = U·diag(s), A = Vᵀ), the form
practitioners' tools (mergekit-extract-lora, PEFT) use."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from .atomic import atomic_directory
from .format import open as open_dpk
from .nn.delta import LowRankDelta, read_delta


def export_lora(dpk: str | os.PathLike[str], out_dir: str | os.PathLike[str], dtype: torch.dtype = torch.float16) -> Path:
    from safetensors.torch import save_file

    f = open_dpk(dpk)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    skipped = []
    for e in f.manifest["deltas"]:
        if e["form"] != "low_rank" or e.get("op", "add") != "add":
            skipped.append(e["target"])
            continue
        d = read_delta(f, e)
        assert isinstance(d, LowRankDelta)
        vt = d.vt
        if d.perm is not None:  # undo act-order on the input so A acts on x directly
            vt = torch.empty_like(d.vt)
            vt[:, d.perm] = d.vt
        module = e["target"].removesuffix(".weight")
        tensors[f"base_model.model.{module}.lora_A.weight"] = vt.to(dtype).contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = (d.u * d.s).to(dtype).contiguous()
        ranks[module] = int(vt.shape[0])
    if not ranks:
        raise ValueError(f"{dpk} holds no low-rank deltas (method '{f.manifest['method']['name']}'); export-lora needs a low-rank method")
    if skipped:
        warnings.warn(f"{len(skipped)} deltas are not low-rank and are not in the adapter (e.g. {skipped[0]})", stacklevel=2)
    r = max(ranks.values())
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": f.manifest["base"]["name"],
        "r": r,
        "lora_alpha": r,  # scaling = alpha / r = 1 for the default rank
        "rank_pattern": {m: k for m, k in ranks.items() if k != r},
        "alpha_pattern": {m: k for m, k in ranks.items() if k != r},  # keeps scaling at 1
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in ranks}),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    with atomic_directory(out_dir) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return Path(out_dir)
