"""Malformed files raise typed errors; never a crash, never an out-of-bounds read."""

import json
import struct

import pytest
import torch

import deltapack
from deltapack import ChecksumError, FormatError, TensorNotFoundError, UnsupportedError, _core

from .dpk_edit import assemble, rewrite_manifest, split


@pytest.fixture
def good(tmp_path, rng):
    p = tmp_path / "good.dpk"
    with deltapack.DeltaWriter(p) as w:
        w.add_raw("a", torch.randn(300, generator=rng))
        w.add_quantized("b", torch.randint(0, 8, (20, 50), generator=rng), 3, torch.rand(20, 1, generator=rng).half(), zero_point=4.0, granularity="row")
        w.add_raw("c", torch.randn(5000, generator=rng).bfloat16())  # > 4096 bytes: an aligned offset near 2**64 overflows
        w.finish(method="t", base_name="b", finetune_name="f")
    return p


def _open_all(p, verify="lazy"):
    f = deltapack.open(p, verify=verify)
    for n in f.names():
        f.segment(n, "data" if f.info(n).is_raw else "codes")
    return f


@pytest.mark.parametrize("cut", [0, 1, 8, 31, 32, 40, -1, -100, -5000])
def test_truncated(good, tmp_path, cut):
    b = good.read_bytes()
    n = cut if cut >= 0 else len(b) + cut
    p = tmp_path / "t.dpk"
    p.write_bytes(b[:n])
    with pytest.raises(FormatError, match="truncated|outside the data section|magic"):
        _open_all(p)


def test_flipped_data_byte_names_the_tensor(good, tmp_path):
    _, m, _ = split(good)
    b = bytearray(good.read_bytes())
    start = len(b) - len(split(good)[2])
    seg = next(t for t in m["tensors"] if t["name"] == "b")["segments"]["codes"]
    b[start + seg["offset"] + 3] ^= 0x10
    p = tmp_path / "flip.dpk"
    p.write_bytes(bytes(b))
    f = deltapack.open(p)  # lazy: opening is fine, other tensors are fine
    f.raw("a")
    with pytest.raises(ChecksumError, match="tensor 'b', segment 'codes'"):
        f.packed("b")
    with pytest.raises(ChecksumError, match="tensor 'b'"):
        deltapack.open(p, verify="full")
    assert [x[:2] for x in deltapack.open(p, verify="none").check()] == [("b", "codes")]


def test_flipped_manifest_byte(good, tmp_path):
    b = bytearray(good.read_bytes())
    b[_core.PRELUDE_LEN + 10] ^= 0x01
    p = tmp_path / "m.dpk"
    p.write_bytes(bytes(b))
    with pytest.raises(ChecksumError, match="manifest checksum"):
        deltapack.open(p)


def test_wrong_magic(good, tmp_path):
    b = bytearray(good.read_bytes())
    b[1:4] = b"PKZ"
    p = tmp_path / "x.dpk"
    p.write_bytes(bytes(b))
    with pytest.raises(FormatError, match="magic"):
        deltapack.open(p)


def test_not_a_dpk_at_all(tmp_path):
    p = tmp_path / "x.dpk"
    p.write_text("{'hello': 'world'}" * 10)
    with pytest.raises(FormatError, match="magic"):
        deltapack.open(p)


def test_unknown_version_and_flags(good, tmp_path):
    _, m, data = split(good)
    mb = json.dumps(m).encode()
    p = tmp_path / "v.dpk"
    p.write_bytes(assemble(mb, data, version=2))
    with pytest.raises(UnsupportedError, match="version 2"):
        deltapack.open(p)
    p.write_bytes(assemble(mb, data, flags=1))
    with pytest.raises(UnsupportedError, match="flags"):
        deltapack.open(p)


@pytest.mark.parametrize("mlen", [2**64 - 1, _core.MAX_MANIFEST_LEN + 1])
def test_huge_manifest_length(good, tmp_path, mlen):
    b = bytearray(good.read_bytes())
    struct.pack_into("<Q", b, 16, mlen)
    p = tmp_path / "h.dpk"
    p.write_bytes(bytes(b))
    with pytest.raises(FormatError, match="exceeds the cap"):
        deltapack.open(p)


