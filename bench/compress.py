"""Delta-CoMe compression time on Llama-7B / Llama-3-8B layer shapes (GPU).

Runs the pipeline's own per-layer work — input-Hessian capture over the calibration tokens
(a decoder-layer forward with hooks), SVD + GPTQ of every matrix, propagation of the hidden
states through the compressed layer — on one randomly initialised decoder layer of the real
shape, with a synthetic delta of a fine-tune-like spectrum, and extrapolates to the whole model
(layers × per-layer + embeddings and lm_head). Prints a table; writes JSON + markdown.

    python bench/compress.py --shapes llama7b,llama3-8b --samples 128 --seq-len 2048
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# run as a script, bench/ is sys.path[0]; its kernels.py would then shadow the `kernels` package
# (Hugging Face's hub kernels) that transformers imports where it is installed
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch

from deltapack.compress.calib import LayerStream
from deltapack.compress.delta_come import compress_delta_come
from deltapack.compress.hf import ModelDir
from deltapack.compress.lowrank import svd
from deltapack.compress.plan import DELTA_COME_SCHEDULE, fit_lowrank_plan, lowrank_plan_bytes

SHAPES = {
    # name: (hidden, intermediate, heads, kv_heads, layers, vocab)
    "llama7b": (4096, 11008, 32, 32, 32, 32000),
    "llama3-8b": (4096, 14336, 32, 8, 32, 128256),
}
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def synthetic_delta(out: int, inp: int, device, gen) -> torch.Tensor:
    """Fine-tune-like delta: a decaying spectrum (σ_i ∝ (1 + i/8)^-0.8) over random singular
    vectors plus a flat noise floor, ~1% of a weight's norm."""
    k = min(out, inp)
    r = min(k, 1024)
    u = torch.linalg.qr(torch.randn(out, r, device=device, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(inp, r, device=device, generator=gen))[0]
    s = (1 + torch.arange(r, device=device) / 8) ** -0.8
    d = (u * s) @ v.T + 0.02 * torch.randn(out, inp, device=device, generator=gen) / k**0.5
    return d * (0.01 * out**0.5 / d.norm())  # ‖W‖ ≈ √out for entries of variance 1/in


def make_model_dir(root: Path, hidden: int, inter: int, heads: int, kv: int) -> Path:
    """A one-layer HF directory with the real shapes; only the (small-vocab) embedding is on
    disk — layer weights are generated on the GPU, as the bench needs no files for them."""
    from safetensors.torch import save_file

    cfg = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "num_hidden_layers": 1,
        "vocab_size": 512,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(cfg))
    save_file({"model.embed_tokens.weight": torch.randn(512, hidden) * 0.02}, str(root / "model.safetensors"))
    return root


def bench_svd(device, gen) -> list[dict]:
    rows = []
    for shape in [(4096, 4096), (11008, 4096), (4096, 14336)]:
        d = synthetic_delta(*shape, device, gen)
        for m in ("svd", "gesvdj", "gram64"):
            try:
                (U, s, Vh), t = timed(lambda: svd(d, m))
            except Exception as e:  # noqa: BLE001 - a driver may be missing
                rows.append({"shape": list(shape), "method": m, "error": str(e)[:80]})
                continue
            k = 1024
            err = float(((U[:, :k] * s[:k]) @ Vh[:k] - d).norm() / d.norm())
            ref = torch.linalg.svdvals(d.double()).float()[:k]
            rows.append({"shape": list(shape), "method": m, "seconds": t, "rank1024_rel_residual": err, "sv_rel_err": float(((s[:k] - ref).abs() / ref).max())})
    return rows


