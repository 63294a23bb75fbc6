# Session 8, call 7: DeltaZip's 2:4 dequantization a word at a time (dequant_s24_words_kernel) and
# the prefill stacking chosen by rows (V̂ as stored + gather of x up to rank / 2 rows, V̂ᵀ in x's
# order above): correctness on the GPU, the profile, and bench/kernels.py's D = 1 rows.
source bench/device/env.sh
t0=$(date +%s)
build_cuda > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
for dt in float32 bfloat16; do timeout 90 python3 -m tests.kernels.delta_cases prefill_dequant cuda $dt 2>&1 | tail -3; done
timeout 100 python3 bench/device/prefill_profile.py 2>&1 | grep -v -i warn > $OUT/prefill_profile.log; cut -c1-190 $OUT/prefill_profile.log
left=$(( 420 - ($(date +%s) - t0) ))
timeout $left python3 bench/kernels.py --backend cuda --methods deltazip@2,delta-come@1,delta-come@0.5 --distinct one --batches 16,64,512,2048 --decode-layers 0 --out /tmp/f > $OUT/bench_f.log 2>&1
grep -E "D=1 " $OUT/bench_f.log | cut -c1-150
cp /tmp/f/kernels_*.json $OUT/f.json; cp /tmp/f/kernels_*.md $OUT/f.md
echo "total $(( $(date +%s) - t0 )) s"
