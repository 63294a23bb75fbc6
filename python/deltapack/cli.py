"""`deltapack` command line: compress | inspect | verify | materialize | export-lora | demo |
sample (serve arrives with the runtime issue)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from . import __version__
from .errors import ChecksumError, DeltapackError
from .format import DeltaFile
from .format import open as open_dpk


def _numel(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def summarize(f: DeltaFile) -> dict[str, Any]:
    """Everything `inspect` shows, as plain data (the --json output)."""
    m = f.manifest
    infos = {n: f.info(n) for n in f.names()}
    tensors = [
        {
            "name": i.name,
            "encoding": i.encoding_name,
            "encoding_id": i.encoding,
            "shape": list(i.shape),
            "bytes": i.nbytes,
            "bits_per_param": i.bits_per_param,
            "stats": i.stats,
        }
        for i in infos.values()
    ]
    base_fp = m["base"].get("tensors", {})
    deltas = []
    for d in m.get("deltas", []):
        parts = [d["tensor"]] if d["form"] == "dense" else [x for b in d["blocks"] for x in (b.get("u"), b.get("ut"), b.get("s"), b["vt"]) if x]
        if d.get("input_perm"):
            parts.append(d["input_perm"])
        if d["target"] in base_fp:
            shape = base_fp[d["target"]]["shape"]
        elif d["form"] == "dense":
            shape = list(infos[d["tensor"]].shape)
        else:
            b0 = d["blocks"][0]
            shape = [infos[b0["u"]].shape[0] if b0.get("u") else infos[b0["ut"]].shape[1], infos[b0["vt"]].shape[1]]
        nbytes = sum(infos[p].nbytes for p in parts)
        stats = dict(d.get("stats", {}))
        if d["form"] == "dense":
            stats = {**infos[d["tensor"]].stats, **stats}
        deltas.append(
            {
                "target": d["target"],
                "op": d.get("op", "add"),
                "form": d["form"],
                "shape": shape,
                "params": _numel(shape),
                "bytes": nbytes,
                "bits_per_param": 8 * nbytes / max(_numel(shape), 1),
                "rel_error": stats.get("rel_error"),
                "tensors": parts,
            }
        )
    stored = sum(t["bytes"] for t in tensors)
    # Parameters the delta covers: every fingerprinted base tensor (a matrix a budget left
    # without a delta is covered at zero bits), else the delta targets, else what is stored.
    if base_fp:
        params = sum(_numel(fp["shape"]) for fp in base_fp.values())
    elif deltas:
        params = sum(d["params"] for d in deltas)
    else:
        params = sum(i.numel for i in infos.values())
    return {
        "file": f.path,
        "file_bytes": f.file_len,
        "format_version": m["format_version"],
        "producer": m["producer"],
        "method": m["method"],
        "finetune": m["finetune"],
        "base": {"name": m["base"]["name"], "fingerprinted_tensors": len(base_fp)},
        "tensor_count": len(tensors),
        "stored_bytes": stored,
        "params": params,
        "bits_per_param": 8 * stored / max(params, 1),
        "file_bits_per_param": 8 * f.file_len / max(params, 1),
        "metadata": m.get("metadata", {}),
        "deltas": deltas,
        "tensors": tensors,
    }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def cmd_inspect(args: argparse.Namespace) -> int:
    with open_dpk(args.file, verify="none") as f:
        s = summarize(f)
    if args.plot:
        from .plot import plot_file

        with open_dpk(args.file) as f:
            plot_file(f, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        json.dump(s, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{s['file']}[/bold]  {_human(s['file_bytes'])}, format v{s['format_version']}, made by {s['producer']['name']} {s['producer']['version']}")
    con.print(f"method [bold]{s['method']['name']}[/bold] {json.dumps(s['method']['params'])}")
    con.print(f"fine-tune {s['finetune']['name']}  base {s['base']['name']} ({s['base']['fingerprinted_tensors']} tensors fingerprinted)")
    con.print(
        f"{s['tensor_count']} tensors, {_human(s['stored_bytes'])} stored for {s['params']:,} params: "
        f"[bold]{s['bits_per_param']:.3f} bits/param[/bold] ({s['file_bits_per_param']:.3f} counting the whole file)"
    )
    if s["deltas"]:
        t = Table(title="deltas")
        for c in ("target", "op", "form", "shape", "bytes", "bits/param", "rel. error"):
            t.add_column(c, justify="right" if c in ("bytes", "bits/param", "rel. error") else "left")
        for d in s["deltas"]:
            err = "" if d["rel_error"] is None else f"{d['rel_error']:.4f}"
            t.add_row(d["target"], d["op"], d["form"], str(d["shape"]), _human(d["bytes"]), f"{d['bits_per_param']:.3f}", err)
        con.print(t)
    if args.tensors or not s["deltas"]:
        t = Table(title="tensors")
        for c in ("name", "encoding", "shape", "bytes", "bits/param"):
            t.add_column(c, justify="right" if c in ("bytes", "bits/param") else "left")
        for x in s["tensors"]:
            t.add_row(x["name"], x["encoding"], str(x["shape"]), _human(x["bytes"]), f"{x['bits_per_param']:.3f}")
        con.print(t)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with open_dpk(args.file, verify="none") as f:
        faults = f.check()
        n = len(f)
    if faults:
        for tensor, segment, msg in faults:
            print(f"FAIL {tensor}/{segment}: {msg}", file=sys.stderr)
        print(f"{args.file}: {len(faults)} of {n} tensors failed verification", file=sys.stderr)
        return 1
    print(f"{args.file}: OK ({n} tensors, every checksum matches)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .sample import write_sample

    m = write_sample(args.output, seed=args.seed, layers=args.layers)
    print(f"wrote {args.output}: {len(m['tensors'])} tensors, {os.path.getsize(args.output)} bytes")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from .compress.pipeline import CompressConfig, compress

    cfg = CompressConfig(
        method=args.method,
        bits_per_param=args.bits_per_param,
        plan=args.plan,
        sensitivity=args.sensitivity,
        schedule=args.schedule,
        group_size=args.group_size,
        bits=args.bits,
        embeddings=args.embeddings,
        calib=args.calib,
        n_samples=args.samples,
        seq_len=args.seq_len,
        damp=args.damp,
        distill=args.distill,
        distill_steps=args.distill_steps,
        distill_lr=args.distill_lr,
        distill_loss=args.distill_loss,
        distill_checkpoint=not args.distill_no_checkpoint,
        distill_scales=args.distill_scales,
        distill_codes=args.distill_codes,
        distill_codes_lr=args.distill_codes_lr,
        device=args.device,
        seed=args.seed,
        progress=not args.quiet,
    )
    r = compress(args.base, args.finetuned, args.output, cfg)
    errs = [m["rel_error"] for m in r.matrices]
    mean_err = sum(errs) / len(errs) if errs else float("nan")
    print(f"wrote {r.path}: {r.method}, {r.stored_bytes:,} bytes for {r.params:,} params = {r.bits_per_param:.4f} bits/param; mean relative error {mean_err:.4f}; {r.seconds:.1f} s")
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    import torch

    from .nn.load import materialize

    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32, None: None}[args.dtype]
    out = materialize(args.base, args.delta, args.output, dtype=dtype, allow_base_mismatch=args.allow_base_mismatch)
    print(f"wrote {out}")
    return 0


def cmd_export_lora(args: argparse.Namespace) -> int:
    from .export import export_lora

    out = export_lora(args.delta, args.output)
    print(f"wrote {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.workdir, preset=args.preset, task=args.task, bits_per_param=args.bits_per_param, n_eval=args.n_eval)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deltapack", description="Compressed fine-tune deltas: the .dpk format and tools.")
    p.add_argument("--version", action="version", version=f"deltapack {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="summarize a .dpk: method, tensors, encodings, sizes, bits/param")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--tensors", action="store_true", help="also list every stored tensor")
    s.add_argument("--plot", metavar="PNG", help="draw per-layer error and singular-value spectra")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("compress", help="compress a fine-tune's delta against its base into a .dpk")
    s.add_argument("base", help="base model: Hugging Face directory (config.json + safetensors)")
    s.add_argument("finetuned", help="fine-tuned model directory")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--method", default="delta-come", choices=["delta-come", "bitdelta", "deltazip", "lowrank", "rtn"])
    s.add_argument("--bits-per-param", type=float, help="budget counting every stored bit (default: 1.0 for delta-come/lowrank, the method's natural rate otherwise)")
    s.add_argument("--plan", default="fixed", choices=["fixed", "auto"], help="delta-come: fixed 8+3+2 schedule per shape, or ranks and bits allocated across matrices by measured error")
    s.add_argument("--schedule", default="8:2,3:32,2", help="delta-come bit groups bits:max_rank,... (the last fills the budget)")
    s.add_argument("--group-size", type=int, default=128)
    s.add_argument("--bits", type=int, help="rtn / deltazip bit width without a budget")
    s.add_argument("--sensitivity", default="size", choices=["size", "kl"], help="budgeted allocations (--plan auto, rtn, bitdelta, deltazip): weigh each matrix's error by its size, or also by how much the output depends on its delta (one forward per matrix on the calibration text, whole fine-tune in memory)")
    s.add_argument("--embeddings", default="compress", choices=["compress", "raw"], help="embeddings and lm_head: compressed like other matrices, or stored whole")
    s.add_argument("--calib", help="calibration text (.txt or .jsonl); default: sampled from the fine-tune")
    s.add_argument("--samples", type=int, default=128, help="calibration sequences")
    s.add_argument("--seq-len", type=int, default=2048, help="calibration sequence length")
    s.add_argument("--damp", type=float, default=0.01, help="GPTQ / SparseGPT damping")
    s.add_argument("--distill", action="store_true", help="bitdelta, delta-come, lowrank: train the scales (BitDelta's per-matrix scale, the low-rank deltas' singular values) against the fine-tune's logits on the calibration text; the file's size and format stay the same")
    s.add_argument("--distill-scales", action="store_true", help="delta-come, with --distill: also train the fp16 group scales of the quantized singular vectors (a relative multiplier per scale), written back in the same bytes")
    s.add_argument("--distill-codes", action="store_true", help="delta-come, with --distill: also train the codes of the quantized singular vectors (quantization-aware: a latent per code rounded straight through onto the stored grid), written back in the same bytes")
    s.add_argument("--distill-codes-lr", type=float, default=None, help="learning rate of the codes' latents, in code levels (default 3e-2)")
    s.add_argument("--distill-steps", type=int, default=200)
    s.add_argument("--distill-lr", type=float, help="distillation learning rate (default: 1e-4 for bitdelta's scales, 3e-2 for the low-rank singular values' and the group scales' relative multipliers; given, it sets all)")
    s.add_argument("--distill-no-checkpoint", action="store_true", help="keep every layer's activations for the distillation's backward pass instead of recomputing them (faster, much more memory)")
    s.add_argument("--distill-loss", default="kl", choices=["kl", "mse"], help="distillation loss: KL(fine-tune ‖ compressed) of the next-token distributions, or the MSE of the logits (the BitDelta paper's)")
    s.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_compress)

    s = sub.add_parser("materialize", help="write base + delta as a full Hugging Face model directory")
    s.add_argument("base")
    s.add_argument("delta")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--dtype", choices=["bf16", "f16", "f32"], help="dtype of the written weights (default: the base's)")
    s.add_argument("--allow-base-mismatch", action="store_true", help="apply the delta even if the base's fingerprints differ")
    s.set_defaults(func=cmd_materialize)

    s = sub.add_parser("export-lora", help="write a low-rank .dpk as a PEFT LoRA adapter directory")
    s.add_argument("delta")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=cmd_export_lora)

    s = sub.add_parser("verify", help="check every checksum; exit status 1 on any fault")
    s.add_argument("file")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("demo", help="train a tiny base + fine-tune, compress at 1 bit/param, compare (CPU, under a minute, no download)")
    s.add_argument("--workdir", help="where models and deltas go (default ~/.cache/deltapack/demo)")
    s.add_argument("--preset", default="tiny")
    s.add_argument("--task", default="arith")
    s.add_argument("--bits-per-param", type=float, default=1.0)
    s.add_argument("--n-eval", type=int, default=100)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("sample", help="write a small synthetic delta (every encoding family) to try the tools on")
    s.add_argument("output")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--layers", type=int, default=2)
    s.set_defaults(func=cmd_sample)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ChecksumError as e:
        print(f"error: checksum: {e}", file=sys.stderr)
        return 1
    except (DeltapackError, OSError, ValueError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
