# Session 8, call 6: the prefill path with V̂ᵀ dequantized in x's column order (dequant_t_kernel)
# against V̂ as stored (permutation on the smaller operand), its correctness on the GPU, then
# bench/kernels.py's rows of one delta over many rows (D = 1, B = 16 … 2048) for every method.
source bench/device/env.sh
t0=$(date +%s)
build_cuda > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
for dt in float32 bfloat16; do timeout 100 python3 -m tests.kernels.delta_cases prefill_dequant cuda $dt 2>&1 | tail -3; done
timeout 150 python3 bench/device/prefill_profile.py 2>&1 | grep -v -i warn > $OUT/prefill_profile.log; cut -c1-190 $OUT/prefill_profile.log
left=$(( 575 - ($(date +%s) - t0) ))
timeout $left python3 bench/kernels.py --backend cuda --distinct one --batches 16,64,512,2048 --decode-layers 0 --out /tmp/e > $OUT/bench_e.log 2>&1
grep -E "D=1 " $OUT/bench_e.log | cut -c1-150
cp /tmp/e/kernels_*.json $OUT/e.json; cp /tmp/e/kernels_*.md $OUT/e.md
echo "total $(( $(date +%s) - t0 )) s"
