# Quality cells on the seed-1 `gpu` zoo, chained over device calls (issue 5). The zoo build takes
# 440-450 s of a 600 s call on a fresh H100 (session 11), but the machine keeps /tmp while it is
# warm (a call made within ~30 s of the last one's end), so:
#   call 1: builds the zoo into $Z (and runs the first cells with the time left);
#   later calls, made at once: find the fine-tunes stamped in $Z, skip the build, run cells.
# Cells run one after another (two quality processes side by side on the GPU slowed each other
# past the time limit in session 11), each as its own bench/quality.py process whose measured
# rows survive a cut (quality-part-<task>.csv). A cell: NAME:TASK:BITS:METHODS, BITS and METHODS
# comma-separated, and an optional fifth field of extra quality.py flags for that cell alone,
# '+' for spaces, e.g.
#   CELLS="c1:code:1:delta-come-kl-distill-scales:--distill-lr+1e-2 c2:code:0.25:delta-come-kl-distill" bash bench/device/quality_cells.sh
# Knobs: CELLS, TASKS (the fine-tunes to build when none is stamped; default: the cells' tasks),
# N (problems per cell, default 1000), END (deadline in s, default 585), P, SEED, Z, R, XQ (extra
# quality.py flags). Results: $OUT/cells.tgz, a summary printed last.
source bench/device/env.sh
set -u
P=${P:-gpu}
SEED=${SEED:-1}
N=${N:-1000}
END=${END:-585}
XQ=${XQ:-}
Z=${Z:-/tmp/zoo1}
R=${R:-/tmp/cells}
CELLS=${CELLS:?CELLS=\"NAME:TASK:BITS:METHODS ...\"}
TASKS=${TASKS:-$(for c in $CELLS; do echo "$c" | cut -d: -f2; done | sort -u | paste -sd,)}
mkdir -p $R
export DELTAPACK_CUDA_DECODE=0  # Triton kernels, as in the committed quality runs
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
stamped() { local t; for t in ${TASKS//,/ }; do [ -f "$Z/$t-$P-s$SEED/zoo.json" ] || return 1; done; }
if stamped; then
    echo "[$(el) s] zoo found in $Z ($TASKS): no build"
else
    echo "[$(el) s] building the zoo ($TASKS) into $Z"
    timeout $(( END - 5 )) python3 bench/zoo/build.py --preset $P --seed $SEED --zoo-dir $Z --tasks $TASKS --out "$R/zoo" > "$R/zoo.log" 2>&1 &
    zpid=$!
    if [ "$P" != tiny ]; then  # warm the Triton cache meanwhile, on a tiny zoo (one cell's first method)
        c=${CELLS%% *}
        python3 bench/quality.py --preset tiny --zoo-dir /tmp/zoo_tiny --device cuda --tasks code --methods "$(echo "$c" | cut -d: -f4 | cut -d, -f1)" \
            --bits 1 --n-eval 16 --n-kl 8 --threads 2 --work /tmp/work_warm --out "$R/warm" > "$R/warm.log" 2>&1 &
    fi
    until stamped; do
        if ! kill -0 $zpid 2>/dev/null || [ $(el) -ge $(( END - 30 )) ]; then echo "[$(el) s] zoo not stamped: build gone or out of time"; break; fi
        sleep 2
    done
    echo "[$(el) s] zoo stamped"
fi
for c in $CELLS; do
    IFS=: read -r name task bits methods xc <<< "$c"
    xc=${xc//+/ }
    stamped || break
    limit=$(( END - $(el) ))
    [ $limit -gt 30 ] || { echo "[$(el) s] no time left for $name"; break; }
    echo "[$(el) s] $name ($task, $bits bit, $methods${xc:+, $xc}) starts (limit $limit s)"
    timeout "$limit" python3 bench/quality.py --preset $P --seed $SEED --zoo-dir $Z --threads 2 --work /tmp/work_$name --out "$R/$name" \
        --tasks $task --bits $bits --n-eval $N --eval-batch $N --methods $methods $XQ $xc > "$R/$name.log" 2>&1
    echo "[$(el) s] $name done (rc $?)"
done
wait
python3 bench/device/quality_summary.py "$R"
rm -f $R/*/*.dpk
tar czf ${OUT:-/tmp}/cells.tgz -C $R .
echo "[$(el) s] tarred"
