"""Accuracy per bit: every compression method at 1, 1/2, 1/4 and 1/8 bit per parameter on the
zoo's fine-tunes, through the compressed inference path.

For each fine-tune task of the zoo (``bench/zoo/build.py``, built here if missing) and each
method — Delta-CoMe with its fixed 8+3+2 plan and with ``--plan auto``, BitDelta with and
without scale distillation, DeltaZip, low-rank, RTN; and, when named in ``--methods``,
``delta-come-kl`` (``--plan auto --sensitivity kl``), ``delta-come-distill`` and
``delta-come-kl-distill`` (the same two with their singular values distilled against the
fine-tune's logits, ``--distill``), ``delta-come-kl-distill-scales`` (the latter with the
quantized singular vectors' group scales distilled too, ``--distill-scales``),
``delta-come-kl-distill-codes`` (and their codes, quantization-aware, ``--distill-codes``) — at each budget (every stored bit
counted: codes, scales, zeros, singular values, raw norms), the fine-tune's delta is compressed
to a .dpk, loaded with ``deltapack.load`` (DeltaLinear modules; on a GPU in bf16, through the
kernels that ``load`` dispatches to) and measured:

* exact-match accuracy on ``--n-eval`` held-out problems of the task (greedy), and the share of
  the fine-tune's own accuracy it keeps (the goals of MISSION.md: ≥99% at 1.0 and 0.5,
  ≥97% at 0.25, ≥94% at 0.125);
* mean KL(fine-tune ‖ compressed) of the next-token distributions over held-out task text;
* the share of answers identical to the fine-tune's;
* the mean relative error ‖ΔŴ − ΔW‖/‖ΔW‖ of each matrix type (``rel_error_by_kind``).

Before a cell is measured on a GPU, the kernels are compared with the reference path on every
packed DeltaLinear of the loaded model (``kernel_check``: the worst relative difference over a
decode- and a tile-sized batch); above ``KERNEL_TOL`` the cell is recorded as an error, since a
number measured through a broken kernel is worse than none (one run on a working tree whose
kernels were half edited measured the low-rank methods at the base's accuracy).

The fine-tune and the base are measured the same way (the rows every cell is compared with).
Each method has a floor: the budget at which it gives every matrix a delta at its cheapest
setting (BitDelta: 1 bit + a scale; RTN: 1 bit + group scales and zeros, 1.25 bits; DeltaZip:
2:4 + 2 bits, ~2 bits; Delta-CoMe and low-rank: none, their rank shrinks). Between half the
floor and the floor the pipeline's allocator leaves out the deltas of the matrices where they
buy least: such cells are marked † and record the share of matrix parameters that kept a
delta. Below half the floor a cell is skipped with the reason recorded (``--allow-partial``
runs it anyway). Calibration (Delta-CoMe's GPTQ, DeltaZip's SparseGPT, BitDelta's
distillation) reads train-split text of the task, never the held-out problems.

Writes ``quality.csv``, ``quality.json``, ``quality.md`` (tables per task and the goals) and
``quality.png`` (accuracy vs bits/param, one line per method, one panel per task) to ``--out``,
rows as they are measured (``quality-part-<task>.csv``, merged at the end). ``--merge`` joins
the ``quality.json`` of runs that measured different tasks (e.g. two GPU calls) into one report.

    python bench/quality.py --preset tiny --out /tmp/q                    # CPU, about a minute
    python bench/quality.py --preset gpu --zoo-dir /tmp/zoo --jobs 3 --out bench/results
    python bench/quality.py --merge runA/quality.json runB/quality.json --out bench/results

On one H100 (measured 2026-11-22): the ``gpu`` zoo's base + one fine-tune build in ~5 min with
evaluation (~6 min with the code fine-tune's 1800 steps), one task's 15 runnable cells take
~2.3 min (143 s), two tasks side by side (``--jobs 2``) ~3 min (176 s) — on a machine whose
Triton cache is warm. On a fresh machine each process first compiles every kernel variant it
meets and runs its cells ~3× slower (40–50 s per cell; docs/notes/2026-11-22-quality.md). With
the CUDA decode kernels (the ``auto`` backend's default on a GPU) the first use also builds the
extension (~2–3 min); ``DELTAPACK_CUDA_DECODE=0`` keeps the Triton path. Where a call is limited to 10 minutes, split by task — a fresh
machine rebuilds the zoo (GPU training is not bit-exact between runs, so each call's
fine-tune and base rows are its own; stamped models left in ``--zoo-dir`` are reused) — and
merge (a ``quality-part-<task>.csv`` of a run cut off by its limit merges too)::

    python bench/zoo/build.py --preset gpu --zoo-dir /tmp/zoo --out $OUT && \
        python bench/quality.py --preset gpu --zoo-dir /tmp/zoo --tasks arith --out $OUT
    python bench/zoo/build.py --preset gpu --zoo-dir /tmp/zoo --tasks code,format --out $OUT && \
        python bench/quality.py --preset gpu --zoo-dir /tmp/zoo --tasks code,format --out $OUT
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
# run as a script, bench/ is sys.path[0]; its kernels.py would then shadow the `kernels` package
# (Hugging Face's hub kernels) that transformers imports where it is installed
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:  # bench.zoo.build, when run as a script without PYTHONPATH=$PWD
    sys.path.insert(0, str(ROOT))

# method name -> (label, compress() options)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "delta-come": ("delta-come 8+3+2", {"method": "delta-come", "plan": "fixed"}),
    "delta-come-auto": ("delta-come auto", {"method": "delta-come", "plan": "auto"}),
    "bitdelta": ("bitdelta", {"method": "bitdelta"}),
    "bitdelta-distill": ("bitdelta + distill", {"method": "bitdelta", "distill": True}),
    "deltazip": ("deltazip", {"method": "deltazip"}),
    "lowrank": ("lowrank", {"method": "lowrank"}),
    "rtn": ("rtn", {"method": "rtn"}),
}
# Delta-CoMe's 8+3+2 schedule and alternatives that end in 1-bit singular vectors (sign grid):
# with --plan auto the allocation picks one per matrix (2 bits keep 75 % of a vector's energy,
# 1 bit 64 % for half the bytes, so a flat tail of the spectrum gets more rank at 1 bit)
SIGN_SCHEDULES = "8:2,3:32,2|8:2,3:32,2:64,1|8:2,2:32,1|8:2,1"
# measured only when named in --methods
EXTRA_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "delta-come-kl": ("delta-come auto, KL-weighted", {"method": "delta-come", "plan": "auto", "sensitivity": "kl"}),
    "delta-come-distill": ("delta-come 8+3+2 + distill", {"method": "delta-come", "plan": "fixed", "distill": True}),
    "delta-come-kl-distill": ("delta-come auto, KL-weighted + distill", {"method": "delta-come", "plan": "auto", "sensitivity": "kl", "distill": True}),
    "delta-come-kl-distill-scales": (
        "delta-come auto, KL-weighted + distill (s and group scales)",
        {"method": "delta-come", "plan": "auto", "sensitivity": "kl", "distill": True, "distill_scales": True},
    ),
    # quantization-aware: the singular vectors' codes trained too (straight-through latents on
    # the stored grid), beside the singular values and group scales; same bytes
    "delta-come-kl-distill-codes": (
        "delta-come auto, KL-weighted + distill (s, group scales and codes)",
        {"method": "delta-come", "plan": "auto", "sensitivity": "kl", "distill": True, "distill_scales": True, "distill_codes": True},
    ),
    # the same allocations offered plans with a 1-bit tail of singular vectors (sign grid)
    "delta-come-kl-sign": ("delta-come auto, KL-weighted, 1-bit tails", {"method": "delta-come", "plan": "auto", "sensitivity": "kl", "schedule": SIGN_SCHEDULES}),
    "delta-come-kl-distill-scales-sign": (
        "delta-come auto, KL-weighted + distill (s and group scales), 1-bit tails",
        {"method": "delta-come", "plan": "auto", "sensitivity": "kl", "distill": True, "distill_scales": True, "schedule": SIGN_SCHEDULES},
    ),
}
ALL_METHODS = {**METHODS, **EXTRA_METHODS}
BITS = (1.0, 0.5, 0.25, 0.125)
GOALS = {1.0: 0.99, 0.5: 0.99, 0.25: 0.97, 0.125: 0.94}  # share of the fine-tune's accuracy kept
CLEAR_LEAD = 0.2  # a fine-tune clearly beats its base by this much accuracy (bench/zoo/build.py's rule)
KERNEL_TOL = 0.05  # largest relative difference kernels vs reference accepted (bf16 dot path: ~1e-2)
MIN_SHARE = 0.5  # below half its floor a method could give fewer than half of the matrices a delta: skipped
FIELDS = [
    "task", "method", "label", "bits", "bits_per_param", "stored_bytes", "accuracy", "kept", "kl", "agree",
    "floor", "matrices", "dropped_matrices", "delta_share", "compress_s", "eval_s", "rel_error_by_kind", "kernel_check", "distill", "skipped", "error",
]
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head")


# ----------------------------------------------------------------------------- floors

def method_floor(base_dir: Path, ft_dir: Path, options: dict[str, Any]) -> float:
    """Smallest budget (bits/param, all stored bits) at which ``options``' method gives every
    matrix a delta: tensors stored raw plus each matrix at the method's cheapest setting
    (BitDelta: 1 bit + an fp16 scale; RTN: 1 bit with group scales and zeros; DeltaZip: 2:4 at
    2 bits). 0 for the low-rank methods, whose rank goes down to 1."""
    from deltapack import _core
    from deltapack.compress.hf import ModelDir
    from deltapack.compress.pipeline import CompressConfig, plan_targets
    from deltapack.compress.plan import quantized_bytes, sparse24_bytes

    cfg = CompressConfig(**{k: v for k, v in options.items() if k in ("method", "plan", "distill")})
    if cfg.method in ("delta-come", "lowrank"):
        return 0.0
    base, ft = ModelDir(base_dir), ModelDir(ft_dir)
    targets = plan_targets(base, ft, cfg)
    nbytes = sum(ft.nbytes(t.name) for t in targets if t.kind == "raw")
    for t in targets:
        if t.kind != "matrix":
            continue
        out, inp = t.shape
        if cfg.method == "bitdelta":
            nbytes += _core.packed_len(out, inp, 1) + 2
        elif cfg.method == "rtn":
            nbytes += quantized_bytes(out, inp, 1, cfg.group_size)
        elif cfg.method == "deltazip" and inp % 4 == 0:
            nbytes += sparse24_bytes(out, inp // 2, 2)
    return 8 * nbytes / sum(t.numel for t in targets)


# ----------------------------------------------------------------------------- one task

def _load_hf(path: Path, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()


def _write_calib(task: str, diff: dict[str, Any], eval_frac: float, path: Path, n: int = 1024) -> Path:
    """Train-split problems of the task in the fine-tune's format, blank-line separated."""
    from deltapack.zoo.tasks import get_task

    exs = get_task(task).examples(n, seed=99, split="train", eval_frac=eval_frac, stream="calibration", **diff)
    path.write_text("\n\n".join(e.prompt + e.target for e in exs) + "\n")
    return path


