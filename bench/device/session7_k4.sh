# Session 7, call 4: sweep parts b (4096x11008) and c (14336x4096, 4096x14336); packs the build.
PACK=$OUT/cuda_build.tgz bash bench/device/session7_sweep.sh b 200
bash bench/device/session7_sweep.sh c 330
