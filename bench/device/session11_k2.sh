# Session 11, kernel call 2 (issue 4), the kernels of call 1 (carried build): 1. the lookup-table
# and many-delta tests first (call 1's test run hit its time limit at 80 tests, none failed), then
# the rest of tests/kernels/test_cuda.py; 2. the decode step (2 Llama-7B layers, CUDA graphs; its
# B = D = 32 rows run the lookup-table kernel) for BitDelta and Delta-CoMe.
source bench/device/env.sh
R=/tmp/r11k2; mkdir -p $R
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
build_cuda > $R/cuda_build.log 2>&1; tail -1 $R/cuda_build.log
timeout 120 python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "lut or many_distinct" 2>&1 | tee $R/t_lut.log | grep -E "^E |Error|FAILED|passed|failed" | head -20
echo "[$(el) s] lut tests"
timeout 120 python3 bench/kernels.py --backend cuda --methods bitdelta@1,delta-come@1 --batches '' --decode-layers 2 --out /tmp/s > $R/step.log 2>&1
grep -E "decode step" $R/step.log
cp /tmp/s/kernels_*.json $R/step.json
echo "[$(el) s] steps"
timeout $(( 560 - $(el) )) python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "not lut and not many_distinct" 2>&1 | tee $R/t_cuda.log | grep -E "^E |Error|FAILED|passed|failed" | head -30
echo "[$(el) s] total"
tar czf $OUT/logs.tgz -C $R .
