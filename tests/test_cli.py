"""The CLI as a user runs it: a real process, real files."""

import json
import subprocess
import sys

import pytest
import torch

import deltapack
from deltapack.sample import build_pair

CLI = [sys.executable, "-m", "deltapack.cli"]


def run(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    p = tmp_path_factory.mktemp("cli") / "sample.dpk"
    r = run("sample", p)
    assert r.returncode == 0, r.stderr
    return p


def test_verify_ok(sample):
    r = run("verify", sample)
    assert r.returncode == 0 and "OK" in r.stdout


def test_verify_flipped_data_byte_fails_naming_the_tensor(sample, tmp_path):
    f = deltapack.open(sample)
    t = f.manifest["tensors"][1]
    seg = t["segments"]["codes"]
    b = bytearray(sample.read_bytes())
    b[f._f.data_start() + seg["offset"] + seg["length"] // 2] ^= 0x40
    bad = tmp_path / "bad.dpk"
    bad.write_bytes(bytes(b))
    r = run("verify", bad)
    assert r.returncode == 1
    assert f"tensor '{t['name']}', segment 'codes'" in r.stderr and "checksum mismatch" in r.stderr


def test_verify_not_a_dpk(tmp_path):
    p = tmp_path / "x.dpk"
    p.write_bytes(b"\0" * 100)
    r = run("verify", p)
    assert r.returncode == 2 and "FormatError" in r.stderr and "magic" in r.stderr
    r = run("verify", tmp_path / "missing.dpk")
    assert r.returncode == 2 and "FileNotFoundError" in r.stderr


def test_inspect_json_parses_and_adds_up(sample):
    r = run("inspect", sample, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["format_version"] == 1 and s["method"]["name"] == "sample"
    assert s["tensor_count"] == len(s["tensors"]) == 12
    assert s["stored_bytes"] == sum(t["bytes"] for t in s["tensors"])
    base, _ = build_pair()
    assert s["params"] == sum(t.numel() for t in base.values())
    assert s["bits_per_param"] == pytest.approx(8 * s["stored_bytes"] / s["params"])
    forms = {(d["form"], d["op"]) for d in s["deltas"]}
    assert forms == {("dense", "add"), ("low_rank", "add"), ("dense", "replace")}
    # the 1-bit sign delta is ~1 bit/param; the 4-bit group RTN one pays 0.19 for scales/zeros
    bpp = {d["target"].split(".")[-2]: d["bits_per_param"] for d in s["deltas"]}
    assert bpp["down_proj"] == pytest.approx(1.0, abs=0.03)
    assert bpp["q_proj"] == pytest.approx(4 + 24 / 128)


def test_inspect_table(sample):
    r = run("inspect", sample, "--tensors")
    assert r.returncode == 0, r.stderr
    assert "bits/param" in r.stdout and "q4" in r.stdout


def test_sample_fingerprints_match_base_and_refuse_others(sample):
    f = deltapack.open(sample)
    base, tuned = build_pair()
    f.check_base(base)
    with pytest.raises(deltapack.BaseMismatchError, match="hashes to"):
        f.check_base(tuned)  # the fine-tune is not the base
    other = dict(base)
    name = next(iter(other))
    other[name] = other[name][:, :-1]
    with pytest.raises(deltapack.BaseMismatchError, match="shape"):
        f.check_base(other)
    other = dict(base)
    other[name] = other[name].float()
    with pytest.raises(deltapack.BaseMismatchError, match="f32"):
        f.check_base(other)
    other = dict(base)
    del other[name]
    with pytest.raises(deltapack.BaseMismatchError, match="has no tensor"):
        f.check_base(other)


def test_sample_deltas_reconstruct_the_finetune(sample):
    """Apply every delta with the torch reference and compare with the true fine-tune."""
    from deltapack.kernels.reference import dequantize

    f = deltapack.open(sample)
    base, tuned = build_pair()
    for d in f.manifest["deltas"]:
        t = d["target"]
        if d["form"] == "dense":
            x = f[d["tensor"]]
            val = x.float() if isinstance(x, torch.Tensor) else dequantize(x)
        else:
            b = d["blocks"][0]
            val = dequantize(f.packed(b["u"])) @ torch.diag(f.raw(b["s"])) @ dequantize(f.packed(b["vt"]))
        got = val if d["op"] == "replace" else base[t].float() + val
        err = float((got - tuned[t].float()).norm() / (tuned[t].float() - base[t].float()).norm())
        limit = {"q_proj": 0.15, "up_proj": 0.2, "down_proj": 0.7, "input_layernorm": 0.01}[t.split(".")[-2]]
        assert err < limit, (t, err)