def run_task(task: str, opts: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (method, bits) cell of one task, plus the fine-tune and base rows. Appends each
    row to ``<out>/quality-part-<task>.csv`` as soon as it is measured."""
    import deltapack
    from deltapack.compress.pipeline import compress
    from deltapack.zoo import generate, next_token_kl, score
    from deltapack.zoo.build import base_dir_name, default_threads, finetune_dir_name
    from deltapack.zoo.evaluate import _difficulty_of
    from deltapack.zoo.presets import get_preset
    from deltapack.zoo.tasks import get_task
    from transformers import AutoTokenizer

    # one thread less than the cores (deltapack.zoo's rule): all of them spin against any other
    # busy process and a CPU run slows down tenfold
    torch.set_num_threads(opts.get("threads") or default_threads())
    p = get_preset(opts["preset"])
    zoo = Path(opts["zoo_dir"])
    base_dir = zoo / base_dir_name(p, opts["seed"])
    ft_dir = zoo / finetune_dir_name(task, p, opts["seed"])
    device, dtype = opts["device"], getattr(torch, opts["dtype"])
    work = Path(opts["work"]) / task
    work.mkdir(parents=True, exist_ok=True)
    part = Path(opts["out"]) / f"quality-part-{task}.csv"
    with open(part, "w", newline="") as fh:
        csv.DictWriter(fh, fieldnames=FIELDS).writeheader()

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        with open(part, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=FIELDS).writerow({k: row.get(k, "") for k in FIELDS})
        if not opts["quiet"]:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k in ("method", "bits", "bits_per_param", "accuracy", "kept", "kl", "skipped") and v not in ("", None)}
            print(f"[{task}] {shown}", flush=True)

    tok = AutoTokenizer.from_pretrained(str(ft_dir))
    ft = _load_hf(ft_dir, device, dtype)
    diff, eval_frac = _difficulty_of(ft, task, None, None)  # the fine-tune's own task settings
    t = get_task(task)
    eval_ex = t.examples(opts["n_eval"], seed=1234, split="eval", eval_frac=eval_frac, **diff)
    prompts = [e.prompt for e in eval_ex]
    max_new = max(len(tok.encode(e.target, add_special_tokens=False)) for e in eval_ex) + 8
    kl_ex = t.examples(opts["n_kl"], seed=4321, split="eval", eval_frac=eval_frac, **diff)
    kl_seqs = [torch.tensor([tok.bos_token_id] + tok.encode(e.prompt + e.target, add_special_tokens=False)) for e in kl_ex]
    calib = _write_calib(task, diff, eval_frac, work / "calib.txt")
    batch = opts["eval_batch"]

    def measure(model) -> dict[str, Any]:
        t0 = time.perf_counter()
        comps = generate(model, tok, prompts, max_new, batch_size=batch)
        acc = score(comps, eval_ex)
        kl = next_token_kl(model, ft, kl_seqs, batch_size=min(batch, 64))
        return {"accuracy": acc, "kl": kl, "completions": comps, "eval_s": time.perf_counter() - t0}

    rows: list[dict[str, Any]] = []
    ref = measure(ft)
    ft_acc, ft_comps = ref["accuracy"], ref["completions"]
    record({"task": task, "method": "fine-tune", "label": "fine-tune", "bits": 16.0, "bits_per_param": 16.0, "accuracy": ft_acc, "kept": 1.0, "kl": 0.0, "agree": 1.0, "eval_s": ref["eval_s"]})
    base = _load_hf(base_dir, device, dtype)
    m = measure(base)
    record({"task": task, "method": "base", "label": "base", "bits": 0.0, "bits_per_param": 0.0, "accuracy": m["accuracy"], "kept": m["accuracy"] / ft_acc if ft_acc else float("nan"), "kl": m["kl"], "agree": _agree(m["completions"], ft_comps), "eval_s": m["eval_s"]})
    del base

    floors = {name: method_floor(base_dir, ft_dir, ALL_METHODS[name][1]) for name in opts["methods"]}
    for bits in opts["bits"]:
        for name in opts["methods"]:
            label, kw = ALL_METHODS[name]
            row: dict[str, Any] = {"task": task, "method": name, "label": label, "bits": bits, "floor": floors[name]}
            if bits < MIN_SHARE * floors[name] and not opts["allow_partial"]:
                record({**row, "skipped": f"a delta for every matrix needs {floors[name]:.3f} bits/param"})
                continue
            path = work / f"{name}-{bits:g}.dpk"
            t0 = time.perf_counter()
            try:
                rep = compress(
                    base_dir, ft_dir, path, bits_per_param=bits, calib=str(calib), n_samples=opts["calib_samples"], seq_len=opts["calib_len"],
                    distill_steps=opts["distill_steps"], seed=opts["seed"], progress=False, **_distill_opts(opts), **kw,
                    **(opts.get("sets", {}) if kw.get("method") == "delta-come" else {}),
                )
            except ValueError as e:  # a budget the method cannot meet at all
                record({**row, "skipped": str(e).split("\n")[0][:200]})
                continue
            except Exception as e:  # noqa: BLE001 - one broken cell must not cost the rest of a GPU run
                traceback.print_exc()
                record({**row, "error": f"compress: {type(e).__name__}: {e}"[:300]})
                continue
            compress_s = time.perf_counter() - t0
            try:
                model = deltapack.load(base_dir, path, device=device, dtype=dtype)
                kcheck = kernel_check(model)
                if kcheck is not None and not kcheck <= KERNEL_TOL:  # numbers through a broken kernel are no numbers
                    raise RuntimeError(f"kernels differ from the reference path by {kcheck:.3g} (relative), more than {KERNEL_TOL}")
                m = measure(model)
            except Exception as e:  # noqa: BLE001 - recorded in the table, traceback on stderr
                traceback.print_exc()
                record({**row, "bits_per_param": rep.bits_per_param, "error": f"load/eval: {type(e).__name__}: {e}"[:300], "compress_s": compress_s})
                continue
            dropped = [r for r in rep.matrices if r.get("bits_per_param", 1.0) == 0.0]
            numel = sum(math.prod(r["shape"]) for r in rep.matrices)
            record({
                **row, "bits_per_param": rep.bits_per_param, "stored_bytes": rep.stored_bytes, "accuracy": m["accuracy"],
                "kept": m["accuracy"] / ft_acc if ft_acc else float("nan"), "kl": m["kl"], "agree": _agree(m["completions"], ft_comps),
                "matrices": len(rep.matrices), "dropped_matrices": len(dropped), "delta_share": 1 - sum(math.prod(r["shape"]) for r in dropped) / max(numel, 1),
                "compress_s": compress_s, "eval_s": m["eval_s"], "rel_error_by_kind": _error_by_kind(rep.matrices), "kernel_check": kcheck if kcheck is not None else "",
                "distill": _distill_summary(path) if kw.get("distill") else "",
            })
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            if not opts["keep_dpk"]:
                path.unlink(missing_ok=True)
    return rows


def parse_sets(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE items -> CompressConfig overrides (values read as JSON, else text)."""
    from deltapack.compress.pipeline import CompressConfig

    fields = set(CompressConfig.__dataclass_fields__)
    out: dict[str, Any] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or k not in fields:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY a compression option ({', '.join(sorted(fields))})")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _distill_opts(opts: dict[str, Any]) -> dict[str, Any]:
    """--distill-loss / --distill-lr when given (else the pipeline's defaults)."""
    return {k: opts[k] for k in ("distill_loss", "distill_lr") if opts.get(k) is not None}


def _distill_summary(path: Path) -> str:
    """What the distillation of a .dpk did, from its manifest: 'kl 0.512→0.301 kept, 14.2 s'."""
    import deltapack

    r = deltapack.open(path).manifest["method"]["params"].get("distill_result")
    if not r:
        return ""
    return f"{r['loss']} {r['before']:.4g}→{r['after']:.4g} {'kept' if r['kept'] else 'not kept (initial scales)'}, {r['seconds']:.1f} s"


@torch.no_grad()
def kernel_check(model, backend: str | None = None, rows: tuple[int, ...] = (4, 64), seed: int = 0) -> float | None:
    """Largest relative difference, over the model's packed DeltaLinear modules and a decode-
    and a tile-sized batch of random rows, between Δ·x from the kernels (``backend``, default:
    what the model runs) and from the reference path. None where no module runs kernels (CPU)."""
    from deltapack.kernels import ops
    from deltapack.kernels.packed import RowGroups
    from deltapack.nn import DeltaLinear

    worst = None
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if not isinstance(mod, DeltaLinear) or mod.table is None:
            continue
        dev, dt = mod.weight.device, mod.weight.dtype
        for m in rows:
            x = torch.randn(m, mod.in_features, generator=g).to(dev, dt)
            got = ops.delta_apply(x, torch.zeros(m, mod.out_features, device=dev, dtype=dt), mod.table, RowGroups.single(m, dev), backend=backend or mod.backend).float()
            ref = ops.delta_apply(x, torch.zeros(m, mod.out_features, device=dev, dtype=dt), mod.table, RowGroups.single(m, dev), backend="reference").float()
            rel = float((got - ref).norm() / ref.norm().clamp(min=1e-30))
            worst = rel if worst is None or not rel <= worst else worst
    return worst


def _error_by_kind(matrices: list[dict[str, Any]]) -> str:
    """Mean relative Frobenius error ‖ΔŴ − ΔW‖/‖ΔW‖ of each matrix type over the layers, e.g.
    ``"q_proj=0.41 ... lm_head=0.63"``: which matrices carry the error (1.0: no delta)."""
    by: dict[str, list[float]] = {}
    for r in matrices:
        kind = next((k for k in KINDS if k in r["name"]), "other")
        by.setdefault(kind, []).append(float(r.get("rel_error", float("nan"))))
    return " ".join(f"{k}={sum(v) / len(v):.3f}" for k, v in by.items())


def _agree(a: list[str], b: list[str]) -> float:
    from deltapack.zoo.tasks import extract_answer

    return sum(extract_answer(x) == extract_answer(y) for x, y in zip(a, b)) / max(len(a), 1)


# ----------------------------------------------------------------------------- reports

def _partial(r: dict[str, Any]) -> str:
    floor = r.get("floor")
    if floor in ("", None) or float(r["bits"]) >= float(floor):
        return ""
    return f" †{100 * float(r.get('delta_share') or 0):.0f}%"


def _fmt_pct(x: Any) -> str:
    return "—" if x in ("", None) or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.1f}%"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = [m for m in ALL_METHODS if any(r["method"] == m for r in rows)]
    bits = sorted({float(r["bits"]) for r in rows if r["method"] in ALL_METHODS}, reverse=True)
    cell = {(r["task"], r["method"], float(r["bits"])): r for r in rows}
    ref = {(r["task"], r["method"]): r for r in rows if r["method"] in ("fine-tune", "base")}
    lines = [
        f"# Quality per bit: every method on the `{meta['preset']}` zoo's fine-tunes",
        "",
        f"{meta['device']}, commit {meta['commit']}, {meta['date']}; inference through `deltapack.load` on {meta['device_kind']} in {meta['dtype']}. "
        f"Accuracy: exact match, greedy, {meta['n_eval']} held-out problems per task; kept: accuracy / the fine-tune's. "
        f"KL: mean KL(fine-tune ‖ model) per token over {meta['n_kl']} held-out problems with their worked answers. "
        f"bits/param counts every stored bit (codes, scales, zeros, singular values, raw norms) over all parameters that differ. "
        f"Calibration: {meta['calib_samples']} × {meta['calib_len']} tokens of train-split task text; scale distillation {meta['distill_steps']} steps"
        + (f", loss {meta['distill_loss']}" if meta.get("distill_loss") else "") + (f", lr {meta['distill_lr']:g}" if meta.get("distill_lr") else "")
        + (", delta-come options " + ", ".join(f"{k}={v}" for k, v in meta["sets"].items()) if meta.get("sets") else "") + ".",
        "",
    ]
    for t in tasks:
        ft, base = ref.get((t, "fine-tune"), {}), ref.get((t, "base"), {})
        lines += [
            f"## {t}: fine-tune {_fmt_pct(ft.get('accuracy'))}, base {_fmt_pct(base.get('accuracy'))} (KL to the fine-tune {float(base.get('kl', 'nan')):.4f})",
            "",
            "Accuracy (kept share of the fine-tune's):",
            "",
            "| method | " + " | ".join(f"{b:g} bit" for b in bits) + " |",
            "|---|" + "---|" * len(bits),
        ]
        for m in methods:
            cells = []
            for b in bits:
                r = cell.get((t, m, b))
                if r is None:
                    cells.append("")
                elif r.get("error"):
                    cells.append("error")
                elif r.get("skipped"):
                    cells.append("skipped")
                else:
                    mark = " ✓" if float(r["kept"]) >= GOALS.get(b, 1.0) else ""
                    cells.append(f"{_fmt_pct(r['accuracy'])} ({_fmt_pct(r['kept'])}){mark}{_partial(r)}")
            lines.append(f"| {ALL_METHODS[m][0]} | " + " | ".join(cells) + " |")
        lines += ["", "KL to the fine-tune @ actual bits/param:", "", "| method | " + " | ".join(f"{b:g} bit" for b in bits) + " |", "|---|" + "---|" * len(bits)]
        for m in methods:
            cells = []
            for b in bits:
                r = cell.get((t, m, b))
                if r is None or r.get("skipped") or r.get("error"):
                    cells.append("—")
                else:
                    drop = f", {r['dropped_matrices']} without delta" if r.get("dropped_matrices") else ""
                    cells.append(f"{float(r['kl']):.4f} @ {float(r['bits_per_param']):.3f}{drop}")
            lines.append(f"| {ALL_METHODS[m][0]} | " + " | ".join(cells) + " |")
        lines.append("")
    # goals: the worst task's kept share per method and budget; again without the tasks whose
    # fine-tune is not clearly ahead of its base (a kept share of a weak fine-tune is fragile)
    weak = [t for t in tasks if (t, "fine-tune") in ref and (t, "base") in ref and float(ref[(t, "fine-tune")]["accuracy"]) - float(ref[(t, "base")]["accuracy"]) < CLEAR_LEAD]
    lines += _goals_table(cell, methods, bits, tasks, "## Goals: share of the fine-tune's accuracy kept on every task (worst task shown)")
    if weak and len(weak) < len(tasks):
        strong = [t for t in tasks if t not in weak]
        lines += [
            "",
            f"Not clearly ahead of its base (fine-tune − base < {100 * CLEAR_LEAD:.0f} points): {', '.join(weak)}; "
            "a fine-tune that barely has the skill loses it under small perturbations, so its kept share says more about the fine-tune than the method.",
            "",
        ]
        lines += _goals_table(cell, methods, bits, strong, f"### Goals on the tasks whose fine-tune clearly beats its base ({', '.join(strong)})")
    lines += ["", "✓: goal met. †: budget below the method's floor (a delta for every matrix); the share of matrix parameters that kept a delta follows."]
    skipped = sorted({(r["method"], r["skipped"]) for r in rows if r.get("skipped")})
    if skipped:
        lines += ["", "Skipped (budget below half the floor): " + "; ".join(f"{ALL_METHODS[m][0]}: {why}" for m, why in skipped) + "."]
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines += ["", "**Errors** (traceback in the run's log):", ""] + [f"- {r['task']}, {ALL_METHODS[r['method']][0]} at {float(r['bits']):g} bit: `{r['error']}`" for r in errors]
    return "\n".join(lines) + "\n"


