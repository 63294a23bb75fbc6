# Session 7, call 5: the lookup-table kernel also reads DeltaZip's 2:4 s24q2 parts (and its 1-bit
# table build no longer uses local memory). Build (packed for call 6), the CUDA kernel tests, then
# DeltaZip and BitDelta re-measured on all five shapes (they replace the sweep's rows when merged).
source bench/device/env.sh
export DELTAPACK_COMMIT=$(cat .commit 2>/dev/null || echo wip)
t0=$(date +%s)
build_cuda $OUT/cuda_build.tgz > $OUT/cuda_build.log 2>&1; tail -2 $OUT/cuda_build.log
timeout 200 python3 -m pytest -q tests/kernels/test_cuda.py -k "not mixed and not llama" > $OUT/test_cuda.log 2>&1; tail -3 $OUT/test_cuda.log
echo "tests $(( $(date +%s) - t0 )) s"
timeout 260 python3 bench/kernels.py --backend cuda --shapes 4096x4096,11008x4096,4096x11008,14336x4096,4096x14336 --methods deltazip@2,bitdelta@1 --batches 1,2,4,8,16,32,64,512,2048 --decode-layers 0 --out /tmp/z > $OUT/bench_z.log 2>&1
echo "rc $?"
cp /tmp/z/kernels_h100.json $OUT/z.json; cp /tmp/z/kernels_h100.md $OUT/z.md
grep -E "since start" $OUT/bench_z.log
grep -E "B=(32|512) +D=(32|512) " $OUT/bench_z.log
echo "total $(( $(date +%s) - t0 )) s"