def bench_shape(name: str, samples: int, seq_len: int, device, svd_method: str | None) -> dict:
    hidden, inter, heads, kv, layers, vocab = SHAPES[name]
    gen = torch.Generator(device=device).manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    ft = ModelDir(make_model_dir(tmp / name, hidden, inter, heads, kv))
    tokens = torch.randint(0, 512, (samples, seq_len))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stream = LayerStream(ft, tokens, device, batch_size=8)
    hd = hidden // heads
    shapes = {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (kv * hd, hidden),
        "self_attn.v_proj": (kv * hd, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    prefix = "model.layers.0."
    base_w = {prefix + k + ".weight": torch.randn(*s, device=device, generator=gen) / s[1] ** 0.5 for k, s in shapes.items()}
    base_w[prefix + "input_layernorm.weight"] = torch.ones(hidden, device=device)
    base_w[prefix + "post_attention_layernorm.weight"] = torch.ones(hidden, device=device)
    deltas = {k: synthetic_delta(*s, device, gen) for k, s in shapes.items()}
    ft_w = dict(base_w)
    for k, d in deltas.items():
        ft_w[prefix + k + ".weight"] = base_w[prefix + k + ".weight"] + d

    layer, t_build = timed(lambda: stream.build_layer(0, lambda n: ft_w[n]))
    Hs, t_hess = timed(lambda: stream.hessians(layer))
    per_matrix = []
    approx = {}
    for k, s in shapes.items():
        plan = fit_lowrank_plan(*s, 1.0, DELTA_COME_SCHEDULE)
        factors, t_svd = timed(lambda: svd(deltas[k], svd_method))
        cd, t_q = timed(lambda: compress_delta_come(deltas[k], Hs[k], plan, factors=factors))
        approx[prefix + k + ".weight"] = base_w[prefix + k + ".weight"] + cd.approx.to(device)
        e = cd.approx.to(device) - deltas[k]
        H = Hs[k]
        out_err = float(torch.sqrt((e @ H * e).sum() / (deltas[k] @ H * deltas[k]).sum()))
        per_matrix.append(
            {
                "matrix": k,
                "shape": list(s),
                "plan": plan.describe(),
                "bits_per_param": lowrank_plan_bytes(*s, plan) * 8 / (s[0] * s[1]),
                "svd_s": t_svd,
                "gptq_s": t_q,
                "rel_error": float(e.norm() / deltas[k].norm()),
                "rel_output_error": out_err,
            }
        )
    clayer = stream.build_layer(0, lambda n: approx.get(n, ft_w[n]))
    _, t_adv = timed(lambda: stream.advance(clayer))
    per_layer = t_build + t_hess + sum(m["svd_s"] + m["gptq_s"] for m in per_matrix) + t_adv
    # embeddings and lm_head: compressed without calibration (identity Hessian)
    emb = synthetic_delta(min(vocab, 32000), hidden, device, gen)
    plan = fit_lowrank_plan(*emb.shape, 1.0, DELTA_COME_SCHEDULE)
    _, t_emb = timed(lambda: compress_delta_come(emb, None, plan))
    t_emb *= 2 * vocab / emb.shape[0]
    return {
        "shape": name,
        "hidden": hidden,
        "intermediate": inter,
        "kv_heads": kv,
        "layers": layers,
        "calibration_tokens": samples * seq_len,
        "build_s": t_build,
        "hessian_s": t_hess,
        "advance_s": t_adv,
        "matrices": per_matrix,
        "per_layer_s": per_layer,
        "embeddings_s": t_emb,
        "whole_model_s": layers * per_layer + t_emb,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama7b,llama3-8b")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--svd", default=None, help="svd | gesvdj | gram64 (default: the library's)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/compress.py needs a CUDA GPU")
    dev = torch.device("cuda")
    gpu = torch.cuda.get_device_name()
    commit = os.environ.get("DELTAPACK_COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"  # the device copy has no .git: pass DELTAPACK_COMMIT
    svd_rows = bench_svd(dev, torch.Generator(device=dev).manual_seed(1))
    results = [bench_shape(s, args.samples, args.seq_len, dev, args.svd) for s in args.shapes.split(",")]
    meta = {"gpu": gpu, "commit": commit, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__, "samples": args.samples, "seq_len": args.seq_len}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compress.json").write_text(json.dumps({"meta": meta, "svd": svd_rows, "shapes": results}, indent=2))
    lines = [
        "# Delta-CoMe compression time",
        "",
        f"GPU {gpu}, commit {commit}, {meta['date']}, torch {torch.__version__}; calibration {args.samples} × {args.seq_len} tokens; 1.0 bit/param, plan 8+3+2 per shape, every stored bit counted.",
        "",
        "| model shape | Hessians (s/layer) | SVD (s/layer) | GPTQ (s/layer) | propagate (s/layer) | per layer (s) | embeddings + head (s) | whole model (s) | goal | peak GPU (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        svd_s = sum(m["svd_s"] for m in r["matrices"])
        q_s = sum(m["gptq_s"] for m in r["matrices"])
        lines.append(f"| {r['shape']} ({r['layers']} layers) | {r['hessian_s']:.2f} | {svd_s:.2f} | {q_s:.2f} | {r['advance_s']:.2f} | {r['per_layer_s']:.2f} | {r['embeddings_s']:.1f} | {r['whole_model_s']:.0f} | ≤ 300 | {r['peak_gpu_gib']:.1f} |")
    lines += ["", "Per matrix (first shape):", "", "| matrix | shape | plan | bits/param | SVD s | GPTQ s | rel. error | rel. output error |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for m in r["matrices"]:
            lines.append(f"| {r['shape']} {m['matrix']} | {m['shape']} | {m['plan']} | {m['bits_per_param']:.3f} | {m['svd_s']:.2f} | {m['gptq_s']:.2f} | {m['rel_error']:.3f} | {m['rel_output_error']:.3f} |")
    lines += ["", "SVD routes (fp32 input; errors against fp64 singular values, top 1024):", "", "| shape | method | seconds | rank-1024 residual | max rel. σ error |", "|---|---|---|---|---|"]
    for r in svd_rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['method']} | failed: {r['error']} | | |")
        else:
            lines.append(f"| {r['shape']} | {r['method']} | {r['seconds']:.3f} | {r['rank1024_rel_residual']:.4f} | {r['sv_rel_err']:.2e} |")
    text = "\n".join(lines) + "\n"
    (out / "compress.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
