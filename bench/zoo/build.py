"""Build the model zoo of a preset and report it: base + one full fine-tune per task, each
evaluated on every task's held-out split, with the size of each delta.

    python bench/zoo/build.py                                  # preset gpu (one H100: ~5 min, measured)
    python bench/zoo/build.py --preset tiny --out bench/results/tiny_cpu  # CPU: 45 s on 2 cores
    python bench/zoo/build.py --preset gpu --zoo-dir /tmp/zoo --jobs 3 --out $OUT

Everything is trained by :mod:`deltapack.zoo` (deterministic in preset and seed; on the CPU
byte-identical): this script only schedules the builds — the fine-tunes, which depend on the
base alone, run ``--jobs`` at a time in their own processes (on one GPU each step of these
small models is bound by launch and Python overhead, so three processes overlap well) — and
evaluates and writes the report. Models already built with the same stamp are reused.

Report (``--out``): ``zoo_<preset>.json`` and ``zoo_<preset>.md``: exact-match accuracy of the
base and of each fine-tune on each task (greedy, ``--n-eval`` held-out problems), whether each
fine-tune beats the base on its own task, ‖ΔW‖/‖W‖ per matrix type, build times, training
losses, an example completion per task, and the device, commit and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from deltapack.zoo import PRESETS, TASKS, build_base, build_finetune, delta_stats, evaluate, get_preset, parse_task_list, read_stamp
from deltapack.zoo.build import STAMP

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head")
CLEARLY_BEATS = 0.2  # a fine-tune "clearly beats" the base on its task by at least this much accuracy


def commit_id() -> str:
    """DELTAPACK_COMMIT (the device copy has no .git), else git's short HEAD, else 'unknown'."""
    env = os.environ.get("DELTAPACK_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _eval_model(model_dir: Path, tasks: list[str], n_eval: int, device: str | None, threads: int | None) -> dict[str, Any]:
    """Accuracy on each task and one example completion per task."""
    acc, examples = {}, {}
    for t in tasks:
        a, details = evaluate(model_dir, t, n=n_eval, device=device, threads=threads, return_details=True)
        acc[t] = a
        ex, comp = details[0]
        examples[t] = {"prompt": ex.prompt, "completion": comp, "answer": ex.answer}
    return {"accuracy": acc, "examples": examples}


def _finetune_job(base_dir: str, zoo_dir: str, task: str, preset: Any, seed: int, tasks: list[str], n_eval: int, device: str | None, threads: int | None, force: bool, quiet: bool) -> dict[str, Any]:
    """Build (or reuse) one fine-tune and evaluate it; runs in a worker process."""
    t0, wall0 = time.perf_counter(), time.time()
    ft = build_finetune(base_dir, zoo_dir, task, preset, seed, device=device, threads=threads, quiet=quiet, force=force)
    built_s = time.perf_counter() - t0
    stats = delta_stats(base_dir, ft)
    return {
        "task": task, "dir": str(ft), "seconds": built_s, "reused": _reused(ft, wall0), "stamp": read_stamp(ft),
        "delta": {k: stats[k] for k in KINDS if k in stats}, **_eval_model(ft, tasks, n_eval, device, threads),
    }


def _reused(model_dir: Path, since: float) -> bool:
    """Whether the stamped model predates this run (a build whose stamp matched was skipped)."""
    return (Path(model_dir) / STAMP).stat().st_mtime < since


def build_zoo(
    preset: str,
    zoo_dir: str | os.PathLike[str],
    tasks: list[str] | None = None,
    seed: int = 0,
    n_eval: int = 200,
    jobs: int = 1,
    device: str | None = None,
    threads: int | None = None,
    force: bool = False,
    quiet: bool = True,
    evaluate_models: bool = True,
) -> dict[str, Any]:
    """Build base + fine-tunes (reusing stamped ones) and return the report as a dict."""
    p = get_preset(preset)
    tasks = list(tasks or TASKS)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    zoo_dir = Path(zoo_dir)
    t0, wall0 = time.perf_counter(), time.time()
    base = build_base(zoo_dir, p, seed, device=device, threads=threads, quiet=quiet, force=force)
    base_s = time.perf_counter() - t0
    n = n_eval if evaluate_models else 0
    t1 = time.perf_counter()
    args = [(str(base), str(zoo_dir), t, p, seed, tasks if n else [], n, device, threads, force, quiet) for t in tasks]
    if jobs > 1 and len(tasks) > 1:
        # spawn: CUDA cannot be used in forked children; each worker sets up its own context
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_finetune_job, *a) for a in args]
            base_eval = _eval_model(base, tasks, n, device, threads) if n else {"accuracy": {}, "examples": {}}
            fts = [f.result() for f in futures]
    else:
        fts = [_finetune_job(*a) for a in args]
        base_eval = _eval_model(base, tasks, n, device, threads) if n else {"accuracy": {}, "examples": {}}
    ft_wall = time.perf_counter() - t1
    stamp = read_stamp(base) or {}
    report = {
        "meta": {
            "preset": p.name,
            "seed": seed,
            "device": device_name(device),
            "commit": commit_id(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "n_eval": n_eval,
            "jobs": jobs,
            "n_params": stamp.get("n_params", p.n_params),
            "preset_settings": p.to_dict(),
        },
        "zoo_dir": str(zoo_dir),
        "seconds": {"base": base_s, "finetunes_wall": ft_wall, "total": time.perf_counter() - t0, **{f"ft:{f['task']}": f["seconds"] for f in fts}},
        "base": {"dir": str(base), "stamp": stamp, "reused": _reused(base, wall0), **base_eval},
        "finetunes": {f["task"]: f for f in fts},
    }
    if n:
        report["beats_base"] = {
            f["task"]: {"finetune": f["accuracy"][f["task"]], "base": base_eval["accuracy"][f["task"]], "clearly": f["accuracy"][f["task"]] - base_eval["accuracy"][f["task"]] >= CLEARLY_BEATS}
            for f in fts
        }
    return report


def markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    tasks = list(report["finetunes"])
    secs = report["seconds"]
    reused = report["base"]["reused"] or any(report["finetunes"][t]["reused"] for t in tasks)
    lines = [
        f"# Model zoo, preset `{m['preset']}` (seed {m['seed']})",
        "",
        f"{m['device']}, commit {m['commit']}, {m['date']}; torch {m['torch']}, Python {m['python']}. "
        f"{m['n_params'] / 1e6:.2f} M parameters per model. Built in {secs['total']:.0f} s: base {secs['base']:.0f} s, "
        f"fine-tunes {secs['finetunes_wall']:.0f} s wall with evaluation ({m['jobs']} at a time: "
        + ", ".join(f"{t} {secs[f'ft:{t}']:.0f} s" for t in tasks)
        + ")."
        + (" Models whose stamp matched were reused: " + ", ".join(n for n, r in [("base", report["base"]["reused"]), *[(f"ft:{t}", report["finetunes"][t]["reused"]) for t in tasks]] if r) + "; their training times are in the stamps below." if reused else ""),
        "",
    ]
    if report["base"]["accuracy"]:
        lines += [
            f"Exact-match accuracy, greedy, {m['n_eval']} held-out problems per task:",
            "",
            "| model | " + " | ".join(tasks) + " |",
            "|---|" + "---|" * len(tasks),
            "| base | " + " | ".join(f"{100 * report['base']['accuracy'][t]:.1f}%" for t in tasks) + " |",
        ]
        for ft in tasks:
            acc = report["finetunes"][ft]["accuracy"]
            lines.append(f"| ft:{ft} | " + " | ".join(("**" if t == ft else "") + f"{100 * acc[t]:.1f}%" + ("**" if t == ft else "") for t in tasks) + " |")
        lines.append("")
        missed = [t for t, b in report["beats_base"].items() if not b["clearly"]]
        lines.append(
            f"Every fine-tune beats the base on its own task by ≥{100 * CLEARLY_BEATS:.0f} points."
            if not missed
            else f"**Not clearly ahead of the base (<{100 * CLEARLY_BEATS:.0f} points): {', '.join(missed)}.**"
        )
        lines.append("")
    lines += [
        "‖ΔW‖_F / ‖W_base‖_F per matrix type (all layers together):",
        "",
        "| fine-tune | " + " | ".join(k.replace("_proj", "") for k in KINDS) + " |",
        "|---|" + "---|" * len(KINDS),
    ]
    for ft in tasks:
        d = report["finetunes"][ft]["delta"]
        lines.append(f"| {ft} | " + " | ".join(f"{d[k]['rel']:.3f}" if k in d else "—" for k in KINDS) + " |")
    lines += ["", "Training loss (first → last logged step):", ""]
    for name, st in [("base", report["base"]["stamp"]), *[(f"ft:{t}", report["finetunes"][t]["stamp"]) for t in tasks]]:
        if st and "loss_first_last" in st:
            a, b = st["loss_first_last"]
            lines.append(f"- {name}: {a:.3f} → {b:.3f} ({st.get('train_seconds', float('nan')):.0f} s in the training loop on {st.get('device', '?')})")
    if report["base"]["examples"]:
        lines += ["", "One held-out problem per task, base and fine-tune:", ""]
        for t in tasks:
            ex = report["finetunes"][t]["examples"][t]
            lines += [
                f"- **{t}** prompt `{ex['prompt']!r}` (answer `{ex['answer']}`)",
                f"  - base: `{report['base']['examples'][t]['completion']!r}`",
                f"  - ft:{t}: `{ex['completion']!r}`",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpu", choices=sorted(PRESETS))
    ap.add_argument("--zoo-dir", default=None, help="where the model directories go (default: ~/.cache/deltapack/zoo)")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, from: " + ", ".join(TASKS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-eval", type=int, default=200, help="held-out problems per task")
    ap.add_argument("--jobs", type=int, default=None, help="fine-tunes at a time (default: 3 on a GPU, 1 on a CPU)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: cores - 1)")
    ap.add_argument("--out", default=None, help="directory for zoo_<preset>.json / .md (default: print only)")
    ap.add_argument("--force", action="store_true", help="rebuild even if stamped models are there")
    ap.add_argument("--progress", action="store_true", help="training progress bars")
    a = ap.parse_args(argv)
    try:
        tasks = parse_task_list(a.tasks)
    except ValueError as e:
        ap.error(str(e))
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    jobs = a.jobs or (3 if device.startswith("cuda") else 1)
    zoo_dir = Path(a.zoo_dir or Path.home() / ".cache" / "deltapack" / "zoo")
    report = build_zoo(a.preset, zoo_dir, tasks, a.seed, a.n_eval, jobs, device, a.threads, a.force, quiet=not a.progress)
    text = markdown(report)
    print(text, flush=True)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"zoo_{a.preset}.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        (out / f"zoo_{a.preset}.md").write_text(text)
    missed = [t for t, b in report.get("beats_base", {}).items() if not b["clearly"]]
    if missed:
        print(f"warning: fine-tunes not clearly ahead of the base: {', '.join(missed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
