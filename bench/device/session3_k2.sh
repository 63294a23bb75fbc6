# One device call (H100, ~9.5 min): ncu of the decode kernels, a budgeted GPU correctness subset,
# a small tile sweep, and the kernel bench with the CUDA-graph decode step. Results under $OUT.
source bench/device/env.sh
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
timeout 70 ncu -k 'regex:shrink_kernel|apply_kernel' --launch-skip 2 --launch-count 2 --section LaunchStats --section Occupancy --section WarpStateStats --section SpeedOfLight --section MemoryWorkloadAnalysis python3 bench/device/ncu_case.py > $OUT/ncu.txt 2>&1
echo "ncu rc $?"
timeout 150 python3 bench/device/gpu_check.py fused_base:bfloat16 mixed_batches:float16 through_op:bfloat16 every_encoding:bfloat16 scale_layouts:float32 2>&1 | tee $OUT/gpu_check.log | grep -E "^(PASS|FAIL)"
timeout 100 python3 bench/device/tune_decode.py --cases 0,3,4 --variants '[{}, {"lane_major": false}, {"block_k": 128, "block_r": 32}, {"block_j": 128}, {"fused": true}, {"fused": true, "lane_major": false}]' 2>&1 | grep -v -i warn > $OUT/tune.log
timeout 220 python3 bench/kernels.py --shapes 4096x4096,11008x4096,4096x11008 --methods delta-come@1,bitdelta@1 --batches 1,32 --decode-layers 2 --out $OUT > $OUT/bench.log 2>&1
echo "bench rc $?"; grep -E "decode step" $OUT/bench.log
