#!/bin/bash
# Session 6 (Delta-CoMe scale distillation) on one H100, two calls on one machine. Run from the
# repo root on the device after `cp -r .snap/python .snap/bench . && source bench/device/env.sh`:
#   bash bench/results/quality_gpu/distill_run.sh 1   # fresh machine: zoo (base + 3 fine-tunes) + code at 1 / 0.25 bit
#   bash bench/results/quality_gpu/distill_run.sh 2   # same machine, still warm: the other cells
# Everything lands in /tmp/res (one folder per quality process, logs beside them) and is packed
# into $OUT/call<N>.tgz at the end; a summary of every measured row is printed last.
set -u
phase=$1
Z=/tmp/zoo
R=/tmp/res$phase
mkdir -p "$R"
export DELTAPACK_CUDA_DECODE=0  # Triton kernels; skips the CUDA decode extension's build
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
nvidia-smi -L | sed 's/ (UUID.*//'
echo "phase $phase commit ${DELTAPACK_COMMIT:-?}"

# one quality.py process: NAME LIMIT_S ARGS...; its rows go to $R/NAME/quality-part-<task>.csv as measured
q() {
    local name=$1 limit=$2
    shift 2
    timeout "$limit" python bench/quality.py --preset gpu --zoo-dir $Z --threads 2 --work /tmp/work_$name --out "$R/$name" "$@" > "$R/$name.log" 2>&1
    echo "[$(el) s] $name done (rc $?)"
}

if [ "$phase" = 1 ]; then
    python bench/zoo/build.py --preset gpu --zoo-dir $Z --tasks code,arith,format --out "$R/zoo" > "$R/zoo.log" 2>&1 &
    zpid=$!
    # meanwhile, warm the Triton cache: a tiny zoo on the GPU through the same kernels
    python bench/quality.py --preset tiny --zoo-dir /tmp/zoo_tiny --device cuda --tasks code --methods delta-come,delta-come-distill,delta-come-kl \
        --bits 1,0.25 --n-eval 16 --n-kl 8 --threads 2 --work /tmp/work_warm --out "$R/warm" > "$R/warm.log" 2>&1 &
    wait $zpid
    echo "[$(el) s] zoo done"
    left=$(( 575 - $(el) ))
    q c1_dc  $left --tasks code --bits 1 --methods delta-come,delta-come-distill &
    q c25_dc  $left --tasks code --bits 0.25 --methods delta-come,delta-come-distill &
    q c1_kl  $left --tasks code --bits 1 --methods delta-come-kl,delta-come-kl-distill &
    q c25_kl  $left --tasks code --bits 0.25 --methods delta-come-kl,delta-come-kl-distill &
    wait
else
    left=$(( 560 - $(el) ))
    q c_dc  $left --tasks code --bits 0.5,0.125 --methods delta-come,delta-come-distill &
    q c_kl  $left --tasks code --bits 0.5,0.125 --methods delta-come-kl,delta-come-kl-distill &
    q c_mse  $left --tasks code --bits 1,0.25 --methods delta-come-distill,delta-come-kl-distill --distill-loss mse &
    q c_bd  $left --tasks code --bits 1 --methods bitdelta-distill &
    q af_dc  $left --tasks arith,format --jobs 2 --bits 0.25,0.125,1 --methods delta-come,delta-come-distill &
    q af_kl  $left --tasks arith,format --jobs 2 --bits 0.25,0.125,1 --methods delta-come-kl,delta-come-kl-distill &
    wait
fi
echo "[$(el) s] all done"
python - "$R" <<'EOF'
import csv, glob, sys
for p in sorted(glob.glob(sys.argv[1] + "/*/quality*.csv")):
    for r in csv.DictReader(open(p)):
        f = lambda k, n=4: (f"{float(r[k]):.{n}f}" if r.get(k) not in ("", None) else "-")
        print(p.split("/")[-2], r["task"], r["method"], r["bits"], "acc", f("accuracy", 3), "kept", f("kept", 3), "kl", f("kl"), "bpp", f("bits_per_param"),
              "cs", f("compress_s", 1), r.get("distill", ""), r.get("skipped", ""), r.get("error", ""))
EOF
tar czf "$OUT/call$phase.tgz" -C "$R" .
