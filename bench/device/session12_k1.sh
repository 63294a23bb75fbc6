# Session 12, kernel call 1 (issue 4): 1. the build, now split into units compiled in parallel
# (csrc/delta_decode.cuh + inst_*.cu); 2. the lookup-table and many-delta tests, codes loaded per
# row and staged (lut_part_staged); 3. bench/device/lut_stage.py: the table kernel plain / staged,
# alone, after cuBLAS and beside it on a side stream; 4. ncu of the table kernel plain and staged
# at B = D = 32, 4096x11008, with the memory tables (shared vs global wavefronts); 5. the rest of
# tests/kernels/test_cuda.py with the time left.
source bench/device/env.sh
R=/tmp/r12k1; mkdir -p $R
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
build_cuda $OUT/cuda_build.tgz > $R/cuda_build.log 2>&1; tail -2 $R/cuda_build.log
timeout 120 python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "lut or many_distinct or sources" 2>&1 | tee $R/t_lut.log | grep -E "^E |Error|FAILED|passed|failed" | head -20
echo "[$(el) s] lut tests"
timeout 220 python3 bench/device/lut_stage.py --batches 16,32,64 --json $R/lut_stage.json 2>&1 | tee $R/lut_stage.log
echo "[$(el) s] lut_stage"
for st in 0 1; do
  DELTAPACK_CUDA_LUT_STAGE=$st timeout 70 ncu -k regex:lut_dense --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section SchedulerStats --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables python3 bench/device/ncu_multi.py bitdelta 32 4096 11008 > $R/ncu_lut_stage$st.log 2>&1
  echo "stage=$st"; grep -E "Duration|DRAM Throughput|L1/TEX Cache Throughput|Achieved Occupancy|Issued Warp|Mem Busy" $R/ncu_lut_stage$st.log | head -8
done
echo "[$(el) s] ncu"
timeout $(( 575 - $(el) )) python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "not lut and not many_distinct" 2>&1 | tee $R/t_cuda.log | grep -E "^E |Error|FAILED|passed|failed" | head -30
echo "[$(el) s] total"
tar czf $OUT/logs.tgz -C $R .
