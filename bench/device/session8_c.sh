# Session 8, call 4: the prefill path with each block's permutation undone inside V̂'s
# dequantization (no gather of x, no scatter of V̂), profiled and in bench/kernels.py's rows
# (B = 512, 2048, D = 1); then the Triton kernels' GPU tests (compiled: the slow part).
source bench/device/env.sh
t0=$(date +%s)
build_cuda > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
timeout 120 python3 bench/device/prefill_profile.py > $OUT/prefill_profile.log 2>&1; cut -c1-200 $OUT/prefill_profile.log | grep -v Warn
timeout 100 python3 bench/kernels.py --backend cuda --shapes 4096x4096,4096x11008,14336x4096 --methods delta-come@1,deltazip@2,lowrank@1 --batches 512,2048 --decode-layers 0 --out /tmp/p > $OUT/prefill.log 2>&1
grep -E "D=1 " $OUT/prefill.log
left=$(( 575 - ($(date +%s) - t0) ))
timeout $left python3 -u -m pytest -v --tb=short -p no:cacheprovider -rfE --durations=10 tests/kernels/test_delta_gemm.py > $OUT/t_gemm.log 2>&1
grep -E "FAIL|ERROR|passed|failed" $OUT/t_gemm.log | tail -20; grep -c PASSED $OUT/t_gemm.log
echo "total $(( $(date +%s) - t0 )) s"
