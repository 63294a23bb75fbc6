# Session 5, call 2: the one-pass launch with phase tracing: where its time goes (timelines of
# shrink-only and apply blocks), and the occupancy knobs (3 blocks per SM, fewer shrink blocks).
source bench/device/env.sh
t0=$(date +%s)
python3 -c "from deltapack.kernels import cuda; print('cuda available', cuda.available(), cuda.build_error())" > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
echo "build $(( $(date +%s) - t0 )) s"
timeout 100 python3 -m pytest -q -x tests/kernels/test_cuda.py -k "onepass or graph or fused" > $OUT/test_cuda.log 2>&1; tail -2 $OUT/test_cuda.log
DELTAPACK_CUDA_ONEPASS_MIN_BLOCKS=3 timeout 60 python3 -m pytest -q -x tests/kernels/test_cuda.py -k "onepass or fused_lowrank" >> $OUT/test_cuda.log 2>&1; tail -1 $OUT/test_cuda.log
echo "tests $(( $(date +%s) - t0 )) s"
timeout 240 python3 bench/device/cuda_decode.py --no-triton --trace --cases 0,1,2,6 > $OUT/cuda_trace.log 2>&1; grep -v Warn $OUT/cuda_trace.log | cut -c1-600
echo "total $(( $(date +%s) - t0 )) s"
