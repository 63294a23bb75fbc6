# Session 8, call 3: the prefill path with stacked low-rank factors (bench/device/prefill_profile.py),
# the Llama-shape CUDA tests (never reached in call 2: the mixed-slot tests, which compile the
# Triton path too, took the whole 330 s and passed), the interpreted-Triton tests that failed on
# the device machine (with tracebacks), then the GPU tests of the Triton kernels and modules.
source bench/device/env.sh
t0=$(date +%s)
build_cuda $OUT/cuda_build.tgz > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
timeout 120 python3 bench/device/prefill_profile.py > $OUT/prefill_profile.log 2>&1; cut -c1-170 $OUT/prefill_profile.log
P="python3 -u -m pytest --tb=short -p no:cacheprovider -rfE --durations=10"
timeout 150 $P -v tests/kernels/test_cuda.py -k llama > $OUT/t_llama.log 2>&1; grep -E "PASS|FAIL|^E |passed|failed" $OUT/t_llama.log | head -30
timeout 60 $P -x tests/kernels/test_delta_gemm.py -k "interpreted_fp16" > $OUT/t_interp.log 2>&1; tail -25 $OUT/t_interp.log
left=$(( 575 - ($(date +%s) - t0) ))
timeout $left $P -v tests/nn/test_delta_linear.py tests/compress/test_gptq.py tests/compress/test_sparsegpt.py tests/bench/test_quality.py tests/kernels/test_delta_gemm.py -k "not interpreted" > $OUT/t_gpu.log 2>&1
grep -E "FAIL|ERROR|passed|failed" $OUT/t_gpu.log | tail -30; grep -c PASSED $OUT/t_gpu.log
echo "total $(( $(date +%s) - t0 )) s"
