# Session 10, kernel call 3 (issue 4): the lean fused GEMV bounded to 4 blocks per SM (62
# registers: one wave for 4096 outputs), the lean base GEMV in Delta-CoMe's fused paths only at
# ≤ 2 outputs per warp (call 2: at 4 it spilled). 1. build; 2. fused tests; 3. decode step (lean on,
# and Delta-CoMe's with it off); 4. B = 1 / 2 rows with the write flush (comparable with every
# earlier run) and with the read flush (bench/kernels.py --flush read: L2 left clean).
source bench/device/env.sh
R=/tmp/r10; mkdir -p $R
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
build_cuda $OUT/cuda_build.tgz > $R/cuda_build.log 2>&1; tail -1 $R/cuda_build.log
timeout 100 python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "lean or fused_base or rows_per_warp or llama or cuda_graph or onepass or scope" 2>&1 | tee $R/t_cuda.log | grep -E "^E |Error|FAILED|passed|failed" | head -30
echo "[$(el) s] tests"
timeout 100 python3 bench/kernels.py --backend cuda --methods bitdelta@1,delta-come@1 --batches '' --decode-layers 2 --out /tmp/s > $R/step.log 2>&1
grep -E "decode step" $R/step.log
DELTAPACK_CUDA_LEAN=0 timeout 60 python3 bench/kernels.py --backend cuda --methods delta-come@1 --batches '' --decode-layers 2 --out /tmp/s0 > $R/step_lean0.log 2>&1
grep -E "decode step.*fused" $R/step_lean0.log | sed 's/^/LEAN=0 /'
echo "[$(el) s] steps"
timeout 60 python3 bench/kernels.py --backend cuda --methods bitdelta@1,delta-come@1 --batches 1,2 --distinct one --decode-layers 0 --out /tmp/b1 > $R/b1_rows.log 2>&1
grep -E "B=[12] " $R/b1_rows.log | cut -c1-150
timeout 90 python3 bench/kernels.py --backend cuda --flush read --methods bitdelta@1,delta-come@1 --batches 1 --distinct one --decode-layers 2 --out /tmp/b1r > $R/b1_rows_read.log 2>&1
grep -E "B=1 |decode step" $R/b1_rows_read.log | cut -c1-150 | sed 's/^/READ /'
cp /tmp/s/kernels_*.json $R/step.json; cp /tmp/b1/kernels_*.json $R/b1.json; cp /tmp/b1r/kernels_*.json $R/b1_read.json; cp /tmp/b1r/kernels_*.md $R/b1_read.md
echo "[$(el) s] total"
tar czf $OUT/logs.tgz -C $R .
