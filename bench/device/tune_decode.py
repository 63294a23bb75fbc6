"""Decode-path tuning sweep (H100): per-kernel times (shrink / apply, torch.profiler) of the
Triton multi-delta kernels for one-at-a-time changes of the launch config around the default.
    python bench/device/tune_decode.py > $OUT/tune.log
"""

import tempfile
from pathlib import Path

import torch
import triton

from deltapack.kernels.packed import DeltaTable, KernelDelta, RowGroups
from deltapack.kernels.synthetic import write_synthetic
from deltapack.kernels.triton import LaunchConfig, delta_apply, pick_config


def kernel_times(fn, n=20):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        if "kernel" in e.key:
            out[e.key.split("_kernel")[0]] = e.device_time_total / e.count if hasattr(e, "device_time_total") else e.cuda_time_total / e.count
    return out


def main():
    variants = [{}, {"block_r": 8}, {"block_r": 32}, {"block_k": 256}, {"block_k": 1024}, {"block_n": 32}, {"block_n": 128}, {"block_j": 32}, {"block_j": 128}, {"num_warps": 2}, {"num_warps": 8}, {"num_stages": 1}, {"num_stages": 3}]
    with tempfile.TemporaryDirectory() as tmp:
        for (out, inp), method, B in [((4096, 4096), "delta-come", 1), ((4096, 4096), "delta-come", 32), ((4096, 4096), "bitdelta", 1), ((4096, 11008), "delta-come", 1)]:
            srcs = []
            for i in range(4):
                f = write_synthetic(Path(tmp) / f"{method}{out}x{inp}{i}.dpk", [("w", out, inp, method, 1.0)], seed=i)
                srcs.append(KernelDelta.from_entry(f, f.manifest["deltas"][0], (out, inp), device="cuda"))
            deltas = [srcs[i % 4].to("cuda") for i in range(B)]
            tab = DeltaTable.build(deltas)
            groups = RowGroups.per_row(torch.arange(B, device="cuda"))
            x = torch.randn(B, inp, device="cuda", dtype=torch.bfloat16)
            y = torch.zeros(B, out, device="cuda", dtype=torch.bfloat16)
            t = torch.empty(B, tab.max_rank, device="cuda")
            floor_us = tab.nbytes() / 3.0e12 * 1e6
            print(f"== {method} {out}x{inp} B={B}: delta bytes {tab.nbytes() / 1e6:.2f} MB, delta floor {floor_us:.1f} us")
            for v in variants:
                cfg = LaunchConfig(**v)
                try:
                    fn = lambda: delta_apply(x, y, tab, groups, cfg=cfg, t=t)  # noqa: E731
                    ms = triton.testing.do_bench(fn, warmup=5, rep=30, return_mode="median")
                    kt = kernel_times(fn)
                    c = pick_config(tab, groups, cfg)
                    print(f"  {str(v):<22} total {ms * 1e3:8.1f} us  kernels {', '.join(f'{k} {t_:.1f}' for k, t_ in kt.items())}  cfg R{c['BLOCK_R']} K{c['BLOCK_K']} N{c['BLOCK_N']} J{c['BLOCK_J']} w{c['num_warps']} s{c['num_stages']}", flush=True)
                except Exception as e:  # a config the compiler refuses (shared memory, registers)
                    print(f"  {str(v):<22} failed: {type(e).__name__}: {str(e)[:120]}", flush=True)


if __name__ == "__main__":
    main()
