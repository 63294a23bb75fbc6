"""Cases for the multi-delta kernels, checked against kernels.reference.delta_apply.

Run in-process on a GPU, and on the CPU in a subprocess under TRITON_INTERPRET=1 (the
variable must be set before triton is imported): ``python -m tests.kernels.delta_cases GROUP``.
Every case uses fresh random deltas (never zeros), odd shapes, a poisoned (NaN) scratch
buffer, rows without a delta (slot −1) that must stay bit-identical, and a per-dtype tolerance
relative to the largest output change.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

from deltapack.kernels import reference
from deltapack.kernels.packed import DeltaTable, KernelDelta, RowGroups
from deltapack.kernels.synthetic import write_synthetic

# Largest |kernel − reference| / max|Δ·x| accepted per activation dtype. The dot path rounds
# dequantized tiles to the activation dtype (as Marlin-style kernels do), the reference does not.
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _deltas(tmp: Path, out: int, inp: int, specs: list[tuple[str, float, dict]], device: str, seed: int) -> list[KernelDelta]:
    kds = []
    for i, (method, bpp, kw) in enumerate(specs):
        f = write_synthetic(tmp / f"d{seed}_{i}.dpk", [(f"l{i}", out, inp, method, bpp)], seed=seed * 100 + i, **kw)
        kds.append(KernelDelta.from_entry(f, f.manifest["deltas"][0], (out, inp), device=device))
    return kds


def check(specs, out: int, inp: int, M: int, mode: str, dtype=torch.float32, device: str = "cpu", seed: int = 0, no_delta_share: float = 0.2, cfg=None, fused: bool = False) -> float:
    """One batch through the Triton kernels vs the reference; returns the relative error.
    ``fused``: the kernels also compute the base GEMV (``delta_apply(..., base=W)``), the
    output is poisoned (NaN) beforehand and compared with x·Wᵀ + Δx."""
    from deltapack.kernels.triton import delta_apply

    g = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        kds = _deltas(Path(tmp), out, inp, specs, device, seed)
        tab = DeltaTable.build(kds)
        dense = [k.dense() for k in kds]
        x = torch.randn(M, inp, generator=g).to(device=device, dtype=dtype)
        y = torch.randn(M, out, generator=g).to(device=device, dtype=dtype)
        slots = torch.randint(0, len(kds), (M,), generator=g)
        slots[torch.rand(M, generator=g) < no_delta_share] = -1
        groups = RowGroups.per_row(slots.to(device)) if mode == "row" else RowGroups.segments(slots, device)
        t = torch.full((M, max(1, tab.max_rank)), float("nan"), device=device)  # poisoned scratch
        W = None
        if fused:  # a base weight whose outputs are about as large as the deltas' (tolerances)
            W = torch.randn(out, inp, generator=g).to(device)
            dx = max(float((x.float() @ d.T).abs().max()) for d in dense)
            W = (W * dx / float((x.float() @ W.T).abs().max())).to(dtype)
            y = (x.float() @ W.float().T).to(dtype)
        got = delta_apply(x, torch.full_like(y, float("nan")) if fused else y.clone(), tab, groups, cfg=cfg, t=t if tab.has_lowrank else None, base=W)
        want = reference.delta_apply(x, y, dense, slots.to(device))
    untouched = slots.to(device) < 0
    if fused:
        assert ((got[untouched].float() - y[untouched].float()).abs() <= 2 * TOL[dtype] * y.float().abs().max()).all(), "a row without a delta is not x·Wᵀ"
    else:
        assert torch.equal(got[untouched], y[untouched]), "a row without a delta changed"
    assert torch.isfinite(got).all(), "non-finite output (unwritten scratch read?)"
    change = (want.float() - y.float()).abs().max().item()
    assert change > 0 or not (slots >= 0).any(), "degenerate case: the deltas change nothing"
    scale = change if (slots >= 0).any() else float(y.float().abs().max())  # fused, no delta rows: vs the base
    err = (got.float() - want.float()).abs().max().item() / max(scale, 1e-12)
    assert err <= TOL[dtype], f"{specs} {out}x{inp} M={M} {mode} {dtype}: rel err {err:.3g} > {TOL[dtype]}"
    return err


SIGN_TAIL = [(8, 2), (2, 4), (1, None)]  # Delta-CoMe with a 1-bit tail


# ---- case groups -------------------------------------------------------------------------
def every_encoding(device: str = "cpu", dtype=torch.float32) -> int:
    n = 0
    shapes = [(72, 200), (33, 100)]
    for out, inp in shapes:
        for bits in (1, 2, 3, 4, 8):
            check([("rtn", bits, {"bits": bits, "group": 32})], out, inp, 3, "row", dtype, device, seed=bits)
            n += 1
        for bits in (2, 3, 4, 8):
            check([("deltazip", 2, {"bits": bits})], out, inp, 3, "row", dtype, device, seed=10 + bits)
            n += 1
        check([("bitdelta", 1.0, {})], out, inp, 4, "row", dtype, device, seed=20)
        n += 1
        check([("lowrank", 2.0, {})], out, inp, 4, "row", dtype, device, seed=21)
        n += 1
        for bpp, act in ((1.0, False), (3.0, True)):
            check([("delta-come", bpp, {"group": 32, "act_order": act})], out, inp, 4, "row", dtype, device, seed=22)
            n += 1
        # a 1-bit tail of singular vectors on the sign grid (constant zero 0.5), 2-bit before it
        check([("delta-come", 1.0, {"group": 32, "schedule": SIGN_TAIL})], out, inp, 4, "row", dtype, device, seed=23)
        n += 1
    return n


def scale_layouts(device: str = "cpu", dtype=torch.float32) -> int:
    """Group sizes that do and do not divide the tile (gathered scales), row and tensor scales."""
    n = 0
    for kw in ({"group": 64}, {"group": 48}, {"group": 128}, {"granularity": "row"}, {"granularity": "tensor"}):
        specs = [("delta-come", 3.0, {**kw, "act_order": True}), ("rtn", 3.0, {**kw, "bits": 3}), ("rtn", 2.0, {**kw, "bits": 2})]
        for mode in ("row", "seg"):
            check(specs, 80, 160, 9, mode, dtype, device, seed=30)
            n += 1
    return n


def mixed_batches(device: str = "cpu", dtype=torch.float32) -> int:
    """Rows on different deltas of every method and bit width in one launch pair."""
    specs = [
        ("delta-come", 1.0, {"group": 32}),
        ("bitdelta", 1.0, {}),
        ("deltazip", 2.0, {"bits": 2}),
        ("lowrank", 1.0, {}),
        ("rtn", 4.0, {"bits": 4, "group": 32}),
        ("delta-come", 2.0, {"group": 32, "act_order": True}),
        ("delta-come", 1.0, {"group": 32, "schedule": SIGN_TAIL}),
    ]
    n = 0
    for M, mode in ((1, "row"), (6, "row"), (17, "row"), (1, "seg"), (40, "seg"), (70, "seg")):
        check(specs, 96, 128, M, mode, dtype, device, seed=40 + M)
        n += 1
    # decode tiles other than the defaults: k split across programs (atomics into t), narrow
    # output and rank tiles, and a row group of 5 rows on one delta (a program per row)
    from deltapack.kernels.triton import LaunchConfig

    cfg = LaunchConfig(split_k=3, block_k=64, block_r=8, block_n=16, block_j=32, num_warps=2, lane_major=False)
    check(specs, 96, 200, 7, "row", dtype, device, seed=48, cfg=cfg)
    n += 1
    check(specs[:2], 96, 200, 10, "seg", dtype, device, seed=49, cfg=cfg, no_delta_share=0.0)
    n += 1
    return n


def fused_base(device: str = "cpu", dtype=torch.float32) -> int:
    """y = x·Wᵀ + Δx in one launch (decode, per-row groups, rows without a delta included);
    a segment batch with ``base``, and a per-row batch of more than FUSE_MAX_ROWS rows, take the
    unfused route (GEMM, then the delta)."""
    from deltapack.kernels.triton import LaunchConfig

    specs = [("delta-come", 1.0, {"group": 32, "act_order": True}), ("bitdelta", 1.0, {}), ("deltazip", 2.0, {"bits": 3}), ("lowrank", 1.0, {})]
    n = 0
    for M, mode, cfg in ((1, "row", None), (2, "row", None), (9, "row", None), (2, "row", LaunchConfig(block_kb=64, block_n=16, split_k=2)), (12, "seg", None), (40, "seg", None), (20, "row", None)):
        check(specs, 80, 200, M, mode, dtype, device, seed=60 + M, cfg=cfg, fused=True)
        n += 1
    return n


def through_op(device: str = "cpu", dtype=torch.float32) -> int:
    """MultiDeltaLinear → torch.ops.deltapack.delta_apply_ → Triton equals the reference
    backend (dequantize-then-matmul) on a 3-D input."""
    from torch import nn

    from deltapack.nn import MultiDeltaLinear

    specs = [("delta-come", 2.0, {"group": 32}), ("bitdelta", 1.0, {}), ("deltazip", 2.0, {}), ("rtn", 2.0, {"bits": 2, "group": 32})]
    out, inp = 56, 96
    n = 0
    g = torch.Generator().manual_seed(7)
    with tempfile.TemporaryDirectory() as tmp:
        kds = _deltas(Path(tmp), out, inp, specs, device, seed=7)
        base = nn.Linear(inp, out).to(device=device, dtype=dtype)
        tri = MultiDeltaLinear(base, kds, backend="triton")
        ref = MultiDeltaLinear(base, kds, backend="reference")
        for slots, seg in ((torch.tensor([0, 1, 2, 3, -1, 2]), False), (torch.tensor([1] * 20 + [0] * 3 + [-1] * 5 + [3] * 4), True)):
            x = torch.randn(2, slots.numel() // 2, inp, generator=g).to(device=device, dtype=dtype)
            groups = RowGroups.segments(slots, device) if seg else RowGroups.per_row(slots.to(device))
            a, b = tri(x, groups), ref(x, groups)
            change = (b.float() - base(x).float()).abs().max().item()
            err = (a.float() - b.float()).abs().max().item() / change
            assert err <= TOL[dtype], f"through_op: rel err {err:.3g}"
            n += 1
    return n


def prefill_dequant(device: str = "cpu", dtype=torch.float32) -> int:
    """Long segment groups (prefill): every operand dequantized by kernels/triton/dequant.py
    equals its reference decode, and whole batches through that path (factors dequantized, then
    GEMMs) match the reference, as does the same batch on the one-launch tile path."""
    from deltapack.kernels.packed import LowRankPart
    from deltapack.kernels.triton import LaunchConfig, dequant

    sets = [
        [("delta-come", 1.0, {"group": 32}), ("bitdelta", 1.0, {})],
        [("deltazip", 2.0, {"bits": 2}), ("lowrank", 1.0, {})],
        [("rtn", 3.0, {"bits": 3, "group": 48}), ("delta-come", 2.0, {"group": 64, "act_order": True})],
        [("rtn", 4.0, {"bits": 4, "granularity": "row"}), ("delta-come", 1.0, {})],
        [("rtn", 8.0, {"bits": 8, "granularity": "tensor"}), ("rtn", 2.0, {"bits": 2, "group": 32})],
        [("deltazip", 2.0, {"bits": 4}), ("deltazip", 2.0, {"bits": 8}), ("deltazip", 2.0, {"bits": 3})],
        [("delta-come", 1.0, {"group": 32, "schedule": SIGN_TAIL}), ("bitdelta", 1.0, {})],
    ]
    n = 0
    for i, specs in enumerate(sets):
        with tempfile.TemporaryDirectory() as tmp:
            kds = _deltas(Path(tmp), 72, 100, specs, device, seed=60 + i)
        tab = DeltaTable.build(kds)
        for slot, kd in enumerate(kds):
            for j, p in enumerate(kd.parts):
                if isinstance(p, LowRankPart):
                    got = [dequant.dequantize_operand(tab, slot, j, "a", p.rank, 100, p.vt.bits, torch.float32, dequant.MODE_COLS),
                           dequant.dequantize_operand(tab, slot, j, "b", 72, p.rank, p.ut.bits, torch.float32, dequant.MODE_UT).T]
                    want = [p.vt.dense(), p.ut_dense()]
                else:
                    mode = dequant.MODE_S24 if p.w.sparse24 else dequant.MODE_COLS
                    got, want = [dequant.dequantize_operand(tab, slot, j, "a", 72, 100, p.w.bits, torch.float32, mode)], [p.w.dense()]
                for a, b in zip(got, want):
                    assert torch.equal(a.cpu(), b.float().cpu()), f"{specs[slot]} part {j}: dequantized operand differs from the reference"
                    n += 1
        for slot, kd in enumerate(kds):
            # the low-rank parts stacked (V̂ᵀ with each block's permutation undone, or V̂ as stored
            # per permutation), Û·diag s, the rank padded with zeros; the stacks' product is Δ
            lr = [p for p in kd.parts if isinstance(p, LowRankPart)]
            if not lr:
                assert dequant.stacked_lowrank(tab, slot, torch.float32) == []
                continue
            dense = sum(p.dense().float() for p in lr)
            for unpermute in (True, False):
                mode = "t" if unpermute else "rows"
                stacks = dequant.stacked_lowrank(tab, slot, torch.float32, transposed=unpermute)
                assert len(stacks) == (1 if unpermute else len({-1 if p.perm is None else p.perm.data_ptr() for p in lr}))
                total = torch.zeros_like(dense)
                for perm, vt, u in stacks:
                    if mode == "t":
                        vt = vt.T  # V̂ᵀ [in, R'] as written
                    members = [p for p in lr if unpermute or (p.perm is None) == (perm is None)]
                    rank = sum(p.rank for p in members)
                    assert vt.shape[0] == u.shape[1] and vt.shape[0] % dequant.RANK_ALIGN == 0 and rank <= vt.shape[0] < rank + dequant.RANK_ALIGN
                    assert not vt[rank:].any() and not u[:, rank:].any(), "the rank padding is not zero"
                    want_vt = []
                    for p in members:
                        v = p.vt.dense().float()
                        want_vt.append(torch.empty_like(v).index_copy_(1, p.perm.long(), v) if unpermute and p.perm is not None else v)
                    want_u = torch.cat([(p.ut_dense() * (1 if p.s is None else p.s.float()[:, None])).T for p in members], 1)
                    assert torch.equal(vt[:rank].cpu(), torch.cat(want_vt).cpu()), f"{specs[slot]} {mode}: stacked V̂ differs"
                    assert torch.allclose(u[:, :rank].cpu(), want_u.cpu(), rtol=1e-6, atol=0), f"{specs[slot]}: stacked Û·s differs"
                    prod = u.double() @ vt.double()
                    if perm is not None:  # Δ = M·P: column perm[c] of Δ is column c of M
                        prod = torch.empty_like(prod).index_copy_(1, perm.long(), prod)
                    total += prod.float()
                    n += 1
                assert torch.allclose(total.cpu(), dense.cpu(), rtol=1e-4, atol=1e-5 * dense.abs().max().item()), f"{specs[slot]} {mode}: the stacks' product is not Δ"
            # both stackings through apply_segments (V̂ᵀ in x's order by default, V̂ as stored
            # and x's permuted columns with DELTAPACK_PREFILL_VT=rows), short and long groups
            rank = sum(p.rank for p in lr)
            for m, how in ((1, ""), (rank, ""), (1, "rows"), (rank, "rows")):
                g = torch.Generator().manual_seed(m)
                x = torch.randn(m, 100, generator=g).to(device=device, dtype=dtype)
                y = torch.randn(m, 72, generator=g).to(device=device, dtype=dtype)
                slots = torch.full((m,), slot)
                os.environ["DELTAPACK_PREFILL_VT"] = how
                try:
                    got = dequant.apply_segments(x, y.clone(), tab, RowGroups.segments(slots, device))
                finally:
                    del os.environ["DELTAPACK_PREFILL_VT"]
                want = reference.delta_apply(x, y, [k.dense() for k in kds], slots.to(device))
                err = (got.float() - want.float()).abs().max().item() / (want.float() - y.float()).abs().max().item()
                assert err <= TOL[dtype], f"{specs[slot]} {m} rows ({how}): rel err {err:.3g}"
                n += 1
        calls = []
        real = dequant.apply_segments
        dequant.apply_segments = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
        try:
            for cfg in (None, LaunchConfig(dequant_min_rows=0)):
                before = len(calls)
                check(specs, 72, 100, 48, "seg", dtype, device, seed=70 + i, cfg=cfg, no_delta_share=0.1)
                assert (len(calls) > before) == (cfg is None), "the prefill path was (not) taken"
                n += 1
            check(specs, 72, 100, 40, "seg", dtype, device, seed=80 + i, fused=True, no_delta_share=0.1)  # with base: cuBLAS first
            n += 1
            # a batch already in slot order: rows accumulated in place (RowGroups.rows_in_order)
            slots = torch.tensor([-1] * 3 + [0] * 20 + [1] * 17)
            groups = RowGroups.segments(slots, device)
            assert groups.rows_in_order and groups.max_len >= 16
            g = torch.Generator().manual_seed(90 + i)
            x = torch.randn(40, 100, generator=g).to(device=device, dtype=dtype)
            y = torch.randn(40, 72, generator=g).to(device=device, dtype=dtype)
            got = dequant.apply_segments(x, y.clone(), tab, groups)
            want = reference.delta_apply(x, y, [k.dense() for k in kds], slots.to(device))
            assert torch.equal(got[:3], y[:3]), "a row without a delta changed"
            err = (got.float() - want.float()).abs().max().item() / (want.float() - y.float()).abs().max().item()
            assert err <= TOL[dtype], f"{specs} in slot order: rel err {err:.3g}"
            n += 1
        finally:
            dequant.apply_segments = real
    return n


GROUPS = {"prefill_dequant": prefill_dequant, "fused_base": fused_base, "through_op": through_op, "every_encoding": every_encoding, "scale_layouts": scale_layouts, "mixed_batches": mixed_batches}


def main(name: str, device: str = "cpu", dtype: str = "float32") -> None:
    n = GROUPS[name](device, getattr(torch, dtype))
    print(f"ok {n}")


if __name__ == "__main__":
    main(*sys.argv[1:])
