# One device call: install the carried wheel, run the GPU kernel tests, then a quick bench.
set -x
python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl && cp /tmp/site/deltapack/_core*.so python/deltapack/
export PYTHONPATH=$PWD/python:$PWD DELTAPACK_COMMIT=${DELTAPACK_COMMIT:-wip}
timeout 240 python3 -m pytest -q -x tests/kernels/ -k "${TEST_K:-gpu}" 2>&1 | tail -5
timeout 300 python3 bench/kernels.py --quick ${BENCH_ARGS:-} --decode-layers 0 --out $OUT > $OUT/bench.log 2>&1; tail -5 $OUT/bench.log
grep -E "^ +[0-9]+x" $OUT/bench.log
