# Session 8, call 1 (planned as session 7, call 8):
# 1. the CUDA tests that failed in call 7 (mixed slots, Llama shapes; deselected from every run
#    since session 5), with tracebacks;
# 2. the lookup-table kernel's threshold: BitDelta and DeltaZip at B = D = 2..8 with the kernel
#    forced on, against the default (warp kernel / Triton there);
# 3. the prefill path's single gather of x's permuted columns: Delta-CoMe at B = 512, 2048, D = 1.
source bench/device/env.sh
export DELTAPACK_COMMIT=$(cat .commit 2>/dev/null || echo wip)
t0=$(date +%s)
build_cuda $OUT/cuda_build.tgz > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
timeout 150 python3 -m pytest -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "mixed or llama" 2>&1 | tee $OUT/t8.log | grep -E "^E |Error|FAILED|passed|failed" | head -40
echo "tests $(( $(date +%s) - t0 )) s"
B="--backend cuda --shapes 4096x4096,4096x14336 --methods bitdelta@1,deltazip@2 --batches 2,4,8 --decode-layers 0"
DELTAPACK_CUDA_LUT=1 timeout 80 python3 bench/kernels.py $B --out /tmp/lut1 > $OUT/lut1.log 2>&1
timeout 80 python3 bench/kernels.py $B --out /tmp/lut0 > $OUT/lut0.log 2>&1
grep -h "D=[248] " $OUT/lut1.log $OUT/lut0.log
left=$(( 560 - ($(date +%s) - t0) ))
timeout $left python3 bench/kernels.py --backend cuda --shapes 4096x4096,4096x11008 --methods delta-come@1 --batches 512,2048 --decode-layers 0 --out /tmp/p > $OUT/prefill.log 2>&1
grep -E "D=1 " $OUT/prefill.log
echo "total $(( $(date +%s) - t0 )) s"