def _goals_table(cell: dict, methods: list[str], bits: list[float], tasks: list[str], title: str) -> list[str]:
    lines = [title, "", "| method | " + " | ".join(f"{b:g} bit (goal {100 * GOALS.get(b, 1.0):.0f}%)" for b in bits) + " |", "|---|" + "---|" * len(bits)]
    for m in methods:
        cells = []
        for b in bits:
            rs = [cell.get((t, m, b)) for t in tasks]
            if any(r is None or r.get("skipped") or r.get("error") for r in rs):
                cells.append("—")
                continue
            worst = min(rs, key=lambda r: float(r["kept"]))
            ok = float(worst["kept"]) >= GOALS.get(b, 1.0)
            cells.append(f"{_fmt_pct(worst['kept'])} ({worst['task']}) {'✓' if ok else '✗'}")
        lines.append(f"| {ALL_METHODS[m][0]} | " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.2), squeeze=False, sharey=True)
    for ax, t in zip(axes[0], tasks):
        tr = [r for r in rows if r["task"] == t]
        ref = {r["method"]: float(r["accuracy"]) for r in tr if r["method"] in ("fine-tune", "base")}
        bits = sorted({float(r["bits"]) for r in tr if r["method"] in ALL_METHODS})
        for i, (m, (label, _)) in enumerate(ALL_METHODS.items()):  # one colour per method in every panel
            pts = sorted((float(r["bits"]), 100 * float(r["accuracy"])) for r in tr if r["method"] == m and r.get("accuracy") not in ("", None))
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label, color=plt.get_cmap("tab20")(i % 20), ls="--" if "distill" in m else "-")
        if "fine-tune" in ref:
            ax.axhline(100 * ref["fine-tune"], color="black", ls="--", lw=1, label="fine-tune")
            if bits:
                ax.step(bits, [100 * ref["fine-tune"] * GOALS.get(b, 1.0) for b in bits], where="mid", color="grey", ls=":", lw=1.2, label="goal")
        if "base" in ref:
            ax.axhline(100 * ref["base"], color="tab:red", ls=":", lw=1, label="base")
        ax.set_xscale("log", base=2)
        if bits:
            ax.set_xticks(bits, [f"{b:g}" for b in bits])
        ax.set_xlabel("bits / parameter (all stored bits)")
        ax.set_title(t)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("exact-match accuracy (%)")
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    ncol = min(len(handles), 5)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.035 * math.ceil(len(handles) / ncol) + 0.01, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _read_part(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            for k in ("bits", "bits_per_param", "accuracy", "kept", "kl", "agree", "floor", "delta_share", "compress_s", "eval_s"):
                if r.get(k) not in ("", None):
                    r[k] = float(r[k])
            for k in ("stored_bytes", "matrices", "dropped_matrices"):
                if r.get(k) not in ("", None):
                    r[k] = int(r[k])
            out.append(r)
    return out


def write_results(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    order = {m: i for i, m in enumerate(["fine-tune", "base", *ALL_METHODS])}
    rows = sorted(rows, key=lambda r: (r["task"], -float(r["bits"]) if r["method"] in ALL_METHODS else 0, order.get(r["method"], 99)))
    with open(out / "quality.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})
    (out / "quality.json").write_text(json.dumps({"meta": meta, "rows": [{k: r.get(k) for k in FIELDS if r.get(k) not in ("", None)} for r in rows]}, indent=1) + "\n")
    text = markdown(rows, meta)
    (out / "quality.md").write_text(text)
    plot(rows, out / "quality.png", f"accuracy vs bits/param — {meta['preset']} zoo, {meta['device']}, {meta['commit']}")
    return text


def merge(paths: list[Path], out: Path) -> str:
    """One report from several runs' quality.json, each on its own tasks. A path ending in .csv
    is a ``quality-part-<task>.csv`` of a run that was cut off before writing its report: its
    rows are taken as they are, with the ``quality-meta.json`` beside it."""
    rows: list[dict[str, Any]] = []
    metas = []
    seen: dict[str, Path] = {}
    for path in paths:
        if path.suffix == ".csv":  # quality-part-<task>.csv of a run cut off before its report
            meta_path = path.parent / "quality-meta.json"
            part_meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            d = {"meta": {**part_meta, "partial": True}, "rows": _read_part(path)}
        else:
            d = json.loads(path.read_text())
        tasks = {r["task"] for r in d["rows"]}
        for t in tasks:
            if t in seen:
                raise SystemExit(f"task {t!r} is in both {seen[t]} and {path}")
            seen[t] = path
        metas.append(d["meta"])
        rows += d["rows"]
    meta = dict(metas[0])
    for k in ("device", "commit", "date", "dtype", "preset"):
        vals = list(dict.fromkeys(str(m.get(k)) for m in metas))
        meta[k] = " + ".join(vals)
    meta["merged_from"] = [str(p) for p in paths]
    meta["seconds"] = sum(float(m.get("seconds", 0)) for m in metas)
    return write_results(rows, meta, out)


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    from bench.zoo.build import build_zoo, commit_id, device_name
    from deltapack.zoo import PRESETS, TASKS, parse_task_list

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpu", choices=sorted(PRESETS))
    ap.add_argument("--zoo-dir", default=None, help="the zoo's model directories (built there if missing; default ~/.cache/deltapack/zoo)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(ALL_METHODS))
    ap.add_argument("--bits", default=",".join(f"{b:g}" for b in BITS), help="budgets in bits/param")
    ap.add_argument("--n-eval", type=int, default=200, help="held-out problems per task for accuracy")
    ap.add_argument("--n-kl", type=int, default=64, help="held-out problems per task for the KL")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    ap.add_argument("--work", default=None, help="scratch directory for .dpk files (default: <zoo-dir>/quality)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--dtype", default=None, help="model dtype (default: bfloat16 on a GPU, float32 on a CPU)")
    ap.add_argument("--jobs", type=int, default=None, help="tasks measured at a time, one process each (default: 3 on a GPU, 1 on a CPU)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per process")
    ap.add_argument("--seed", type=int, default=0, help="zoo seed (and compression seed)")
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--distill-steps", type=int, default=200, help="scale distillation steps (BitDelta paper: 200)")
    ap.add_argument("--distill-loss", choices=["kl", "mse"], default=None, help="scale distillation loss (default: the pipeline's)")
    ap.add_argument("--distill-lr", type=float, default=None, help="scale distillation learning rate (default: the pipeline's per method)")
    ap.add_argument("--eval-batch", type=int, default=None, help="generation batch (default: 256 on a GPU, 100 on a CPU)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="a compression option for every delta-come cell (CompressConfig field, e.g. whiten=1); repeatable")
    ap.add_argument("--allow-partial", action="store_true", help="also run budgets below half a method's floor")
    ap.add_argument("--keep-dpk", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--merge", nargs="+", metavar="QUALITY_JSON", help="join the quality.json of runs on different tasks into --out; measures nothing")
    a = ap.parse_args(argv)
    if a.merge:
        print(merge([Path(m) for m in a.merge], Path(a.out)))
        return 0

    try:
        tasks = parse_task_list(a.tasks)
    except ValueError as e:
        ap.error(str(e))
    methods = [m for m in a.methods.split(",") if m]
    for m in methods:
        if m not in ALL_METHODS:
            ap.error(f"unknown method {m!r}; choose from {', '.join(ALL_METHODS)}")
    bits = [float(b) for b in a.bits.split(",") if b]
    try:
        sets = parse_sets(a.sets)
    except ValueError as e:
        ap.error(str(e))
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = a.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    jobs = a.jobs or (3 if device.startswith("cuda") else 1)
    zoo_dir = Path(a.zoo_dir or Path.home() / ".cache" / "deltapack" / "zoo")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    build_zoo(a.preset, zoo_dir, tasks, a.seed, n_eval=0, jobs=jobs, device=device, threads=a.threads, evaluate_models=False)  # reuses stamped models
    zoo_s = time.perf_counter() - t0
    opts = {
        "preset": a.preset, "zoo_dir": str(zoo_dir), "seed": a.seed, "device": device, "dtype": dtype, "methods": methods, "bits": bits,
        "n_eval": a.n_eval, "n_kl": a.n_kl, "out": str(out), "work": str(Path(a.work or zoo_dir / "quality")), "threads": a.threads,
        "calib_samples": a.calib_samples, "calib_len": a.calib_len, "distill_steps": a.distill_steps,
        "distill_loss": a.distill_loss, "distill_lr": a.distill_lr, "sets": sets,
        "eval_batch": a.eval_batch or (256 if device.startswith("cuda") else 100), "allow_partial": a.allow_partial, "keep_dpk": a.keep_dpk, "quiet": a.quiet,
    }
    meta = {
        "preset": a.preset, "device": device_name(device), "device_kind": device, "dtype": dtype, "commit": commit_id(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "n_eval": a.n_eval, "n_kl": a.n_kl,
        "calib_samples": a.calib_samples, "calib_len": a.calib_len, "distill_steps": a.distill_steps, "zoo_seconds": zoo_s,
        "distill_loss": a.distill_loss, "distill_lr": a.distill_lr, "sets": sets,
        "torch": torch.__version__, "jobs": jobs,
    }
    # for --merge of the part CSVs if this run is cut off (removed with the parts at the end)
    (out / "quality-meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    rows: list[dict[str, Any]] = []
    if jobs > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=get_context("spawn")) as pool:
            for r in [pool.submit(run_task, t, opts) for t in tasks]:
                r.result()
    else:
        for t in tasks:
            run_task(t, opts)
    for t in tasks:  # the parts hold every row, in the form the CSV keeps
        part = out / f"quality-part-{t}.csv"
        rows += _read_part(part)
        part.unlink()
    (out / "quality-meta.json").unlink()
    meta["seconds"] = time.perf_counter() - t0
    print(write_results(rows, meta, out))
    print(f"total {meta['seconds']:.0f} s (zoo {zoo_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
