"""CUDA vs Triton decode kernels (H100): per call times inside CUDA graphs (no host overhead),
L2 flushed between repetitions, against cuBLAS alone and the byte floor, plus a sweep of the
CUDA launch knobs (outputs per warp, rank rows per shrink block or item). ``cuda_fused`` is the
one-pass launch where the delta has low-rank parts, ``cuda_fused_2launch`` the shrink + apply
launches it replaces.

    python bench/device/cuda_decode.py [--quick] > $OUT/cuda_decode.log
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

import torch
from triton.testing import do_bench

from deltapack.kernels import cuda as kcuda
from deltapack.kernels.packed import DeltaTable, KernelDelta, RowGroups
from deltapack.kernels.synthetic import write_synthetic
from deltapack.kernels.triton import LaunchConfig
from deltapack.kernels.triton import delta_apply as triton_apply
from tune_decode import kernel_times  # bench/device/, the script's folder

CASES = [  # (out, in), method, bits/param, rows B (= distinct deltas D, or D = 1 with "same")
    ((4096, 4096), "delta-come", 1.0, 1),
    ((11008, 4096), "delta-come", 1.0, 1),
    ((4096, 11008), "delta-come", 1.0, 1),
    ((4096, 4096), "delta-come", 0.5, 1),
    ((4096, 4096), "bitdelta", 1.0, 1),
    ((14336, 4096), "bitdelta", 1.0, 1),
    ((4096, 4096), "delta-come", 1.0, 4),
    ((4096, 4096), "delta-come", 1.0, 16),
    ((4096, 4096), "bitdelta", 1.0, 16),
    ((4096, 4096), "delta-come", 1.0, 2),
    ((4096, 4096), "delta-come", 1.0, 32),
    ((4096, 4096), "bitdelta", 1.0, 32),
    ((4096, 4096), "delta-come", 1.0, 64),
    ((11008, 4096), "delta-come", 1.0, 32),
    ((4096, 11008), "delta-come", 1.0, 32),
]
# D = 1 with B rows (segment style: one group of B rows; the CUDA path serves it one group per row)
SAME_CASES = [((4096, 4096), "delta-come", 1.0, 1), ((4096, 4096), "delta-come", 1.0, 8), ((4096, 4096), "delta-come", 1.0, 32), ((4096, 4096), "bitdelta", 1.0, 32),
              ((4096, 11008), "delta-come", 1.0, 32), ((4096, 4096), "delta-come", 1.0, 512), ((4096, 4096), "bitdelta", 1.0, 512)]


@contextlib.contextmanager
def knobs(env: dict[str, str]):
    """The launch knobs ``env`` (environment variables) set for the block, the old values back after."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def graph_us(fn) -> float:
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return do_bench(g.replay, warmup=20, rep=200) * 1e3


def kernel_us(fn, n: int = 20) -> dict[str, float]:
    """Per-kernel GPU time per call of ``fn``: shrink / apply (and anything else it launches)."""
    return kernel_times(fn, n, label=lambda k: next((n for n in ("shrink", "apply", "onepass") if n in k), k[:24]), min_count=n)


def flush_l2() -> None:
    torch.empty(1 << 26, dtype=torch.int32, device="cuda").zero_()  # 256 MB


