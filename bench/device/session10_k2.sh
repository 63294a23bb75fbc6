# Session 10, kernel call 2 (issue 4): the lean fused GEMV (csrc lean_kernel: x kept 16-bit in
# shared memory, one output per warp, double-buffered loads; BitDelta's 1-bit codes folded in), and
# the same base GEMV inside Delta-CoMe's one pass.
# 1. build (packed for the next calls); 2. the fused CUDA tests; 3. decode step and B = 1 / 2 rows,
# lean on and off (DELTAPACK_CUDA_LEAN=0: session 9's fused apply) in the same run; 4. the L2
# flush study (bench/device/gemv_lab.py --flush-study).
source bench/device/env.sh
R=/tmp/r10; mkdir -p $R
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
build_cuda $OUT/cuda_build.tgz > $R/cuda_build.log 2>&1; tail -1 $R/cuda_build.log
timeout 120 python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "lean or fused_base or rows_per_warp or llama or cuda_graph or scope" 2>&1 | tee $R/t_cuda.log | grep -E "^E |Error|FAILED|passed|failed" | head -30
echo "[$(el) s] tests"
timeout 100 python3 bench/kernels.py --backend cuda --methods bitdelta@1,delta-come@1 --batches '' --decode-layers 2 --out /tmp/s > $R/step.log 2>&1
grep -E "decode step" $R/step.log
DELTAPACK_CUDA_LEAN=0 timeout 80 python3 bench/kernels.py --backend cuda --methods bitdelta@1,delta-come@1 --batches '' --decode-layers 2 --out /tmp/s0 > $R/step_lean0.log 2>&1
grep -E "decode step" $R/step_lean0.log | sed 's/^/LEAN=0 /'
echo "[$(el) s] steps"
timeout 60 python3 bench/kernels.py --backend cuda --methods bitdelta@1,delta-come@1 --batches 1,2 --distinct one --decode-layers 0 --out /tmp/b1 > $R/b1_rows.log 2>&1
grep -E "B=[12] " $R/b1_rows.log | cut -c1-170
DELTAPACK_CUDA_LEAN=0 timeout 60 python3 bench/kernels.py --backend cuda --methods bitdelta@1,delta-come@1 --batches 1,2 --distinct one --decode-layers 0 --out /tmp/b10 > $R/b1_rows_lean0.log 2>&1
grep -E "B=[12] " $R/b1_rows_lean0.log | cut -c1-170 | sed 's/^/LEAN=0 /'
cp /tmp/s/kernels_*.json $R/step.json; cp /tmp/b1/kernels_*.json $R/b1.json
echo "[$(el) s] rows"
left=$(( 570 - $(el) ))
timeout $left python3 bench/device/gemv_lab.py --flush-study --out $R/flush.json 2>&1 | tee $R/flush.log
echo "[$(el) s] total"
tar czf $OUT/logs.tgz -C $R .
