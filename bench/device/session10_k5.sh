# Session 10, kernel call 5 (issue 4): Delta-CoMe's one pass at one row after call 4's reorder:
# outputs per warp (the rule's 2 at 4096 outputs and 4 above, or 2 / 1 everywhere: at <= 2 the
# base GEMV is the lean one) and 3 blocks per SM. Per setting: the B = 1 rows on the five shapes
# and the decode step (2 layers).
source bench/device/env.sh
R=/tmp/r10; mkdir -p $R
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
build_cuda $OUT/cuda_build.tgz > $R/cuda_build.log 2>&1; tail -1 $R/cuda_build.log
run() {  # name, env assignments...
    local name=$1; shift
    env "$@" timeout 80 python3 bench/kernels.py --backend cuda --methods delta-come@1 --batches 1 --distinct one --decode-layers 2 --out /tmp/$name > $R/$name.log 2>&1
    grep -E "B=1 " $R/$name.log | awk -v n=$name '{printf "%s %s fused %s\n", n, $1, $12}'
    grep -E "decode step.*D=1 fused" $R/$name.log | sed "s/^/$name /"
    cp /tmp/$name/kernels_*.json $R/$name.json
    echo "[$(el) s] $name"
}
run rule DELTAPACK_CUDA_DECODE=1
run nr2 DELTAPACK_CUDA_ROWS_PER_WARP=2
run nr1 DELTAPACK_CUDA_ROWS_PER_WARP=1
run minb3 DELTAPACK_CUDA_ONEPASS_MIN_BLOCKS=3
echo "[$(el) s] total"
tar czf $OUT/logs.tgz -C $R .
