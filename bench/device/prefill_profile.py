"""Where the prefill path's time goes (H100): per-kernel times (torch profiler) of
``triton.dequant.apply_segments`` for one delta and B rows, and the dequantization kernels alone
at several tile shapes.

    python bench/device/prefill_profile.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from triton.testing import do_bench

from deltapack.kernels.packed import DeltaTable, KernelDelta, LowRankPart, RowGroups
from deltapack.kernels.synthetic import write_synthetic
from deltapack.kernels.triton import dequant
from tune_decode import kernel_times  # bench/device/


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("delta-come", "bitdelta"):
            f = write_synthetic(Path(tmp) / f"{method}.dpk", [("l", 4096, 4096, method, 1.0)], seed=0)
            kd = KernelDelta.from_entry(f, f.manifest["deltas"][0], (4096, 4096), device="cuda")
            tab = DeltaTable.build([kd])
            for B in (32, 512):
                x = torch.randn(B, 4096, device="cuda", dtype=torch.bfloat16)
                y = torch.zeros(B, 4096, device="cuda", dtype=torch.bfloat16)
                groups = RowGroups.single(B, "cuda")
                fn = lambda: dequant.apply_segments(x, y, tab, groups)  # noqa: E731
                us = do_bench(fn, warmup=10, rep=50) * 1e3
                ks = kernel_times(fn, 10, label=lambda k: k[:40], min_count=1)
                print(f"{method} B={B}: {us:.1f} us/call; kernels: " + "  ".join(f"{k} {v:.1f}" for k, v in sorted(ks.items(), key=lambda kv: -kv[1])[:8]))
            for j, p in enumerate(kd.parts):
                ops = [("a", p.vt.rows, 4096, p.vt.bits, dequant.MODE_COLS)] if isinstance(p, LowRankPart) else [("a", 4096, 4096, p.w.bits, dequant.MODE_COLS)]
                if isinstance(p, LowRankPart):
                    ops.append(("b", 4096, p.rank, p.ut.bits, dequant.MODE_UT))
                for which, rows, cols, bits, mode in ops:
                    res = []
                    for br, bc in ((32, 128), (16, 128), (64, 128), (32, 256), (8, 512)):
                        dequant.BLOCK_R, dequant.BLOCK_C = br, bc
                        us = do_bench(lambda: dequant.dequantize_operand(tab, 0, j, which, rows, cols, bits, torch.bfloat16, mode), warmup=5, rep=30) * 1e3
                        res.append(f"{br}x{bc} {us:.1f}")
                    dequant.BLOCK_R, dequant.BLOCK_C = 32, 128
                    mb = rows * cols * 2 / 1e6
                    print(f"  {method} part {j} {which} [{rows}x{cols}] {bits}-bit ({mb:.1f} MB out): " + "  ".join(res))


if __name__ == "__main__":
    main()
