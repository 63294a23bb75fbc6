# Session 9, kernel call 6 (results: bench/results/kernels_h100_s9/call6): fused low-rank batches with the delta on a side stream beside cuBLAS's GEMV
# (cuda._concurrent, DELTAPACK_CUDA_CONCURRENT=1) against the one-pass launch. csrc unchanged
# since call 5 but for a comment (rebuilt: no build came back).
# 1. the low-rank fused tests (both modes, graphs); 2. the decode step, Delta-CoMe, both modes;
# 3. bench/kernels.py's B = 1 rows for Delta-CoMe@1 on the five shapes with the side stream.
source bench/device/env.sh
t0=$(date +%s)
build_cuda > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
timeout 60 python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "concurrent or fused_lowrank or onepass" 2>&1 | tee $OUT/t_cuda.log | grep -E "^E |Error|FAILED|passed|failed" | head -30
echo "tests $(( $(date +%s) - t0 )) s"
DELTAPACK_CUDA_CONCURRENT=1 timeout 100 python3 bench/kernels.py --backend cuda --methods delta-come@1,delta-come@0.5 --batches '' --decode-layers 2 --out /tmp/s > $OUT/step_conc.log 2>&1
grep -E "decode step" $OUT/step_conc.log
left=$(( 380 - ($(date +%s) - t0) ))
DELTAPACK_CUDA_CONCURRENT=1 timeout $left python3 bench/kernels.py --backend cuda --methods delta-come@1 --batches 1 --distinct one --decode-layers 0 --out /tmp/b1 > $OUT/b1_conc.log 2>&1
grep -E "B=1 " $OUT/b1_conc.log | cut -c1-150
cp /tmp/s/kernels_*.json $OUT/step_conc.json; cp /tmp/b1/kernels_*.json $OUT/b1_conc.json
echo "total $(( $(date +%s) - t0 )) s"
