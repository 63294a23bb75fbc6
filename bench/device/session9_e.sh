# Session 9, call 5: the fused apply at 2 outputs per warp when it has no low-rank part
# (cuda.rows_per_warp(fused_dense=True), from call 4's sweep); csrc as in call 4 (rebuilt: no build
# came back). 1. the fused CUDA tests; 2. the decode step (2 layers); 3. bench/kernels.py's B = 1
# rows for BitDelta on the five shapes.
source bench/device/env.sh
t0=$(date +%s)
build_cuda > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
timeout 90 python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "fused_base or rows_per_warp or llama or cuda_graph" 2>&1 | tee $OUT/t_cuda.log | grep -E "^E |Error|FAILED|passed|failed" | head -30
echo "tests $(( $(date +%s) - t0 )) s"
timeout 100 python3 bench/kernels.py --backend cuda --methods delta-come@1,bitdelta@1 --batches '' --decode-layers 2 --out /tmp/s > $OUT/step.log 2>&1
grep -E "decode step" $OUT/step.log
left=$(( 560 - ($(date +%s) - t0) ))
timeout $left python3 bench/kernels.py --backend cuda --methods bitdelta@1 --batches 1 --distinct one --decode-layers 0 --out /tmp/b1 > $OUT/b1_rows.log 2>&1
grep -E "B=1 " $OUT/b1_rows.log | cut -c1-170
cp /tmp/s/kernels_*.json $OUT/step.json; cp /tmp/b1/kernels_*.json $OUT/b1.json
echo "total $(( $(date +%s) - t0 )) s"
