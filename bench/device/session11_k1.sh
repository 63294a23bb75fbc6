# Session 11, kernel call 1 (issue 4): the lookup-table kernel with PRMT-formed table addresses
# (3.5 instructions per nibble, was 7) and a straight path per batch inside one scale group.
# 1. build; 2. the lookup-table and many-delta tests; 3. multi-delta rows B = D in 8..64 for the
# table kernel's methods (BitDelta, DeltaZip) on the five shapes, write flush (comparable with
# bench/results/kernels_h100_s10); 4. one ncu profile of the table kernel at B = D = 32, 4096x11008.
source bench/device/env.sh
R=/tmp/r11; mkdir -p $R
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
build_cuda $OUT/cuda_build.tgz > $R/cuda_build.log 2>&1; tail -1 $R/cuda_build.log
timeout 150 python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "lut or many_distinct or encodings or mixed" 2>&1 | tee $R/t_cuda.log | grep -E "^E |Error|FAILED|passed|failed" | head -30
echo "[$(el) s] tests"
timeout 200 python3 bench/kernels.py --backend cuda --methods bitdelta@1,deltazip@2 --batches 8,16,32,64 --distinct all --decode-layers 0 --out /tmp/m > $R/multi.log 2>&1
grep -E "B=(8|16|32|64) " $R/multi.log | cut -c1-170
cp /tmp/m/kernels_*.json $R/multi.json; cp /tmp/m/kernels_*.md $R/multi.md
echo "[$(el) s] multi"
timeout 90 ncu -k regex:lut_dense --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
  python3 bench/device/ncu_multi.py bitdelta 32 4096 11008 > $R/ncu_lut.log 2>&1
grep -E "Duration|DRAM Throughput|Compute \(SM\)|Achieved Occupancy|No Eligible|Issued Warp|Memory Throughput" $R/ncu_lut.log | head -12
echo "[$(el) s] total"
tar czf $OUT/logs.tgz -C $R .
