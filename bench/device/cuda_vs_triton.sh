# One device call: build + test the CUDA decode kernel, time it against Triton on BitDelta decode
# (D = B, B <= 16), and run the Triton decode tuning sweep.
source bench/device/env.sh
t0=$(date +%s)
DELTAPACK_CUDA_VERBOSE=1 python3 -c "from deltapack.kernels import cuda; print('cuda available', cuda.available(), cuda.build_error())" > $OUT/cuda_build.log 2>&1; tail -3 $OUT/cuda_build.log
echo "build $(( $(date +%s) - t0 )) s"
timeout 240 python3 -m pytest -q tests/kernels/test_cuda.py tests/nn -k "gpu or cuda or Cuda" 2>&1 | tail -4
for b in cuda triton; do
  timeout 150 python3 bench/kernels.py --shapes 4096x4096,14336x4096 --methods bitdelta@1 --batches 1,2,4,8,16 --backend $b --decode-layers 0 --out /tmp/k_$b > /tmp/k_$b.log 2>&1
  cp /tmp/k_$b/kernels_h100.md $OUT/bitdelta_decode_$b.md; grep -E "D=([0-9]+) " /tmp/k_$b.log | cat | head -20; tail -2 /tmp/k_$b.log
done
timeout 200 python3 bench/device/tune_decode.py > $OUT/tune.log 2>&1; cat $OUT/tune.log | cut -c1-200
