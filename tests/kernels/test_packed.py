"""Deltas as the kernels hold them: Ut re-packed rank-major decodes to the stored Ut, and the
stored copy of its codes is released (each code is held once on the device)."""

import pytest
import torch

from deltapack.kernels.packed import KernelDelta, LowRankPart
from deltapack.kernels.reference import dequantize
from deltapack.kernels.synthetic import write_synthetic


@pytest.mark.parametrize("kw", [{"group": 32}, {"group": 48}, {"granularity": "row"}, {"granularity": "tensor"}, {"group": 32, "act_order": True}])
def test_rank_major_ut_decodes_to_the_stored_ut(tmp_path, kw):
    f = write_synthetic(tmp_path / "d.dpk", [("w", 72, 200, "delta-come", 2.0)], seed=3, **kw)
    entry = f.manifest["deltas"][0]
    kd = KernelDelta.from_entry(f, entry, (72, 200), device="cpu")
    parts = [p for p in kd.parts if isinstance(p, LowRankPart)]
    assert parts and len(parts) == len(entry["blocks"])
    for p, b in zip(parts, entry["blocks"]):
        assert p.ut.codes.numel() == 0 and p.ut.source is None  # released after the re-pack
        stored = dequantize(f.packed(b["ut"])) if b.get("ut") else f.raw(b["u"]).float().T
        assert torch.equal(p.ut_dense(), stored)
    moved = kd.to("cpu")
    assert torch.equal(moved.dense(), kd.dense())
    assert moved.nbytes == kd.nbytes


def test_lowrank_raw_u_is_kept_once(tmp_path):
    f = write_synthetic(tmp_path / "l.dpk", [("w", 40, 64, "lowrank", 2.0)], seed=4)
    kd = KernelDelta.from_entry(f, f.manifest["deltas"][0], (40, 64), device="cpu")
    x = torch.randn(3, 64)
    assert torch.allclose(kd.forward_reference(x), x @ kd.dense().T, atol=1e-5, rtol=1e-4)
    for p in kd.parts:
        assert p.ut.codes.numel() == 0 and p.u_codes.shape == (40, p.rank)
