"""The pure-torch reference reads the packed layout exactly as the Rust packer writes it."""

import pytest
import torch

from deltapack import _core
from deltapack.kernels.reference import unpack_rows


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 31), (2, 32), (5, 33), (4, 100), (1, 257)])
def test_unpack_matches_rust_packer(rng, bits, rows, cols):
    codes = torch.randint(0, 2**bits, (rows, cols), generator=rng, dtype=torch.uint8)
    packed = _core.pack_codes(codes.data_ptr(), rows, cols, bits)
    assert len(packed) == _core.packed_len(rows, cols, bits) == rows * (-(-cols * bits // 32)) * 4
    p = torch.frombuffer(bytearray(packed), dtype=torch.uint8).reshape(rows, -1)
    assert torch.equal(unpack_rows(p, cols, bits), codes)


def test_bit_order_is_little_endian_stream():
    # 3-bit codes 0..7 then 1: stream bits LSB-first → bytes 0x88 0xc6 0xfa 0x01 (hand-computed:
    # value j sits at bits [3j, 3j+3) of the little-endian stream), padded to one 32-bit word.
    codes = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 1]], dtype=torch.uint8)
    packed = _core.pack_codes(codes.data_ptr(), 1, 9, 3)
    assert packed == bytes([0x88, 0xC6, 0xFA, 0x01])
    codes1 = torch.tensor([[1, 0, 1, 1, 0, 0, 0, 0, 1]], dtype=torch.uint8)
    assert _core.pack_codes(codes1.data_ptr(), 1, 9, 1) == bytes([0x0D, 0x01, 0, 0])


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("cols", [1, 7, 32, 33, 100])
def test_pack_rows_inverts_unpack_rows(bits, cols):
    """pack_rows (the rank-major re-pack of Ut at upload) writes the .dpk bit stream: word-padded
    rows that unpack_rows reads back exactly."""
    from deltapack.kernels.reference import pack_rows, unpack_rows

    g = torch.Generator().manual_seed(bits * 1000 + cols)
    codes = torch.randint(0, 1 << bits, (5, cols), generator=g, dtype=torch.uint8)
    packed = pack_rows(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (cols * bits + 31) // 32 * 4)
    assert torch.equal(unpack_rows(packed, cols, bits), codes)
    rust = _core.pack_codes(codes.data_ptr(), 5, cols, bits)  # byte-identical to the Rust packer
    assert bytes(packed.flatten().numpy()) == bytes(rust)
    with pytest.raises(ValueError):
        pack_rows(codes, 5)
