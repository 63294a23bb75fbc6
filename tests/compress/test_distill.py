"""Scale distillation (compress/distill.py) on the session's real tiny pair: Delta-CoMe's and
low-rank's singular values (and Delta-CoMe's group scales and codes) trained against the
fine-tune's logits, written back in the same bytes; the student it trains is the compressed model the file loads as; a diverging run keeps
the initial scales; methods without trainable scales are refused."""

import pytest
import torch

import deltapack
from deltapack.compress.pipeline import CompressConfig, compress
from deltapack.nn.delta import read_delta
from deltapack.zoo import next_token_kl

CAL = dict(n_samples=16, seq_len=96, progress=False)


@pytest.fixture(scope="module")
def dc(zoo_pair, calib_file, tmp_path_factory):
    """Delta-CoMe at 1 bit/param, without and with distillation (same seed: same Û, V̂)."""
    base, ft = zoo_pair
    out = tmp_path_factory.mktemp("distill")
    plain, dist = out / "plain.dpk", out / "dist.dpk"
    r0 = compress(base, ft, plain, method="delta-come", bits_per_param=1.0, calib=str(calib_file), **CAL)
    r1 = compress(base, ft, dist, method="delta-come", bits_per_param=1.0, calib=str(calib_file), distill=True, distill_steps=40, distill_lr=1e-2, **CAL)
    return plain, dist, r0, r1


@pytest.fixture(scope="module")
def heldout_arith(zoo_pair):
    """Held-out arith problems with their worked answers, cut to one length."""
    from transformers import AutoTokenizer

    from deltapack.zoo.tasks import get_task

    tok = AutoTokenizer.from_pretrained(str(zoo_pair[1]))
    ex = get_task("arith").examples(24, seed=99, split="eval")
    ids = [[tok.bos_token_id] + tok.encode(e.prompt + e.target, add_special_tokens=False) for e in ex]
    L = min(map(len, ids))
    return torch.tensor([x[:L] for x in ids])


def _low_rank(f):
    return {e["target"]: e for e in f.manifest["deltas"] if e["form"] == "low_rank"}


def _raw_bytes(f, name):
    """Everything stored for one tensor: codes, scales, zeros (packed) or the raw values."""
    info = f.info(name)
    if info.is_raw:
        return [f.raw(name).clone()]
    p = f.packed(name)
    return [t.clone() for t in (p.codes, p.scales, p.zeros) if t is not None]


def _assert_rel_error_reads_back(f, e, base, ft):
    """The reference path's reconstruction of entry ``e`` from file ``f`` has the relative
    error the file's stats record (``base``, ``ft``: ModelDirs of the pair)."""
    target = e["target"]
    exact = ft.get(target).float() - base.get(target).float()
    got = read_delta(f, e).dense()
    assert float((got - exact).norm() / exact.norm()) == pytest.approx(e["stats"]["rel_error"], rel=1e-5, abs=1e-7), target


def _assert_file_decodes_to_approx(tmp_path, cd):
    """Written to a .dpk and read back through the reference path, ``cd`` is ``cd.approx``."""
    from deltapack.compress.core import write_delta
    from deltapack.format import DeltaWriter

    with DeltaWriter(tmp_path / "w.dpk") as w:
        e = write_delta(w, "m", cd, {})
        w.finish(method="t", base_name="", finetune_name="", deltas=[e])
    f = deltapack.open(tmp_path / "w.dpk", verify="full")
    assert torch.equal(read_delta(f, e).dense(), cd.approx)


def _assert_low_rank_tensors_equal(f0, f1):
    """Every low-rank delta of ``f1`` stores bit for bit what ``f0`` stores; returns f1's entries."""
    e0, e1 = _low_rank(f0), _low_rank(f1)
    assert e0.keys() == e1.keys() and e1
    for target, e in e1.items():
        for b0, b1 in zip(e0[target]["blocks"], e["blocks"], strict=True):
            for k in ("ut", "s", "vt"):
                assert all(torch.equal(x, y) for x, y in zip(_raw_bytes(f0, b0[k]), _raw_bytes(f1, b1[k]), strict=True)), (target, k)
    return e1


