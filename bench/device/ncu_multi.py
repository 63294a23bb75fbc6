"""One multi-delta case of the CUDA decode kernels for Nsight Compute (H100): B = D rows, each
with its own synthetic delta, three calls (the first builds and warms up). Knobs come from the
environment (DELTAPACK_CUDA_ROWS_PER_WARP, _APPLY_SUBTILES, _APPLY_MIN_BLOCKS, _SHRINK_ROWS).

    ncu -k regex:apply_kernel --launch-skip 2 --launch-count 1 --section SpeedOfLight \\
        --section Occupancy --section WarpStateStats --section SchedulerStats \\
        python bench/device/ncu_multi.py delta-come 32 4096 4096
"""

import sys
import tempfile
from pathlib import Path

import torch

from deltapack.kernels import cuda as kcuda
from deltapack.kernels.packed import DeltaTable, KernelDelta, RowGroups
from deltapack.kernels.synthetic import write_synthetic

method = sys.argv[1] if len(sys.argv) > 1 else "delta-come"
B = int(sys.argv[2]) if len(sys.argv) > 2 else 32
out = int(sys.argv[3]) if len(sys.argv) > 3 else 4096
inp = int(sys.argv[4]) if len(sys.argv) > 4 else 4096
with tempfile.TemporaryDirectory() as tmp:
    kds = []
    for d in range(B):
        f = write_synthetic(Path(tmp) / f"d{d}.dpk", [("w", out, inp, method, 1.0)], seed=d)
        kds.append(KernelDelta.from_entry(f, f.manifest["deltas"][0], (out, inp), device="cuda"))
tab = DeltaTable.build(kds)
groups = RowGroups.per_row(torch.arange(B, device="cuda"))
x = torch.randn(B, inp, device="cuda", dtype=torch.bfloat16)
y = torch.zeros(B, out, device="cuda", dtype=torch.bfloat16)
assert kcuda.handles(x, tab, groups)
for _ in range(3):
    kcuda.delta_apply(x, y, tab, groups)
torch.cuda.synchronize()
print("done", method, B, out, inp)
