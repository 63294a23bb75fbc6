"""``python -m deltapack.zoo --preset tiny --out DIR --tasks arith,code,format``

Builds (or reuses) the base and one fine-tune per task, then prints the exact-match accuracy
of the base and of each fine-tune on every task, the build times and the size of each delta.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import PRESETS, TASKS, build_base, build_finetune, delta_stats, evaluate, get_preset, parse_task_list


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deltapack.zoo", description=__doc__.split("\n\n")[1])
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--out", required=True, help="directory that receives the model directories")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, from: " + ", ".join(TASKS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=100, help="eval examples per task")
    ap.add_argument("--eval-seed", type=int, default=1234)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: cores - 1)")
    ap.add_argument("--force", action="store_true", help="rebuild even if a stamped model is there")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)

    try:
        tasks = parse_task_list(a.tasks)
    except ValueError as e:
        ap.error(str(e))
    p = get_preset(a.preset)
    kw = dict(device=a.device, threads=a.threads, quiet=a.quiet, force=a.force)

    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]deltapack zoo[/]: preset {p.name} ({p.n_params / 1e6:.2f} M params), seed {a.seed} -> {a.out}")
    t0 = time.perf_counter()
    base = build_base(a.out, p, a.seed, **kw)
    times = {"base": time.perf_counter() - t0}
    con.print(f"base      {base}  ({times['base']:.1f} s)")
    fts = {}
    for t in tasks:
        t1 = time.perf_counter()
        fts[t] = build_finetune(base, a.out, t, p, a.seed, **kw)
        times[t] = time.perf_counter() - t1
        con.print(f"{t:<9} {fts[t]}  ({times[t]:.1f} s)")

    table = Table(title=f"exact-match accuracy, greedy, n={a.n} eval examples per task")
    table.add_column("model", no_wrap=True)
    for t in tasks:
        table.add_column(t, justify="right")
    for name, d in [("base", base), *[(f"ft:{t}", fts[t]) for t in tasks]]:
        accs = [evaluate(d, t, n=a.n, seed=a.eval_seed, device=a.device, threads=a.threads) for t in tasks]
        table.add_row(name, *[f"{x:.1%}" for x in accs])
    con.print(table)

    dt = Table(title="‖ΔW‖/‖W_base‖ per matrix type (all layers)")
    dt.add_column("ft", no_wrap=True)
    kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"]
    for k in kinds:
        dt.add_column(k.replace("_proj", "").replace("embed_tokens", "emb").replace("lm_head", "head"), justify="right", no_wrap=True)
    for t in tasks:
        s = delta_stats(base, fts[t])
        dt.add_row(t, *[f"{s[k]['rel']:.2f}" for k in kinds])
    con.print(dt)
    con.print(f"total {time.perf_counter() - t0:.1f} s (build: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
