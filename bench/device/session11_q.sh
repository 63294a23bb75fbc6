# Session 11, quality call (issue 5), on a rebuild of the seed-1 zoo (preset gpu, code and format):
# the group-scale distillation (--distill-scales: Delta-CoMe's packed factors' fp16 group scales
# trained with the singular values, same file) against singular values alone, on the same zoo
# build (GPU nondeterminism makes every build a different fine-tune, so both run here):
#   (a) code, delta-come-kl-distill (singular values only) at 1, 0.25, 0.125 bit, 1000 problems;
#   (b) code, delta-come-kl-distill-scales at the same budgets, the same 1000 problems;
#   (c) format, both methods at 0.25 and 0.125 bit, 200 problems.
# Scheduling as session10_q.sh: each quality process starts once its fine-tunes are stamped; all
# end by END seconds (a process cut off leaves its measured rows in quality-part-<task>.csv).
# Results: $OUT/q11.tgz; knobs as session10_q.sh.
source bench/device/env.sh
set -u
P=${P:-gpu}
SEED=${SEED:-1}
NA=${NA:-1000}
NC=${NC:-200}
BA=${BA:-1000}
XQ=${XQ:-}
END=${END:-585}
Z=${Z:-/tmp/zoo1}
R=${R:-/tmp/res11}
mkdir -p $R
export DELTAPACK_CUDA_DECODE=0  # Triton kernels, as in the committed quality runs
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
q() {
    local name=$1
    shift
    local limit=$(( END - $(el) ))
    echo "[$(el) s] $name starts (limit $limit s)"
    timeout "$limit" python3 bench/quality.py --preset $P --seed $SEED --zoo-dir $Z --threads 2 --work /tmp/work_$name --out "$R/$name" $XQ "$@" > "$R/$name.log" 2>&1
    echo "[$(el) s] $name done (rc $?)"
}
# wait_ft TASK...: until every named fine-tune is stamped (1), or the build died / time ran out (0)
wait_ft() {
    local t
    while true; do
        local ok=1
        for t in "$@"; do [ -f "$Z/$t-$P-s$SEED/zoo.json" ] || ok=0; done
        [ $ok = 1 ] && return 0
        if ! kill -0 $zpid 2>/dev/null || [ $(el) -ge $(( END - 30 )) ]; then
            echo "[$(el) s] fine-tunes $* not stamped: build gone or out of time"; return 1
        fi
        sleep 2
    done
}
timeout $(( END - 5 )) python3 bench/zoo/build.py --preset $P --seed $SEED --zoo-dir $Z --tasks code,format --out "$R/zoo" > "$R/zoo.log" 2>&1 &
zpid=$!
# meanwhile, warm the Triton cache through the same kernels (the three budgets) on a tiny zoo
if [ "$P" != tiny ]; then
    python3 bench/quality.py --preset tiny --zoo-dir /tmp/zoo_tiny --device cuda --tasks code --methods delta-come-kl-distill,delta-come-kl-distill-scales \
        --bits 1,0.25 --n-eval 16 --n-kl 8 --threads 2 --work /tmp/work_warm --out "$R/warm" > "$R/warm.log" 2>&1 &
fi
pids=()
if wait_ft format; then
    echo "[$(el) s] format stamped"
    q f_both --tasks format --bits 0.25,0.125 --n-eval $NC --methods delta-come-kl-distill,delta-come-kl-distill-scales &
    pids+=($!)
fi
if wait_ft code; then
    echo "[$(el) s] code stamped"
    q c_kl_d --tasks code --bits 1,0.25,0.125 --n-eval $NA --eval-batch $BA --methods delta-come-kl-distill &
    pids+=($!)
    q c_kl_ds --tasks code --bits 1,0.25,0.125 --n-eval $NA --eval-batch $BA --methods delta-come-kl-distill-scales &
    pids+=($!)
fi
wait $zpid
echo "[$(el) s] zoo done (rc $?)"
grep -A6 "^| model" $R/zoo/*.md | head -8
for p in "${pids[@]}"; do wait $p; done
echo "[$(el) s] all done"
python3 bench/device/quality_summary.py "$R"
rm -f $R/*/*.dpk
tar czf ${OUT:-/tmp}/q11.tgz -C $R .
echo "[$(el) s] tarred"
