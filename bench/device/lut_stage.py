"""The lookup-table kernel's code loads, uncoalesced (a 16-byte load per row) against staged
(csrc lut_part_staged: coalesced cp.async copies through shared memory), alone and after or
beside cuBLAS's base GEMM, for multi-delta decode (B = D distinct deltas, one row each).

Columns (µs, CUDA-graph replays with do_bench's write flush, as bench/kernels.py):
- base: cuBLAS y = x Wᵀ alone; delta / delta_st: the table kernel alone (y += Δx), plain / staged;
- seq / seq_st: base then delta on one stream (bench/kernels.py's ``ours``);
- conc / conc_st: the delta on a side stream into a zeroed scratch beside cuBLAS, joined by one add;
- floor: base + delta bytes at the measured copy bandwidth.

    python bench/device/lut_stage.py [--methods bitdelta@1,deltazip@2] [--batches 16,32,64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernels as K  # noqa: E402  (bench/kernels.py)

from deltapack.kernels import cuda as kcuda  # noqa: E402
from deltapack.kernels.packed import DeltaTable, RowGroups  # noqa: E402


def staged(on: bool):
    os.environ[kcuda.ENV_LUT_STAGE] = "1" if on else "0"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="bitdelta@1,deltazip@2")
    ap.add_argument("--batches", default="16,32,64")
    ap.add_argument("--shapes", default=",".join(K.SHAPES))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    bw = K.copy_bandwidth()
    side = torch.cuda.Stream()
    rows = []
    cols = ("base", "delta", "delta_st", "seq", "seq_st", "conc", "conc_st", "floor")
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s")
    print(f"{'shape':>11} {'method':<11} {'B=D':>4} " + " ".join(f"{c:>8}" for c in cols) + "  best/floor  max rel diff")
    with tempfile.TemporaryDirectory() as tmp:
        for si, sh in enumerate(a.shapes.split(",")):
            out, inp = K.SHAPES[sh]
            W = torch.randn(out, inp, device="cuda", dtype=torch.bfloat16) / inp**0.5
            for mi, label in enumerate(a.methods.split(",")):
                method, bpp, kw = K.METHODS[label]
                pool = K.DeltaPool((out, inp), method, bpp, kw, Path(tmp), seed=1000 * si + 10 * mi)
                for B in (int(b) for b in a.batches.split(",")):
                    tab = DeltaTable.build(pool.take(B))
                    groups = RowGroups.per_row(torch.arange(B, device="cuda"))
                    x = torch.randn(B, inp, device="cuda", dtype=torch.bfloat16)
                    y = torch.empty(B, out, device="cuda", dtype=torch.bfloat16)
                    d = torch.empty_like(y)
                    assert kcuda.use_lut(tab, kcuda._sm_count(0), B, out), "not a lookup-table batch"

                    def seq():
                        torch.matmul(x, W.T, out=y)
                        kcuda.delta_apply(x, y, tab, groups)

                    def conc():
                        cur = torch.cuda.current_stream()
                        side.wait_stream(cur)
                        with torch.cuda.stream(side):
                            d.zero_()
                            kcuda.delta_apply(x, d, tab, groups)
                        torch.matmul(x, W.T, out=y)
                        cur.wait_stream(side)
                        y.add_(d)

                    errs = []
                    staged(False)
                    seq()
                    want = y.float().clone()
                    for on in (False, True):
                        staged(on)
                        for f in (seq, conc):
                            y.fill_(float("nan"))
                            f()
                            torch.cuda.synchronize()
                            errs.append(float((y.float() - want).abs().max() / want.abs().max()))
                    r = {"shape": sh, "method": label, "B": B}
                    r["base"] = K.bench_ms(lambda: torch.matmul(x, W.T, out=y))
                    for on, sfx in ((False, ""), (True, "_st")):
                        staged(on)  # read when the graph is captured
                        r["delta" + sfx] = K.bench_ms(lambda: kcuda.delta_apply(x, y, tab, groups))
                        r["seq" + sfx] = K.bench_ms(seq)
                        r["conc" + sfx] = K.bench_ms(conc)
                    r["floor"] = (W.numel() * 2 + tab.nbytes() + (B * inp + B * out) * 2) / bw * 1e3
                    r["max_rel_diff"] = max(errs)
                    best = min(r[c] for c in ("seq", "seq_st", "conc", "conc_st"))
                    r["best_over_floor"] = best / r["floor"]
                    rows.append(r)
                    print(f"{sh:>11} {label:<11} {B:>4} " + " ".join(f"{r[c] * 1e3:8.1f}" for c in cols) + f"  {r['best_over_floor']:10.2f}  {r['max_rel_diff']:.1e}", flush=True)
                del pool
            torch.cuda.empty_cache()
    staged(False)
    if a.json:
        Path(a.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "copy_bandwidth": bw, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
