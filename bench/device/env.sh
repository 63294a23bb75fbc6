# Sourced by the device scripts: install the carried abi3 wheel's Rust core (carry .whl) into the
# working tree and point Python at it.
python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl && cp /tmp/site/deltapack/_core*.so python/deltapack/
export PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1 DELTAPACK_COMMIT=${DELTAPACK_COMMIT:-$(cat .commit 2>/dev/null || echo wip)}

# build_cuda [TGZ]: build the CUDA extension, or restore it. A carried .cudacache/build.tgz (an
# earlier call's packed build folder) is unpacked into the extension cache first, its times kept:
# ninja rebuilds an output that is newer than its recorded header deps, so the outputs are not
# touched; the copied sources are dated 2000 instead (safe: the build folder's name is a hash of
# the sources' contents, torch and flags, so a folder only matches identical sources). With TGZ
# the build folder is packed there in pieces for the next call (joined, carried as .cudacache/build.tgz).
build_cuda() {
  local cache=${XDG_CACHE_HOME:-$HOME/.cache}/deltapack/cuda t0=$(date +%s)
  # the sources from one fixed folder: the build file names them by absolute path, and the
  # working tree's path differs from call to call (ninja would rebuild)
  mkdir -p /tmp/deltapack_csrc && cp csrc/*.cu csrc/*.cuh /tmp/deltapack_csrc/ && touch -d @946684800 /tmp/deltapack_csrc/*.cu*
  export DELTAPACK_CSRC=/tmp/deltapack_csrc
  if [ -f .cudacache/build.tgz ]; then
    mkdir -p "$cache" && tar -xzf .cudacache/build.tgz -C "$cache"
  fi
  python3 -c "from deltapack.kernels import cuda; print('cuda available', cuda.available(), cuda.build_error())"
  echo "cuda build $(( $(date +%s) - t0 )) s"
  # packed in pieces of 15 MiB ($1.aa, $1.ab, ...: $OUT returns files of at most 16 MiB); join
  # them here with `cat TGZ.a? > .cudacache/build.tgz`
  if [ -n "$1" ]; then tar -czf /tmp/cuda_build.tgz -C "$cache" . && split -b 15m /tmp/cuda_build.tgz "$1."; fi
}
