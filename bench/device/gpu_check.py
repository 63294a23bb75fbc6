"""The kernel test cases (tests/kernels/delta_cases.py) on a GPU, group by group and dtype by
dtype, with the time each took (mostly Triton compiles): a budgeted subset of the pytest GPU
suite for one device call.
    python bench/device/gpu_check.py every_encoding:bfloat16 mixed_batches:float32 ...
"""

import sys
import time
import traceback

import torch

from tests.kernels import delta_cases

failed = 0
for item in sys.argv[1:]:
    name, dt = item.split(":")
    t0 = time.time()
    try:
        n = delta_cases.GROUPS[name]("cuda", getattr(torch, dt))
        print(f"PASS {name} {dt}: {n} cases, {time.time() - t0:.0f} s", flush=True)
    except Exception:
        failed += 1
        print(f"FAIL {name} {dt} ({time.time() - t0:.0f} s):\n{traceback.format_exc()[-3000:]}", flush=True)
sys.exit(1 if failed else 0)
