"""bench/kernel_resources.py reads registers and stack size from a cubin compiled for sm_90 on
a machine without a GPU."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton.backends.nvidia.compiler", reason="Triton without its NVIDIA backend")
ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("kernel_resources", ROOT / "bench" / "kernel_resources.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kernel_resources"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_bitdelta_apply_resources():
    kr = _tool()
    consts = {"MAX_PARTS": 1, "BLOCK_M": 1, "BLOCK_N": 16, "BLOCK_K": 256, "BLOCK_J": 64, "UT_BITS": 0, "DENSE_BITS": 2, "S24_BITS": 0, "GATHER_K": False, "GATHER_N": False, "GATHER_S24": False, "PREC": "tf32", "FUSE_BASE": False, "BLOCK_KB": 256, "LM": True}
    r = kr.compile_one(kr.dg.apply_kernel, kr.APPLY_SIG, consts, warps=4)
    assert 16 <= r["registers"] <= 255
    assert r["code_bytes"] > 1000
    assert r.get("frame_bytes", 0) >= 0
