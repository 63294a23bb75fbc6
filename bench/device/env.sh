# Sourced by the device scripts: install the carried abi3 wheel's Rust core (carry .whl) into the
# working tree and point Python at it.
python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl && cp /tmp/site/deltapack/_core*.so python/deltapack/
export PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1 DELTAPACK_COMMIT=${DELTAPACK_COMMIT:-wip}
