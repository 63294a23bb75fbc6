# Session 6, call 2: the Ut row cache refilled per apply sub-tile, the register-bound variant of the
# unfused apply; GPU tests of the CUDA kernels, the multi-delta sweep, D = 1 segments via CUDA vs Triton.
source bench/device/env.sh
t0=$(date +%s)
python3 -c "from deltapack.kernels import cuda; print('cuda available', cuda.available(), cuda.build_error())" > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
echo "build $(( $(date +%s) - t0 )) s"
timeout 150 python3 -m pytest -q tests/kernels/test_cuda.py -k "not mixed" > $OUT/test_cuda.log 2>&1; tail -3 $OUT/test_cuda.log
echo "tests $(( $(date +%s) - t0 )) s"
timeout 200 python3 bench/device/cuda_decode.py --no-triton --multi --cases 6,7,8,10,11,14 > $OUT/cuda_multi.log 2>&1; grep -E "B=D" $OUT/cuda_multi.log | cut -c1-200
echo "multi $(( $(date +%s) - t0 )) s"
timeout 150 python3 bench/device/cuda_decode.py --same > $OUT/cuda_same.log 2>&1; cat $OUT/cuda_same.log | tail -5
echo "total $(( $(date +%s) - t0 )) s"
