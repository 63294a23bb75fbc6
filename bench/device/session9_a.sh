# Session 9, call 1:
# 1. session 8's pending check (bench/device/session8_g.sh): the final prefill code on the GPU and
#    its D = 1 rows (Delta-CoMe, low-rank);
# 2. one row through the fused CUDA path per projection shape (bench/device/fused_b1.py): cuBLAS,
#    our base GEMV alone, BitDelta / Delta-CoMe at 1, 2, 4 outputs per warp;
# 3. Nsight Compute on those launches at 11008x4096.
source bench/device/env.sh
t0=$(date +%s)
build_cuda > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
timeout 300 python3 bench/device/fused_b1.py --out $OUT/fused_b1.json > $OUT/fused_b1.log 2>&1; cat $OUT/fused_b1.log | grep -v Warn
echo "b1 $(( $(date +%s) - t0 )) s"
timeout 120 ncu --section SpeedOfLight --section Occupancy --section LaunchStats -k regex:"apply|onepass" python3 bench/device/fused_b1.py --ncu --shapes 11008x4096 > $OUT/ncu_b1.txt 2>&1
grep -E "apply_kernel|onepass_kernel|Memory Throughput|DRAM Throughput|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Waves Per SM|Grid Size|Block Limit" $OUT/ncu_b1.txt | cut -c1-120 | head -90
echo "ncu $(( $(date +%s) - t0 )) s"
timeout 60 python3 -m tests.kernels.delta_cases prefill_dequant cuda bfloat16 2>&1 | tail -2
left=$(( 570 - ($(date +%s) - t0) ))
timeout $left python3 bench/kernels.py --backend cuda --shapes 4096x4096,4096x11008,11008x4096 --methods delta-come@1,lowrank@1 --distinct one --batches 16,512,2048 --decode-layers 0 --out /tmp/g > $OUT/bench_g.log 2>&1
grep -E "D=1 " $OUT/bench_g.log | cut -c1-150
cp /tmp/g/kernels_*.json $OUT/g.json
echo "total $(( $(date +%s) - t0 )) s"
