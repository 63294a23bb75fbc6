# Session 7, calls 3-4: the full bench/kernels.py sweep on the CUDA backend, split over calls
# (argument: which part). Every method at 1 bit/param (and 0.5 where it reaches it), B in 1..2048,
# D in {1, B}; part "decode" adds the decode step (2 layers; delta-come and bitdelta). The build
# comes from .cudacache/build.tgz (call 2). Results: $OUT/<part>.json / .md, merged here with
# bench/kernels.py --merge. PACK=<path>: also pack the build there.
source bench/device/env.sh
export DELTAPACK_COMMIT=$(cat .commit 2>/dev/null || echo wip)
t0=$(date +%s)
build_cuda $PACK > $OUT/cuda_build_$1.log 2>&1; tail -2 $OUT/cuda_build_$1.log
M=delta-come@1,delta-come@0.5,bitdelta@1,lowrank@1,lowrank@0.5,deltazip@2
case $1 in
  a) S=4096x4096,11008x4096; D=0 ;;
  b) S=4096x11008; D=0 ;;
  c) S=14336x4096,4096x14336; D=0 ;;
  decode) S=4096x4096,11008x4096,4096x11008; M=delta-come@1,bitdelta@1; D=2 ;;
esac
BATCHES=1,2,4,8,16,32,64,512,2048
[ "$1" = decode ] && BATCHES=""
timeout ${2:-540} python3 bench/kernels.py --backend cuda --shapes $S --methods $M --batches "$BATCHES" --decode-layers $D --out /tmp/$1 > $OUT/bench_$1.log 2>&1
echo "rc $?"
cp /tmp/$1/kernels_h100.json $OUT/$1.json; cp /tmp/$1/kernels_h100.md $OUT/$1.md
grep -E "since start|decode step" $OUT/bench_$1.log
echo "total $(( $(date +%s) - t0 )) s"
