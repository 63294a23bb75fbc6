"""Registers, local memory and code size of the Triton multi-delta kernels for an sm_90 target,
compiled on any machine (no GPU needed: Triton's bundled ptxas builds the cubin), to screen
launch configs before spending GPU time. The numbers come from the cubin's .nv.info records
(EIATTR_REGCOUNT, EIATTR_FRAME_SIZE). They are those of the local Triton, not necessarily the
device's (the H100 has triton 3.6), so compare variants with each other, not across machines.

    python bench/kernel_resources.py                      # decode defaults, delta-come + BitDelta
    python bench/kernel_resources.py --block-j 128 --apply-warps 2
"""

from __future__ import annotations

import argparse
import struct
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from deltapack.kernels.triton import delta_gemm as dg

EIATTR_FRAME_SIZE, EIATTR_REGCOUNT = 0x11, 0x2F


def cubin_resources(cubin: bytes) -> dict[str, int]:
    """Registers per thread and stack frame bytes of the (single) kernel of a cubin."""
    shoff = struct.unpack_from("<Q", cubin, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    hdr = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * shentsize) for i in range(shnum)]
    names = hdr[shstrndx][4]
    out: dict[str, int] = {}
    for h in hdr:
        name = cubin[names + h[0] : cubin.index(b"\0", names + h[0])].decode()
        if name == ".nv.info":
            p, end = h[4], h[4] + h[5]
            while p < end:
                fmt, attr = cubin[p], cubin[p + 1]
                if fmt == 0x04:  # EIFMT_SVAL: u16 size, payload (function index, value)
                    size = struct.unpack_from("<H", cubin, p + 2)[0]
                    if attr == EIATTR_REGCOUNT:
                        out["registers"] = struct.unpack_from("<II", cubin, p + 4)[1]
                    elif attr == EIATTR_FRAME_SIZE:
                        out["frame_bytes"] = struct.unpack_from("<II", cubin, p + 4)[1]
                    p += 4 + size
                elif fmt == 0x01:
                    p += 2
                else:
                    p += 4
        elif name.startswith(".text."):
            out["code_bytes"] = h[5]
    return out


def compile_one(kernel, signature: dict, consts: dict, warps: int) -> dict:
    sig = dict(signature) | {k: "constexpr" for k in consts}
    t0 = time.time()
    k = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 2})
    return {"compile_s": round(time.time() - t0, 1), **cubin_resources(k.asm["cubin"])}


SHRINK_SIG = {"x_ptr": "*bf16", "stride_xm": "i32", "t_ptr": "*fp32", "stride_tm": "i32", "tab_ptr": "*i64", "row_idx_ptr": "*i32", "gstart_ptr": "*i32", "glen_ptr": "*i32", "gslot_ptr": "*i32", "xl_ptr": "*bf16", "stride_xl": "i32", "K": "i32", "tiles_per_part": "i32"}
APPLY_SIG = {"x_ptr": "*bf16", "stride_xm": "i32", "y_ptr": "*bf16", "stride_ym": "i32", "t_ptr": "*fp32", "stride_tm": "i32", "tab_ptr": "*i64", "row_idx_ptr": "*i32", "gstart_ptr": "*i32", "glen_ptr": "*i32", "gslot_ptr": "*i32", "w_ptr": "*bf16", "stride_wn": "i32", "xl_ptr": "*bf16", "stride_xl": "i32", "N": "i32", "K": "i32"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block-r", type=int, default=16)
    ap.add_argument("--block-k", type=int, default=512)
    ap.add_argument("--block-n", type=int, default=32)
    ap.add_argument("--block-j", type=int, default=64)
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--apply-warps", type=int, default=4)
    ap.add_argument("--fused", action="store_true")
    a = ap.parse_args()
    dc = (1 << 8) | (1 << 3) | (1 << 2)  # Delta-CoMe's 8 + 3 + 2-bit blocks
    rows = []
    shrink = {"MAX_PARTS": 3, "BLOCK_M": 1, "BLOCK_R": a.block_r, "BLOCK_K": a.block_k, "VT_BITS": dc, "GATHER_K": False, "PERM": False, "PREC": "tf32", "SPLIT_K": 2, "LM": True}
    rows.append(("shrink, delta-come", compile_one(dg.shrink_kernel, SHRINK_SIG, shrink, a.warps)))
    for label, ut, dense in (("apply, delta-come", dc, 0), ("apply, bitdelta", 0, 1 << 1)):
        consts = {"MAX_PARTS": 3, "BLOCK_M": 1, "BLOCK_N": a.block_n, "BLOCK_K": a.block_k, "BLOCK_J": a.block_j, "UT_BITS": ut, "DENSE_BITS": dense, "S24_BITS": 0, "GATHER_K": False, "GATHER_N": False, "GATHER_S24": False, "PREC": "tf32", "FUSE_BASE": a.fused, "BLOCK_KB": 512, "LM": True}
        rows.append((label, compile_one(dg.apply_kernel, APPLY_SIG, consts, a.apply_warps)))
    print(f"triton {triton.__version__}, sm_90, {vars(a)}")
    for label, r in rows:
        print(f"  {label:<20} " + "  ".join(f"{k} {v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
