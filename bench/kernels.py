"""Multi-delta kernels on Llama-7B/8B layer shapes (GPU): time per batch against the byte floor
and against three baselines measured in the same run.

For each layer shape, method (at its budget), batch rows B and distinct deltas D ∈ {1, B}:

- ``base``: the base GEMM alone (``torch.matmul``, cuBLAS);
- ``ours``: base GEMM + the delta kernels (Triton, or CUDA where it is used) on the packed data;
- ``fused``: (Triton or CUDA, per-row decode batches) the base GEMV computed inside the delta
  launch;
- ``delta``: the delta kernels alone;
- ``torch_deq``: base GEMM + plain PyTorch dequantize-then-matmul of the same packed deltas
  (per distinct delta; low-rank factors dequantized, never the dense matrix);
- ``dense``: one merged bf16 weight per distinct delta (per-tenant copies), one bmm / GEMM;
- ``floor``: (base weight + active delta bytes + activations) at the measured copy bandwidth.

Then a decode step over a stack of Llama-7B layers' seven projections, captured in a CUDA
graph: base only vs one delta vs 32 distinct deltas (B = 32), with the delta launches after
cuBLAS and (Triton or CUDA, per-row batches) with the base fused into them (for Delta-CoMe and
BitDelta). Times are medians of ``triton.testing.do_bench`` over CUDA-graph replays of one call
(CUDA events, L2 flushed between repetitions; the eager time of ``ours`` is kept in the CSV).
Writes ``kernels_<gpu>.csv`` / ``.json`` / ``.md`` (with a goals table) and a plot under
``--out``, after every (shape, method) too.

    python bench/kernels.py --backend cuda --out bench/results    # full sweep (~8 min on an H100, plus the CUDA build)
    python bench/kernels.py --quick --out /tmp/k                  # a few shapes and batch sizes
    python bench/kernels.py --merge a.json b.json --out dir       # one report from a split sweep
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

import torch
import triton

from deltapack.kernels.packed import DeltaTable, KernelDelta, RowGroups
from deltapack.kernels.synthetic import write_synthetic
from deltapack.kernels.triton import fusable

SHAPES = {  # (out, in): Llama-2-7B q/k/v/o, gate/up, down; Llama-3-8B gate/up, down
    "4096x4096": (4096, 4096),
    "11008x4096": (11008, 4096),
    "4096x11008": (4096, 11008),
    "14336x4096": (14336, 4096),
    "4096x14336": (4096, 14336),
}
METHODS = {  # label: (method, bits/param, writer options)
    "delta-come@1": ("delta-come", 1.0, {}),
    "delta-come@0.5": ("delta-come", 0.5, {}),
    "bitdelta@1": ("bitdelta", 1.0, {}),
    "lowrank@1": ("lowrank", 1.0, {}),
    "lowrank@0.5": ("lowrank", 0.5, {}),
    "deltazip@2": ("deltazip", 2.0, {"bits": 2}),  # 2:4 + 2-bit: its smallest budget
}
BATCHES = (1, 2, 4, 8, 16, 32, 64, 512, 2048)
BASELINE_MAX_D = 64  # per-tenant dense copies and per-delta PyTorch loops beyond this: not run
N_SOURCES = 4  # distinct random deltas generated per (shape, method); more are device copies
DECODE_METHODS = ("bitdelta@1", "delta-come@1")  # the decode step runs for those of these in --methods (the first also runs the base-only steps: for BitDelta the fused one is the lean GEMV)
DECODE_SHAPES = ("4096x4096", "11008x4096", "4096x11008")


def commit() -> str:
    if os.environ.get("DELTAPACK_COMMIT"):
        return os.environ["DELTAPACK_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


_GRAPH_FAILS: set[str] = set()


# How L2 is flushed before each timed call (--flush): "write" (triton.testing.do_bench: zeroes a
# 256 MB buffer, the default of every run so far) leaves L2 full of dirty lines, and the timed
# call's reads then evict them: their write-back shares DRAM with it. "read" (reads a 256 MB buffer)
# leaves L2 clean, as between a decode step's layers. H100, one row (bench/device/gemv_lab.py
# --flush-study, bench/results/kernels_h100_s10/call2): cuBLAS 4096² 22.2 µs write, 17.8 read
# (14.6 unflushed); 14336×4096 53.8 / 44.2.
FLUSH = "write"
_flush_buf: list[torch.Tensor] = []


def _time_read_flushed(fn, rep_ms: float) -> float:
    """Median ms of ``fn`` after a read of 256 MB (L2 left clean), CUDA events around each call;
    as many calls as fit in about ``rep_ms``."""
    if not _flush_buf:
        _flush_buf.append(torch.empty(64 << 20, dtype=torch.int32, device="cuda"))
    buf = _flush_buf[0]
    for _ in range(3):
        fn()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    b.synchronize()
    # at most 200 calls: each pays a 256 MB read (~0.1 ms) besides the call, and call 6 of session
    # 10 (up to 1000) covered only three of the five shapes in 555 s; a median of 200 is plenty
    n = int(max(10, min(200, rep_ms / max(a.elapsed_time(b), 1e-3))))
    evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for s_, e_ in evs:
        buf.sum(dtype=torch.int64)
        s_.record()
        fn()
        e_.record()
    torch.cuda.synchronize()
    ts = sorted(s_.elapsed_time(e_) for s_, e_ in evs)
    return float(ts[len(ts) // 2])


def _timed(fn, rep: int) -> float:
    if FLUSH == "read":
        return _time_read_flushed(fn, rep)
    return float(triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median"))


def bench_ms(fn, rep: int = 40, graph: bool = True, what: str = "") -> float:
    """Median ms per call, L2 flushed before each (:data:`FLUSH`: triton.testing.do_bench's write
    flush, or a read flush). With ``graph`` the
    call is captured once in a CUDA graph and the graph replayed, so the time is the GPU's and
    not Python's launch overhead (as a serving loop with graphs sees it; the eager numbers of
    multi-launch paths varied 2× between runs with the host's speed). A call that cannot be
    captured is timed eagerly (noted once per ``what``)."""
    if graph:
        try:
            fn()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            ms = _timed(g.replay, rep)
            del g
            return ms
        except Exception as e:  # noqa: BLE001 - time it eagerly instead
            torch.cuda.synchronize()
            if what not in _GRAPH_FAILS:
                _GRAPH_FAILS.add(what)
                print(f"  ({what or 'a call'} not capturable in a CUDA graph, timed eagerly: {type(e).__name__}: {e})")
    return _timed(fn, rep)


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy, bytes read + written per second."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), rep=100, graph=False)
    return 2 * nbytes / (ms * 1e-3)


class DeltaPool:
    """Distinct device copies of a few random deltas of one (shape, method)."""

    def __init__(self, shape: tuple[int, int], method: str, bpp: float, kw: dict, tmp: Path, seed: int):
        out, inp = shape
        self.sources = []
        for i in range(N_SOURCES):
            f = write_synthetic(tmp / f"{method}-{out}x{inp}-{i}.dpk", [("w", out, inp, method, bpp)], seed=seed + i, **kw)
            self.sources.append(KernelDelta.from_entry(f, f.manifest["deltas"][0], shape, device="cuda"))
        self.copies: list[KernelDelta] = []

    def take(self, d: int) -> list[KernelDelta]:
        while len(self.copies) < d:
            self.copies.append(self.sources[len(self.copies) % N_SOURCES].to("cuda"))
        return self.copies[:d]


def run_layer(shape, label, pool: DeltaPool, batches, bw: float, dtype, delta_apply, fused_apply, rows: list[dict], distinct: str = "both") -> None:
    out, inp = shape
    W = torch.randn(out, inp, device="cuda", dtype=dtype) / inp**0.5
    for B in batches:
        for D in sorted({"both": {1, B}, "one": {1}, "all": {B}}[distinct]):
            try:
                deltas = pool.take(D)
            except torch.OutOfMemoryError:
                print(f"  skip {label} B={B} D={D}: out of memory for {D} deltas")
                continue
            tab = DeltaTable.build(deltas)
            slots = torch.arange(B) % D
            groups = RowGroups.per_row(slots.cuda()) if (D == B and B <= 64) else RowGroups.segments(slots, "cuda")
            x = torch.randn(B, inp, device="cuda", dtype=dtype)
            y = torch.empty(B, out, device="cuda", dtype=dtype)
            t = torch.empty(B, max(1, tab.max_rank), device="cuda", dtype=torch.float32)

            def ours():
                torch.matmul(x, W.T, out=y)
                delta_apply(x, y, tab, groups, t=t)

            r = {"shape": f"{out}x{inp}", "method": label, "B": B, "D": D}
            r["base_ms"] = bench_ms(lambda: torch.matmul(x, W.T, out=y), what="base")
            r["ours_ms"] = bench_ms(ours, what=f"ours {label}")
            r["ours_eager_ms"] = bench_ms(ours, graph=False)  # with Python's launch overhead
            r["delta_ms"] = bench_ms(lambda: delta_apply(x, y, tab, groups, t=t), what=f"delta {label}")
            if fused_apply is not None and fusable(groups, B):
                r["fused_ms"] = bench_ms(lambda: fused_apply(x, y, tab, groups, t=t, base=W), what=f"fused {label}")
            delta_bytes = tab.nbytes()
            act = (B * inp + B * out) * x.element_size()
            r["delta_bytes"] = delta_bytes
            r["floor_ms"] = (W.numel() * W.element_size() + delta_bytes + act) / bw * 1e3
            r["ours_GBps"] = (W.numel() * W.element_size() + delta_bytes + act) / (r["ours_ms"] * 1e-3) / 1e9
            if D <= BASELINE_MAX_D:
                used = deltas
                idx = [(slots == d).nonzero().squeeze(1).cuda() for d in range(D)]

                def torch_deq():
                    torch.matmul(x, W.T, out=y)
                    for d, rows_d in zip(used, idx):
                        y.index_add_(0, rows_d, d.forward_reference(x.index_select(0, rows_d)).to(dtype))

                r["torch_deq_ms"] = bench_ms(torch_deq, rep=20, what="torch_deq")
                try:
                    merged = torch.stack([(W.float() + d.dense()).to(dtype) for d in used])  # [D, out, in]
                    if D == 1:
                        r["dense_ms"] = bench_ms(lambda: torch.matmul(x, merged[0].T, out=y), what="dense")
                    else:
                        xs = x.view(D, B // D, inp)
                        r["dense_ms"] = bench_ms(lambda: torch.bmm(xs, merged.transpose(1, 2)), what="dense")
                    del merged
                except torch.OutOfMemoryError:
                    pass
            rows.append(r)
            print(
                f"  {r['shape']:>11} {label:<15} B={B:<5} D={D:<5} base {r['base_ms'] * 1e3:8.1f}us  ours {r['ours_ms'] * 1e3:8.1f}us"
                f" (delta {r['delta_ms'] * 1e3:7.1f})" + (f"  fused {r['fused_ms'] * 1e3:8.1f}us" if "fused_ms" in r else "") + f"  floor {r['floor_ms'] * 1e3:8.1f}us  x{r['ours_ms'] / r['floor_ms']:.2f}"
                + (f"  torch_deq {r['torch_deq_ms'] * 1e3:9.1f}us" if "torch_deq_ms" in r else "")
                + (f"  dense {r['dense_ms'] * 1e3:8.1f}us" if "dense_ms" in r else "")
            )
            del tab
        torch.cuda.empty_cache()


def decode_step(pools: dict[str, DeltaPool], label: str, dtype, delta_apply, fused_apply, n_layers: int, rows: list[dict], with_base: bool = True) -> None:
    """Seven Llama-7B projections per layer, ``n_layers`` layers, one CUDA graph per variant;
    ``pools``: the method's deltas per shape; ``with_base``: also the base-only steps."""
    shapes = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]
    Ws = [torch.randn(o, i, device="cuda", dtype=dtype) / i**0.5 for _ in range(n_layers) for (o, i) in shapes]
    variants = [(1, 0, False), (1, 1, False), (32, 0, False), (32, 1, False), (32, 32, False)]
    if fused_apply is not None:  # B = 32 is past FUSE_MAX_ROWS: delta_apply(..., base=W) runs cuBLAS + delta there
        # (1, 0, True): the fused kernel's own base GEMV with no delta (the row's slot is −1)
        variants += [(1, 1, True)] + ([(1, 0, True)] if with_base else [])
    if not with_base:
        variants = [v for v in variants if v[1]]
    for B, D, fused in variants:
        tabs = []
        if D or fused:
            for li in range(n_layers):
                for (o, i) in shapes:
                    tabs.append(DeltaTable.build(pools[f"{o}x{i}"].take(max(D, 1))[: max(D, 1)]))
        slots = torch.arange(B) % max(D, 1)
        groups = (RowGroups.per_row(slots.cuda()) if D == B else RowGroups.segments(slots, "cuda")) if D else None
        if fused and not D:
            groups = RowGroups.per_row(torch.full((B,), -1, device="cuda"))
        xs = {i: torch.randn(B, i, device="cuda", dtype=dtype) for i in (4096, 11008)}
        ys = [torch.empty(B, o, device="cuda", dtype=dtype) for _ in range(n_layers) for (o, _) in shapes]
        ts = [torch.empty(B, max(1, tb.max_rank), device="cuda") for tb in tabs]

        def step():
            for k, W in enumerate(Ws):
                x = xs[W.shape[1]]
                if fused:
                    fused_apply(x, ys[k], tabs[k], groups, t=ts[k], base=W)
                    continue
                torch.matmul(x, W.T, out=ys[k])
                if D:
                    delta_apply(x, ys[k], tabs[k], groups, t=ts[k])

        step()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        ms = bench_ms(g.replay, rep=100, graph=False)
        base_bytes = sum(W.numel() * W.element_size() for W in Ws)
        dbytes = sum(tb.nbytes() for tb in tabs) if D else 0
        rows.append({"method": label if D else "base", "layers": n_layers, "B": B, "D": D, "fused": fused, "ms": ms, "weight_bytes": base_bytes, "delta_bytes": dbytes})
        print(f"  decode step {label}, {n_layers} layers x 7 projections, B={B} D={D}{' fused' if fused else ''}: {ms * 1e3:.1f} us  ({(base_bytes + dbytes) / ms / 1e6:.0f} GB/s)")
        del g, tabs, ts
        torch.cuda.empty_cache()


