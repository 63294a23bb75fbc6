"""The C example, compiled against the committed header, reads the same bytes and values as
Python. Skipped only where cargo or a C compiler is missing."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import deltapack
from deltapack.sample import write_sample

ROOT = Path(__file__).resolve().parents[2]
CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def fnv1a64(b: bytes) -> str:
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


@pytest.fixture(scope="module")
def read_dpk(tmp_path_factory):
    if not (CC and shutil.which("cargo")):
        pytest.skip("needs cargo and a C compiler")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    subprocess.run(["cargo", "build", "-q", "-p", "deltapack-capi"], cwd=ROOT, check=True, timeout=1800)
    exe = tmp_path_factory.mktemp("c") / "read_dpk"
    subprocess.run(
        [CC, "-std=c99", "-Wall", "-Werror", f"-I{ROOT / 'rust/capi/include'}", str(ROOT / "rust/capi/examples/read_dpk.c"), str(target / "debug/libdeltapack.a"), "-lpthread", "-ldl", "-lm", "-o", str(exe)],
        check=True,
        timeout=300,
    )
    return exe


def test_c_reads_what_python_reads(read_dpk, tmp_path):
    p = tmp_path / "s.dpk"
    write_sample(p, seed=3)
    r = subprocess.run([str(read_dpk), str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    f = deltapack.open(p)
    assert lines[0] == "abi_version 1" and lines[1] == f"tensor_count {len(f)}"
    by_name: dict[str, list[str]] = {}
    cur = None
    for ln in lines[2:]:
        if ln.startswith("  "):
            by_name[cur].append(ln.strip())
        else:
            cur = ln.split()[0]
            by_name[cur] = [ln]
    assert list(by_name) == f.names()
    for name, block in by_name.items():
        info = f.info(name)
        head = block[0].split()
        assert head[1] == str(info.encoding) and head[2] == str(info.bits or 0)
        assert head[3] == "[" + ",".join(map(str, info.shape)) + "]"
        segs = [x.split() for x in block[1:] if x.startswith("segment")]
        assert [s[1] for s in segs] == list(info.segments)
        for _, role, length, h in segs:
            view = f.segment(name, role)  # zero-copy bytes Python sees
            assert int(length) == view.numel()
            assert h == fnv1a64(view.numpy().tobytes()), (name, role)
        f32 = [x.split() for x in block[1:] if x.startswith("f32")]
        if f32:
            vals = f.dequantize(name).flatten().double()
            total, first = float(f32[0][1]), [float(v) for v in f32[0][2:]]
            assert total == pytest.approx(float(vals.sum()), rel=1e-5, abs=1e-6)
            assert first == pytest.approx(vals[:4].tolist(), rel=1e-5)


def test_c_reports_checksum_error_naming_the_tensor(read_dpk, tmp_path):
    p = tmp_path / "s.dpk"
    write_sample(p)
    f = deltapack.open(p)
    name = f.names()[0]
    seg = f.manifest["tensors"][0]["segments"]["codes"]
    b = bytearray(p.read_bytes())
    b[f._f.data_start() + seg["offset"]] ^= 1
    p.write_bytes(bytes(b))
    r = subprocess.run([str(read_dpk), str(p), name], capture_output=True, text=True, timeout=60)
    assert r.returncode == 13  # DPK_ERR_CHECKSUM
    assert f"checksum mismatch in tensor '{name}'" in r.stderr
