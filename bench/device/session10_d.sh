# Session 10, quality diagnostics call (issue 5): where the code fine-tune loses its accuracy at
# 0.25 bit. Zoo preset gpu, seed 1, code only (rebuilt); as soon as the code fine-tune is stamped,
# bench/quality_diag.py on code with Delta-CoMe KL-weighted + distillation and the fixed plan
# without either, at 0.25 bit: the fine-tune with one matrix group at a time replaced by
# W_base + ΔŴ (attn, mlp, embed_tokens, lm_head, all), 500 problems. Rows are written as they come.
source bench/device/env.sh
set -u
Z=/tmp/zoo1; R=/tmp/resd; mkdir -p $R
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
timeout 575 python3 bench/zoo/build.py --preset gpu --seed 1 --zoo-dir $Z --tasks code --out "$R/zoo" > "$R/zoo.log" 2>&1 &
zpid=$!
while [ ! -f "$Z/code-gpu-s1/zoo.json" ]; do
    if ! kill -0 $zpid 2>/dev/null || [ $(el) -ge 540 ]; then echo "[$(el) s] code fine-tune not stamped"; break; fi
    sleep 2
done
echo "[$(el) s] code stamped"
timeout $(( 580 - $(el) )) python3 bench/quality_diag.py --preset gpu --seed 1 --zoo-dir $Z --task code --n-eval 500 \
    --cells delta-come-kl-distill:0.25,delta-come:0.25 --out $R/diag > $R/diag.log 2>&1
echo "[$(el) s] diag rc $?"
cat $R/diag/diag-code.md 2>/dev/null | tail -25
tar czf $OUT/diag.tgz -C $R .
