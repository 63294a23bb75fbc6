import warnings

import pytest
import torch

import deltapack
from deltapack.compress.gptq import GPTQResult, HessianAccumulator, gptq_quantize
from deltapack.compress.rtn import quantize_rtn


def correlated_inputs(rng, n, cols, outliers=4):
    """Calibration inputs [n, cols] with correlated channels (random mixing with a decaying
    spectrum) and a few large-variance outlier channels: the setting where GPTQ's error
    feedback, and act-order, pay off."""
    z = torch.randn(n, cols, generator=rng)
    decay = (torch.linspace(0, 1, cols) ** 2 * 2 + 0.05).unsqueeze(1)
    x = z @ (torch.randn(cols, cols, generator=rng) / cols**0.5 * decay)
    x[:, torch.randperm(cols, generator=rng)[:outliers]] *= 10
    return x


def layer(rng, rows=64, cols=256, n=512, outliers=4):
    x = correlated_inputs(rng, n, cols, outliers)
    acc = HessianAccumulator(cols)
    acc.add(x)
    return torch.randn(rows, cols, generator=rng), x, acc.H


def out_err(w, wq, x):
    return float(((w - wq) @ x.T).norm())


def manual_dequant_stored(r: GPTQResult) -> torch.Tensor:
    rows, cols = r.codes.shape
    out = torch.empty(rows, cols)
    for j in range(cols):
        g = j // r.group_size
        z = r.zero_point if r.zeros is None else r.zeros[:, g].float()
        if r.sign_rows is not None and r.zeros is not None:
            z = torch.where(r.sign_rows, 0.5, z)
        out[:, j] = (r.codes[:, j].float() - z) * r.scales[:, g].float()
    return out


def write_and_read(tmp_path, r: GPTQResult) -> torch.Tensor:
    p = tmp_path / "q.dpk"
    with deltapack.DeltaWriter(p) as w:
        w.add_quantized("m", r.codes, r.bits, r.scales, r.zeros, zero_point=r.zero_point, group_size=r.group_size)
        w.finish(method="gptq", base_name="b", finetune_name="f")
    return deltapack.open(p, verify="full").dequantize("m")


# -- the Hessian


def test_hessian_accumulator_is_the_running_mean(rng):
    x = torch.randn(3, 50, 24, generator=rng)
    acc = HessianAccumulator(24)
    acc.add(x[0])
    acc.add(x[1:].bfloat16())  # any leading dims, any float dtype
    flat = torch.cat([x[0], x[1:].bfloat16().float().reshape(-1, 24)])
    assert acc.n == 150 and acc.H.dtype == torch.float32 and acc.H.shape == (24, 24)
    torch.testing.assert_close(acc.H, 2 / 150 * flat.T @ flat, rtol=1e-5, atol=1e-5)
    acc.add(torch.empty(0, 24))
    assert acc.n == 150
    with pytest.raises(ValueError, match="last dim"):
        acc.add(torch.randn(5, 23))
    assert torch.equal(HessianAccumulator(3).H, torch.zeros(3, 3))


# -- quality


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_beats_rtn_on_the_output(rng, bits, act_order):
    # Correlated inputs without outlier channels: GPTQ / RTN is 0.60 ± 0.01 (2 bits), 0.51 (3),
    # 0.50 (4) without act-order over 150 seeds, a little lower with it.
    w, x, h = layer(rng, outliers=0)
    rtn = out_err(w, quantize_rtn(w, bits, 32).dequantize(), x)
    r = gptq_quantize(w, h, bits, 32, act_order=act_order)
    assert out_err(w, r.dequantize(), x) < 0.8 * rtn


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_act_order_helps_with_outlier_channels(rng, bits):
    # Over 150 seeds GPTQ / RTN with act-order: 0.40 ± 0.01 (2 bits), 0.33 (3), 0.31 (4);
    # without: 0.69 ± 0.11, 0.54 ± 0.09, 0.51 ± 0.08 (it depends on where the outliers fall).
    with_ao = without = 0.0
    for _ in range(3):
        w, x, h = layer(rng, outliers=4)
        rtn = out_err(w, quantize_rtn(w, bits, 32).dequantize(), x)
        ao = out_err(w, gptq_quantize(w, h, bits, 32, act_order=True).dequantize(), x) / rtn
        assert ao < 0.6
        with_ao += ao
        without += out_err(w, gptq_quantize(w, h, bits, 32, act_order=False).dequantize(), x) / rtn
    assert with_ao <= without