def trace_summary(x, y, tab, groups, t, W, reps: int = 5) -> str:
    """Phase times of a one-pass launch (µs after the first block started; median over ``reps``
    calls, each with L2 flushed): shrink-only blocks (start, done), apply blocks (start, claims
    done, base GEMV done, t-independent operands staged, t waited, end; tail = end − waited),
    and how many apply blocks started late (> 2 µs)."""
    rows = []
    for _ in range(reps):
        tr = torch.zeros(kcuda.trace_len(x, groups.n_groups, y.shape[1]), dtype=torch.int64, device="cuda")
        flush_l2()
        kcuda.delta_apply(x, y, tab, groups, t=t, base=W, trace=tr)
        torch.cuda.synchronize()
        tr = tr.view(-1, kcuda.TRACE_SLOTS).cpu()
        tr = tr[tr[:, 0] != 0]
        t0 = tr[:, 0].min()
        us = (tr.double() - t0.double()) / 1e3
        a = tr[:, 3] == 0  # shrink-only blocks never reach the GEMV phase
        b = ~a
        late = int((us[b, 0] > 2.0).sum())
        rows.append([us[a, 0].median(), us[a, 1].max() if a.any() else 0.0, tr[a, 2].double().mean() if a.any() else 0.0,
                     us[b, 0].median(), us[b, 0].max(), us[b, 1].median(), us[b, 3].median(), us[b, 3].max(), us[b, 4].max(), us[b, 5].max(),
                     float(b.sum()), float(a.sum()), float(late), tr[b, 2].double().sum(), us[b, 6].max(), (us[b, 5] - us[b, 4]).median()])
    m = torch.tensor(rows, dtype=torch.float64).median(dim=0).values.tolist()
    return (f"shrink blocks {int(m[11])} (items/block {m[2]:.1f}): start {m[0]:.1f} done(max) {m[1]:.1f} | apply blocks {int(m[10])} "
            f"(late {int(m[12])}, items {int(m[13])}): start med {m[3]:.1f} max {m[4]:.1f}, claims {m[5]:.1f}, gemv med {m[6]:.1f} max {m[7]:.1f}, "
            f"staged(max) {m[14]:.1f}, waited(max) {m[8]:.1f}, end(max) {m[9]:.1f}, tail med {m[15]:.1f}")


