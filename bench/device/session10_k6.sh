# Session 10, kernel call 6 (issue 4): the full bench/kernels.py sweep on the CUDA backend with
# the read flush (--flush read: L2 left clean before each timed call, see bench/kernels.py FLUSH),
# every method, the five Llama shapes, B in 1..2048, D in {1, B}, and the decode step (2 layers).
# The build comes from .cudacache/build.tgz (call 5's, same csrc). Results are written after every
# (shape, method), so a run cut by the time limit keeps what it measured.
source bench/device/env.sh
t0=$(date +%s)
build_cuda > /tmp/cuda_build.log 2>&1; tail -1 /tmp/cuda_build.log
timeout 555 python3 bench/kernels.py --backend cuda --flush read --decode-layers 2 --out /tmp/sw > $OUT/sweep.log 2>&1
echo "rc $?"
cp /tmp/sw/kernels_h100.json $OUT/sweep.json; cp /tmp/sw/kernels_h100.md $OUT/sweep.md; cp /tmp/sw/kernels_h100.png $OUT/sweep.png 2>/dev/null
grep -E "since start|decode step" $OUT/sweep.log | tail -40
grep -A10 "## Goals" /tmp/sw/kernels_h100.md
echo "total $(( $(date +%s) - t0 )) s"
