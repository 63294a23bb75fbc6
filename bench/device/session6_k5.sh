# Session 6, call 5: GPU tests of the CUDA kernels and of the prefill path (bf16), then
# bench/kernels.py on the CUDA backend (CUDA decode kernels where they serve the batch, Triton
# elsewhere, the prefill path for long segment groups): 7B layer shapes, B in 1, 4, 32, 512,
# D in {1, B}; the decode step over 2 layers (B = 1 and 32; D = 0, 1, 32).
source bench/device/env.sh
export DELTAPACK_COMMIT=$(cat .commit 2>/dev/null || echo wip)
t0=$(date +%s)
python3 -c "from deltapack.kernels import cuda; print('cuda available', cuda.available(), cuda.build_error())" > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
echo "build $(( $(date +%s) - t0 )) s"
timeout 70 python3 -m pytest -q tests/kernels/test_cuda.py -k "not mixed and not llama" > $OUT/test_cuda.log 2>&1; tail -1 $OUT/test_cuda.log
timeout 80 python3 -m pytest -q tests/kernels/test_delta_gemm.py -k "on_gpu and prefill and bfloat16" > $OUT/test_triton.log 2>&1; tail -1 $OUT/test_triton.log
echo "tests $(( $(date +%s) - t0 )) s"
timeout 290 python3 bench/kernels.py --backend cuda --shapes 4096x4096,11008x4096,4096x11008 --methods delta-come@1,bitdelta@1 --batches 1,4,32,512 --decode-layers 2 --out $OUT > $OUT/bench.log 2>&1; tail -2 $OUT/bench.log
grep -E "decode step" $OUT/bench.log
echo "total $(( $(date +%s) - t0 )) s"
