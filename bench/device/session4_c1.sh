# Session 4, call 1: build the CUDA decode kernels (low-rank + dense, fused base), run their GPU
# tests, then time them against cuBLAS (and their launch knobs) inside CUDA graphs.
source bench/device/env.sh
t0=$(date +%s)
DELTAPACK_CUDA_VERBOSE=1 python3 -c "from deltapack.kernels import cuda; print('cuda available', cuda.available(), cuda.build_error())" > $OUT/cuda_build.log 2>&1; tail -3 $OUT/cuda_build.log
echo "build $(( $(date +%s) - t0 )) s"
timeout ${TEST_S:-240} python3 -m pytest -q -x tests/kernels/test_cuda.py -k "${TEST_K:-not slow}" > $OUT/test_cuda.log 2>&1; tail -15 $OUT/test_cuda.log
echo "tests $(( $(date +%s) - t0 )) s"
timeout ${BENCH_S:-200} python3 bench/device/cuda_decode.py ${BENCH_ARGS:---no-triton} > $OUT/cuda_decode.log 2>&1; cat $OUT/cuda_decode.log | cut -c1-400
echo "total $(( $(date +%s) - t0 )) s"
