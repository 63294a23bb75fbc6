"""Multi-delta decode with the lookup-table kernel (B = D distinct deltas, one row each): base
GEMM then the delta (sequential, as ``bench/kernels.py``'s ``ours``) against the delta on a side
stream into a zeroed scratch beside cuBLAS's GEMM, joined by one add (``kernels.cuda._concurrent``'s
pattern; conc2: cuBLAS on the side stream instead). Same timing as bench/kernels.py (CUDA-graph replays, do_bench's write flush).

    python bench/device/lut_concurrent.py [--methods bitdelta@1,deltazip@2] [--batches 16,32,64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernels as K  # noqa: E402  (bench/kernels.py)

from deltapack.kernels import cuda as kcuda  # noqa: E402
from deltapack.kernels.packed import DeltaTable, RowGroups  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="bitdelta@1,deltazip@2")
    ap.add_argument("--batches", default="16,32,64")
    ap.add_argument("--shapes", default=",".join(K.SHAPES))
    a = ap.parse_args()
    bw = K.copy_bandwidth()
    side = torch.cuda.Stream()
    print(f"{'shape':>11} {'method':<11} {'B=D':>4} {'base':>7} {'seq':>7} {'conc':>7} {'conc2':>7} {'delta':>7} {'floor':>7} seq/floor best-conc/floor")
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

                    def conc2():  # the other way round: cuBLAS on the side stream, launched first
                        cur = torch.cuda.current_stream()
                        side.wait_stream(cur)
                        with torch.cuda.stream(side):
                            torch.matmul(x, W.T, out=y)
                        d.zero_()
                        kcuda.delta_apply(x, d, tab, groups)
                        cur.wait_stream(side)
                        y.add_(d)

                    seq()
                    want = y.float().clone()
                    conc()
                    torch.cuda.synchronize()
                    err = float((y.float() - want).abs().max() / want.abs().max())
                    base = K.bench_ms(lambda: torch.matmul(x, W.T, out=y))
                    t_seq = K.bench_ms(seq)
                    t_conc = K.bench_ms(conc)
                    t_conc2 = K.bench_ms(conc2)
                    t_delta = K.bench_ms(lambda: kcuda.delta_apply(x, y, tab, groups))
                    floor = (W.numel() * 2 + tab.nbytes() + (B * inp + B * out) * 2) / bw * 1e3
                    print(f"{sh:>11} {label:<11} {B:>4} {base * 1e3:7.1f} {t_seq * 1e3:7.1f} {t_conc * 1e3:7.1f} {t_conc2 * 1e3:7.1f} {t_delta * 1e3:7.1f} {floor * 1e3:7.1f}"
                          f" {t_seq / floor:9.2f} {min(t_conc, t_conc2) / floor:10.2f}  (max rel diff {err:.1e})", flush=True)
                del pool
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
