"""Load a base model with a .dpk delta applied (``load``), or write the merged fine-tune as a
Hugging Face directory (``materialize``)."""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_directory
from ..compress.hf import ModelDir
from ..errors import UnsupportedError
from ..format import DeltaFile
from ..format import open as open_dpk
from ..kernels import ops
from ..kernels.packed import KernelDelta
from .delta import read_delta
from .delta_linear import DeltaLinear

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json", "chat_template.jinja")


def check_base_dir(f: DeltaFile, base: ModelDir) -> None:
    """BaseMismatchError unless every fingerprinted tensor of the base directory matches."""
    f.check_base(lambda n: base.get(n) if n in base else None)


def _kernel_delta(f: DeltaFile, entry: dict[str, Any], mod: nn.Linear, device: torch.device, backend: str | None) -> KernelDelta | None:
    """The packed delta for the kernels on a GPU (None: use the reference module — on the CPU,
    with the reference backend, or for an entry the kernels cannot read)."""
    if device.type != "cuda" or ops.backend_name(backend) == "reference":
        return None
    try:
        return KernelDelta.from_entry(f, entry, (mod.out_features, mod.in_features), device=device)
    except UnsupportedError as e:
        warnings.warn(f"{entry['target']}: {e}; using the reference path for this matrix", stacklevel=3)
        return None


def load(base_dir: str | os.PathLike[str], dpk: str | os.PathLike[str], *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, allow_base_mismatch: bool = False, backend: str | None = None) -> nn.Module:
    """A transformers model: the base, with each compressed linear replaced by a DeltaLinear
    (base weight + compressed delta) and every other delta (norms, embeddings) merged. On a
    GPU the linear deltas stay packed and run through the kernels (``backend`` or
    DELTAPACK_BACKEND: auto, triton, cuda, reference); on the CPU they are dequantized once.
    Refuses a base whose fingerprints differ (BaseMismatchError) unless allowed."""
    from transformers import AutoModelForCausalLM

    f = open_dpk(dpk)
    base = ModelDir(base_dir)
    if not allow_base_mismatch:
        check_base_dir(f, base)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype or "auto").to(device).eval()
    wdtype = next(model.parameters()).dtype
    dev = next(model.parameters()).device
    params = dict(model.named_parameters())
    for entry in f.manifest["deltas"]:
        target = entry["target"]
        mod_name, _, pname = target.rpartition(".")
        mod = model.get_submodule(mod_name)
        if isinstance(mod, nn.Linear) and pname == "weight" and entry.get("op", "add") == "add":
            delta = _kernel_delta(f, entry, mod, dev, backend) or read_delta(f, entry, device=device, dtype=wdtype)
            parent_name, _, child = mod_name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, DeltaLinear(mod, delta, backend=backend))
        else:
            delta = read_delta(f, entry, device=device, dtype=wdtype)
            p = params[target]
            with torch.no_grad():
                d = delta.dense().to(p.dtype).reshape(p.shape)
                p.copy_(d if entry.get("op") == "replace" else p + d)
    return model


def materialize(base_dir: str | os.PathLike[str], dpk: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, dtype: torch.dtype | None = None, allow_base_mismatch: bool = False, shard_bytes: int = 4 << 30) -> Path:
    """Write base + delta as a full Hugging Face model directory (config, tokenizer files,
    safetensors shards), built and written one shard at a time; the directory appears
    atomically."""
    from safetensors.torch import save_file

    f = open_dpk(dpk)
    base = ModelDir(base_dir)
    if not allow_base_mismatch:
        check_base_dir(f, base)
    entries: dict[str, dict[str, Any]] = {e["target"]: e for e in f.manifest["deltas"]}
    out_size = torch.empty(0, dtype=dtype).element_size() if dtype is not None else None
    # Plan the shards from the sizes first, then build and write one shard at a time: memory
    # holds one shard, not the model.
    plan: list[list[str]] = [[]]
    size = 0
    for name in base.keys():
        floating = base.dtype(name) in ("f32", "f16", "bf16", "f64")
        nb = math.prod(base.shape(name)) * out_size if out_size and floating else base.nbytes(name)
        if plan[-1] and size + nb > shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append(name)
        size += nb
    files = ["model.safetensors"] if len(plan) == 1 else [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    with atomic_directory(out_dir) as tmp:
        total = 0
        for fname, names in zip(files, plan):
            shard: dict[str, torch.Tensor] = {}
            for name in names:
                w = base.get(name)
                if name in entries:
                    e = entries[name]
                    d = read_delta(f, e).dense().reshape(w.shape)
                    w = (d if e.get("op") == "replace" else w.float() + d).to(w.dtype)
                if dtype is not None and w.is_floating_point():
                    w = w.to(dtype)
                shard[name] = w.contiguous()
                total += w.numel() * w.element_size()
            save_file(shard, str(tmp / fname), metadata={"format": "pt", "deltapack": f.manifest["finetune"]["name"]})
            del shard
        if len(plan) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": {k: fn for fn, names in zip(files, plan) for k in names}}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        cfg = dict(base.config)
        if dtype is not None:
            cfg["torch_dtype"] = cfg["dtype"] = str(dtype).removeprefix("torch.")
        cfg["_name_or_path"] = f.manifest["finetune"]["name"]
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        for fn in _TOKENIZER_FILES:
            if (base.path / fn).exists():
                shutil.copy2(base.path / fn, tmp / fn)
    return Path(out_dir)
