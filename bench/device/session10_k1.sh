# Session 10, kernel call 1 (issue 4): one-row GEMV designs against cuBLAS (bench/device/gemv_lab.py):
# register loads (the production scheme, double-buffered) vs per-warp bulk-copy rings, with and
# without a folded 1-bit delta, on the five Llama shapes.
source bench/device/env.sh
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv
timeout 560 python3 bench/device/gemv_lab.py --out $OUT/lab.json 2>&1 | tee $OUT/lab.log | tail -150
