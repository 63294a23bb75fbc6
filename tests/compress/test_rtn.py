import pytest
import torch

from deltapack.compress.rtn import quantize_rtn


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("cols,group", [(128, 128), (200, 64), (45, 16)])
def test_rtn_error_is_within_half_a_step(rng, bits, cols, group):
    w = torch.randn(17, cols, generator=rng)
    q = quantize_rtn(w, bits, group)
    assert int(q.codes.max()) < 2**bits and q.scales.shape == (17, -(-cols // group))
    err = (q.dequantize() - w).abs()
    idx = torch.arange(cols) // group
    step = q.scales.float()[:, idx]
    # Inside [min, max] the error is at most half a step, plus what rounding the scale to fp16
    # (relative 2**-11) costs at the far end of the grid: maxq codes of that rounding.
    maxq = 2**bits - 1
    assert (err <= step * (0.5 + maxq * 2.0**-11) + 1e-6).all()


def test_rtn_all_zero_group_is_exact():
    w = torch.zeros(3, 256)
    w[1, 200:] = torch.linspace(-1, 1, 56)
    q = quantize_rtn(w, 4, 128)
    assert torch.isfinite(q.scales.float()).all() and bool((q.scales.float() > 0).all())
    assert torch.equal(q.dequantize()[0], torch.zeros(256)) and torch.equal(q.dequantize()[1, :128], torch.zeros(128))


def test_rtn_more_bits_less_error(rng):
    w = torch.randn(64, 256, generator=rng)
    errs = [float((quantize_rtn(w, b, 128).dequantize() - w).norm()) for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 0.01 * float(w.norm())


def test_rtn_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        quantize_rtn(torch.randn(4), 4)
    with pytest.raises(ValueError, match="bit width"):
        quantize_rtn(torch.randn(4, 4), 5)
