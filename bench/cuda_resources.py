"""Registers, spills and shared memory of the CUDA decode kernels (csrc/delta_decode.cuh, compiled
through the csrc/inst_*.cu units) for an
sm_90 target, compiled on a machine without a GPU, to screen changes before spending GPU time.

It needs an nvcc. The CPU box has none, but the CUDA wheels on PyPI hold one. Merge them with the
torch wheel's CUDA headers and libraries into one folder and point CUDA_HOME at it:

    pip download --no-deps "nvidia-cuda-nvcc==13.2.*" "nvidia-nvvm==13.2.*" "nvidia-cuda-crt==13.2.*" -d /tmp/w
    # unpack each wheel; copy nvidia/cu13/{bin,include} of nvcc, nvidia/cu13/nvvm of nvvm and
    # nvidia/cu13/include of crt, plus site-packages/nvidia/cu13/{include,lib} of the torch
    # wheel, into /opt/cuda/{bin,include,nvvm,lib64}
    CUDA_HOME=/opt/cuda python bench/cuda_resources.py

(notes: docs/notes/2026-11-22-kernels-s4.md). The local torch's headers may need a newer C++
standard than the device's (torch 2.15: C++20; the device's torch 2.11 builds with C++17).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\w+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def demangle(name: str) -> str:
    """A short readable name: the kernel and its template arguments (F16/BF16/F32, rows per
    warp, fused) from an Itanium-mangled symbol."""
    m = re.search(r"(shrink_kernel|apply_kernel|onepass_kernel|lut_dense_kernel)I(.*?)EEv", name)
    if not m:
        return name
    kernel, args = m.groups()
    dtype = next((d for d in ("BF16", "F16", "F32") if d in args), "?")
    ints = re.findall(r"Li(\d+)E", args)
    bools = re.findall(r"Lb([01])E", args)
    parts = [dtype] + [f"{n}={i}" for n, i in zip(("NR", "MINB"), ints)] + [("fused" if b == "1" else "unfused") for b in bools]
    return f"{kernel}<{', '.join(parts)}>"


def parse_ptxas(log: str) -> list[dict]:
    """One record per kernel from ``nvcc -Xptxas -v`` output: name, arch, registers, stack
    frame, spill stores / loads and static shared memory (bytes)."""
    rows: list[dict] = []
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            rows.append({"kernel": demangle(m.group(1)), "arch": m.group(2), "registers": 0, "stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0})
        elif rows and (m := _SPILL.search(line)):
            rows[-1].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif rows and (m := _USED.search(line)):
            rows[-1]["registers"] = int(m.group(1))
            if m.group(2):
                rows[-1]["smem"] = int(m.group(2))
    return rows


_SYM = re.compile(r"^\s*\d+:\s+[0-9a-f]+\s+(0x[0-9a-f]+|\d+)\s+FUNC\s.*\s(_Z\S+)$")


def parse_symbols(readelf_out: str) -> dict[str, int]:
    """Machine-code bytes per kernel (demangled as in parse_ptxas) from ``readelf -sW`` of the
    cubin: a kernel whose cold path (run once per block) is large pays instruction-cache misses."""
    sizes: dict[str, int] = {}
    for line in readelf_out.splitlines():
        if m := _SYM.match(line):
            sizes[demangle(m.group(2))] = int(m.group(1), 0)
    return sizes


def _compile_unit(nvcc: str, arch: str, std: str, inc: list[str], unit: Path, tmp: str) -> tuple[int, str, dict[str, int]]:
    cubin = Path(tmp) / f"{unit.stem}.cubin"
    cmd = [nvcc, f"-arch={arch}", "-cubin", "-O3", f"-std={std}", "-Xptxas", "-v", "-o", str(cubin), *inc, str(unit)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    sizes = {}
    if not r.returncode and shutil.which("readelf"):
        sizes = parse_symbols(subprocess.run(["readelf", "-sW", str(cubin)], capture_output=True, text=True).stdout)
    return r.returncode, r.stdout + r.stderr, sizes


def compile_log(nvcc: str, arch: str, std: str) -> tuple[str, dict[str, int]]:
    """ptxas's report and the kernels' code sizes over every unit that instantiates kernels
    (csrc/inst_*.cu, compiled side by side)."""
    from concurrent.futures import ThreadPoolExecutor

    from torch.utils import cpp_extension

    inc = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    units = sorted((ROOT / "csrc").glob("inst_*.cu"))
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda u: _compile_unit(nvcc, arch, std, inc, u, tmp), units))
    log, sizes = "", {}
    for unit, (rc, out, sz) in zip(units, results):
        if rc:
            sys.exit(f"nvcc failed on {unit.name} ({rc}):\n{out[-4000:]}")
        log += out
        sizes.update(sz)
    return log, sizes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--std", default="c++20")
    a = ap.parse_args(argv)
    home = os.environ.get("CUDA_HOME")
    nvcc = str(Path(home) / "bin" / "nvcc") if home else shutil.which("nvcc")
    if not nvcc or not Path(nvcc).exists():
        sys.exit("no nvcc: set CUDA_HOME (see this script's docstring for a CPU-only setup)")
    log, sizes = compile_log(nvcc, a.arch, a.std)
    rows = parse_ptxas(log)
    print(f"{'kernel':<36} {'regs':>5} {'stack':>6} {'spill st/ld':>12} {'smem':>6} {'code KB':>8}")
    for r in sorted(rows, key=lambda r: r["kernel"]):
        kb = f"{sizes[r['kernel']] / 1024:.1f}" if r["kernel"] in sizes else "?"
        print(f"{r['kernel']:<36} {r['registers']:>5} {r['stack']:>6} {r['spill_stores']:>5}/{r['spill_loads']:<6} {r['smem']:>6} {kb:>8}")


if __name__ == "__main__":
    main()
