# Session 6, call 3: Nsight Compute on the multi-delta CUDA kernels (B = D = 32): what limits the apply
# (delta-come and BitDelta) and the shrink at K = 11008.
source bench/device/env.sh
t0=$(date +%s)
python3 -c "from deltapack.kernels import cuda; print('cuda available', cuda.available(), cuda.build_error())" > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
echo "build $(( $(date +%s) - t0 )) s"
S="--section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats --section MemoryWorkloadAnalysis"
run() {  # label, kernel regex, env..., -- args
  label=$1; k=$2; shift 2
  echo "=== $label" >> $OUT/ncu.log
  env "$@" timeout 120 ncu -k regex:$k --launch-skip 2 --launch-count 1 $S python3 bench/device/ncu_multi.py $NCU_ARGS >> $OUT/ncu.log 2>&1
  echo "$label $(( $(date +%s) - t0 )) s"
}
NCU_ARGS="delta-come 32 4096 4096" run "dc32 apply nr4 ns4 minb1" apply_kernel DELTAPACK_CUDA_ROWS_PER_WARP=4 DELTAPACK_CUDA_APPLY_SUBTILES=4 DELTAPACK_CUDA_APPLY_MIN_BLOCKS=1
NCU_ARGS="delta-come 32 4096 4096" run "dc32 apply nr2 ns8 minb3" apply_kernel DELTAPACK_CUDA_ROWS_PER_WARP=2 DELTAPACK_CUDA_APPLY_SUBTILES=8 DELTAPACK_CUDA_APPLY_MIN_BLOCKS=3
NCU_ARGS="bitdelta 32 4096 4096" run "bd32 apply nr2 ns8 minb3" apply_kernel DELTAPACK_CUDA_ROWS_PER_WARP=2 DELTAPACK_CUDA_APPLY_SUBTILES=8 DELTAPACK_CUDA_APPLY_MIN_BLOCKS=3
NCU_ARGS="delta-come 32 4096 11008" run "dc32 4096x11008 shrink jb8" shrink_kernel DELTAPACK_CUDA_SHRINK_ROWS=8
NCU_ARGS="delta-come 32 4096 11008" run "dc32 4096x11008 shrink jb64" shrink_kernel DELTAPACK_CUDA_SHRINK_ROWS=64
NCU_ARGS="delta-come 32 11008 4096" run "dc32 11008x4096 apply default" apply_kernel DELTAPACK_CUDA_APPLY_MIN_BLOCKS=1
grep -E "^===|Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per|Memory Throughput|DRAM Throughput|L2 Cache Throughput|L1/TEX Hit|Issued Ipc|No Eligible|One or More|Warp Cycles Per Issued|Block Limit|Grid Size|Compute \(SM\) Throughput" $OUT/ncu.log | head -120
echo "total $(( $(date +%s) - t0 )) s"
