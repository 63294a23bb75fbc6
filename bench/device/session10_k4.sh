# Session 10, kernel call 4 (issue 4): the fused apply / one pass stage the t-independent operands
# of the low-rank products (fold factors, Ut rows) before the base GEMV instead of after it.
# 1. build (restored if .cudacache/build.tgz matches; else rebuilt); 2. fused / one-pass tests;
# 3. decode step and Delta-CoMe's B = 1 rows (compare with call 3: 787.6 µs step); 4. one-pass
# phase traces at 4096² and 11008×4096 (bench/device/cuda_decode.py --trace).
source bench/device/env.sh
R=/tmp/r10; mkdir -p $R
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
build_cuda > $R/cuda_build.log 2>&1; tail -1 $R/cuda_build.log
timeout 110 python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "lean or fused_base or rows_per_warp or llama or cuda_graph or onepass or pdl or concurrent or encodings" 2>&1 | tee $R/t_cuda.log | grep -E "^E |Error|FAILED|passed|failed" | head -30
echo "[$(el) s] tests"
timeout 100 python3 bench/kernels.py --backend cuda --methods bitdelta@1,delta-come@1 --batches '' --decode-layers 2 --out /tmp/s > $R/step.log 2>&1
grep -E "decode step" $R/step.log
echo "[$(el) s] steps"
timeout 60 python3 bench/kernels.py --backend cuda --methods delta-come@1 --batches 1 --distinct one --decode-layers 0 --out /tmp/b1 > $R/b1_rows.log 2>&1
grep -E "B=1 " $R/b1_rows.log | cut -c1-150
cp /tmp/s/kernels_*.json $R/step.json; cp /tmp/b1/kernels_*.json $R/b1.json
echo "[$(el) s] rows"
left=$(( 560 - $(el) ))
timeout $left python3 bench/device/cuda_decode.py --trace --no-triton --cases 0,1 > $R/trace.log 2>&1; tail -40 $R/trace.log
echo "[$(el) s] total"
tar czf $OUT/logs.tgz -C $R .
