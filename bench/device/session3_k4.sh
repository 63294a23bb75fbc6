# One device call (H100): decode tile sweep, compiled in parallel processes first (Triton cache),
# then timed in one process.
source bench/device/env.sh
V='[{}, {"apply_warps": 2}, {"apply_warps": 1}, {"block_n": 16, "apply_warps": 1}, {"block_n": 64, "apply_warps": 2}, {"block_j": 128}, {"block_j": 128, "apply_warps": 2}, {"block_k": 256, "apply_warps": 2}, {"block_r": 8, "num_warps": 1, "apply_warps": 4}, {"block_r": 32, "num_warps": 2, "apply_warps": 4}, {"split_k": 8}, {"num_stages": 1}, {"num_stages": 3}, {"fused": true, "apply_warps": 2}, {"fused": true, "block_kb": 512, "apply_warps": 8}, {"block_n": 16, "block_j": 128, "apply_warps": 1}]'
for i in $(seq 0 15); do timeout 200 python3 bench/device/tune_decode.py --cases 0,3,1 --variants "$V" --only $i > /dev/null 2>&1 & done; wait
timeout 200 python3 bench/device/tune_decode.py --cases 0,3,1 --variants "$V" 2>&1 | grep -v -i warn | tee $OUT/tune.log
