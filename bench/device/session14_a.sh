# Session 14, first call: issue 5's code distillation (--distill-codes) against the group scales
# alone on a fresh `gpu` zoo (code task, seed 1), with the GPU tests of session 13's 1-bit
# sign-grid Delta-CoMe factors run beside the zoo build (CUDA encodings, Triton GPU groups).
# Later calls on the warm machine: CELLS="..." bash bench/device/quality_cells.sh (the zoo in
# /tmp/zoo1 is reused). Results: $OUT/cells.tgz, $OUT/tests_cuda.log, $OUT/tests_triton.log.
source bench/device/env.sh
set -u
(
    build_cuda > $OUT/tests_cuda.log 2>&1
    timeout 300 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_cuda.py -k "encodings" >> $OUT/tests_cuda.log 2>&1
    echo "rc $?" >> $OUT/tests_cuda.log
    timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_delta_gemm.py -k "on_gpu and (every_encoding or mixed_batches)" > $OUT/tests_triton.log 2>&1
    echo "rc $?" >> $OUT/tests_triton.log
) &
# the same 200 distillation steps first (the scales-only rows of sessions 11-12), then 400 for the
# codes (on the CPU `small` zoo 400 steps helped the codes and not the scales alone:
# bench/results/quality_cpu_small/s14)
TASKS=code CELLS=${CELLS:-"a1:code:0.25:delta-come-kl-distill-scales a2:code:0.25:delta-come-kl-distill-codes b1:code:0.125:delta-come-kl-distill-scales b2:code:0.125:delta-come-kl-distill-codes:--distill-steps+400"} bash bench/device/quality_cells.sh
wait
