# Session 5, call 1: build the CUDA kernels with the one-pass fused launch, run their GPU tests
# (changed paths first), time them per call (one pass vs two launches, knobs), then the decode
# step over 7B layers with the cuda backend.
source bench/device/env.sh
t0=$(date +%s)
python3 -c "from deltapack.kernels import cuda; print('cuda available', cuda.available(), cuda.build_error())" > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
echo "build $(( $(date +%s) - t0 )) s"
timeout 130 python3 -m pytest -q -x tests/kernels/test_cuda.py -k "onepass or graph or fused or llama or rows_per_warp" > $OUT/test_cuda.log 2>&1; tail -4 $OUT/test_cuda.log
echo "tests $(( $(date +%s) - t0 )) s"
timeout 160 python3 bench/device/cuda_decode.py --no-triton > $OUT/cuda_decode.log 2>&1; cut -c1-400 $OUT/cuda_decode.log
echo "micro $(( $(date +%s) - t0 )) s"
timeout 110 python3 bench/kernels.py --shapes 4096x4096,11008x4096,4096x11008 --methods delta-come@1 --batches "" --decode-layers 2 --backend cuda --out /tmp/kc > $OUT/decode_step_cuda.log 2>&1; grep -E "decode step" $OUT/decode_step_cuda.log; tail -3 $OUT/decode_step_cuda.log
cp /tmp/kc/kernels_h100.json /tmp/kc/kernels_h100.md $OUT/ 2>/dev/null
echo "total $(( $(date +%s) - t0 )) s"