def best_ms(r: dict) -> float:
    """A layer row's time: the faster of ours and fused."""
    return min(r["ours_ms"], r.get("fused_ms", float("inf")))


def base_steps(steps: list[dict]) -> dict[tuple[int, int], float]:
    """The base-only decode steps' times by (layers, B): cuBLAS (not the fused kernel's own base
    GEMV, reported beside it)."""
    return {(s["layers"], s["B"]): s["ms"] for s in steps if s["D"] == 0 and not s.get("fused")}


def summarize(rows: list[dict], steps: list[dict], meta: dict) -> str:
    out = [f"# Multi-delta kernels on {meta['gpu']}", "", f"commit {meta['commit']}, {meta['date']}, torch {meta['torch']}, triton {meta['triton']}, dtype {meta['dtype']}, backend {meta['backend']}; copy bandwidth {meta['copy_GBps']:.0f} GB/s (read + write).", ""]
    flush = meta.get("flush", "write")
    out.append(f"Times in µs: median of CUDA-graph replays of one call, L2 flushed before each by a {flush} of 256 MB ({'dirty lines: their write-back shares DRAM with the timed call' if flush == 'write' else 'L2 left clean'}; Python's launch overhead excluded; `ours_eager_ms` in the CSV has it). `floor` = (base + active delta bytes + activations) / copy bandwidth. Ratios: ours / floor, ours / base, torch_deq / ours, dense / ours.")
    out.append("")
    out.append("`best` = the faster of ours and fused (fused: base GEMV inside the delta launch, per-row decode batches).")
    out.append("")
    out.append("| shape | method | B | D | base | ours | fused | delta | floor | best/floor | best/base | torch_deq/best | dense/best |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        best = best_ms(r)
        f = lambda k: f"{r[k] * 1e3:.1f}" if k in r else "–"  # noqa: E731
        rt = lambda k: f"{r[k] / best:.2f}" if k in r else "–"  # noqa: E731
        out.append(f"| {r['shape']} | {r['method']} | {r['B']} | {r['D']} | {f('base_ms')} | {f('ours_ms')} | {f('fused_ms')} | {f('delta_ms')} | {f('floor_ms')} | {best / r['floor_ms']:.2f} | {best / r['base_ms']:.2f} | {rt('torch_deq_ms')} | {rt('dense_ms')} |")
    out += goals(rows, steps)
    if steps:
        out += ["", "## Decode step (CUDA graph, Llama-7B projections)", "", "| method | layers | B | D | fused | µs | vs base-only |", "|---|---|---|---|---|---|---|"]
        base = base_steps(steps)
        for s in steps:
            ref = base.get((s["layers"], s["B"]), float("nan"))
            out.append(f"| {s.get('method', 'delta-come@1') if s['D'] else 'base'} | {s['layers']} | {s['B']} | {s['D']} | {'yes' if s.get('fused') else 'no'} | {s['ms'] * 1e3:.1f} | {s['ms'] / ref:.3f} |")
    return "\n".join(out) + "\n"


def goals(rows: list[dict], steps: list[dict]) -> list[str]:
    """The issue's goals (MISSION.md) per method, from the measured rows: the range over shapes
    (and batch sizes) of each ratio, and whether its worst case meets the goal."""
    if not rows:
        return []

    def span(vals: list[float], goal: float, low: bool) -> str:
        if not vals:
            return "–"
        worst = max(vals) if low else min(vals)
        ok = worst <= goal if low else worst >= goal
        return f"{min(vals):.2f}–{max(vals):.2f} ({'met' if ok else 'missed'})"

    out = ["", "## Goals (per method: range over shapes and batch sizes)", ""]
    out.append("| method | multi-delta decode, best/floor, D = B in 2..64 (goal ≤ 1.25) | torch_deq/best, every D ≤ 64 row (goal ≥ 3) | dense/best at B = D = 32 (goal ≥ 5) |")
    out.append("|---|---|---|---|")
    for m in dict.fromkeys(r["method"] for r in rows):
        rr = [r for r in rows if r["method"] == m]
        multi = [best_ms(r) / r["floor_ms"] for r in rr if r["D"] == r["B"] and 2 <= r["B"] <= 64]
        deq = [r["torch_deq_ms"] / best_ms(r) for r in rr if "torch_deq_ms" in r]
        dense = [r["dense_ms"] / best_ms(r) for r in rr if r["B"] == r["D"] == 32 and "dense_ms" in r]
        out.append(f"| {m} | {span(multi, 1.25, True)} | {span(deq, 3.0, False)} | {span(dense, 5.0, False)} |")
    base = base_steps(steps)
    one = [(s.get("method", ""), s["ms"] / base[(s["layers"], s["B"])]) for s in steps if s["B"] == 1 and s["D"] == 1 and (s["layers"], 1) in base]
    if one:
        out += ["", "One delta, decode step at B = 1 (best of fused and not) against base only (cuBLAS; goal ≤ 1.15): " + ", ".join(
            f"{m} {min(v for mm, v in one if mm == m):.2f}×" for m in dict.fromkeys(m for m, _ in one))]
        own = {s["layers"]: s["ms"] for s in steps if s["B"] == 1 and s["D"] == 0 and s.get("fused")}
        fused = [(s.get("method", ""), s["ms"] / own[s["layers"]]) for s in steps if s["B"] == 1 and s["D"] == 1 and s.get("fused") and s["layers"] in own]
        if fused:
            out += ["", "The fused step against the fused kernel's own base GEMV (no delta; the delta's own cost): " + ", ".join(
                f"{m} {min(v for mm, v in fused if mm == m):.2f}×" for m in dict.fromkeys(m for m, _ in fused))]
    return out


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    shapes = sorted({r["shape"] for r in rows})
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 4), squeeze=False)
    for ax, sh in zip(axes[0], shapes):
        for m in sorted({r["method"] for r in rows}):
            rr = [r for r in rows if r["shape"] == sh and r["method"] == m and r["D"] == r["B"]]
            if rr:
                ax.plot([r["B"] for r in rr], [r["ours_ms"] / r["floor_ms"] for r in rr], marker="o", label=m)
        ax.axhline(1.25, color="k", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{sh}, D = B")
        ax.set_xlabel("rows B")
        ax.set_ylabel("time / byte floor")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merge(paths: list[str], out: Path) -> None:
    """One result set from runs of one sweep split over several calls: their rows in order (a
    later run's row for the same shape, method, B and D replaces an earlier one: re-measured
    after a change; decode steps likewise by method, layers, B, D and fused), the first run's
    metadata with every run's commit and date listed."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    flushes = {r["meta"].get("flush", "write") for r in runs}
    if len(flushes) > 1:
        sys.exit(f"--merge: runs timed with different L2 flushes ({', '.join(sorted(flushes))}) do not go in one table")
    meta = dict(runs[0]["meta"])
    for k in ("commit", "date"):
        vals = list(dict.fromkeys(r["meta"][k] for r in runs))
        meta[k] = vals[0] if len(vals) == 1 else " / ".join(vals)
    if len({r["meta"]["gpu"] for r in runs}) != 1:
        raise SystemExit("--merge: the runs were measured on different GPUs")
    meta["copy_GBps"] = sum(r["meta"]["copy_GBps"] for r in runs) / len(runs)
    meta["runs"] = len(runs)
    rows: dict[tuple, dict] = {}
    for r in runs:
        for row in r["layers"]:
            key = (row["shape"], row["method"], row["B"], row["D"])
            rows.pop(key, None)  # the re-measured row goes where the later run put it
            rows[key] = dict(row, commit=r["meta"]["commit"])
    steps: dict[tuple, dict] = {}  # decode steps likewise, by (method, layers, B, D, fused)
    for r in runs:
        for st in r["decode"]:
            key = (st.get("method"), st["layers"], st["B"], st["D"], bool(st.get("fused")))
            steps.pop(key, None)
            steps[key] = dict(st, commit=r["meta"]["commit"])
    write_results(out, meta, list(rows.values()), list(steps.values()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--distinct", choices=["both", "one", "all"], default="both", help="distinct deltas per batch: D = 1 and D = B (both), only 1, or only B")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--flush", choices=["write", "read"], default="write", help="L2 flush before each timed call (see FLUSH): write (do_bench's, the default of every run so far) or read")
    ap.add_argument("--backend", default=os.environ.get("DELTAPACK_BACKEND", "triton"))
    ap.add_argument("--decode-layers", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="4096x4096 and 4096x11008, B in 1,8,32,512")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="combine the kernels_<gpu>.json of several runs (one sweep split over calls) into one set of results under --out; runs nothing")
    a = ap.parse_args(argv)
    globals()["FLUSH"] = a.flush
    if a.merge:
        return merge(a.merge, Path(a.out))
    if not torch.cuda.is_available():
        sys.exit("bench/kernels.py needs a CUDA GPU")
    if a.quick:
        a.shapes, a.batches = "4096x4096,4096x11008", "1,8,32,512"
    from deltapack.kernels.ops import delta_apply_backend

    delta_apply = delta_apply_backend(a.backend)
    fused_apply = None
    if a.backend == "triton":
        from deltapack.kernels.triton import delta_apply as fused_apply
    elif a.backend == "cuda":
        from deltapack.kernels.cuda import delta_apply as fused_apply
    dtype = getattr(torch, a.dtype)
    bw = copy_bandwidth()
    gpu = torch.cuda.get_device_name()
    meta = {"gpu": gpu, "commit": commit(), "date": dt.date.today().isoformat(), "torch": torch.__version__, "triton": triton.__version__, "dtype": a.dtype, "backend": a.backend, "copy_GBps": bw / 1e9, "flush": FLUSH}
    print(f"{gpu}: copy bandwidth {bw / 1e9:.0f} GB/s")
    rows: list[dict] = []
    steps: list[dict] = []
    batches = [int(b) for b in a.batches.split(",") if b.strip()]
    pools: dict[tuple[str, str], DeltaPool] = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for si, sh in enumerate(a.shapes.split(",")):
            for mi, label in enumerate(a.methods.split(",")):
                method, bpp, kw = METHODS[label]
                pool = DeltaPool(SHAPES[sh], method, bpp, kw, Path(tmp), seed=1000 * si + 10 * mi)
                if batches:  # --batches '': only the decode step
                    run_layer(SHAPES[sh], label, pool, batches, bw, dtype, delta_apply, fused_apply, rows, a.distinct)
                if label in DECODE_METHODS:
                    pool.copies = pool.copies[:32]  # the decode step takes at most 32 deltas per layer
                    pools[(label, sh)] = pool
                else:
                    del pool
                torch.cuda.empty_cache()
                print(f"  [{label} {sh}: {time.perf_counter() - t_start:.0f} s since start]")
                write_results(Path(a.out), meta, rows, steps, quiet=True)  # so far: a run cut short keeps what it measured
        first = True
        for label in DECODE_METHODS:
            if a.decode_layers and all((label, s) in pools for s in DECODE_SHAPES):
                decode_step({s: pools[(label, s)] for s in DECODE_SHAPES}, label, dtype, delta_apply, fused_apply, a.decode_layers, steps, with_base=first)
                first = False
    write_results(Path(a.out), meta, rows, steps)


def write_results(out: Path, meta: dict, rows: list[dict], steps: list[dict], quiet: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    gpu = meta["gpu"]
    tag = "h100" if "H100" in gpu else gpu.split()[-1].lower()
    (out / f"kernels_{tag}.json").write_text(json.dumps({"meta": meta, "layers": rows, "decode": steps}, indent=1))
    keys = ["shape", "method", "B", "D", "base_ms", "ours_ms", "ours_eager_ms", "fused_ms", "delta_ms", "floor_ms", "torch_deq_ms", "dense_ms", "delta_bytes", "ours_GBps", "commit"]
    (out / f"kernels_{tag}.csv").write_text("\n".join([",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]) + "\n")
    md = summarize(rows, steps, meta)
    (out / f"kernels_{tag}.md").write_text(md)
    if rows and not quiet:
        plot(rows, out / f"kernels_{tag}.png")
    if not quiet:
        print(md)


if __name__ == "__main__":
    main()
