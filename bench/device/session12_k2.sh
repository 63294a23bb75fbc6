# Session 12, kernel call 2 (issue 4): the lookup-table build's stores rotated per lane (call 1's
# ncu: 12.6-way bank conflicts on the table stores) and 8-byte loads of x; staged loads only for
# tables with dense parts. 1. build; 2. lookup-table tests; 3. lut_stage.py (B = D = 32, 64);
# 4. ncu of the table kernel, plain and staged; 5. the decode step (2 layers) for BitDelta.
source bench/device/env.sh
R=/tmp/r12k2; mkdir -p $R
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
build_cuda > $R/cuda_build.log 2>&1; tail -2 $R/cuda_build.log
timeout 120 python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "lut or many_distinct" 2>&1 | tee $R/t_lut.log | grep -E "^E |Error|FAILED|passed|failed" | head -20
echo "[$(el) s] lut tests"
timeout 200 python3 bench/device/lut_stage.py --batches 32,64 --json $R/lut_stage.json 2>&1 | tee $R/lut_stage.log
echo "[$(el) s] lut_stage"
for st in 0 1; do
  DELTAPACK_CUDA_LUT_STAGE=$st timeout 60 ncu -k regex:lut_dense --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section SchedulerStats --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables python3 bench/device/ncu_multi.py bitdelta 32 4096 11008 > $R/ncu_lut_stage$st.log 2>&1
  echo "stage=$st"; grep -E "Duration|DRAM Throughput|L1/TEX Cache Throughput|Achieved Occupancy|Issued Warp|bank" $R/ncu_lut_stage$st.log | head -8
done
echo "[$(el) s] ncu"
for st in 0 1; do
  DELTAPACK_CUDA_LUT_STAGE=$st timeout $(( (570 - $(el)) / (2 - st) )) python3 bench/kernels.py --backend cuda --methods bitdelta@1 --batches '' --decode-layers 2 --out /tmp/s$st > $R/step$st.log 2>&1
  echo "stage=$st"; grep -E "decode step" $R/step$st.log
  cp /tmp/s$st/kernels_*.json $R/step$st.json 2>/dev/null
done
echo "[$(el) s] total"
tar czf $OUT/logs.tgz -C $R .