def naive_gptq(w, h, bits, group_size, perm, damp=0.01):
    """Unblocked OBS in float64 (explicit inverse Hessian, one column eliminated at a time),
    the algorithm GPTQ's Cholesky + lazy-batch form computes."""
    w, h = w.double().clone(), h.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.inv(h)
    maxq = 2**bits - 1
    codes = torch.empty(w.shape, dtype=torch.uint8)
    for j in range(w.shape[1]):
        if j % group_size == 0:
            g = w[:, j : j + group_size]
            lo, hi = g.amin(1).clamp(max=0), g.amax(1).clamp(min=0)
            s = ((hi - lo) / maxq).float().half().double()
            z = torch.round(-lo / s).clamp(0, maxq)
        c = torch.round(w[:, j] / s + z).clamp(0, maxq)
        codes[:, j] = c.to(torch.uint8)
        err = (w[:, j] - (c - z) * s) / hinv[j, j]
        w[:, j:] -= err[:, None] * hinv[j, j:][None, :]
        hinv -= hinv[:, j : j + 1] @ hinv[j : j + 1, :] / hinv[j, j]
    return codes


def test_matches_unblocked_obs_reference(rng):
    w, x, h = layer(rng, rows=16, cols=40, n=200)
    r = gptq_quantize(w, h, 3, 8, block_size=16)  # blocks of 16 straddle groups of 8 and the end
    ref = naive_gptq(w, h, 3, 8, r.perm)
    # float32 vs float64 rounding can flip a code at a tie and perturb what follows in its row.
    assert (r.codes == ref).float().mean() > 0.97


def test_block_size_does_not_change_the_result(rng):
    w, _, h = layer(rng, rows=32, cols=96, n=256)
    a = gptq_quantize(w, h, 3, 16, block_size=128)
    for bs in (1, 7, 40):
        b = gptq_quantize(w, h, 3, 16, block_size=bs)
        assert (a.codes == b.codes).float().mean() > 0.99
        assert torch.equal(a.perm, b.perm)


# -- layout and bookkeeping


def test_codes_scales_and_dequantize(rng):
    w, _, h = layer(rng, rows=12, cols=45, n=300)
    r = gptq_quantize(w, h, 3, 16)
    assert r.codes.dtype == torch.uint8 and r.codes.shape == (12, 45) and int(r.codes.max()) < 8
    assert r.scales.dtype == torch.float16 and r.scales.shape == (12, 3) and bool((r.scales > 0).all())
    assert r.zeros.dtype == torch.uint8 and r.zeros.shape == (12, 3) and int(r.zeros.max()) < 8
    assert r.perm.dtype == torch.int64 and torch.equal(torch.sort(r.perm).values, torch.arange(45))
    stored = manual_dequant_stored(r)
    assert torch.equal(r.dequantize_stored(), stored)
    original = torch.empty_like(stored)
    for j in range(45):
        original[:, int(r.perm[j])] = stored[:, j]
    assert torch.equal(r.dequantize(), original)
    for j in range(45):
        assert torch.equal(r.dequantize_stored()[:, j], r.dequantize()[:, int(r.perm[j])])
    # act-order puts the largest diag(H) first
    d = torch.diagonal(h)[r.perm]
    assert bool((d[:-1] >= d[1:]).all())


