"""One decode case for Nsight Compute (H100): delta-come@1 on 4096×4096, B = 1, the default
launch config; three calls (the first compiles).
    ncu -k regex:"shrink_kernel|apply_kernel" --launch-skip 2 --launch-count 2 \\
        --section LaunchStats --section Occupancy --section WarpStateStats --section SpeedOfLight \\
        python bench/device/ncu_case.py [method] [B]
"""

import sys
import tempfile
from pathlib import Path

import torch

from deltapack.kernels.packed import DeltaTable, KernelDelta, RowGroups
from deltapack.kernels.synthetic import write_synthetic
from deltapack.kernels.triton import delta_apply, pick_config

method = sys.argv[1] if len(sys.argv) > 1 else "delta-come"
B = int(sys.argv[2]) if len(sys.argv) > 2 else 1
with tempfile.TemporaryDirectory() as tmp:
    f = write_synthetic(Path(tmp) / "d.dpk", [("w", 4096, 4096, method, 1.0)], seed=0)
    kd = KernelDelta.from_entry(f, f.manifest["deltas"][0], (4096, 4096), device="cuda")
tab = DeltaTable.build([kd.to("cuda") for _ in range(B)])
groups = RowGroups.per_row(torch.arange(B, device="cuda"))
x = torch.randn(B, 4096, device="cuda", dtype=torch.bfloat16)
y = torch.zeros(B, 4096, device="cuda", dtype=torch.bfloat16)
print(pick_config(tab, groups))
for _ in range(3):
    delta_apply(x, y, tab, groups)
torch.cuda.synchronize()
