"""Where the prefill path's time goes (H100): ``triton.dequant.apply_segments`` for one delta and
B rows, timed as CUDA-graph replays (bench/kernels.py's ``bench_ms``) next to the base GEMM, with
the per-kernel times (torch profiler) of one call; low-rank deltas with V̂ stacked transposed in
x's order (``DELTAPACK_PREFILL_VT=t``, the default) and as stored (``rows``).

    python bench/device/prefill_profile.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/
from kernels import bench_ms  # noqa: E402
from tune_decode import kernel_times  # noqa: E402  (bench/device/)

from deltapack.kernels.packed import DeltaTable, KernelDelta, LowRankPart, RowGroups  # noqa: E402
from deltapack.kernels.synthetic import write_synthetic  # noqa: E402
from deltapack.kernels.triton import dequant  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for out, inp in ((4096, 4096), (4096, 11008)):
            W = torch.randn(out, inp, device="cuda", dtype=torch.bfloat16) / inp**0.5
            for method, bpp in (("delta-come", 1.0), ("bitdelta", 1.0), ("deltazip", 2.0)):
                f = write_synthetic(Path(tmp) / f"{method}-{inp}.dpk", [("l", out, inp, method, bpp)], seed=0)
                kd = KernelDelta.from_entry(f, f.manifest["deltas"][0], (out, inp), device="cuda")
                tab = DeltaTable.build([kd])
                ranks = [p.rank for p in kd.parts if isinstance(p, LowRankPart)]
                for B in (64, 512, 2048):
                    x = torch.randn(B, inp, device="cuda", dtype=torch.bfloat16)
                    y = torch.zeros(B, out, device="cuda", dtype=torch.bfloat16)
                    groups = RowGroups.single(B, "cuda")
                    fn = lambda: dequant.apply_segments(x, y, tab, groups)  # noqa: E731
                    base = bench_ms(lambda: torch.matmul(x, W.T, out=y)) * 1e3
                    for how in ("t", "rows") if ranks else ("t",):
                        os.environ["DELTAPACK_PREFILL_VT"] = how
                        us = bench_ms(fn) * 1e3
                        ks = kernel_times(fn, 10, label=lambda k: k[:40], min_count=1)
                        top = "  ".join(f"{k} {v:.1f}" for k, v in sorted(ks.items(), key=lambda kv: -kv[1])[:6])
                        print(f"{out}x{inp} {method} ranks {ranks} B={B} {how}: delta {us:.1f} us, base GEMM {base:.1f} us ({us / base:.2f}x); kernels: {top}", flush=True)
                    os.environ.pop("DELTAPACK_PREFILL_VT", None)


if __name__ == "__main__":
    main()
