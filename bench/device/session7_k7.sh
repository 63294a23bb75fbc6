# Session 7, call 7: the rest of the GPU test suite (call 6 ran out of time inside test_cuda.py,
# with two failures in tests/bench/test_quality.py and tests/compress/test_distill.py to see),
# then the prefill path with x's permuted columns gathered once per group (was once per
# low-rank part): Delta-CoMe re-measured at B = 16 .. 2048 (rows replace the sweep's when merged).
source bench/device/env.sh
export DELTAPACK_COMMIT=$(cat .commit 2>/dev/null || echo wip)
t0=$(date +%s)
build_cuda > $OUT/cuda_build.log 2>&1; tail -2 $OUT/cuda_build.log
timeout 120 python3 -m pytest -q -x --tb=short tests/bench/test_quality.py tests/compress/test_distill.py -p no:cacheprovider > $OUT/gpu_tests_failed.log 2>&1; tail -3 $OUT/gpu_tests_failed.log
timeout 110 python3 -m pytest -q -rs --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "mixed or llama or rows_per_warp or subtiles_gpu or many or lut or onepass or unaligned or through or out_of_scope or graph" > $OUT/gpu_tests_h100_part2.log 2>&1; tail -1 $OUT/gpu_tests_h100_part2.log
timeout 200 python3 -m pytest -q -rs --tb=short -p no:cacheprovider tests/kernels/test_delta_gemm.py tests/kernels/test_packed.py tests/kernels/test_reference.py tests/nn tests/test_cli.py tests/zoo >> $OUT/gpu_tests_h100_part2.log 2>&1; tail -1 $OUT/gpu_tests_h100_part2.log
echo "tests $(( $(date +%s) - t0 )) s"
left=$(( 570 - ($(date +%s) - t0) ))
timeout $left python3 bench/kernels.py --backend cuda --shapes 4096x4096,4096x11008,14336x4096,11008x4096,4096x14336 --methods delta-come@1 --batches 16,512,2048 --decode-layers 0 --out /tmp/p > $OUT/bench_p.log 2>&1
echo "rc $?"
cp /tmp/p/kernels_h100.json $OUT/p.json; cp /tmp/p/kernels_h100.md $OUT/p.md
grep -E "B=(512|2048) +D=1 " $OUT/bench_p.log
echo "total $(( $(date +%s) - t0 )) s"
