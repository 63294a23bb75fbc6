# Session 9, call 3: the fused base GEMV as a cp.async pipeline (a ring of 8 16-byte vectors per
# lane in shared memory) with dense 1-/2-bit delta parts folded in (csrc rebuilt: ~4 min, packed
# in pieces to $OUT/cuda_build.tgz.a?).
# 1. the CUDA kernel tests (not the mixed-slot ones: they compile the Triton path for minutes);
# 2. one row per projection shape with the knob sweep (bench/device/fused_b1.py);
# 3. the decode step (2 layers), with our base GEMV beside cuBLAS.
source bench/device/env.sh
t0=$(date +%s)
build_cuda $OUT/cuda_build.tgz > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
timeout 120 python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "not mixed and not out_of_scope and not many_rows" 2>&1 | tee $OUT/t_cuda.log | grep -E "^E |Error|FAILED|passed|failed" | head -30
echo "tests $(( $(date +%s) - t0 )) s"
timeout 150 python3 -X faulthandler bench/device/fused_b1.py --out $OUT/fused_b1.json > $OUT/fused_b1.log 2>&1; grep -v Warn $OUT/fused_b1.log | cut -c1-130
echo "b1 $(( $(date +%s) - t0 )) s"
left=$(( 570 - ($(date +%s) - t0) ))
timeout $left python3 bench/kernels.py --backend cuda --methods delta-come@1,bitdelta@1 --batches '' --decode-layers 2 --out /tmp/s > $OUT/step.log 2>&1
grep -E "decode step" $OUT/step.log; grep -A3 "^One delta" /tmp/s/kernels_*.md
cp /tmp/s/kernels_*.json $OUT/step.json
echo "total $(( $(date +%s) - t0 )) s"
