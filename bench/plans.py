"""Delta-CoMe's fixed 8+3+2 plan against `--plan auto` (ranks and bit widths allocated across
all matrices by measured error), with the baselines beside them, on a base / fine-tune pair
the project trains itself (deltapack.zoo). Every model is run through deltapack.load.

Metrics: mean KL(fine-tune ‖ compressed) of next-token distributions on held-out task text,
and exact-match task accuracy (greedy). Prints a table; writes CSV + JSON + markdown.

    python bench/plans.py --preset small --task arith --budgets 1.0,0.5,0.25
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# run as a script, bench/ is sys.path[0]; its kernels.py would then shadow the `kernels` package
# (Hugging Face's hub kernels) that transformers imports where it is installed
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch

import deltapack
from deltapack.compress.pipeline import compress
from deltapack.zoo import build_base, build_finetune, evaluate, next_token_kl
from deltapack.zoo.evaluate import _difficulty_of
from deltapack.zoo.tasks import get_task

RUNS = [
    ("delta-come", {"plan": "fixed"}, "delta-come 8+3+2"),
    ("delta-come", {"plan": "auto"}, "delta-come auto"),
    ("bitdelta", {}, "bitdelta"),
    ("lowrank", {}, "lowrank"),
    ("rtn", {}, "rtn"),
    ("deltazip", {}, "deltazip"),
]


def write_results(rows, args, t_zoo, dev) -> str:
    commit = os.environ.get("DELTAPACK_COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"  # the device copy has no .git: pass DELTAPACK_COMMIT
    meta = {
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "commit": commit,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "preset": args.preset,
        "task": args.task,
        "zoo_seconds": t_zoo,
        "n_eval": args.n_eval,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"plans_{args.preset}_{args.task}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    keys = ["run", "bits", "bits_per_param", "kl", "accuracy", "compress_s", "error"]
    with open(out / f"{stem}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})
    ft_acc = rows[0]["accuracy"]
    lines = [
        f"# Delta-CoMe fixed plan vs --plan auto ({args.preset} zoo pair, task {args.task})",
        "",
        f"{meta['device']}, commit {commit}, {meta['date']}. KL: mean KL(fine-tune ‖ model) per token on held-out task text; accuracy: exact match, greedy, {args.n_eval} held-out problems; kept: accuracy / fine-tune accuracy.",
        "",
        "| run | budget | bits/param (all stored bits) | KL to fine-tune | accuracy | kept |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['run']} | {r['bits']} | — | — | — | {r['error']} |")
        else:
            kept = f"{100 * r['accuracy'] / ft_acc:.0f}%" if ft_acc else "—"
            lines.append(f"| {r['run']} | {r['bits']} | {r['bits_per_param']:.3f} | {r['kl']:.4f} | {100 * r['accuracy']:.1f}% | {kept} |")
    text = "\n".join(lines) + "\n"
    (out / f"{stem}.md").write_text(text)
    return text




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--task", default="arith")
    ap.add_argument("--budgets", default="1.0,0.5,0.25")
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    ap.add_argument("--only", default=None, help="comma-separated run labels")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(args.work or Path.home() / ".cache" / "deltapack" / "bench")
    t0 = time.perf_counter()
    base = build_base(work, args.preset, quiet=True)
    ft = build_finetune(base, work, args.task, args.preset, quiet=True)
    t_zoo = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(str(ft))
    ft_model = AutoModelForCausalLM.from_pretrained(str(ft), dtype=torch.float32).to(dev).eval()
    diff, eval_frac = _difficulty_of(ft_model, args.task, None, None)  # the fine-tune's own task settings
    ex = get_task(args.task).examples(64, seed=4321, split="eval", eval_frac=eval_frac, **diff)
    seqs = [[tok.bos_token_id] + tok.encode(e.prompt + e.target, add_special_tokens=False) for e in ex]
    L = min(map(len, seqs))
    ids = torch.tensor([s[:L] for s in seqs], device=dev)
    base_model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).to(dev).eval()
    rows = [
        {"run": "fine-tune", "bits": 16.0, "bits_per_param": 16.0, "kl": 0.0, "accuracy": evaluate(ft_model, args.task, n=args.n_eval, tokenizer=tok)},
        {"run": "base", "bits": 0.0, "bits_per_param": 0.0, "kl": next_token_kl(base_model, ft_model, ids), "accuracy": evaluate(base_model, args.task, n=args.n_eval, tokenizer=tok)},
    ]
    del base_model
    only = set(args.only.split(",")) if args.only else None
    for b in [float(x) for x in args.budgets.split(",")]:
        for method, kw, label in RUNS:
            if only and label not in only:
                continue
            p = work / f"{args.task}-{args.preset}-{label.replace(' ', '_')}-{b}.dpk"
            t = time.perf_counter()
            try:
                rep = compress(base, ft, p, method=method, bits_per_param=b, n_samples=64, seq_len=256, progress=False, **kw)
            except ValueError as e:  # a budget the method cannot reach
                rows.append({"run": label, "bits": b, "error": str(e)[:120]})
                continue
            secs = time.perf_counter() - t
            model = deltapack.load(base, p, device=dev, dtype=torch.float32)
            rows.append(
                {
                    "run": label,
                    "bits": b,
                    "bits_per_param": rep.bits_per_param,
                    "kl": next_token_kl(model, ft_model, ids),
                    "accuracy": evaluate(model, args.task, n=args.n_eval, tokenizer=tok),
                    "compress_s": secs,
                }
            )
            print(rows[-1], flush=True)
            write_results(rows, args, t_zoo, dev)  # keep what is done if a later run is cut off
            del model
    print(write_results(rows, args, t_zoo, dev))
if __name__ == "__main__":
    main()