def test_diagonal_hessian_is_rtn_in_stored_order(rng):
    # With a diagonal H there is no error feedback: GPTQ is RTN of the permuted matrix, group by
    # group in stored order, which pins down the groups, their scales and the permutation.
    cols = 24
    w = torch.randn(5, cols, generator=rng)
    h = torch.diag(torch.rand(cols, generator=rng) + 0.1)
    r = gptq_quantize(w, h, 3, 8)
    assert torch.equal(r.perm, torch.argsort(torch.diagonal(h), descending=True))
    rtn = quantize_rtn(w[:, r.perm], 3, 8)
    assert torch.equal(r.codes, rtn.codes) and torch.equal(r.scales, rtn.scales) and torch.equal(r.zeros, rtn.zeros)
    plain = gptq_quantize(w, h, 3, 8, act_order=False)
    assert plain.perm is None and torch.equal(plain.codes, quantize_rtn(w, 3, 8).codes)


def test_given_perm_is_used_verbatim(rng):
    cols = 40
    w = torch.randn(6, cols, generator=rng)
    perm = torch.randperm(cols, generator=rng)
    h = torch.diag(torch.rand(cols, generator=rng) + 0.1)
    r = gptq_quantize(w, h, 4, 8, perm=perm)
    assert torch.equal(r.perm, perm)
    assert torch.equal(r.codes, quantize_rtn(w[:, perm], 4, 8).codes)
    # a full Hessian too: the perm is kept, not recomputed
    w2, _, h2 = layer(rng, rows=8, cols=cols, n=100)
    assert torch.equal(gptq_quantize(w2, h2, 4, 8, perm=perm).perm, perm)
    with pytest.raises(ValueError, match="not a permutation"):
        gptq_quantize(w, h, 4, 8, perm=torch.zeros(cols, dtype=torch.int64))
    with pytest.raises(ValueError, match="perm"):
        gptq_quantize(w, h, 4, 8, perm=perm[:-1])


