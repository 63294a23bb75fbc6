# Session 7, call 1: the lookup-table kernel for dense 1-/2-bit parts and per-row batches past 64
# rows. Build (packed to $OUT for the next calls), the CUDA kernel tests, then bench/kernels.py on
# two shapes with the lookup-table kernel on (default) and off.
source bench/device/env.sh
export DELTAPACK_COMMIT=$(cat .commit 2>/dev/null || echo wip)
t0=$(date +%s)
build_cuda $OUT/cuda_build.tgz > $OUT/cuda_build.log 2>&1; tail -2 $OUT/cuda_build.log
timeout 150 python3 -m pytest -q tests/kernels/test_cuda.py -k "not mixed and not llama" > $OUT/test_cuda.log 2>&1; tail -3 $OUT/test_cuda.log
echo "tests $(( $(date +%s) - t0 )) s"
timeout 150 python3 bench/kernels.py --backend cuda --shapes 4096x4096,4096x11008 --methods bitdelta@1 --batches 1,8,16,32,64,512 --decode-layers 0 --out /tmp/lut > $OUT/bench_lut.log 2>&1; tail -1 $OUT/bench_lut.log
DELTAPACK_CUDA_LUT=0 timeout 120 python3 bench/kernels.py --backend cuda --shapes 4096x4096,4096x11008 --methods bitdelta@1 --batches 16,32,64,512 --decode-layers 0 --out /tmp/warp > $OUT/bench_warp.log 2>&1; tail -1 $OUT/bench_warp.log
cp /tmp/lut/kernels_h100.md $OUT/lut.md; cp /tmp/warp/kernels_h100.md $OUT/warp.md
grep -h "bitdelta" $OUT/bench_lut.log $OUT/bench_warp.log | grep "B=" 
echo "total $(( $(date +%s) - t0 )) s"
