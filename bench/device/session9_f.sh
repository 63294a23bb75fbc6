# Session 9, quality call 2 (issue 5): the code cells that session9_q.sh's time limit cut, on the
# same zoo (preset gpu, seed 1, rebuilt: the build is deterministic in preset and seed up to GPU
# nondeterminism, so the fine-tune's accuracy is re-measured in the same run): Delta-CoMe with
# scale distillation at 1 bit, fixed plan and KL-weighted, 200 held-out problems (400 did not fit the call).
source bench/device/env.sh
set -u
Z=/tmp/zoo1
R=/tmp/res9f
mkdir -p $R
export DELTAPACK_CUDA_DECODE=0
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
q() {
    local name=$1 limit=$2
    shift 2
    timeout "$limit" python3 bench/quality.py --preset gpu --seed 1 --zoo-dir $Z --threads 2 --work /tmp/work_$name --out "$R/$name" "$@" > "$R/$name.log" 2>&1
    echo "[$(el) s] $name done (rc $?)"
}
python3 bench/zoo/build.py --preset gpu --seed 1 --zoo-dir $Z --tasks code --out "$R/zoo" > "$R/zoo.log" 2>&1 &
zpid=$!
python3 bench/quality.py --preset tiny --zoo-dir /tmp/zoo_tiny --device cuda --tasks code --methods delta-come-kl-distill \
    --bits 1 --n-eval 16 --n-kl 8 --threads 2 --work /tmp/work_warm --out "$R/warm" > "$R/warm.log" 2>&1 &
wait $zpid
echo "[$(el) s] zoo done"
left=$(( 585 - $(el) ))
q c_kl_d $left --tasks code --bits 1 --n-eval 200 --methods delta-come-kl-distill &
q c_dc_d $left --tasks code --bits 1 --n-eval 200 --methods delta-come-distill &
wait
echo "[$(el) s] all done"
grep -h "\[code\]" $R/c_*.log
tar czf $OUT/q9f.tgz -C $R c_kl_d c_dc_d c_kl_d.log c_dc_d.log zoo.log
