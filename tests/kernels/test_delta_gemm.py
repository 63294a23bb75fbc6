"""The Triton multi-delta kernels against the reference (cases in delta_cases.py): on the CPU
under TRITON_INTERPRET=1 in a subprocess, on a GPU in-process in every activation dtype."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.kernels import delta_cases

ROOT = Path(__file__).resolve().parents[2]
# With a GPU the same cases run compiled (test_on_gpu). The interpreter of Triton 3.6 (the device
# machine's) fails on a loop bound computed from a program id there ("only 0-dimensional arrays
# can be converted to Python scalars"); newer ones run it.
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs these cases compiled (test_on_gpu)")


@cpu_only
@pytest.mark.parametrize("group", sorted(delta_cases.GROUPS))
def test_interpreted_on_cpu(group):
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "tests.kernels.delta_cases", group, "cpu", "float32"], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().startswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]
    assert int(r.stdout.split()[-1]) > 0


@cpu_only
def test_interpreted_fp16_dot_path():
    """fp16 activations through tl.dot (the interpreter's bf16 dot is broken: numpy has no
    bf16, so bf16 runs on the GPU only)."""
    code = "from tests.kernels.delta_cases import check\nimport torch\n" "check([('delta-come', 2.0, {'group': 32}), ('rtn', 3.0, {'bits': 3, 'group': 32}), ('deltazip', 2.0, {})], 64, 96, 33, 'seg', torch.float16)\nprint('ok')"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-4000:]


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group", sorted(delta_cases.GROUPS))
def test_on_gpu(group, dtype):
    assert delta_cases.GROUPS[group]("cuda", dtype) > 0


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M,mode", [(1, "row"), (16, "row"), (64, "row"), (64, "seg"), (512, "seg")])
def test_llama_shapes_on_gpu(M, mode, dtype):
    specs = [("delta-come", 1.0, {}), ("bitdelta", 1.0, {}), ("deltazip", 2.0, {}), ("lowrank", 1.0, {}), ("rtn", 2.0, {"bits": 2})]
    for out, inp in ((4096, 4096), (1024, 4096), (4096, 11008)):
        delta_cases.check(specs, out, inp, M, mode, dtype, "cuda", seed=M)


def test_fusable_only_small_per_row_batches():
    """The base GEMV is fused into the delta launch for per-row batches of at most
    FUSE_MAX_ROWS rows; segments and larger batches run cuBLAS first (fusing re-reads the base
    per row: 2.5x slower at B = 32 on the H100)."""
    from deltapack.kernels.packed import RowGroups
    from deltapack.kernels.triton import FUSE_MAX_ROWS, fusable

    for m in (1, FUSE_MAX_ROWS):
        assert fusable(RowGroups.per_row(torch.zeros(m, dtype=torch.int32)), m)
    big = FUSE_MAX_ROWS + 1
    assert not fusable(RowGroups.per_row(torch.zeros(big, dtype=torch.int32)), big)
    assert not fusable(RowGroups.segments([0, 0, 1], "cpu"), 3)
