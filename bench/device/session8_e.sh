# Session 8, call 6: bench/kernels.py rows of one delta over many rows (D = 1, B = 16 … 2048: the
# prefill path, now with stacked factors and the permutation undone in V̂'s dequantization), every
# method and Llama shape; merged over session 7's sweep (re-measured rows replace older ones).
source bench/device/env.sh
t0=$(date +%s)
build_cuda > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
timeout 540 python3 bench/kernels.py --backend cuda --distinct one --batches 16,32,64,512,2048 --decode-layers 0 --out /tmp/e > $OUT/bench_e.log 2>&1
tail -3 $OUT/bench_e.log
cp /tmp/e/kernels_*.json $OUT/e.json; cp /tmp/e/kernels_*.md $OUT/e.md
echo "total $(( $(date +%s) - t0 )) s"
