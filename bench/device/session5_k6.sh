# Session 5, call 6: the final defaults (one pass without the base-row prefetch): quick GPU tests of
# the fused paths, per-call times of the B = 1 cases, the decode step.
source bench/device/env.sh
t0=$(date +%s)
python3 -c "from deltapack.kernels import cuda; print('cuda available', cuda.available(), cuda.build_error())" > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
echo "build $(( $(date +%s) - t0 )) s"
timeout 60 python3 -m pytest -q -x tests/kernels/test_cuda.py -k "onepass or graph or fused" > $OUT/test_cuda.log 2>&1; tail -1 $OUT/test_cuda.log
timeout 130 python3 bench/device/cuda_decode.py --no-triton --trace --cases 0,2 > $OUT/cuda_trace.log 2>&1; grep -E "B=D|default" $OUT/cuda_trace.log | cut -c1-300
echo "micro $(( $(date +%s) - t0 )) s"
timeout 100 python3 bench/kernels.py --shapes 4096x4096,11008x4096,4096x11008 --methods delta-come@1 --batches "" --decode-layers 2 --backend cuda --out /tmp/kc > $OUT/decode_step_cuda.log 2>&1; grep -E "decode step" $OUT/decode_step_cuda.log
cp /tmp/kc/kernels_h100.json /tmp/kc/kernels_h100.md $OUT/ 2>/dev/null
echo "total $(( $(date +%s) - t0 )) s"
