# One device call (H100): the whole GPU kernel suite in parallel processes (it is bound by
# Triton compiles, ~15-30 s per kernel specialization on one core), then a short bench.
source bench/device/env.sh
mkdir -p $OUT/t
for g in fused_base through_op every_encoding scale_layouts mixed_batches; do for d in float32 float16 bfloat16; do
  timeout 420 python3 bench/device/gpu_check.py $g:$d > $OUT/t/$g-$d.log 2>&1 &
done; done
timeout 420 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_delta_gemm.py -m gpu -k llama > $OUT/t/llama.log 2>&1 &
timeout 420 python3 -m pytest -q -p no:cacheprovider tests/nn -m gpu > $OUT/t/nn.log 2>&1 &
wait
cat $OUT/t/*.log | grep -E "^(PASS|FAIL)|passed|failed|error" | tee $OUT/gpu_suite.log
tail -n 30 $OUT/t/llama.log $OUT/t/nn.log >> $OUT/gpu_suite.log
grep -l FAIL $OUT/t/*.log | xargs -r tail -n 40 >> $OUT/gpu_suite.log
rm -rf $OUT/t
timeout 130 python3 bench/kernels.py --shapes 4096x4096 --methods delta-come@1,bitdelta@1 --batches 1,32 --decode-layers 0 --out $OUT > $OUT/bench.log 2>&1
grep -E "^ +[0-9]+x" $OUT/bench.log
