# One device call: install the carried wheel, run the GPU kernel tests, then a quick bench.
set -x
source bench/device/env.sh
timeout 240 python3 -m pytest -q -x tests/kernels/ -k "${TEST_K:-gpu}" 2>&1 | tail -5
timeout 300 python3 bench/kernels.py --quick ${BENCH_ARGS:-} --decode-layers 0 --out $OUT > $OUT/bench.log 2>&1; tail -5 $OUT/bench.log
grep -E "^ +[0-9]+x" $OUT/bench.log
