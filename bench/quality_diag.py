"""Where a compressed fine-tune loses its accuracy: the error of one (method, budget) split by
matrix type.

For each cell ``METHOD:BITS`` (methods as in ``bench/quality.py``), the fine-tune's delta is
compressed exactly as the quality bench does (same calibration text and settings), the
approximate deltas ΔŴ are read back from the .dpk as dense matrices, and models are built that
are the fine-tune except for one group of matrices, which get W_base + ΔŴ: ``attn`` (q, k, v,
o of every layer), ``mlp`` (gate, up, down), ``embed_tokens``, ``lm_head``, and ``all`` (every
compressed matrix: the compressed model on the dense path, a cross-check of the kernel path's
row in quality.md). Each is measured like a quality cell: exact-match accuracy on the held-out
problems and KL(fine-tune ‖ model). A group whose row falls far below the fine-tune carries
the loss; the bytes each group was given are listed beside it.

    python bench/quality_diag.py --preset tiny --task arith --cells delta-come:1,bitdelta:1 --out /tmp/d
    python bench/quality_diag.py --preset gpu --zoo-dir /tmp/zoo --task arith --cells delta-come:1,lowrank:1 --out $OUT

Writes ``diag-<task>.json`` and ``diag-<task>.md`` to ``--out``, rewritten after every row.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
# run as a script, bench/ is sys.path[0]; its kernels.py would then shadow the `kernels` package
# (Hugging Face's hub kernels) that transformers imports where it is installed
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GROUPS: dict[str, tuple[str, ...]] = {
    "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"),
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "embed_tokens": ("embed_tokens",),
    "lm_head": ("lm_head",),
}


FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5)  # of the singular values (the rank)


def spectrum(ft_sd: dict[str, torch.Tensor], base_sd: dict[str, torch.Tensor]) -> dict[str, dict[str, list[float]]]:
    """Per matrix type: the share of ‖ΔW‖² in the top FRACTIONS of its singular values, mean
    over layers, beside the same for a Gaussian matrix of its shape (a delta with no low-rank
    structure): how much a rank-r approximation can catch."""
    acc: dict[str, list[list[float]]] = {}
    gauss: dict[str, list[float]] = {}
    g = torch.Generator().manual_seed(0)
    for k in ft_sd:
        kind = _kind(k)
        if kind == "other" or ft_sd[k].ndim != 2:
            continue
        d = ft_sd[k].float() - base_sd[k].float()
        s2 = torch.linalg.svdvals(d).double() ** 2
        c = torch.cumsum(s2, 0) / s2.sum()
        acc.setdefault(kind, []).append([float(c[max(1, round(q * len(c))) - 1]) for q in FRACTIONS])
        if kind not in gauss:
            z = torch.randn(d.shape, generator=g).to(d.device)
            zs = torch.linalg.svdvals(z).double() ** 2
            zc = torch.cumsum(zs, 0) / zs.sum()
            gauss[kind] = [float(zc[max(1, round(q * len(zc))) - 1]) for q in FRACTIONS]
    return {k: {"delta": [sum(x) / len(x) for x in zip(*v)], "gaussian": gauss[k]} for k, v in acc.items()}


def _kind(name: str) -> str:
    return next((k for k in GROUPS["all"] if k in name), "other")


def main(argv: list[str] | None = None) -> int:
    from bench.quality import ALL_METHODS, _load_hf, _write_calib
    from bench.zoo.build import commit_id, device_name
    from deltapack.compress.pipeline import compress
    from deltapack.format import open as open_dpk
    from deltapack.nn.delta import read_delta
    from deltapack.zoo import generate, next_token_kl, score
    from deltapack.zoo.build import base_dir_name, finetune_dir_name
    from deltapack.zoo.evaluate import _difficulty_of
    from deltapack.zoo.presets import get_preset
    from deltapack.zoo.tasks import get_task
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpu")
    ap.add_argument("--zoo-dir", default=str(Path.home() / ".cache" / "deltapack" / "zoo"))
    ap.add_argument("--task", default="arith")
    ap.add_argument("--cells", default="delta-come:1", help="comma-separated METHOD:BITS")
    ap.add_argument("--groups", default=",".join(GROUPS))
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--n-kl", type=int, default=64)
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--distill-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="bench/results")
    a = ap.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    p = get_preset(a.preset)
    zoo = Path(a.zoo_dir)
    base_dir, ft_dir = zoo / base_dir_name(p, a.seed), zoo / finetune_dir_name(a.task, p, a.seed)
    work = zoo / "diag" / a.task
    work.mkdir(parents=True, exist_ok=True)

    tok = AutoTokenizer.from_pretrained(str(ft_dir))
    ft = _load_hf(ft_dir, device, dtype)
    model = _load_hf(ft_dir, device, dtype)
    ft_sd = {k: v.clone() for k, v in ft.state_dict().items()}
    base_sd = {k: v.to(device) for k, v in _load_hf(base_dir, "cpu", torch.float32).state_dict().items()}
    diff, eval_frac = _difficulty_of(ft, a.task, None, None)
    t = get_task(a.task)
    eval_ex = t.examples(a.n_eval, seed=1234, split="eval", eval_frac=eval_frac, **diff)
    prompts = [e.prompt for e in eval_ex]
    max_new = max(len(tok.encode(e.target, add_special_tokens=False)) for e in eval_ex) + 8
    kl_ex = t.examples(a.n_kl, seed=4321, split="eval", eval_frac=eval_frac, **diff)
    kl_seqs = [torch.tensor([tok.bos_token_id] + tok.encode(e.prompt + e.target, add_special_tokens=False)) for e in kl_ex]
    calib = _write_calib(a.task, diff, eval_frac, work / "calib.txt")
    batch = max(1, min(a.n_eval, 1000)) if device.startswith("cuda") else 100  # a 31M model decodes by steps, not rows: one batch on a GPU

    def measure(m) -> dict[str, float]:
        comps = generate(m, tok, prompts, max_new, batch_size=batch)
        return {"accuracy": score(comps, eval_ex), "kl": next_token_kl(m, ft, kl_seqs, batch_size=min(batch, 64))}

    ft_acc = measure(ft)["accuracy"]
    meta = {
        "preset": a.preset, "task": a.task, "device": device_name(device), "commit": commit_id(), "dtype": str(dtype).removeprefix("torch."),
        "n_eval": a.n_eval, "n_kl": a.n_kl, "finetune_accuracy": ft_acc,
    }
    meta["spectrum"] = spectrum(ft_sd, base_sd)
    rows: list[dict[str, Any]] = []

    def write() -> None:
        (out / f"diag-{a.task}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        lines = [
            f"# Error by matrix group: `{a.preset}` zoo, task {a.task}",
            "",
            f"{meta['device']}, commit {meta['commit']}; dense path in {meta['dtype']}. The fine-tune ({100 * ft_acc:.1f}%) with only the "
            "group's matrices replaced by W_base + ΔŴ; bytes: the group's share of the stored matrix bytes.",
            "",
        ]
        lines += ["", "Energy of ΔW in its top singular values (mean over layers; a Gaussian matrix of the same shape in brackets):", "",
                  "| matrix | " + " | ".join(f"top {100 * q:g}%" for q in FRACTIONS) + " |", "|---|" + "---|" * len(FRACTIONS)]
        for k, v in meta["spectrum"].items():
            lines.append(f"| {k} | " + " | ".join(f"{100 * a:.0f}% ({100 * b:.0f}%)" for a, b in zip(v["delta"], v["gaussian"])) + " |")
        lines += ["", "| method | bits | group | accuracy (kept) | KL | rel. error | bytes |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['method']} | {r['bits']:g} | {r['group']} | {100 * r['accuracy']:.1f}% ({100 * r['kept']:.1f}%) | {r['kl']:.4f} | "
                f"{r['rel_error']:.3f} | {100 * r['byte_share']:.1f}% |"
            )
        (out / f"diag-{a.task}.md").write_text("\n".join(lines) + "\n")

    groups = [g for g in a.groups.split(",") if g]
    for cell in [c for c in a.cells.split(",") if c]:
        name, bits = cell.split(":")
        bits = float(bits)
        _, kw = ALL_METHODS[name]
        path = work / f"{name}-{bits:g}.dpk"
        t0 = time.perf_counter()
        rep = compress(
            base_dir, ft_dir, path, bits_per_param=bits, calib=str(calib), n_samples=a.calib_samples, seq_len=a.calib_len,
            distill_steps=a.distill_steps, seed=a.seed, progress=False, **kw,
        )
        f = open_dpk(path)
        approx = {e["target"]: read_delta(f, e, device=device).dense().float() for e in f.manifest["deltas"] if e.get("op", "add") == "add"}
        nbytes = {r["name"]: r["bits_per_param"] * math.prod(r["shape"]) / 8 for r in rep.matrices}
        total_bytes = sum(nbytes.values()) or 1.0
        print(f"[{cell}] compressed in {time.perf_counter() - t0:.1f} s at {rep.bits_per_param:.3f} bits/param", flush=True)
        for g in groups:
            kinds = GROUPS[g]
            sd = dict(ft_sd)
            err2 = ref2 = 0.0
            gbytes = 0.0
            for k in nbytes:
                if _kind(k) not in kinds:
                    continue
                gbytes += nbytes[k]
                d = ft_sd[k].float() - base_sd[k].float()
                dh = approx[k].reshape(d.shape) if k in approx else torch.zeros_like(d)
                err2 += float(((dh - d) ** 2).sum())
                ref2 += float((d**2).sum())
                sd[k] = (base_sd[k].float() + dh).to(dtype)
            model.load_state_dict(sd)
            m = measure(model)
            rows.append({
                "method": name, "bits": bits, "bits_per_param": rep.bits_per_param, "group": g, **m, "kept": m["accuracy"] / ft_acc if ft_acc else float("nan"),
                "rel_error": math.sqrt(err2 / max(ref2, 1e-30)), "byte_share": gbytes / total_bytes,
            })
            print(f"[{cell}] {g}: acc {m['accuracy']:.3f} kl {m['kl']:.4f} rel_err {rows[-1]['rel_error']:.3f} bytes {100 * gbytes / total_bytes:.1f}%", flush=True)
            write()
        path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
