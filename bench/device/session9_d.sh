# Session 9, call 4: back to the register-loaded fused base GEMV (call 2's design; the cp.async ring
# of call 3 was slower), the folded dense part's zeros from the chunk sums (csrc rebuilt, not
# packed: at most 8 files come back).
# 1. the CUDA kernel tests; 2. one row per projection shape, base alone and BitDelta
# (bench/device/fused_b1.py); 3. the decode step (2 layers), default and with the fused apply at
# 3 blocks per SM; 4. bench/kernels.py's B = 1 rows for BitDelta and Delta-CoMe on the five shapes.
source bench/device/env.sh
t0=$(date +%s)
build_cuda > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
timeout 120 python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "not mixed and not out_of_scope and not many_rows" 2>&1 | tee $OUT/t_cuda.log | grep -E "^E |Error|FAILED|passed|failed" | head -30
echo "tests $(( $(date +%s) - t0 )) s"
timeout 90 python3 -X faulthandler bench/device/fused_b1.py --methods bitdelta@1 > $OUT/fused_b1.log 2>&1; grep -v Warn $OUT/fused_b1.log | cut -c1-130
echo "b1 $(( $(date +%s) - t0 )) s"
timeout 100 python3 bench/kernels.py --backend cuda --methods delta-come@1,bitdelta@1 --batches '' --decode-layers 2 --out /tmp/s > $OUT/step.log 2>&1
grep -E "decode step" $OUT/step.log
DELTAPACK_CUDA_APPLY_MIN_BLOCKS=3 timeout 60 python3 bench/kernels.py --backend cuda --methods bitdelta@1 --batches '' --decode-layers 2 --out /tmp/s3 > $OUT/step_minb3.log 2>&1
grep -E "decode step.*B=1 D=. fused" $OUT/step_minb3.log | sed 's/^/minb3 /'
left=$(( 575 - ($(date +%s) - t0) ))
timeout $left python3 bench/kernels.py --backend cuda --methods bitdelta@1,delta-come@1 --batches 1 --distinct one --decode-layers 0 --out /tmp/b1 > $OUT/b1_rows.log 2>&1
grep -E "B=1 " $OUT/b1_rows.log | cut -c1-170
cp /tmp/s/kernels_*.json $OUT/step.json; cp /tmp/b1/kernels_*.json $OUT/b1.json
echo "total $(( $(date +%s) - t0 )) s"
