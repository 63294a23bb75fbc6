# Session 7, call 2: the lookup-table kernel with the row's next words loaded ahead (PF, default)
# against without (DELTAPACK_CUDA_LUT_PREFETCH=0) and against the warp-per-row apply at few rows
# (DELTAPACK_CUDA_LUT=0), BitDelta on two shapes; the CUDA kernel tests; Nsight Compute on the
# lookup-table kernel at B = D = 32, 4096².
source bench/device/env.sh
export DELTAPACK_COMMIT=$(cat .commit 2>/dev/null || echo wip)
t0=$(date +%s)
build_cuda $OUT/cuda_build.tgz > $OUT/cuda_build.log 2>&1; tail -2 $OUT/cuda_build.log
timeout 150 python3 -m pytest -q tests/kernels/test_cuda.py -k "not mixed and not llama" > $OUT/test_cuda.log 2>&1; tail -3 $OUT/test_cuda.log
echo "tests $(( $(date +%s) - t0 )) s"
B="--backend cuda --shapes 4096x4096,4096x14336 --methods bitdelta@1 --decode-layers 0"
timeout 100 python3 bench/kernels.py $B --batches 2,4,8,16,32,512 --out /tmp/pf1 > $OUT/ab_pf1.log 2>&1
DELTAPACK_CUDA_LUT_PREFETCH=0 timeout 100 python3 bench/kernels.py $B --batches 2,4,8,16,32,512 --out /tmp/pf0 > $OUT/ab_pf0.log 2>&1
DELTAPACK_CUDA_LUT=0 timeout 60 python3 bench/kernels.py $B --batches 2,4,8 --out /tmp/lut0 > $OUT/ab_lut0.log 2>&1
grep -h "B=" $OUT/ab_pf1.log $OUT/ab_pf0.log $OUT/ab_lut0.log
echo "ab $(( $(date +%s) - t0 )) s"
S="--section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis"
for pf in 1 0; do
  echo "=== lut_dense PF=$pf bitdelta B=D=32 4096x4096" >> $OUT/ncu.log
  DELTAPACK_CUDA_LUT_PREFETCH=$pf timeout 100 ncu -k regex:lut_dense --launch-skip 2 --launch-count 1 $S python3 bench/device/ncu_multi.py bitdelta 32 4096 4096 >> $OUT/ncu.log 2>&1
done
grep -E "^===|Duration|Achieved Occupancy|Registers Per|Memory Throughput|DRAM Throughput|L1/TEX Hit|L2 Hit|Issued Ipc|No Eligible|Warp Cycles Per Issued|Compute \(SM\) Throughput|Stall" $OUT/ncu.log | head -60
echo "total $(( $(date +%s) - t0 )) s"
