# Session 8, call 5: the GPU tests of the kernels, in parallel processes (each Triton
# specialization compiles for 15-30 s on a fresh machine, CPU-bound: one pytest process took
# ~100 s per test of test_delta_gemm's GPU cases), then the prefill rows of bench/kernels.py
# (one delta, B = 16 … 2048) for Delta-CoMe with the permutation moved to the smaller operand.
source bench/device/env.sh
t0=$(date +%s)
build_cuda > $OUT/cuda_build.log 2>&1; tail -1 $OUT/cuda_build.log
mkdir -p /tmp/tl
{
  python3 -m pytest --collect-only -q -p no:cacheprovider tests/kernels/test_delta_gemm.py -k "on_gpu" | grep "::"
  python3 -m pytest --collect-only -q -p no:cacheprovider tests/kernels/test_cuda.py -k "mixed" | grep "::"
  echo "tests/kernels/test_cuda.py -k not_mixed_a"; echo "tests/kernels/test_cuda.py -k not_mixed_b"
} > /tmp/tl/ids
wc -l < /tmp/tl/ids
run1() {  # one test id (or a -k chunk of test_cuda) in its own process
  local id="$1" log=/tmp/tl/$(echo "$1" | md5sum | cut -c1-10).log
  case "$id" in
    *not_mixed_a) set -- tests/kernels/test_cuda.py -k "not mixed and (encodings or scope or lut or fused)";;
    *not_mixed_b) set -- tests/kernels/test_cuda.py -k "not mixed and not encodings and not scope and not lut and not fused";;
    *) set -- "$id";;
  esac
  python3 -m pytest -v --tb=short -p no:cacheprovider -rfE "$@" > "$log" 2>&1
}
export -f run1
timeout 380 xargs -P 12 -I{} bash -c 'run1 "$1"' _ {} < /tmp/tl/ids
cat /tmp/tl/*.log > $OUT/t_kernels_gpu.log
grep -hE "^(tests/.*(PASSED|FAILED|ERROR))|^FAILED|^ERROR" $OUT/t_kernels_gpu.log | awk '{print $NF}' | sort | uniq -c
grep -hE "^FAILED|^ERROR" $OUT/t_kernels_gpu.log | head -20
grep -hE "=+ .*(passed|failed|error).* in " $OUT/t_kernels_gpu.log
echo "tests $(( $(date +%s) - t0 )) s"
left=$(( 570 - ($(date +%s) - t0) ))
timeout $left python3 bench/kernels.py --backend cuda --shapes 4096x4096,4096x11008,14336x4096,4096x14336 --methods delta-come@1,delta-come@0.5 --distinct one --batches 16,64,512,2048 --decode-layers 0 --out /tmp/p > $OUT/prefill.log 2>&1
grep -E "D=1 " $OUT/prefill.log | cut -c1-150
cp /tmp/p/kernels_*.json $OUT/p.json 2>/dev/null
echo "total $(( $(date +%s) - t0 )) s"
