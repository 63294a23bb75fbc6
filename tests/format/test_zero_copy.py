"""Tensors read from a .dpk are views of the file mapping, not copies."""

import gc

import numpy as np
import torch

import deltapack


def _write(path, rng):
    with deltapack.DeltaWriter(path) as w:
        w.add_raw("big", torch.randn(1 << 16, generator=rng))
        w.add_quantized("q", torch.randint(0, 4, (64, 130), generator=rng), 2, torch.rand(64, 2, generator=rng).half(), torch.randint(0, 4, (64, 2), generator=rng, dtype=torch.uint8), group_size=128)
        w.finish(method="t", base_name="b", finetune_name="f")


def test_views_point_into_the_mapping(tmp_path, rng):
    p = tmp_path / "z.dpk"
    _write(p, rng)
    f = deltapack.open(p)
    lo, n = f.map_range
    big = f.raw("big")
    pk = f.packed("q")
    for t in (big, pk.codes, pk.scales, pk.zeros):
        assert lo <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= lo + n
    # Two views of the same tensor share memory: no copy was made either time.
    assert f.raw("big").data_ptr() == big.data_ptr()


def test_mapping_outlives_handle_while_views_live(tmp_path, rng):
    p = tmp_path / "z.dpk"
    _write(p, rng)
    f = deltapack.open(p)
    big = f.raw("big")
    expect = big.clone()
    f.close()
    del f
    gc.collect()
    assert torch.equal(big, expect)  # still mapped: reading does not fault
    # The file itself can even be removed; the mapping stays valid while views live.
    p.unlink()
    assert torch.equal(big * 2, expect * 2)


def test_writes_to_a_view_stay_private(tmp_path, rng):
    p = tmp_path / "z.dpk"
    _write(p, rng)
    f = deltapack.open(p)
    big = f.raw("big")
    orig = big.clone()
    big.add_(1.0)  # copy-on-write page: no crash, no change to the file
    assert torch.equal(big, orig + 1.0)
    assert deltapack.open(p, verify="full").raw("big").equal(orig)


def test_numpy_sees_the_same_memory(tmp_path, rng):
    p = tmp_path / "z.dpk"
    _write(p, rng)
    f = deltapack.open(p)
    a = f.raw("big").numpy()
    assert a.ctypes.data == f.raw("big").data_ptr()
    assert np.array_equal(a, f.raw("big").numpy())