def copy_bw() -> float:
    a = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), rep=50)
    return 2 * a.numel() / (ms * 1e-3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--cases", default=None, help="comma-separated indices into CASES (default: all)")
    ap.add_argument("--trace", action="store_true", help="phase timelines of the one-pass launch (low-rank cases), instead of the knob sweep")
    ap.add_argument("--multi", action="store_true", help="multi-delta knob sweep (apply sub-tiles × outputs per warp × shrink rows) instead of the default one")
    ap.add_argument("--same", action="store_true", help="only the D = 1 segment cases (SAME_CASES): CUDA per row vs Triton tiles")
    a = ap.parse_args()
    assert kcuda.available(), kcuda.build_error()
    bw = copy_bw()
    print(f"{torch.cuda.get_device_name()}  copy bandwidth {bw / 1e9:.0f} GB/s; times in µs per call (CUDA graph, L2 flushed)")
    dtype = torch.bfloat16
    cases = [CASES[int(i)] for i in a.cases.split(",")] if a.cases else CASES[:3] if a.quick else CASES
    if a.same:
        same_cases()
        return
    with tempfile.TemporaryDirectory() as tmp:
        for ci, ((out, inp), method, bpp, B) in enumerate(cases):
            kds = []
            for d in range(B):
                f = write_synthetic(Path(tmp) / f"c{ci}_{d}.dpk", [("l", out, inp, method, bpp)], seed=ci * 100 + d)
                kds.append(KernelDelta.from_entry(f, f.manifest["deltas"][0], (out, inp), device="cuda"))
            tab = DeltaTable.build(kds)
            groups = RowGroups.per_row(torch.arange(B, device="cuda"))
            x = torch.randn(B, inp, device="cuda", dtype=dtype)
            y = torch.empty(B, out, device="cuda", dtype=dtype)
            W = torch.randn(out, inp, device="cuda", dtype=dtype) / inp**0.5
            t = torch.empty(B, max(1, tab.max_rank), device="cuda")
            assert kcuda.handles(x, tab, groups)
            dbytes = tab.nbytes()
            floor = (W.numel() * 2 + dbytes) / bw * 1e6
            res = {"cublas": graph_us(lambda: torch.matmul(x, W.T, out=y))}
            res["cuda_delta"] = graph_us(lambda: kcuda.delta_apply(x, y, tab, groups, t=t))
            res["cuda_unfused"] = graph_us(lambda: (torch.matmul(x, W.T, out=y), kcuda.delta_apply(x, y, tab, groups, t=t)))
            none = RowGroups.per_row(torch.full((B,), -1, device="cuda"))  # every row without a delta: the fused launch's base GEMV alone
            with knobs({kcuda.ENV_FUSE_MAX_ROWS: str(kcuda.MAX_ROWS)}):  # the fused kernels at every B (default: up to FUSE_MAX_ROWS)
                res["cuda_fused"] = graph_us(lambda: kcuda.delta_apply(x, y, tab, groups, t=t, base=W))
                if tab.has_lowrank:  # fused in two launches (not one pass); without the programmatic dependent launch
                    with knobs({kcuda.ENV_ONEPASS: "0"}):
                        res["cuda_fused_2launch"] = graph_us(lambda: kcuda.delta_apply(x, y, tab, groups, t=t, base=W))
                    with knobs({kcuda.ENV_PDL: "0"}):
                        res["cuda_delta_nopdl"] = graph_us(lambda: kcuda.delta_apply(x, y, tab, groups, t=t))
                if not a.no_triton:
                    res["triton_delta"] = graph_us(lambda: triton_apply(x, y, tab, groups, t=t))
                    res["triton_fused"] = graph_us(lambda: triton_apply(x, y, tab, groups, t=t, base=W))
                res["cuda_fused_base_only"] = graph_us(lambda: kcuda.delta_apply(x, y, tab, none, t=t, base=W))
                ks = kernel_us(lambda: kcuda.delta_apply(x, y, tab, groups, t=t))
                kf = kernel_us(lambda: kcuda.delta_apply(x, y, tab, groups, t=t, base=W))
            best = min(res["cuda_unfused"], res["cuda_fused"])
            print(
                f"{out}x{inp} {method}@{bpp} B=D={B}: delta {dbytes / 1e6:.2f} MB, floor {floor:.1f}; "
                + "  ".join(f"{k} {v:.1f}" for k, v in res.items())
                + f"  | best/cublas {best / res['cublas']:.3f}  best/floor {best / floor:.2f}"
            )
            print("    kernels (profiler, µs): delta " + " ".join(f"{k} {v:.1f}" for k, v in ks.items()) + " | fused " + " ".join(f"{k} {v:.1f}" for k, v in kf.items()))
            if a.trace:
                if tab.has_lowrank:
                    for label, env in (("default", {}), ("minb3", {kcuda.ENV_ONEPASS_MIN_BLOCKS: "3"}),
                                       ("nr4", {kcuda.ENV_ROWS_PER_WARP: "4"}), ("nr4 minb3", {kcuda.ENV_ROWS_PER_WARP: "4", kcuda.ENV_ONEPASS_MIN_BLOCKS: "3"}),
                                       ("jb16", {kcuda.ENV_SHRINK_ROWS: "16"}), ("base prefetch", {kcuda.ENV_ONEPASS_PREFETCH: "1"}),
                                       ("a_blocks32", {kcuda.ENV_ONEPASS_A_BLOCKS: "32"})):
                        with knobs(env):
                            us = graph_us(lambda: kcuda.delta_apply(x, y, tab, groups, t=t, base=W))
                            print(f"    trace {label}: {us:.1f} us/call; " + trace_summary(x, y, tab, groups, t, W))
                    print(f"    trace base-only rows: " + trace_summary(x, y, tab, none, t, W))
                del tab, kds
                torch.cuda.empty_cache()
                continue
            if a.multi:
                # multi-delta knobs: outputs per warp × apply sub-tiles per block × register bound, then rank rows per shrink block
                settings = [(f"nr{nr}/ns{ns}/minb{minb}", {kcuda.ENV_ROWS_PER_WARP: nr, kcuda.ENV_APPLY_SUBTILES: ns, kcuda.ENV_APPLY_MIN_BLOCKS: minb})
                            for nr in ("1", "2", "4") for ns in ("1", "4", "8") for minb in ("1", "3")]
                settings += [(f"default/jb{jb}", {kcuda.ENV_SHRINK_ROWS: jb}) for jb in ("8", "16", "32", "64")]
                settings += [(f"default/sw{sw}/jb{jb}", {kcuda.ENV_SHRINK_WARPS: sw, kcuda.ENV_SHRINK_ROWS: jb}) for sw in ("4", "8") for jb in ("16", "32", "64")]
                sweep = []
                for label, env in settings:
                    with knobs(env):
                        sweep.append(f"{label}: {graph_us(lambda: kcuda.delta_apply(x, y, tab, groups, t=t)):.1f}")
                print("    delta by knob: " + "  ".join(sweep))
                del tab, kds
                torch.cuda.empty_cache()
                continue
            # knobs: outputs per warp (apply) and rank rows per shrink block
            sweep = []
            for nr in ("1", "2", "4"):
                for jb in ("4", "8", "16"):
                    with knobs({kcuda.ENV_ROWS_PER_WARP: nr, kcuda.ENV_SHRINK_ROWS: jb}):
                        sweep.append(f"nr{nr}/jb{jb}: {graph_us(lambda: kcuda.delta_apply(x, y, tab, groups, t=t)):.1f}/{graph_us(lambda: kcuda.delta_apply(x, y, tab, groups, t=t, base=W)):.1f}")
            print("    delta/fused by knob: " + "  ".join(sweep))
            del tab, kds
            torch.cuda.empty_cache()


def same_cases() -> None:
    """D = 1, B rows in one segment group: the prefill path (dequantize + cuBLAS), the Triton
    tile path (tl.dot on tiles dequantized per row block) and the CUDA kernels (one group per
    row, the delta re-read from L2 per row; up to MAX_ROWS rows), delta alone and with the base."""
    dtype = torch.bfloat16
    with tempfile.TemporaryDirectory() as tmp:
        for ci, ((out, inp), method, bpp, B) in enumerate(SAME_CASES):
            f = write_synthetic(Path(tmp) / f"s{ci}.dpk", [("l", out, inp, method, bpp)], seed=ci)
            tab = DeltaTable.build([KernelDelta.from_entry(f, f.manifest["deltas"][0], (out, inp), device="cuda")])
            groups = RowGroups.single(B, "cuda")
            x = torch.randn(B, inp, device="cuda", dtype=dtype)
            y = torch.empty(B, out, device="cuda", dtype=dtype)
            W = torch.randn(out, inp, device="cuda", dtype=dtype) / inp**0.5
            res = {"cublas": graph_us(lambda: torch.matmul(x, W.T, out=y))}
            # the prefill path (factors dequantized once, cuBLAS), where the longest group has
            # at least DEQUANT_MIN_ROWS rows; the one-launch tile path; the CUDA kernels per row
            res["dequant_delta"] = graph_us(lambda: triton_apply(x, y, tab, groups, cfg=LaunchConfig(dequant_min_rows=1)))
            res["dequant_with_base"] = graph_us(lambda: triton_apply(x, y, tab, groups, base=W, cfg=LaunchConfig(dequant_min_rows=1)))
            res["tile_delta"] = graph_us(lambda: triton_apply(x, y, tab, groups, cfg=LaunchConfig(dequant_min_rows=0)))
            if B <= kcuda.MAX_ROWS:
                with knobs({"DELTAPACK_TRITON_DEQUANT_MIN_ROWS": "0"}):
                    assert kcuda.handles(x, tab, groups)
                    res["cuda_per_row_delta"] = graph_us(lambda: kcuda.delta_apply(x, y, tab, groups))
                    res["cuda_per_row_with_base"] = graph_us(lambda: kcuda.delta_apply(x, y, tab, groups, base=W))
            print(f"{out}x{inp} {method}@{bpp} B={B} D=1 (segment): " + "  ".join(f"{k} {v:.1f}" for k, v in res.items()))


if __name__ == "__main__":
    main()
