# Final device call of session 3 (H100): the kernel bench on 4096x4096 with the adaptive apply
# warps (compiles warmed in parallel processes first).
source bench/device/env.sh
for m in delta-come@1 bitdelta@1 delta-come@0.5 lowrank@1; do for b in 1 32; do
  timeout 100 python3 bench/kernels.py --shapes 4096x4096 --methods $m --batches $b --decode-layers 0 --out /tmp/warm-$m-$b > /dev/null 2>&1 &
done; done; wait
timeout 150 python3 bench/kernels.py --shapes 4096x4096 --methods delta-come@1,bitdelta@1,delta-come@0.5,lowrank@1 --batches 1,32 --decode-layers 0 --out $OUT > $OUT/bench.log 2>&1
grep -E "^ +[0-9]+x" $OUT/bench.log
