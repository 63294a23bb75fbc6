# Session 6, call 4: low-rank apply by part (warp-uniform bit width), the prefill path (dequantize +
# cuBLAS for long segment groups): GPU tests (CUDA kernels; Triton groups incl. prefill_dequant),
# D = 1 segment cases, multi-delta knob sweep.
source bench/device/env.sh
t0=$(date +%s)
python3 -c "from deltapack.kernels import cuda; print('cuda available', cuda.available(), cuda.build_error())" > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
echo "build $(( $(date +%s) - t0 )) s"
timeout 120 python3 -m pytest -q tests/kernels/test_cuda.py -k "not mixed" > $OUT/test_cuda.log 2>&1; tail -2 $OUT/test_cuda.log
timeout 150 python3 -m pytest -q tests/kernels/test_delta_gemm.py -k "on_gpu and (prefill or mixed)" > $OUT/test_triton.log 2>&1; tail -2 $OUT/test_triton.log
echo "tests $(( $(date +%s) - t0 )) s"
timeout 100 python3 bench/device/cuda_decode.py --same > $OUT/cuda_same.log 2>&1; tail -7 $OUT/cuda_same.log
echo "same $(( $(date +%s) - t0 )) s"
timeout 260 python3 bench/device/cuda_decode.py --no-triton --multi --cases 0,7,10,11,14 > $OUT/cuda_multi.log 2>&1; grep -E "B=D" $OUT/cuda_multi.log | cut -c1-200
echo "total $(( $(date +%s) - t0 )) s"
