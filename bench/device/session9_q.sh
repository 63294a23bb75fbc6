# Session 9, quality call (issue 5): a second zoo (seed 1) and the cells that decide whether
# KL-weighted allocation + scale distillation becomes Delta-CoMe's default:
#   code at 1 and 0.5 bit (400 held-out problems: ±2.5 points at 60 %), arith and format at 0.5
#   bit (not run with distillation before), and the baselines at 1 bit on this zoo (the task must
#   make some baseline lose ≥ 5 points).
# Results: $OUT/q9.tgz (one folder per quality process, logs beside them), a summary printed last.
source bench/device/env.sh
set -u
Z=/tmp/zoo1
R=/tmp/res9
mkdir -p $R
export DELTAPACK_CUDA_DECODE=0  # Triton kernels, as in the committed quality runs
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
q() {
    local name=$1 limit=$2
    shift 2
    timeout "$limit" python3 bench/quality.py --preset gpu --seed 1 --zoo-dir $Z --threads 2 --work /tmp/work_$name --out "$R/$name" "$@" > "$R/$name.log" 2>&1
    echo "[$(el) s] $name done (rc $?)"
}
python3 bench/zoo/build.py --preset gpu --seed 1 --zoo-dir $Z --tasks code,arith,format --out "$R/zoo" > "$R/zoo.log" 2>&1 &
zpid=$!
# meanwhile, warm the Triton cache through the same kernels on a tiny zoo
python3 bench/quality.py --preset tiny --zoo-dir /tmp/zoo_tiny --device cuda --tasks code --methods delta-come-kl,delta-come-kl-distill \
    --bits 1,0.5 --n-eval 16 --n-kl 8 --threads 2 --work /tmp/work_warm --out "$R/warm" > "$R/warm.log" 2>&1 &
wait $zpid
echo "[$(el) s] zoo done"; grep -A6 "^| model" $R/zoo/*.md | head -8
left=$(( 585 - $(el) ))
q c_kl $left --tasks code --bits 1,0.5 --n-eval 400 --methods delta-come-kl,delta-come-kl-distill &
q c_dc $left --tasks code --bits 1,0.5 --n-eval 400 --methods delta-come,delta-come-distill &
q af_kl $left --tasks arith,format --jobs 2 --bits 0.5 --methods delta-come-kl,delta-come-kl-distill &
q af_base $left --tasks arith,format,code --jobs 3 --bits 1 --methods lowrank,bitdelta,rtn &
wait
echo "[$(el) s] all done"
python3 bench/device/quality_summary.py "$R"
tar czf $OUT/q9.tgz -C $R .
