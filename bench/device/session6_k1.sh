# Session 6, call 1: multi-delta CUDA path (apply sub-tiles, up to 64 rows, segments per row):
# GPU tests of the CUDA kernels, then the multi-delta knob sweep (delta alone) and the fused-vs-unfused
# columns at B = D = 2 .. 64.
source bench/device/env.sh
t0=$(date +%s)
python3 -c "from deltapack.kernels import cuda; print('cuda available', cuda.available(), cuda.build_error())" > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
echo "build $(( $(date +%s) - t0 )) s"
timeout 200 python3 -m pytest -q tests/kernels/test_cuda.py -k "not mixed" > $OUT/test_cuda.log 2>&1; tail -3 $OUT/test_cuda.log
echo "tests $(( $(date +%s) - t0 )) s"
timeout 300 python3 bench/device/cuda_decode.py --no-triton --multi --cases 0,9,6,7,8,10,11,12,13,14 > $OUT/cuda_multi.log 2>&1; grep -E "B=D" $OUT/cuda_multi.log | cut -c1-260
echo "total $(( $(date +%s) - t0 )) s"
