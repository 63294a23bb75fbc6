# Session 8, call 2: the CUDA tests that failed in session 7's call 7 (mixed slots, Llama shapes),
# unbuffered with tracebacks and per-test durations, then the other files with GPU tests.
source bench/device/env.sh
t0=$(date +%s)
build_cuda > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
P="python3 -u -m pytest -q --tb=short -p no:cacheprovider -rfE --durations=15"
timeout 330 $P tests/kernels/test_cuda.py -k "mixed or llama" > $OUT/t_fail.log 2>&1
grep -E "^E |Error|FAILED|passed|failed|s call" $OUT/t_fail.log | head -60
left=$(( 570 - ($(date +%s) - t0) ))
timeout $left $P tests/kernels/test_delta_gemm.py tests/nn/test_delta_linear.py tests/compress/test_gptq.py tests/compress/test_sparsegpt.py tests/bench/test_quality.py > $OUT/t_gpu.log 2>&1
grep -E "FAILED|ERROR|passed|failed" $OUT/t_gpu.log | tail -30
echo "total $(( $(date +%s) - t0 )) s"
