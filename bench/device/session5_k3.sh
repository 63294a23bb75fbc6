# Session 5, calls 3-5 (call 4: machine code cut 2-4x; call 5: table rows via one coalesced copy, base-row prefetch knob): shorter chains
# index reads, t-independent fold factors and Ut rows staged in shared memory before the wait,
# counters released at the end): GPU tests, then traces and times again, then the decode step.
source bench/device/env.sh
t0=$(date +%s)
python3 -c "from deltapack.kernels import cuda; print('cuda available', cuda.available(), cuda.build_error())" > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
echo "build $(( $(date +%s) - t0 )) s"
timeout 150 python3 -m pytest -q -x tests/kernels/test_cuda.py -k "not mixed" > $OUT/test_cuda.log 2>&1; tail -2 $OUT/test_cuda.log
echo "tests $(( $(date +%s) - t0 )) s"
timeout 150 python3 bench/device/cuda_decode.py --no-triton --trace --cases 0,1,2,6 > $OUT/cuda_trace.log 2>&1; grep -v Warn $OUT/cuda_trace.log | grep -E "x4096|x11008|default|minb3:|a_blocks32|base-only|prefetch" | cut -c1-420
echo "trace $(( $(date +%s) - t0 )) s"
timeout 100 python3 bench/kernels.py --shapes 4096x4096,11008x4096,4096x11008 --methods delta-come@1 --batches "" --decode-layers 2 --backend cuda --out /tmp/kc > $OUT/decode_step_cuda.log 2>&1; grep -E "decode step" $OUT/decode_step_cuda.log
cp /tmp/kc/kernels_h100.json /tmp/kc/kernels_h100.md $OUT/ 2>/dev/null
echo "total $(( $(date +%s) - t0 )) s"
