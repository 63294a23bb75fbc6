# Session 7, call 6 (final): the decode step (CUDA graph, 2 Llama-7B layers; Delta-CoMe and
# BitDelta, B = 1 and 32, D = 0, 1, 32) with the build packed by call 5, then the whole test
# suite on the GPU (tests/, slow ones included; the Rust crates' cargo tests run on the CPU box).
source bench/device/env.sh
export DELTAPACK_COMMIT=$(cat .commit 2>/dev/null || echo wip)
t0=$(date +%s)
build_cuda > $OUT/cuda_build.log 2>&1; tail -2 $OUT/cuda_build.log
timeout 150 python3 bench/kernels.py --backend cuda --shapes 4096x4096,11008x4096,4096x11008 --methods delta-come@1,bitdelta@1 --batches "" --decode-layers 2 --out /tmp/d > $OUT/bench_decode.log 2>&1
echo "rc $?"
cp /tmp/d/kernels_h100.json $OUT/decode.json; cp /tmp/d/kernels_h100.md $OUT/decode.md
grep -E "decode step" $OUT/bench_decode.log
echo "decode $(( $(date +%s) - t0 )) s"
left=$(( 560 - ($(date +%s) - t0) ))
set -o pipefail
timeout $left python3 -m pytest -q -rs tests/ -p no:cacheprovider 2>&1 | tee $OUT/gpu_tests_h100.log | tail -5
echo "total $(( $(date +%s) - t0 )) s"