def test_distill_changes_only_the_singular_values(dc):
    plain, dist, r0, r1 = dc
    f0, f1 = deltapack.open(plain, verify="full"), deltapack.open(dist, verify="full")
    e0, e1 = _low_rank(f0), _low_rank(f1)
    assert e0.keys() == e1.keys() and len(e0) >= 10
    assert r1.stored_bytes == r0.stored_bytes  # same format, same bytes
    changed = blocks = 0
    for target, e in e1.items():
        assert [sorted(b) for b in e["blocks"]] == [sorted(b) for b in e0[target]["blocks"]]
        for b0, b1 in zip(e0[target]["blocks"], e["blocks"]):
            for k in ("ut", "vt"):  # Û and V̂ exactly as compressed
                assert all(torch.equal(x, y) for x, y in zip(_raw_bytes(f0, b0[k]), _raw_bytes(f1, b1[k]), strict=True)), (target, k)
            s0, s1 = f0.raw(b0["s"]), f1.raw(b1["s"])
            assert s1.dtype == s0.dtype == torch.float16 and s1.shape == s0.shape
            changed += not torch.equal(s0, s1)
            blocks += 1
        assert ("input_perm" in e) == ("input_perm" in e0[target])
        if "input_perm" in e:  # act-order (calibrated matrices)
            assert torch.equal(f0.raw(e0[target]["input_perm"]), f1.raw(e["input_perm"]))
        assert e["stats"]["s_change"] > 0
    assert changed >= 0.8 * blocks, (changed, blocks)  # (nearly) every block's s moved


def test_distill_lowers_the_loss_and_the_kl_to_the_finetune(dc, zoo_pair, heldout_arith):
    plain, dist, _, _ = dc
    base, ft = zoo_pair
    res = deltapack.open(dist).manifest["method"]["params"]["distill_result"]
    assert res["kept"] and res["loss"] == "kl" and res["after"] < 0.9 * res["before"], res
    from transformers import AutoModelForCausalLM

    ftm = AutoModelForCausalLM.from_pretrained(str(ft), dtype=torch.float32).eval()
    kl0 = next_token_kl(deltapack.load(base, plain, dtype=torch.float32), ftm, heldout_arith)
    kl1 = next_token_kl(deltapack.load(base, dist, dtype=torch.float32), ftm, heldout_arith)
    assert kl1 < 0.95 * kl0, (kl1, kl0)


def test_reference_path_reproduces_the_distilled_approx(dc, zoo_pair):
    """The stats written with each delta (rel_error of the distilled ``cd.approx``) are what
    the reference path reconstructs from the file."""
    from deltapack.compress.hf import ModelDir

    _, dist, _, r1 = dc
    base, ft = (ModelDir(p) for p in zoo_pair)
    f = deltapack.open(dist)
    rows = {r["name"]: r for r in r1.matrices}
    for target, e in _low_rank(f).items():
        _assert_rel_error_reads_back(f, e, base, ft)
        assert rows[target]["rel_error"] == e["stats"]["rel_error"]  # the report shows the distilled error
        assert "rel_output_error" not in e["stats"]  # measured before distillation: not kept


