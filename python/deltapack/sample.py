"""A small synthetic base / fine-tune pair and its delta in every encoding family, built in
well under a second on a CPU. It gives `deltapack sample` (the main job until compression
lands) and the tests a real file: fingerprints of real base tensors, all delta forms, error
statistics measured against the true delta."""

from __future__ import annotations

import os
from typing import Any

import torch

from .compress.core import rel_error
from .compress.rtn import quantize_rtn
from .format import DeltaWriter, fingerprint


def build_pair(seed: int = 0, layers: int = 2, hidden: int = 256, ffn: int = 688) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Llama-style weights (bf16) for ``layers`` blocks, and a fine-tune whose delta is low
    rank plus noise, ~1% of the weights' scale, the way full fine-tunes' deltas look."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "self_attn.q_proj.weight": (hidden, hidden),
        "mlp.up_proj.weight": (ffn, hidden),
        "mlp.down_proj.weight": (hidden, ffn),
        "input_layernorm.weight": (hidden,),
    }
    base, tuned = {}, {}
    for i in range(layers):
        for k, shp in shapes.items():
            name = f"model.layers.{i}.{k}"
            if len(shp) == 1:
                w = 1.0 + 0.02 * torch.randn(shp, generator=g)
                d = 0.01 * torch.randn(shp, generator=g)
            else:
                w = torch.randn(shp, generator=g) / shp[1] ** 0.5
                r = 8
                d = (torch.randn(shp[0], r, generator=g) @ torch.randn(r, shp[1], generator=g)) / (r * shp[1]) ** 0.5 * 0.02
                d += 0.002 * torch.randn(shp, generator=g) / shp[1] ** 0.5
            base[name] = w.to(torch.bfloat16)
            tuned[name] = (w + d).to(torch.bfloat16)
    return base, tuned


def write_sample(path: str | os.PathLike[str], seed: int = 0, layers: int = 2) -> dict[str, Any]:
    """Write the sample delta to ``path``; returns the manifest."""
    base, tuned = build_pair(seed, layers)
    deltas: list[dict[str, Any]] = []
    with DeltaWriter(path) as w:
        for name in base:
            delta = tuned[name].float() - base[name].float()
            kind = name.split(".")[-2]
            if kind == "q_proj":  # dense 4-bit RTN, group 128, stored zeros
                q = quantize_rtn(delta, bits=4, group_size=128)
                w.add_quantized(name + ".delta", q.codes, 4, q.scales, q.zeros, group_size=128, stats={"rel_error": rel_error(q.dequantize(), delta)})
                deltas.append({"target": name, "op": "add", "form": "dense", "tensor": name + ".delta"})
            elif kind == "up_proj":  # rank-16 SVD, factors at 8 bits per row
                u, s, vh = torch.linalg.svd(delta, full_matrices=False)
                r = 16
                qu, qv = quantize_rtn(u[:, :r], 8, group_size=r), quantize_rtn(vh[:r], 8, group_size=delta.shape[1])
                approx = qu.dequantize() @ torch.diag(s[:r]) @ qv.dequantize()
                w.add_quantized(name + ".u", qu.codes, 8, qu.scales, qu.zeros, granularity="row")
                w.add_quantized(name + ".vt", qv.codes, 8, qv.scales, qv.zeros, granularity="row")
                w.add_raw(name + ".s", s[:r].contiguous())
                deltas.append({"target": name, "op": "add", "form": "low_rank", "blocks": [{"u": name + ".u", "s": name + ".s", "vt": name + ".vt"}], "stats": {"rel_error": rel_error(approx, delta)}})
            elif kind == "down_proj":  # 1-bit sign x per-tensor scale (BitDelta's encoding)
                alpha = delta.abs().mean()
                codes = (delta > 0).to(torch.uint8)
                approx = torch.where(delta > 0, alpha, -alpha)
                w.add_quantized(name + ".delta", codes, 1, (2 * alpha).reshape(1).half(), zero_point=0.5, granularity="tensor", stats={"rel_error": rel_error(approx, delta)})
                deltas.append({"target": name, "op": "add", "form": "dense", "tensor": name + ".delta"})
            else:  # norms: kept whole
                w.add_raw(name, tuned[name])
                deltas.append({"target": name, "op": "replace", "form": "dense", "tensor": name})
        return w.finish(
            method="sample",
            method_params={"note": "synthetic pair; mixed encodings to exercise the format", "seed": seed},
            base_name=f"deltapack-sample-base-s{seed}",
            finetune_name=f"deltapack-sample-finetune-s{seed}",
            base_fingerprints={n: fingerprint(t) for n, t in base.items()},
            deltas=deltas,
            metadata={"layers": layers},
        )
