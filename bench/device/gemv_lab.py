"""One-row GEMV designs (bench/device/gemv_lab.cu) against cuBLAS on the Llama projection shapes,
with and without a folded 1-bit delta (BitDelta): which design the fused decode path should use.

CUDA-graph replays, L2 flushed before each (bench/kernels.py's ``bench_ms``); every result checked
against an fp32 reference first. Prints a table and writes JSON.

    python bench/device/gemv_lab.py [--shapes 4096x4096,...] [--out lab.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels import SHAPES, bench_ms, copy_bandwidth  # noqa: E402


def build():
    from torch.utils import cpp_extension

    t0 = time.time()
    mod = cpp_extension.load(
        name="gemv_lab",
        sources=[str(Path(__file__).with_name("gemv_lab.cu"))],
        extra_cuda_cflags=["-O3", "-lineinfo"],
        build_directory=None,
        verbose=False,
    )
    print(f"gemv_lab built in {time.time() - t0:.0f} s", flush=True)
    return mod


def graph_of(fn):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def flush_study(fn, reps: int = 50) -> dict[str, float]:
    """Median µs of one graph replay of ``fn`` after three kinds of L2 flush: triton's do_bench
    (zeroes a 256 MB buffer: L2 is left full of dirty lines, which the timed kernel's reads evict
    and write back), a read of a 256 MB buffer (L2 left clean, as between a decode step's
    layers), and none (the operands may stay in L2)."""
    g = graph_of(fn)
    buf = torch.empty(64 << 20, dtype=torch.int32, device="cuda")
    out = {}
    for kind in ("write", "read", "none"):
        ts = []
        for _ in range(reps):
            if kind == "write":
                buf.zero_()
            elif kind == "read":
                buf.sum(dtype=torch.int64)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) * 1e3)
        out[kind] = sorted(ts)[len(ts) // 2]
    return out


def configs(quick: bool) -> list[dict]:
    out = []
    for nr, u in ((1, 4), (1, 8), (2, 4), (2, 8), (4, 4)):
        out.append({"kind": "reg", "nr": nr, "u": u, "warps": 8})
    out.append({"kind": "reg", "nr": 2, "u": 4, "warps": 4})
    # bulk: chunk CHV warp-vectors (CHV x 512 B), stages per warp, rows per warp per tile, warps
    for chv, stages in ((2, 8), (4, 4), (4, 6), (8, 2), (8, 3), (8, 4)):
        for warps, rw in ((4, 1), (4, 2), (8, 1), (8, 2)):
            if quick and (warps, rw) not in ((4, 2), (8, 1)):
                continue
            smem_ring = warps * stages * chv * 544
            if smem_ring + 28672 > 227 * 1024:
                continue
            out.append({"kind": "bulk", "u": chv, "stages": stages, "warps": warps, "rw": rw, "grid": 0})
            if not quick:
                out.append({"kind": "bulk", "u": chv, "stages": stages, "warps": warps, "rw": rw, "grid": 1 << 30})  # one tile per block
    return out


def label(c: dict) -> str:
    if c["kind"] == "reg":
        return f"reg nr={c['nr']} u={c['u']} w={c['warps']}"
    g = "pers" if c["grid"] <= 0 else "tile"
    return f"bulk chv={c['u']} st={c['stages']} w={c['warps']} rw={c['rw']} {g}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--flush-study", action="store_true", help="only: cuBLAS and the register design per shape under three L2 flushes")
    args = ap.parse_args()
    mod = build()
    if args.flush_study:
        res = []
        for name in args.shapes.split(","):
            N, K = SHAPES[name]
            w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
            x = torch.randn(K, device="cuda", dtype=torch.bfloat16)
            y = torch.empty(N, device="cuda", dtype=torch.bfloat16)
            e = torch.empty(0, device="cuda", dtype=torch.uint8)
            for design, fn in (("cublas", lambda: torch.mv(w, x, out=y)), ("reg nr=1 u=4", lambda: mod.gemv(w, x, y, e, e, 0.0, 0.0, "reg", 1, 4, 8, 1, 1, 0))):
                r = flush_study(fn)
                floor = N * K * 2 / 3.0e12 * 1e6
                print(f"{name:11s} {design:13s} " + "  ".join(f"{k} {v:6.1f} us" for k, v in r.items()) + f"   (32 MB/3.0 TB/s-style floor {floor:.1f} us)", flush=True)
                res.append({"shape": name, "design": design, **r})
            del w
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return
    bw = copy_bandwidth() / 2  # read bandwidth ~ copy's read + write over 2
    dev = torch.cuda.get_device_name()
    print(f"{dev}: copy bandwidth {2 * bw / 1e9:.0f} GB/s (read + write)")
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for name in args.shapes.split(","):
        N, K = SHAPES[name]
        w = (torch.randn(N, K, device="cuda", generator=g) / K**0.5).to(torch.bfloat16)
        x = torch.randn(K, device="cuda", generator=g).to(torch.bfloat16)
        codes = torch.randint(0, 256, (N, K // 8), device="cuda", dtype=torch.uint8, generator=g)
        scales = (torch.rand(N, device="cuda", generator=g) * 0.01).to(torch.float16)
        zc = 0.5
        xf = x.float()
        bits = ((codes[:, :, None].int() >> torch.arange(8, device="cuda")) & 1).reshape(N, K).float()
        ref0 = w.float() @ xf
        ref1 = ref0 + scales.float() * ((bits - zc) @ xf)
        xsum = float(xf.sum())
        del bits
        y = torch.empty(N, device="cuda", dtype=torch.bfloat16)
        wbytes = N * K * 2
        floor0 = wbytes / bw * 1e6
        floor1 = (wbytes + N * K / 8) / bw * 1e6
        t_cublas = bench_ms(lambda: torch.mv(w, x, out=y)) * 1e3
        print(f"\n{name}: cuBLAS {t_cublas:.1f} us  floor {floor0:.1f} us (+1-bit delta {floor1:.1f})")
        rows.append({"shape": name, "design": "cublas", "db": 0, "us": t_cublas, "floor_us": floor0})
        empty = torch.empty(0, device="cuda", dtype=torch.uint8)
        for c in configs(args.quick):
            for db in (0, 1):
                cc = codes if db else empty
                args_ = (w, x, y, cc, scales, zc, xsum, c["kind"], c.get("nr", 1), c["u"], c["warps"], c.get("rw", 1), c.get("stages", 1), c.get("grid", 0))
                try:
                    y.fill_(float("nan"))
                    mod.gemv(*args_)
                    torch.cuda.synchronize()
                    ref = ref1 if db else ref0
                    err = float((y.float() - ref).abs().max() / ref.abs().max())
                    ok = bool(torch.isfinite(y.float()).all()) and err < 2e-2
                    us = bench_ms(lambda: mod.gemv(*args_)) * 1e3 if ok else float("nan")
                except Exception as e:  # noqa: BLE001
                    print(f"  {label(c):36s} db={db} FAILED {type(e).__name__}: {e}")
                    torch.cuda.synchronize()
                    continue
                fl = floor1 if db else floor0
                print(f"  {label(c):36s} db={db} {us:7.1f} us  x{us / t_cublas:5.2f} cuBLAS  x{us / fl:5.2f} floor  err {err:.1e}{'' if ok else '  WRONG'}", flush=True)
                rows.append({"shape": name, "design": label(c), "db": db, "us": us, "vs_cublas": us / t_cublas, "vs_floor": us / fl, "err": err, "ok": ok, **c})
        del w, codes
        torch.cuda.empty_cache()
    print("\nbest per shape (db=0 / db=1):")
    for name in args.shapes.split(","):
        for db in (0, 1):
            rs = [r for r in rows if r["shape"] == name and r["db"] == db and r["design"] != "cublas" and r.get("ok")]
            if rs:
                b = min(rs, key=lambda r: r["us"])
                print(f"  {name:11s} db={db}: {b['design']:36s} {b['us']:.1f} us (x{b['vs_cublas']:.2f} cuBLAS, x{b['vs_floor']:.2f} floor)")
    if args.out:
        Path(args.out).write_text(json.dumps({"gpu": dev, "commit": os.environ.get("DELTAPACK_COMMIT", "wip"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