@pytest.mark.parametrize("rows,cols,group", [(9, 45, 16), (7, 200, 128), (1, 64, 16), (3, 1002, 128), (4, 30, 30), (4, 30, 1000)])
def test_odd_shapes(rng, rows, cols, group):
    x = correlated_inputs(rng, 2 * cols, cols)
    h = 2 / x.shape[0] * x.T @ x
    w = torch.randn(rows, cols, generator=rng)
    r = gptq_quantize(w, h, 4, group)
    n_groups = -(-cols // group)
    assert r.codes.shape == (rows, cols) and r.scales.shape == (rows, n_groups) and r.zeros.shape == (rows, n_groups)
    assert int(r.codes.max()) < 16 and r.group_size == group
    wq = r.dequantize()
    assert bool(torch.isfinite(wq).all())
    assert out_err(w, wq, x) <= out_err(w, quantize_rtn(w, 4, group).dequantize(), x)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_symmetric(rng, bits):
    w, x, h = layer(rng, rows=16, cols=64, n=256)
    r = gptq_quantize(w, h, bits, 32, sym=True)
    assert r.zeros is None and r.zero_point == 2 ** (bits - 1) and int(r.codes.max()) < 2**bits
    assert torch.equal(r.dequantize_stored(), manual_dequant_stored(r))
    # the documented rule, checked where it is observable: diagonal H (no feedback), one group
    hd = torch.diag(torch.diagonal(h))
    rd = gptq_quantize(w, hd, bits, 64, act_order=False, sym=True)
    amax = w.abs().amax(dim=1)
    assert torch.equal(rd.scales[:, 0], (2 * amax / (2**bits - 1)).half())
    # every weight, ±max|w| included, within half a step (plus the float16 rounding of the scale)
    assert bool(((rd.dequantize() - w).abs() <= rd.scales.float() * 0.5 + 1e-3 * amax[:, None]).all())
    # still an improvement over the same symmetric grid without error feedback
    assert out_err(w, r.dequantize(), x) < out_err(w, rd.dequantize(), x)


def test_symmetric_one_bit_is_refused():
    with pytest.raises(ValueError, match="1-bit symmetric"):
        gptq_quantize(torch.randn(4, 8), torch.eye(8), 1, sym=True)


def test_one_bit_asymmetric(rng):
    w, x, h = layer(rng, rows=16, cols=64, n=256)
    r = gptq_quantize(w, h, 1, 32)
    assert int(r.codes.max()) <= 1
    assert out_err(w, r.dequantize(), x) < out_err(w, quantize_rtn(w, 1, 32).dequantize(), x)


def test_sign_grid_one_bit(rng):
    """sign1: 1-bit rows decode to ±scale/2 (constant zero 0.5), scale = 2·mean|w| per group
    where no error feedback acts (diagonal H), and GPTQ's feedback lowers the output error."""
    w, x, h = layer(rng, rows=16, cols=64, n=256)
    r = gptq_quantize(w, h, 1, 32, sign1=True)
    assert r.zeros is None and r.zero_point == 0.5 and bool(r.sign_rows.all())
    q = r.dequantize_stored()
    assert torch.equal(q.abs(), r.scales.float().repeat_interleave(32, dim=1) / 2)  # ±scale/2 only
    hd = torch.diag(torch.diagonal(h))
    rd = gptq_quantize(w, hd, 1, 32, act_order=False, sign1=True)
    assert torch.equal(rd.scales, (2 * w.abs().reshape(16, 2, 32).mean(dim=2)).half())
    assert torch.equal(torch.sign(rd.dequantize()), torch.where(w > 0, 1.0, -1.0))
    assert out_err(w, r.dequantize(), x) < out_err(w, rd.dequantize(), x)
    # the sign grid holds a vector the asymmetric 1-bit grid ({0, s} or {−s, 0}) cannot
    assert out_err(w, r.dequantize(), x) < 0.8 * out_err(w, gptq_quantize(w, h, 1, 32).dequantize(), x)


def test_sign_grid_in_mixed_rows(rng, tmp_path):
    """Per-row widths with sign1: the 1-bit rows on the sign grid, the others unchanged; a
    slice of either kind writes through the file as stored."""
    w, x, h = layer(rng, rows=12, cols=96, n=256)
    bits = [8, 8, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1]
    r = gptq_quantize(w, h, bits, 32, sign1=True)
    plain = gptq_quantize(w, h, bits, 32)
    assert r.sign_rows.tolist() == [b == 1 for b in bits] and r.zero_point is None
    assert r.row_zero_point(slice(6, 12)) == 0.5 and r.row_zero_point(slice(0, 6)) is None
    with pytest.raises(ValueError, match="mix"):
        r.row_zero_point(slice(4, 8))
    assert torch.equal(r.codes[:6], plain.codes[:6]) and torch.equal(r.zeros[:6], plain.zeros[:6])
    assert torch.equal(r.dequantize_stored(), manual_dequant_stored(r))
    ones = GPTQResult(codes=r.codes[6:], scales=r.scales[6:], zeros=None, perm=r.perm, bits=1, group_size=32, sign_rows=r.sign_rows[6:])
    assert torch.equal(write_and_read(tmp_path, ones), ones.dequantize_stored())
    with pytest.raises(ValueError, match="sign1"):
        gptq_quantize(w, h, 2, 32, sym=True, sign1=True)


def test_sign_grid_transposed(rng):
    """gptq_quantize_transposed with sign1: a short last group's scale is the mean over its
    own values; a diagonal H leaves plain per-group signs."""
    from deltapack.compress.gptq import gptq_quantize_transposed
    from deltapack.compress.rtn import quantize_sign

    w = torch.randn(100, 6, generator=rng)  # 100 rows: groups of 32, the last one 4 long
    t = gptq_quantize_transposed(w, torch.eye(6), 1, 32, sign1=True)
    assert t.zeros is None and t.zero_point == 0.5
    assert torch.equal(t.dequantize(), quantize_sign(w.T, 32).T)
    assert torch.equal(t.scales[:, 3], (2 * w[96:].abs().mean(dim=0)).half())


# -- robustness


def test_singular_hessian_and_dead_channels(rng):
    cols = 64
    x = correlated_inputs(rng, 10, cols)  # fewer samples than dims: H has rank 10
    x[:, 5:9] = 0  # dead inputs
    h = 2 / x.shape[0] * x.T @ x
    w = torch.randn(8, cols, generator=rng)
    r = gptq_quantize(w, h, 3, 16)
    wq = r.dequantize()
    assert bool(torch.isfinite(wq).all())
    assert bool((wq[:, 5:9] == 0).all())  # as GPTQ: a weight that never sees input is zeroed
    # no damping at all: the factorisation fails, damping grows with a warning, no crash
    with pytest.warns(RuntimeWarning, match="damp"):
        r0 = gptq_quantize(w, h, 3, 16, damp=0.0)
    assert bool(torch.isfinite(r0.dequantize()).all())
    # an all-zero Hessian (every input dead): all weights zeroed, exactly representable
    rz = gptq_quantize(w, torch.zeros(cols, cols), 3, 16)
    assert torch.equal(rz.dequantize(), torch.zeros(8, cols))


def test_all_zero_weights(rng):
    _, _, h = layer(rng, rows=4, cols=32, n=64)
    for sym in (False, True):
        r = gptq_quantize(torch.zeros(4, 32), h, 2, 8, sym=sym)
        assert torch.equal(r.dequantize(), torch.zeros(4, 32)) and bool((r.scales > 0).all())


def test_rejects_bad_input():
    w, h = torch.randn(4, 8), torch.eye(8)
    with pytest.raises(ValueError, match="2-D"):
        gptq_quantize(torch.randn(8), h, 4)
    with pytest.raises(ValueError, match=r"H must be \[cols, cols\]"):
        gptq_quantize(w, torch.eye(7), 4)
    with pytest.raises(ValueError, match="bit width"):
        gptq_quantize(w, h, 5)
    bad = w.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        gptq_quantize(bad, h, 4)
    with pytest.raises(ValueError, match="non-finite"):
        gptq_quantize(w, h * float("inf"), 4)
    with pytest.raises(ValueError, match="group_size"):
        gptq_quantize(w, h, 4, 0)
    indefinite = torch.eye(8)
    indefinite[0, 1] = indefinite[1, 0] = 1e6  # eigenvalues 1 ± 1e6: no sane damping makes it PD
    with pytest.raises(ValueError, match="positive semi-definite"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gptq_quantize(w, indefinite, 4)
    with pytest.raises(ValueError, match="non-positive mean diagonal"):
        gptq_quantize(w, -torch.eye(8), 4)
    with pytest.raises(ValueError, match="damp"):
        gptq_quantize(w, h, 4, damp=-1.0)


# -- storage


@pytest.mark.parametrize(
    "bits,cols,group,sym",
    [(4, 45, 16, False), (3, 200, 128, False), (2, 64, 64, False), (8, 30, 1000, False), (1, 40, 16, False),
     (4, 45, 16, True), (3, 200, 128, True), (2, 64, 64, True), (8, 30, 1000, True)],
)
def test_round_trip_through_the_file(tmp_path, rng, bits, cols, group, sym):
    x = correlated_inputs(rng, 2 * cols, cols)
    w = torch.randn(6, cols, generator=rng)
    r = gptq_quantize(w, 2 / x.shape[0] * x.T @ x, bits, group, sym=sym)
    assert torch.equal(write_and_read(tmp_path, r), r.dequantize_stored())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda(rng):
    w, x, h = layer(rng)
    rc = gptq_quantize(w.cuda(), h.cuda(), 3, 32)
    assert rc.codes.is_cuda and rc.scales.is_cuda and rc.perm.is_cuda
    r = gptq_quantize(w, h, 3, 32)
    assert torch.equal(rc.perm.cpu(), r.perm)
    assert (rc.codes.cpu() == r.codes).float().mean() > 0.95
    e_cuda, e_cpu = out_err(w, rc.dequantize().cpu(), x), out_err(w, r.dequantize(), x)
    assert abs(e_cuda - e_cpu) < 0.05 * e_cpu
    acc = HessianAccumulator(x.shape[1], device="cuda")
    acc.add(x)  # CPU input, moved to the accumulator's device
    assert acc.H.is_cuda
    torch.testing.assert_close(acc.H.cpu(), h, rtol=1e-4, atol=1e-3)
