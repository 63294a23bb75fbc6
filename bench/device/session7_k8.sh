# Session 7, call 8 (not run: the session's device time was spent): the errors of the CUDA tests
# that failed in call 7 (Llama-shape and mixed slots; deselected from every earlier call's run),
# with tracebacks. The next session's first call.
source bench/device/env.sh
build_cuda > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
timeout 60 python3 -m pytest -x -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "llama and q4g128" > $OUT/t8.log 2>&1
timeout 40 python3 -m pytest -x -q --tb=short -p no:cacheprovider tests/kernels/test_cuda.py -k "mixed and float32" >> $OUT/t8.log 2>&1
grep -E "^E |Error|error|FAILED|passed|failed" $OUT/t8.log | head -40
