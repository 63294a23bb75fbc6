"""One row (B = 1) through the CUDA fused path, per Llama projection shape: where the time goes
against cuBLAS's GEMV. For each shape: cuBLAS (torch.matmul), the fused kernel with no delta
(slot −1: only its base GEMV), BitDelta and Delta-CoMe fused, each at 1, 2 and 4 outputs per
warp (``DELTAPACK_CUDA_ROWS_PER_WARP``) and 2 or 3 blocks per SM; for Delta-CoMe's one pass also
8 or 32 rank rows per shrink item and 0 (one per SM) or 32 blocks that only shrink (``sweep``).
CUDA-graph replays, L2 flushed before each (bench/kernels.py's ``bench_ms``). ``--ncu``: one
launch per configuration and no timing, for Nsight Compute.

    python bench/device/fused_b1.py [--shapes 4096x4096,...] [--out f.json]
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
from kernels import SHAPES, METHODS, DeltaPool, bench_ms  # noqa: E402

from deltapack.kernels import cuda  # noqa: E402
from deltapack.kernels.packed import DeltaTable, RowGroups  # noqa: E402


KNOBS = {
    "nr": cuda.ENV_ROWS_PER_WARP,
    "minb": cuda.ENV_APPLY_MIN_BLOCKS,  # fused apply: 2 (default) or 3 blocks per SM
    "op_minb": cuda.ENV_ONEPASS_MIN_BLOCKS,
    "jb": cuda.ENV_SHRINK_ROWS,
    "a_blocks": cuda.ENV_ONEPASS_A_BLOCKS,
}


def sweep(nrs: str, onepass: bool) -> list[dict]:
    """The knob settings measured: outputs per warp × blocks per SM for the fused apply, and for
    the one pass (low-rank parts) also rank rows per shrink item and blocks that only shrink."""
    out = []
    for nr in (int(v) for v in nrs.split(",")):
        if not onepass:
            out += [{"nr": nr, "minb": 2}, {"nr": nr, "minb": 3}]
            continue
        for op_minb in (2, 3):
            for jb in (8, 32):
                for a_blocks in (0, 32):
                    out.append({"nr": nr, "op_minb": op_minb, "jb": jb, "a_blocks": a_blocks})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--methods", default="bitdelta@1,delta-come@1")
    ap.add_argument("--nr", default="1,2,4")
    ap.add_argument("--out", default=None)
    ap.add_argument("--ncu", action="store_true", help="one launch per configuration, no timing (run under ncu)")
    a = ap.parse_args()
    assert cuda.available(), cuda.build_error()
    dtype = torch.bfloat16
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for sname in a.shapes.split(","):
        out, inp = SHAPES[sname]
        W = torch.randn(out, inp, device="cuda", dtype=dtype) / inp**0.5
        x = torch.randn(1, inp, device="cuda", dtype=dtype)
        y = torch.empty(1, out, device="cuda", dtype=dtype)
        floor_b = W.numel() * 2
        r = {"shape": sname, "what": "cublas", "us": float("nan") if a.ncu else bench_ms(lambda: torch.matmul(x, W.T, out=y)) * 1e3}
        rows.append(r)
        print(f"{sname:>11} cublas              {r['us']:7.1f} us", flush=True)
        for label in a.methods.split(","):
            method, bpp, kw = METHODS[label]
            pool = DeltaPool((out, inp), method, bpp, kw, tmp, seed=1)
            tab = DeltaTable.build(pool.take(1))
            t = torch.empty(1, max(1, tab.max_rank), device="cuda")
            for slot, what in ((-1, "ours base only"), (0, label)):
                if slot < 0 and label != a.methods.split(",")[0]:
                    continue
                groups = RowGroups.per_row(torch.tensor([slot], device="cuda"))
                ref = torch.matmul(x.float(), W.float().T)
                if slot >= 0:
                    ref += pool.take(1)[0].forward_reference(x.float()).float()
                for env in sweep(a.nr, slot >= 0 and tab.has_lowrank):
                    for k in KNOBS.values():
                        os.environ.pop(k, None)
                    os.environ.update({KNOBS[k]: str(v) for k, v in env.items()})
                    cuda.delta_apply(x, y, tab, groups, t=t, base=W)
                    err = float((y.float() - ref).abs().max() / ref.abs().max())
                    us = float("nan") if a.ncu else bench_ms(lambda: cuda.delta_apply(x, y, tab, groups, t=t, base=W)) * 1e3
                    rows.append({"shape": sname, "what": what, **env, "us": us, "rel_err": err})
                    knobs = " ".join(f"{k}={v}" for k, v in env.items())
                    print(f"{sname:>11} {what:<15} {knobs:<34} {us:7.1f} us  ({floor_b / us / 1e3:6.0f} GB/s base bytes)  err {err:.1e}", flush=True)
            for k in KNOBS.values():
                os.environ.pop(k, None)
        del W
        torch.cuda.empty_cache()
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