def test_manifest_length_past_end(good, tmp_path):
    b = bytearray(good.read_bytes())
    struct.pack_into("<Q", b, 16, len(b) * 2)
    p = tmp_path / "h.dpk"
    p.write_bytes(bytes(b))
    with pytest.raises(FormatError, match="truncated"):
        deltapack.open(p)


def _edit(good, tmp_path, fn):
    return rewrite_manifest(good, tmp_path / "e.dpk", fn)


def _tensor(m, name):
    return next(t for t in m["tensors"] if t["name"] == name)


EDITS = {
    "unknown encoding": (lambda m: _tensor(m, "a").update(encoding=99, encoding_name=None), UnsupportedError, "unknown encoding id 99"),
    "offset out of range": (lambda m: _tensor(m, "c")["segments"]["data"].update(offset=1 << 40), FormatError, "outside the data section"),
    "offset overflows": (lambda m: _tensor(m, "c")["segments"]["data"].update(offset=2**64 - 4096), FormatError, "overflows"),
    "overlap": (lambda m: _tensor(m, "c")["segments"]["data"].update(offset=_tensor(m, "a")["segments"]["data"]["offset"]), FormatError, "overlap"),
    "misaligned": (lambda m: _tensor(m, "c")["segments"]["data"].update(offset=_tensor(m, "c")["segments"]["data"]["offset"] + 64), FormatError, "not a multiple of 4096"),
    "wrong length": (lambda m: _tensor(m, "a")["segments"]["data"].update(length=4), FormatError, "need 1200"),
    "missing segment": (lambda m: _tensor(m, "b")["segments"].pop("scales"), FormatError, "needs segments"),
    "duplicate name": (lambda m: _tensor(m, "c").update(name="a"), FormatError, "appears twice"),
    "bad checksum text": (lambda m: _tensor(m, "a")["segments"]["data"].update(xxh3="xyz"), FormatError, "16 lowercase hex"),
    "manifest version": (lambda m: m.update(format_version=7), UnsupportedError, "version 7"),
    "overflowing shape": (lambda m: _tensor(m, "a").update(shape=[2**40, 2**40]), FormatError, "overflows"),
    "not a deltapack manifest": (lambda m: m.update(format="safetensors"), FormatError, "field 'format'"),
    "missing field": (lambda m: m.pop("tensors"), FormatError, "missing field"),
    "delta names missing tensor": (lambda m: m["deltas"].append({"target": "w", "form": "dense", "tensor": "nope"}), FormatError, "does not contain"),
    "bad quant params": (lambda m: _tensor(m, "b")["quant"].update(granularity="group"), FormatError, "group_size"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_bad_manifest(good, tmp_path, case):
    fn, exc, msg = EDITS[case]
    with pytest.raises(exc, match=msg):
        _open_all(_edit(good, tmp_path, fn))


def test_invalid_json(good, tmp_path):
    _, _, data = split(good)
    p = tmp_path / "j.dpk"
    p.write_bytes(assemble(b'{"format": "deltapack", ', data))
    with pytest.raises(FormatError, match="not valid JSON"):
        deltapack.open(p)


def test_missing_tensor(good):
    f = deltapack.open(good)
    with pytest.raises(TensorNotFoundError, match="'zzz'"):
        f["zzz"]
    with pytest.raises(FileNotFoundError):
        deltapack.open(good.parent / "nope.dpk")


def test_random_corruption_never_crashes(good, tmp_path, rng):
    """Flip random bytes and cut at random places: every outcome is a clean result or a
    typed error (a crash would kill the test process)."""
    b = good.read_bytes()
    p = tmp_path / "r.dpk"
    for _ in range(200):
        x = bytearray(b)
        for pos in torch.randint(0, len(x), (int(torch.randint(1, 4, (1,), generator=rng)),), generator=rng).tolist():
            x[pos] ^= int(torch.randint(1, 256, (1,), generator=rng))
        if torch.rand(1, generator=rng).item() < 0.3:
            x = x[: int(torch.randint(0, len(x), (1,), generator=rng))]
        p.write_bytes(bytes(x))
        try:
            f = deltapack.open(p, verify="lazy")
            for n in f.names():
                f.dequantize(n) if f.info(n).bits or f.info(n).encoding_name in ("f32", "f16", "bf16") else f.segment(n, "data")
        except (FormatError, ChecksumError, UnsupportedError, ValueError):
            pass