def test_student_is_the_compressed_model(zoo_pair, calib_file, tmp_path):
    """The loss before training equals the KL of the undistilled file as ``deltapack.load``
    builds it, on the held-out calibration sequences — with matrices that the budget left
    without a delta (the base's weight in both)."""
    from transformers import AutoModelForCausalLM

    from deltapack.compress.calib import load_tokenizer, read_calib_text, tokens_from_text

    base, ft = zoo_pair
    # on the CPU, where the KL below is computed. On the H100 (session 7, call 6) this test
    # failed, its traceback not captured; likely cause: the distillation's loss came from GPU
    # float32 forward passes and the KL from CPU ones, which differ by more than 1e-4 relative
    kw = dict(method="delta-come", plan="auto", bits_per_param=0.15, calib=str(calib_file), device="cpu", **CAL)
    rep = compress(base, ft, tmp_path / "p.dpk", **kw)
    assert 0 < sum(r["bits_per_param"] == 0 for r in rep.matrices) < len(rep.matrices)  # some left without a delta
    compress(base, ft, tmp_path / "d.dpk", distill=True, distill_steps=1, distill_lr=1e-6, **kw)
    res = deltapack.open(tmp_path / "d.dpk").manifest["method"]["params"]["distill_result"]
    tokens = tokens_from_text(load_tokenizer(ft), read_calib_text(calib_file), CAL["n_samples"], CAL["seq_len"], 0)
    held = tokens[: len(tokens) // 8]
    ftm = AutoModelForCausalLM.from_pretrained(str(ft), dtype=torch.float32).eval()
    kl = next_token_kl(deltapack.load(base, tmp_path / "p.dpk", dtype=torch.float32), ftm, held)
    assert res["before"] == pytest.approx(kl, rel=1e-4), (res, kl)


def test_diverging_distillation_keeps_the_initial_scales(zoo_pair, calib_file, tmp_path, dc):
    plain = dc[0]
    base, ft = zoo_pair
    p = tmp_path / "div.dpk"
    compress(base, ft, p, method="delta-come", bits_per_param=1.0, calib=str(calib_file), distill=True, distill_steps=3, distill_lr=1e3, **CAL)
    f0, f1 = deltapack.open(plain), deltapack.open(p)
    res = f1.manifest["method"]["params"]["distill_result"]
    assert not res["kept"] and not res["after"] < res["before"], res
    for target, e in _low_rank(f1).items():
        for b0, b1 in zip(_low_rank(f0)[target]["blocks"], e["blocks"]):
            assert torch.equal(f0.raw(b0["s"]), f1.raw(b1["s"]))
        assert "s_change" not in e["stats"]


def test_lowrank_distillation_folds_the_scales_into_u(zoo_pair, calib_file, tmp_path):
    base, ft = zoo_pair
    kw = dict(method="lowrank", bits_per_param=1.0, calib=str(calib_file), **CAL)
    compress(base, ft, tmp_path / "p.dpk", **kw)
    compress(base, ft, tmp_path / "d.dpk", distill=True, distill_steps=30, distill_lr=1e-2, **kw)
    f0, f1 = deltapack.open(tmp_path / "p.dpk"), deltapack.open(tmp_path / "d.dpk")
    res = f1.manifest["method"]["params"]["distill_result"]
    assert res["kept"] and res["after"] < res["before"], res
    e0, e1 = _low_rank(f0), _low_rank(f1)
    moved = 0
    for target, e in e1.items():
        (b0,), (b1,) = e0[target]["blocks"], e["blocks"]
        assert "s" not in b1 and torch.equal(f0.raw(b0["vt"]), f1.raw(b1["vt"]))
        u0, u1 = f0.raw(b0["u"]).float(), f1.raw(b1["u"]).float()
        assert u1.shape == u0.shape and f1.raw(b1["u"]).dtype == torch.float16
        ratio = (u1 * u0).sum(0) / (u0 * u0).sum(0)  # one factor per rank column
        assert torch.allclose(u1, u0 * ratio, atol=2e-3 * float(u0.abs().max()))
        moved += not torch.equal(u0, u1)
    assert moved >= len(e1) // 2


@pytest.mark.parametrize("method", ["deltazip", "rtn"])
def test_distill_refused_where_there_are_no_scales_to_train(method, zoo_pair, tmp_path):
    with pytest.raises(ValueError, match="--distill applies to"):
        CompressConfig(method=method, distill=True).validate()
    base, ft = zoo_pair
    with pytest.raises(ValueError, match="--distill applies to"):
        compress(base, ft, tmp_path / "x.dpk", method=method, distill=True, progress=False)
    assert not (tmp_path / "x.dpk").exists()
    for m in ("bitdelta", "delta-come", "lowrank"):
        CompressConfig(method=m, distill=True).validate()
    with pytest.raises(ValueError, match="distill loss"):
        CompressConfig(method="delta-come", distill=True, distill_loss="l1").validate()


def test_parametrizations_hold_one_copy_of_the_matrix():
    """The student's parametrized weight holds W_base itself: BitDelta's adds a bool per
    weight and no float copy (Llama-7B in bf16: teacher + student + signs ≈ 33 GB, was ≈ 53 GB
    with the fine-tune's weight and a base buffer kept beside), and both give W_base + Δ̂."""
    from torch import nn
    from torch.nn.utils import parametrize

    from deltapack.compress.distill import _ScaledLowRank, _ScaledSign

    g = torch.Generator().manual_seed(0)
    base = torch.randn(24, 40, generator=g)
    codes = torch.randint(0, 2, (24, 40), generator=g, dtype=torch.uint8)
    lin = nn.Linear(40, 24, bias=False)
    with torch.no_grad():
        lin.weight.copy_(base)
    parametrize.register_parametrization(lin, "weight", _ScaledSign(codes, 0.25), unsafe=True)
    assert torch.equal(lin.weight, base + 0.25 * (codes.float() * 2 - 1))
    floats = [t for t in list(lin.parameters()) + list(lin.buffers()) if t.is_floating_point() and t.numel() > 1]
    assert [tuple(t.shape) for t in floats] == [(24, 40)]  # the base, once
    # a weight tied elsewhere keeps its own values: the base comes as a buffer
    tied = nn.Linear(40, 24, bias=False)
    ft = tied.weight.detach().clone()
    parametrize.register_parametrization(tied, "weight", _ScaledSign(codes, 0.25, base=base), unsafe=True)
    assert torch.equal(tied.weight, base + 0.25 * (codes.float() * 2 - 1))
    assert torch.equal(tied.parametrizations.weight.original, ft)

    class _Delta(nn.Module):  # LowRankDelta's interface: s and dense(s)
        def __init__(self):
            super().__init__()
            self.u, self.v, self.s = torch.randn(24, 3, generator=g), torch.randn(40, 3, generator=g), torch.rand(3, generator=g)

        def dense(self, s):
            return self.u @ torch.diag(s) @ self.v.T

    lr = nn.Linear(40, 24, bias=False)
    with torch.no_grad():
        lr.weight.copy_(base)
    p = _ScaledLowRank(_Delta())
    parametrize.register_parametrization(lr, "weight", p, unsafe=True)
    assert torch.allclose(lr.weight, base + p.delta.dense(p.delta.s))
    lr.weight.sum().backward()
    assert p.mult.grad is not None and p.mult.grad.shape == (3,)


def test_checkpointed_distillation_gives_the_same_scales(zoo_pair, calib_file, tmp_path):
    """Recomputing the layers in the backward pass (the default, for memory at 7B) trains the
    same scales as keeping the activations: the same loss before and after, the same file."""
    base, ft = zoo_pair
    kw = dict(method="delta-come", bits_per_param=1.0, calib=str(calib_file), device="cpu", distill=True, distill_steps=3, **CAL)
    compress(base, ft, tmp_path / "ck.dpk", distill_checkpoint=True, **kw)
    compress(base, ft, tmp_path / "full.dpk", distill_checkpoint=False, **kw)
    r_ck = deltapack.open(tmp_path / "ck.dpk").manifest["method"]["params"]["distill_result"]
    r_full = deltapack.open(tmp_path / "full.dpk").manifest["method"]["params"]["distill_result"]
    assert r_ck["checkpointed"] and not r_full["checkpointed"]
    assert r_ck["before"] == r_full["before"]
    assert r_ck["after"] == pytest.approx(r_full["after"], rel=1e-6, abs=1e-9)
    s_ck = {t: [f.raw(b["s"]) for b in e["blocks"]] for f in [deltapack.open(tmp_path / "ck.dpk")] for t, e in _low_rank(f).items()}
    s_full = {t: [f.raw(b["s"]) for b in e["blocks"]] for f in [deltapack.open(tmp_path / "full.dpk")] for t, e in _low_rank(f).items()}
    assert s_ck.keys() == s_full.keys()
    differ = sum(not torch.allclose(a.float(), b.float(), rtol=1e-3, atol=0) for t in s_ck for a, b in zip(s_ck[t], s_full[t]))
    assert differ == 0, differ


# ----------------------------------------------------------------------------- group scales


def _synthetic_delta_come(seed: int = 0, sign: bool = False):
    """A Delta-CoMe delta of a random low-rank-ish matrix, act-order on, three bit groups (four
    with ``sign``: a 1-bit tail on the sign grid, constant zero 0.5), and groups of 32 so that
    Uᵀ and Vᵀ have several scales per row."""
    from deltapack.compress.delta_come import compress_delta_come
    from deltapack.compress.plan import BitGroup, LowRankPlan

    g = torch.Generator().manual_seed(seed)
    out, inp = 72, 96
    delta = torch.randn(out, 12, generator=g) @ torch.randn(12, inp, generator=g) / 10 + torch.randn(out, inp, generator=g) / 100
    x = torch.randn(256, inp, generator=g) * torch.linspace(0.2, 3.0, inp)
    H = x.T @ x / len(x)
    groups = (BitGroup(8, 2), BitGroup(3, 4), BitGroup(2, 6)) + ((BitGroup(1, 5),) if sign else ())
    plan = LowRankPlan(groups, group_size=32, act_order=True)
    return compress_delta_come(delta, H, plan)


def test_group_scaled_student_is_the_reference_delta(tmp_path):
    """With every multiplier 1, the student's Δ̂ (decoded per call from codes, zeros and the
    scaled group scales) is the reference path's (read_delta → LowRankDelta.dense) bit for bit;
    the gradient reaches every scale multiplier; one multiplier moves only its own group."""
    from deltapack.compress.distill import _GroupScaledLowRank, _lowrank_modules, _QuantFactor

    cd = _synthetic_delta_come()
    assert "perm" in cd.parts and len(cd.blocks) == 3
    cpu = torch.device("cpu")
    ref = _lowrank_modules({"m": cd}, cpu, tmp_path)["m"].dense()
    gs = _lowrank_modules({"m": cd}, cpu, tmp_path, group_scales=True)["m"]
    assert isinstance(gs, _GroupScaledLowRank) and len(gs.quant_factors()) == 6  # Uᵀ and Vᵀ of 3 blocks
    got = gs.dense(gs.s)
    assert torch.equal(got, ref)
    assert not torch.equal(ref, torch.zeros_like(ref))
    # gradients reach every stored scale's multiplier (shape: the part's scale grid)
    got.square().sum().backward()
    for k, which, f in gs.quant_factors():
        part = cd.parts[cd.blocks[k][0 if which == "u" else 2]]
        assert f.mult.shape == f.scales.shape and f.mult.numel() == part.scales.numel()
        assert f.mult.grad is not None and bool(f.mult.grad.ne(0).any()), (k, which)
    # one multiplier scales exactly one group of one row of one factor
    f: _QuantFactor = gs.vts[1]
    before = f().detach()
    with torch.no_grad():
        f.mult[1, 1] = 2.0
    after = f().detach()
    changed = (after != before).nonzero()
    assert changed.numel() and set(changed[:, 0].tolist()) == {1} and set((changed[:, 1] // 32).tolist()) == {1}
    torch.testing.assert_close(after[1, 32:64], 2 * before[1, 32:64], rtol=0, atol=0)


def test_written_group_scales_are_what_the_file_decodes(tmp_path):
    """set_quant_factors + set_lowrank_scales: fp16 scales written into the same parts (codes,
    zeros, shapes, dtypes, bytes unchanged), and ``cd.approx`` equals what the reference path
    reads back from a file written with them."""
    from deltapack.compress.distill import _lowrank_modules, set_lowrank_scales, set_quant_factors

    cd = _synthetic_delta_come(1)
    old = {k: p for k, p in cd.parts.items()}
    nbytes = cd.nbytes
    gs = _lowrank_modules({"m": cd}, torch.device("cpu"), tmp_path, group_scales=True)["m"]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, _, f in gs.quant_factors():
            f.mult.copy_(1 + 0.2 * torch.randn(f.mult.shape, generator=g))
    s = gs.s * 1.1
    expect = gs.dense(s).detach()
    change, codes_changed = set_quant_factors(cd, gs)
    assert codes_changed is None
    assert 0.1 < change < 0.3, change
    set_lowrank_scales(cd, gs, s)
    assert cd.nbytes == nbytes and cd.parts.keys() == old.keys()
    for u, sn, v in cd.blocks:
        for name in (u, v):
            p0, p1 = old[name], cd.parts[name]
            assert torch.equal(p0.codes, p1.codes) and torch.equal(p0.zeros, p1.zeros) and p1.bits == p0.bits
            assert p1.scales.dtype == p0.scales.dtype == torch.float16 and p1.scales.shape == p0.scales.shape
            assert not torch.equal(p0.scales, p1.scales)
        assert not torch.equal(old[sn].tensor, cd.parts[sn].tensor)
    torch.testing.assert_close(cd.approx, expect, rtol=2e-3, atol=2e-3 * float(expect.abs().max()))  # fp16 rounding of the scales
    _assert_file_decodes_to_approx(tmp_path, cd)


@pytest.fixture(scope="module")
def dc_scales(zoo_pair, calib_file, tmp_path_factory):
    """Delta-CoMe (auto plan) at 0.25 bit/param, distilled with the singular values alone and
    with the group scales too (same seed, steps, lr)."""
    base, ft = zoo_pair
    out = tmp_path_factory.mktemp("distill-scales")
    kw = dict(method="delta-come", plan="auto", bits_per_param=0.25, calib=str(calib_file), distill=True, distill_steps=40, distill_lr=1e-2, device="cpu", **CAL)
    r_s = compress(base, ft, out / "s.dpk", **kw)
    r_g = compress(base, ft, out / "g.dpk", distill_scales=True, **kw)
    return out / "s.dpk", out / "g.dpk", r_s, r_g


def test_distilled_group_scales_lower_the_loss(dc_scales):
    """Training the group scales too ends at a held-out loss below the singular values' alone
    (both start from the same compressed delta), and below where it started."""
    ps, pg, _, _ = dc_scales
    rs = deltapack.open(ps).manifest["method"]["params"]["distill_result"]
    rg = deltapack.open(pg).manifest["method"]["params"]["distill_result"]
    assert rg["scales"] and not rs["scales"] and rg["scales_lr"] == 1e-2
    assert rg["before"] == pytest.approx(rs["before"], rel=1e-6)
    assert rg["kept"] and rg["after"] < 0.9 * rg["before"], rg
    assert rg["after"] < rs["after"], (rg, rs)


def test_distilled_group_scales_round_trip(dc_scales, zoo_pair):
    """The file with trained group scales has the same bytes and tensors as without; only the
    scales and the singular values moved; the reference path reads back exactly the
    distilled ``cd.approx`` (its rel_error stat)."""
    from deltapack.compress.hf import ModelDir

    ps, pg, r_s, r_g = dc_scales
    assert r_g.stored_bytes == r_s.stored_bytes
    fs, fg = deltapack.open(ps, verify="full"), deltapack.open(pg, verify="full")
    assert fs.file_len == fg.file_len
    es, eg = _low_rank(fs), _low_rank(fg)
    assert es.keys() == eg.keys() and len(eg) >= 10
    base, ft = (ModelDir(p) for p in zoo_pair)
    moved = 0
    for target, e in eg.items():
        for b0, b1 in zip(es[target]["blocks"], e["blocks"], strict=True):
            for k in ("ut", "vt"):
                p0, p1 = fs.packed(b0[k]), fg.packed(b1[k])
                assert torch.equal(p0.codes, p1.codes) and torch.equal(p0.zeros, p1.zeros), (target, k)
                assert p1.scales.dtype == torch.float16 and p1.scales.shape == p0.scales.shape
                moved += not torch.equal(p0.scales, p1.scales)
        assert e["stats"]["scale_change"] > 0
        _assert_rel_error_reads_back(fg, e, base, ft)
    assert moved >= len(eg), moved  # about every factor's scales moved


def test_distill_scales_refused_where_it_does_not_apply(zoo_pair, tmp_path):
    with pytest.raises(ValueError, match="needs --distill"):
        CompressConfig(method="delta-come", distill_scales=True).validate()
    for m in ("lowrank", "bitdelta"):
        with pytest.raises(ValueError, match="delta-come only"):
            CompressConfig(method=m, distill=True, distill_scales=True).validate()
    CompressConfig(method="delta-come", distill=True, distill_scales=True).validate()
    base, ft = zoo_pair
    with pytest.raises(ValueError, match="needs --distill"):
        compress(base, ft, tmp_path / "x.dpk", method="delta-come", distill_scales=True, progress=False)
    assert not (tmp_path / "x.dpk").exists()
    from deltapack.cli import main

    assert main(["compress", str(base), str(ft), "-o", str(tmp_path / "y.dpk"), "--method", "lowrank", "--distill", "--distill-scales"]) == 2
    assert not (tmp_path / "y.dpk").exists()


def test_diverging_group_scale_distillation_keeps_every_initial_scale(zoo_pair, calib_file, tmp_path):
    """The guard covers the group scales: a diverging run writes the file bit for bit as
    compressed (the same bytes as without distillation, every tensor unchanged)."""
    base, ft = zoo_pair
    kw = dict(method="delta-come", bits_per_param=1.0, calib=str(calib_file), device="cpu", **CAL)
    compress(base, ft, tmp_path / "p.dpk", **kw)
    compress(base, ft, tmp_path / "d.dpk", distill=True, distill_scales=True, distill_steps=3, distill_lr=1e3, **kw)
    f0, f1 = deltapack.open(tmp_path / "p.dpk"), deltapack.open(tmp_path / "d.dpk")
    res = f1.manifest["method"]["params"]["distill_result"]
    assert res["scales"] and not res["kept"] and not res["after"] < res["before"], res
    for e in _assert_low_rank_tensors_equal(f0, f1).values():
        assert "scale_change" not in e["stats"] and "s_change" not in e["stats"]


def test_latent_codes_decode_as_stored_and_round_straight_through(tmp_path):
    """With trainable codes, the student's Δ̂ at the start is the reference path's bit for bit
    (8-, 3-, 2- and 1-bit sign-grid factors); the rounding passes the gradient through to every
    latent; a latent moved past half a level decodes as the neighbouring code, one moved less
    does not, and none leaves the grid."""
    from deltapack.compress.distill import _lowrank_modules

    cd = _synthetic_delta_come(2, sign=True)
    assert any(p.zero_point == 0.5 and p.bits == 1 for p in cd.parts.values() if hasattr(p, "zero_point"))
    cpu = torch.device("cpu")
    ref = _lowrank_modules({"m": cd}, cpu, tmp_path)["m"].dense()
    gc = _lowrank_modules({"m": cd}, cpu, tmp_path, codes=True)["m"]
    facs = [f for _, _, f in gc.quant_factors()]
    assert len(facs) == 8 and all(f.latent is not None and f.offsets is None for f in facs)
    assert not any(isinstance(f.mult, torch.nn.Parameter) for f in facs)  # scales fixed: codes alone
    assert torch.equal(gc.dense(gc.s), ref)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5))
    (gc.dense(gc.s) * w).sum().backward()
    for f in facs:
        assert f.latent.grad is not None and (f.latent.grad != 0).float().mean() > 0.5, f.info.name
    f = max(facs, key=lambda f: f.info.bits)  # the 8-bit factor: room on both sides of most codes
    before = f().detach().clone()
    with torch.no_grad():
        c0 = f.codes().clone()
        f.latent.add_(0.45)
        assert torch.equal(f.codes(), c0) and torch.equal(f(), before)
        f.latent.add_(0.1)  # now 0.55 above: one level up where the grid has room
        up = c0 < f.levels
        assert torch.equal(f.codes()[up], c0[up] + 1) and torch.equal(f.codes()[~up], c0[~up])
        f.latent.add_(1000.0)
        assert float(f.codes().max()) == f.levels and float(f().abs().max()) < float("inf")


def test_written_codes_are_what_the_file_decodes(tmp_path):
    """set_quant_factors writes the trained codes (and scales) into the same parts: same shapes
    and bytes, zeros and bit widths unchanged, codes on the grid; the written file decodes to
    exactly the student's Δ̂ (``cd.approx``)."""
    from deltapack.compress.distill import _lowrank_modules, set_lowrank_scales, set_quant_factors

    cd = _synthetic_delta_come(4, sign=True)
    old = dict(cd.parts)
    nbytes = cd.nbytes
    gc = _lowrank_modules({"m": cd}, torch.device("cpu"), tmp_path, group_scales=True, codes=True)["m"]
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for _, _, f in gc.quant_factors():
            f.latent.add_(1.5 * torch.randn(f.latent.shape, generator=g))
            f.mult.copy_(1 + 0.1 * torch.randn(f.mult.shape, generator=g))
    expect = gc.dense(gc.s).detach()
    change, moved = set_quant_factors(cd, gc)
    assert change > 0.01 and 0.3 < moved < 0.9, (change, moved)
    set_lowrank_scales(cd, gc, gc.s)
    assert cd.nbytes == nbytes and cd.parts.keys() == old.keys()
    for u, _, v in cd.blocks:
        for name in (u, v):
            p0, p1 = old[name], cd.parts[name]
            assert p1.codes.dtype == torch.uint8 and p1.codes.shape == p0.codes.shape and int(p1.codes.max()) < 2**p1.bits
            assert not torch.equal(p0.codes, p1.codes) and p1.bits == p0.bits and p1.zero_point == p0.zero_point
            assert (p0.zeros is None and p1.zeros is None) or torch.equal(p0.zeros, p1.zeros)
    torch.testing.assert_close(cd.approx, expect, rtol=2e-3, atol=2e-3 * float(expect.abs().max()))  # fp16 rounding of the scales
    _assert_file_decodes_to_approx(tmp_path, cd)


@pytest.fixture(scope="module")
def dc_codes(zoo_pair, calib_file, tmp_path_factory, dc_scales):
    """The dc_scales compression (0.25 bit, auto plan) with the codes trained too."""
    base, ft = zoo_pair
    out = tmp_path_factory.mktemp("distill-codes")
    kw = dict(method="delta-come", plan="auto", bits_per_param=0.25, calib=str(calib_file), distill=True, distill_steps=40, distill_lr=1e-2, device="cpu", **CAL)
    r_c = compress(base, ft, out / "c.dpk", distill_scales=True, distill_codes=True, distill_codes_lr=5e-2, **kw)
    return out / "c.dpk", r_c


def test_distilled_codes_lower_the_loss_further(dc_scales, dc_codes):
    """Training the codes beside the scales ends below the scales alone (same start), some codes
    change, and the file keeps its bytes."""
    _, pg, _, r_g = dc_scales
    pc, r_c = dc_codes
    rg = deltapack.open(pg).manifest["method"]["params"]["distill_result"]
    rc = deltapack.open(pc).manifest["method"]["params"]["distill_result"]
    assert rc["codes"] and rc["codes_lr"] == 5e-2 and not rg["codes"] and rg["codes_changed"] is None
    assert rc["before"] == pytest.approx(rg["before"], rel=1e-6)
    assert rc["kept"] and rc["after"] < rg["after"], (rc, rg)
    assert 0 < rc["codes_changed"] < 0.5, rc
    assert r_c.stored_bytes == r_g.stored_bytes


def test_distilled_codes_round_trip(dc_scales, dc_codes, zoo_pair):
    """Every stored tensor has its shape and dtype; codes moved in some factors, zeros never;
    the reference path reads back the distilled delta (its rel_error stat)."""
    from deltapack.compress.hf import ModelDir

    _, pg, _, _ = dc_scales
    pc, _ = dc_codes
    fg, fc = deltapack.open(pg, verify="full"), deltapack.open(pc, verify="full")
    assert fg.file_len == fc.file_len
    eg, ec = _low_rank(fg), _low_rank(fc)
    assert eg.keys() == ec.keys() and len(ec) >= 10
    base, ft = (ModelDir(p) for p in zoo_pair)
    moved = 0
    for target, e in ec.items():
        for b0, b1 in zip(eg[target]["blocks"], e["blocks"], strict=True):
            for k in ("ut", "vt"):
                p0, p1 = fg.packed(b0[k]), fc.packed(b1[k])
                assert p1.codes.shape == p0.codes.shape and p1.scales.shape == p0.scales.shape and p1.scales.dtype == torch.float16
                assert (p0.zeros is None and p1.zeros is None) or torch.equal(p0.zeros, p1.zeros), (target, k)
                moved += not torch.equal(p0.codes, p1.codes)
        assert 0 <= e["stats"]["codes_changed"] < 1
        _assert_rel_error_reads_back(fc, e, base, ft)
    assert moved >= len(ec) // 2, moved


def test_distill_codes_refused_where_it_does_not_apply(zoo_pair, tmp_path):
    with pytest.raises(ValueError, match="needs --distill"):
        CompressConfig(method="delta-come", distill_codes=True).validate()
    for m in ("lowrank", "bitdelta"):
        with pytest.raises(ValueError, match="delta-come only"):
            CompressConfig(method=m, distill=True, distill_codes=True).validate()
    with pytest.raises(ValueError, match="distill_codes_lr"):
        CompressConfig(method="delta-come", distill=True, distill_codes=True, distill_codes_lr=0.0).validate()
    CompressConfig(method="delta-come", distill=True, distill_codes=True).validate()
    base, ft = zoo_pair
    from deltapack.cli import main

    assert main(["compress", str(base), str(ft), "-o", str(tmp_path / "y.dpk"), "--method", "bitdelta", "--distill", "--distill-codes"]) == 2
    assert not (tmp_path / "y.dpk").exists()


def test_diverging_code_distillation_keeps_every_initial_code(zoo_pair, calib_file, tmp_path):
    """The guard covers the codes: a diverging run writes every tensor as compressed."""
    base, ft = zoo_pair
    kw = dict(method="delta-come", bits_per_param=1.0, calib=str(calib_file), device="cpu", **CAL)
    compress(base, ft, tmp_path / "p.dpk", **kw)
    compress(base, ft, tmp_path / "d.dpk", distill=True, distill_codes=True, distill_steps=3, distill_lr=1e3, distill_codes_lr=1e3, **kw)
    f0, f1 = deltapack.open(tmp_path / "p.dpk"), deltapack.open(tmp_path / "d.dpk")
    res = f1.manifest["method"]["params"]["distill_result"]
    assert res["codes"] and not res["kept"], res
    for e in _assert_low_rank_tensors_equal(f0, f1).values():
        assert "codes_changed" not in e["stats"]
