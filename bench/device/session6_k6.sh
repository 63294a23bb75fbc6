# Session 6, call 6: the prefill path's time by kernel (no CUDA extension: Triton only), and the GPU
# test of the prefill path.
source bench/device/env.sh
export DELTAPACK_CUDA_DECODE=0
t0=$(date +%s)
timeout 200 python3 bench/device/prefill_profile.py > $OUT/prefill_profile.log 2>&1; cat $OUT/prefill_profile.log | grep -v Warn | cut -c1-400
echo "profile $(( $(date +%s) - t0 )) s"
timeout 150 python3 -m pytest -q tests/kernels/test_delta_gemm.py -k "on_gpu and prefill" > $OUT/test_triton.log 2>&1; tail -2 $OUT/test_triton.log
echo "total $(( $(date +%s) - t0 )) s"
