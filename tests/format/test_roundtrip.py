"""Round trip of every encoding through the Python writer and reader."""

import json

import pytest
import torch

import deltapack
from deltapack import _core
from deltapack.format import RAW_DTYPES
from deltapack.kernels.reference import dequantize as ref_dequantize


def _rand(shape, dtype, g):
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000) + 1, shape, generator=g, dtype=torch.int64).to(dtype)


def _finish(w, **kw):
    return w.finish(method="test", base_name="b", finetune_name="f", **kw)


@pytest.mark.parametrize("enc", sorted(RAW_DTYPES))
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), ()])
def test_raw_roundtrip(tmp_path, rng, enc, shape):
    t = _rand(shape, RAW_DTYPES[enc], rng)
    p = tmp_path / "x.dpk"
    with deltapack.DeltaWriter(p) as w:
        w.add_raw("t", t)
        _finish(w)
    f = deltapack.open(p, verify="full")
    back = f.raw("t")
    assert back.dtype == t.dtype and tuple(back.shape) == shape
    assert torch.equal(back, t)
    assert f.info("t").encoding == _core.ENCODINGS[enc]
    if t.dtype.is_floating_point:
        assert torch.equal(f.dequantize("t"), t.float())


def _manual_dequant(codes, scales, zeros, zero_point, granularity, group_size):
    rows, cols = codes.shape
    c = codes.float()
    if granularity == "tensor":
        s = scales.float().reshape(1, 1).expand(rows, cols)
        z = (zeros.float().reshape(1, 1) if zeros is not None else torch.full((1, 1), zero_point)).expand(rows, cols)
    elif granularity == "row":
        s = scales.float().reshape(rows, 1).expand(rows, cols)
        z = (zeros.float().reshape(rows, 1) if zeros is not None else torch.full((rows, 1), zero_point)).expand(rows, cols)
    else:
        gi = torch.arange(cols) // group_size
        s = scales.float().reshape(rows, -1)[:, gi]
        z = zeros.float().reshape(rows, -1)[:, gi] if zeros is not None else torch.full_like(s, zero_point)
    return (c - z) * s


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("granularity,group_size", [("tensor", None), ("row", None), ("group", 16), ("group", 7)])
@pytest.mark.parametrize("zero", ["u8", "f16", "bf16", "f32", "const"])
def test_quantized_roundtrip(tmp_path, rng, bits, granularity, group_size, zero):
    rows, cols = 5, 45
    codes = torch.randint(0, 2**bits, (rows, cols), generator=rng, dtype=torch.uint8)
    grid = {"tensor": (1, 1), "row": (rows, 1), "group": (rows, -(-cols // (group_size or 1)))}[granularity]
    scales = (torch.rand(grid, generator=rng) + 0.1).half()
    zeros, zp = None, None
    if zero == "const":
        zp = 0.5 if bits == 1 else float(2 ** (bits - 1))
    elif zero == "u8":
        zeros = torch.randint(0, 2**bits, grid, generator=rng, dtype=torch.uint8)
    else:
        zeros = (torch.rand(grid, generator=rng) * 2**bits).to(RAW_DTYPES[zero])
    p = tmp_path / "q.dpk"
    with deltapack.DeltaWriter(p) as w:
        w.add_quantized("q", codes, bits, scales, zeros, zero_point=zp, granularity=granularity, group_size=group_size, stats={"rel_error": 0.25})
        _finish(w)
    f = deltapack.open(p, verify="full")
    info = f.info("q")
    assert info.bits == bits and info.shape == (rows, cols) and info.encoding_name == f"q{bits}"
    assert info.stats["rel_error"] == 0.25
    assert info.stats["bits_per_param"] == pytest.approx(info.nbytes * 8 / info.numel)
    assert torch.equal(f.codes("q"), codes)
    expect = _manual_dequant(codes, scales, zeros, zp, granularity, group_size)
    torch.testing.assert_close(f.dequantize("q"), expect, rtol=0, atol=0)
    pk = f.packed("q")
    torch.testing.assert_close(ref_dequantize(pk), expect, rtol=0, atol=0)
    assert torch.equal(pk.scales, scales.reshape(grid))
    if zeros is not None:
        assert torch.equal(pk.zeros, zeros.reshape(grid))
    else:
        assert pk.zeros is None and pk.zero_point == zp


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_sparse24_roundtrip(tmp_path, rng, bits):
    rows, cols = 6, 36
    kc = cols // 2
    codes = torch.randint(0, 2**bits, (rows, kc), generator=rng, dtype=torch.uint8)
    # a random pair of increasing positions per block of four
    pairs = torch.tensor([(a, b) for a in range(4) for b in range(a + 1, 4)], dtype=torch.uint8)
    pick = torch.randint(0, len(pairs), (rows, kc // 2), generator=rng)
    indices = pairs[pick].reshape(rows, kc)
    scales = (torch.rand(rows, 1, generator=rng) + 0.1).float()
    p = tmp_path / "s.dpk"
    with deltapack.DeltaWriter(p) as w:
        w.add_sparse24("s", codes, indices, bits, scales, zero_point=float(2 ** (bits - 1)), shape=(rows, cols))
        _finish(w)
    f = deltapack.open(p, verify="full")
    dense = torch.zeros(rows, cols)
    vals = (codes.float() - 2 ** (bits - 1)) * scales
    for r in range(rows):
        for c in range(kc):
            dense[r, 4 * (c // 2) + int(indices[r, c])] = vals[r, c]
    torch.testing.assert_close(f.dequantize("s"), dense, rtol=0, atol=0)
    torch.testing.assert_close(ref_dequantize(f.packed("s")), dense, rtol=0, atol=0)
    assert torch.equal(f.codes("s"), codes)


def test_manifest_fields_roundtrip(tmp_path, rng):
    base = torch.randn(16, 8, generator=rng).bfloat16()
    p = tmp_path / "m.dpk"
    with deltapack.DeltaWriter(p) as w:
        w.add_raw("w.delta", torch.randn(16, 8, generator=rng))
        man = w.finish(
            method="rtn",
            method_params={"bits": 4, "group_size": 128},
            base_name="tiny-base",
            finetune_name="tiny-math",
            base_fingerprints={"w": deltapack.fingerprint(base)},
            deltas=[{"target": "w", "form": "dense", "tensor": "w.delta"}],
            metadata={"note": "hello", "n": 3},
        )
    f = deltapack.open(p)
    assert f.manifest == man
    assert f.manifest["method"] == {"name": "rtn", "params": {"bits": 4, "group_size": 128}}
    assert f.manifest["base"]["tensors"]["w"]["shape"] == [16, 8]
    assert f.manifest["producer"] == {"name": "deltapack", "version": deltapack.__version__}
    assert f.manifest["deltas"][0]["op"] == "add"
    assert json.loads(f._f.manifest_json()) == man


def test_alignment_on_disk(tmp_path, rng):
    p = tmp_path / "a.dpk"
    with deltapack.DeltaWriter(p) as w:
        for i in range(3):
            w.add_raw(f"r{i}", torch.randn(3 + i, generator=rng))
            w.add_quantized(f"q{i}", torch.randint(0, 8, (4, 9 + i), generator=rng), 3, torch.ones(4, 1).half(), torch.zeros(4, 1, dtype=torch.uint8), granularity="row")
        _finish(w)
    f = deltapack.open(p)
    start = f._f.data_start()
    assert start % _core.DATA_ALIGN == 0
    for t in f.manifest["tensors"]:
        segs = t["segments"]
        first = "data" if "data" in segs else "codes"
        assert (start + segs[first]["offset"]) % 4096 == 0
        assert all(s["offset"] % _core.SEGMENT_ALIGN == 0 for s in segs.values())
        addr = f.segment(t["name"], first).data_ptr()
        assert addr % 4096 == 0  # page-aligned in memory too: ready to pin and DMA


def test_writer_rejects_bad_input(tmp_path, rng):
    p = tmp_path / "bad.dpk"
    w = deltapack.DeltaWriter(p)
    w.add_raw("a", torch.randn(3))
    with pytest.raises(ValueError, match="already added"):
        w.add_raw("a", torch.randn(3))
    with pytest.raises(ValueError, match="does not fit in 2 bits"):
        w.add_quantized("c", torch.full((2, 4), 4, dtype=torch.uint8), 2, torch.ones(1).half(), zero_point=1.0, granularity="tensor")
    with pytest.raises(ValueError, match="exactly one of zeros"):
        w.add_quantized("c", torch.zeros(2, 4, dtype=torch.uint8), 2, torch.ones(1).half(), granularity="tensor")
    with pytest.raises(ValueError, match="needs"):
        w.add_quantized("c", torch.zeros(2, 4, dtype=torch.uint8), 2, torch.ones(3).half(), zero_point=1.0, granularity="row")
    with pytest.raises(ValueError, match="no quantized encoding for 5 bits"):
        w.add_quantized("c", torch.zeros(2, 4, dtype=torch.uint8), 5, torch.ones(1).half(), zero_point=1.0, granularity="tensor")
    with pytest.raises(ValueError, match="strictly increasing"):
        w.add_sparse24("s", torch.zeros(1, 2, dtype=torch.uint8), torch.tensor([[2, 1]], dtype=torch.uint8), 2, torch.ones(1, 1), zero_point=1.0, shape=(1, 4))
    with pytest.raises(ValueError, match="names tensor 'missing'"):
        w.finish(method="x", base_name="b", finetune_name="f", deltas=[{"target": "t", "form": "dense", "tensor": "missing"}])
    assert not p.exists()
    assert list(tmp_path.iterdir()) == []  # nothing left behind, not even temporaries


def test_abandoned_writer_leaves_nothing(tmp_path, rng):
    p = tmp_path / "x.dpk"
    p.write_bytes(b"old contents")
    with pytest.raises(RuntimeError):
        with deltapack.DeltaWriter(p) as w:
            w.add_raw("a", torch.randn(1000, generator=rng))
            raise RuntimeError("interrupted")
    assert p.read_bytes() == b"old contents"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["x.dpk"]
    with deltapack.DeltaWriter(p) as w:  # a finished write replaces the old file whole
        w.add_raw("a", torch.ones(3))
        _finish(w)
    assert torch.equal(deltapack.open(p).raw("a"), torch.ones(3))


def test_writer_accepts_noncontiguous_and_cuda_like_inputs(tmp_path, rng):
    t = torch.randn(8, 6, generator=rng).t()  # non-contiguous view
    p = tmp_path / "nc.dpk"
    with deltapack.DeltaWriter(p) as w:
        w.add_raw("t", t)
        _finish(w)
    assert torch.equal(deltapack.open(p).raw("t"), t)
