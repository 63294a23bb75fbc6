# Session 8, call 8 (refused: the session's device time was spent; run it first next session):
# the final prefill code (V̂ᵀ in x's order for act-order blocks at every row count; blocks without
# a permutation as stored), on the GPU and in bench/kernels.py's D = 1 rows.
source bench/device/env.sh
t0=$(date +%s)
build_cuda > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
timeout 60 python3 -m tests.kernels.delta_cases prefill_dequant cuda bfloat16 2>&1 | tail -2
timeout 150 python3 bench/kernels.py --backend cuda --shapes 4096x4096,4096x11008,11008x4096 --methods delta-come@1,lowrank@1 --distinct one --batches 16,512,2048 --decode-layers 0 --out /tmp/g > $OUT/bench_g.log 2>&1
grep -E "D=1 " $OUT/bench_g.log | cut -c1-150
cp /tmp/g/kernels_*.json $OUT/g.json
echo "total $(( $(date +%s) - t0 )) s"
