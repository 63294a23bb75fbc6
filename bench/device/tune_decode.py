"""Decode-path tuning sweep (H100): per-kernel times (shrink / apply / memset, torch.profiler)
of the Triton multi-delta kernels for launch configs around the default, per case.
    python bench/device/tune_decode.py [--quick] > $OUT/tune.log
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
import triton

from deltapack.kernels.packed import DeltaTable, KernelDelta, RowGroups
from deltapack.kernels.synthetic import write_synthetic
from deltapack.kernels.triton import LaunchConfig, delta_apply, pick_config

CASES = [  # (out, in), method, bits/param, rows B, distinct deltas D
    ((4096, 4096), "delta-come", 1.0, 1, 1),
    ((4096, 4096), "delta-come", 1.0, 32, 32),
    ((4096, 4096), "delta-come", 1.0, 8, 1),
    ((4096, 4096), "bitdelta", 1.0, 1, 1),
    ((14336, 4096), "bitdelta", 1.0, 16, 16),
    ((4096, 11008), "delta-come", 1.0, 1, 1),
    ((4096, 4096), "deltazip", 2.0, 1, 1),
]
VARIANTS = [
    {},
    {"split_k": 2},
    {"split_k": 4},
    {"block_r": 8},
    {"block_r": 32},
    {"block_k": 512},
    {"block_k": 1024, "split_k": 2},
    {"block_k": 128},
    {"block_n": 16},
    {"block_n": 64},
    {"block_j": 32},
    {"block_j": 128},
    {"num_warps": 2},
    {"num_warps": 8},
    {"num_stages": 1},
    {"num_stages": 3},
    {"fused": True},  # base GEMV inside the delta launch (per-row batches only)
    {"fused": True, "block_kb": 128},
    {"fused": True, "block_kb": 512},
    {"fused": True, "block_n": 16},
    {"fused": True, "num_warps": 8},
]


def _tune_label(key: str) -> str:
    return "fill/copy" if "elementwise" in key or "fill" in key.lower() or "Memset" in key else key.split("_kernel")[0]


def kernel_times(fn, n: int = 20, label=_tune_label, min_count: int = 0) -> dict[str, float]:
    """Mean GPU time per call of the kernels ``fn`` launches, summed by ``label(kernel name)``
    (torch.profiler: no launch gaps); events seen fewer than ``min_count`` times are dropped."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        if e.count < min_count:
            continue
        t = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        name = label(e.key)
        out[name] = out.get(name, 0.0) + t / n
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the first 3 cases and 8 variants")
    ap.add_argument("--cases", help="comma-separated case indices into CASES")
    ap.add_argument("--variants", help="a JSON list of LaunchConfig dicts (plus 'fused') replacing VARIANTS")
    ap.add_argument("--only", help="compile only these variant indices (comma-separated; a warm-up pass run in parallel processes fills the Triton cache, then one timing pass reads it)")
    a = ap.parse_args()
    cases, variants = (CASES[:3], VARIANTS[:8] + VARIANTS[-5:]) if a.quick else (CASES, VARIANTS)
    if a.cases:
        cases = [CASES[int(i)] for i in a.cases.split(",")]
    if a.variants:
        variants = json.loads(a.variants)
    with tempfile.TemporaryDirectory() as tmp:
        for (out, inp), method, bpp, B, D in cases:
            srcs = []
            for i in range(min(D, 4)):
                f = write_synthetic(Path(tmp) / f"{method}{out}x{inp}{i}.dpk", [("w", out, inp, method, bpp)], seed=i)
                srcs.append(KernelDelta.from_entry(f, f.manifest["deltas"][0], (out, inp), device="cuda"))
            deltas = [srcs[i % len(srcs)].to("cuda") for i in range(D)]
            tab = DeltaTable.build(deltas)
            slots = torch.arange(B, device="cuda") % D
            groups = RowGroups.per_row(slots) if D == B else RowGroups.segments(slots.cpu(), "cuda")
            x = torch.randn(B, inp, device="cuda", dtype=torch.bfloat16)
            y = torch.zeros(B, out, device="cuda", dtype=torch.bfloat16)
            t = torch.empty(B, max(1, tab.max_rank), device="cuda")
            floor_us = tab.nbytes() / 3.0e12 * 1e6
            ranks = [p.rank for p in deltas[0].parts if hasattr(p, "vt")]
            print(f"== {method}@{bpp} {out}x{inp} B={B} D={D}: delta bytes {tab.nbytes() / 1e6:.2f} MB, ranks {ranks}, delta floor {floor_us:.1f} us", flush=True)
            W = torch.randn(out, inp, device="cuda", dtype=torch.bfloat16)
            base_ms = triton.testing.do_bench(lambda: torch.matmul(x, W.T, out=y), warmup=5, rep=30, return_mode="median")
            print(f"  cuBLAS base GEMM {base_ms * 1e3:.1f} us (weight floor {W.numel() * 2 / 3.0e12 * 1e6:.1f} us)", flush=True)
            for vi, v in enumerate(variants):
                if a.only and str(vi) not in a.only.split(","):
                    continue
                v = dict(v)
                fused = v.pop("fused", False)
                if fused and D != B:
                    continue
                cfg = LaunchConfig(**v)
                try:
                    fn = lambda: delta_apply(x, y, tab, groups, cfg=cfg, t=t if tab.has_lowrank else None, base=W if fused else None)  # noqa: E731
                    if a.only:  # warm-up pass: compile, no timing
                        fn()
                        torch.cuda.synchronize()
                        continue
                    ms = triton.testing.do_bench(fn, warmup=5, rep=30, return_mode="median")
                    kt = kernel_times(fn)
                    c = pick_config(tab, groups, cfg)
                    kt = {k: t_ for k, t_ in kt.items() if t_ > 0}
                    print(f"  {('fused ' if fused else '') + str(v):<40} total {ms * 1e3:8.1f} us  kernels {', '.join(f'{k} {t_:.1f}' for k, t_ in kt.items())}  cfg M{c['BLOCK_M']} R{c['BLOCK_R']} K{c['BLOCK_K']} N{c['BLOCK_N']} J{c['BLOCK_J']} S{c['SPLIT_K']} w{c['num_warps']}/{c['apply_warps']} s{c['num_stages']}", flush=True)
                except Exception as e:  # a config the compiler refuses (shared memory, registers)
                    print(f"  {str(v):<34} failed: {type(e).__name__}: {str(e)[:160]}", flush=True)


if __name__ == "__main__":
    main()
