//! Bit packing of unsigned b-bit codes, b ∈ {1, 2, 3, 4, 8}.
//!
//! Layout (normative, docs/FORMAT.md §Packing): each row of a `[rows, cols]` code matrix is a
//! little-endian bit stream — code `j` occupies stream bits `[b·j, b·j + b)`, stream bit `i` is
//! bit `i mod 8` of byte `i div 8` — zero-padded to a whole number of 32-bit words. Read as
//! little-endian u32 words, code `j` starts at bit `(b·j) mod 32` of word `(b·j) div 32`;
//! for b ∈ {1, 2, 4, 8} no code straddles two words, for b = 3 codes 10, 21 (mod 32) do.

use crate::encoding::PACK_BITS;
use crate::error::{Error, Result};
use crate::spec::PACK_WORD_BITS;

/// Bytes one packed row of `cols` codes occupies.
pub fn row_bytes(cols: u64, bits: u32) -> Option<u64> {
    let words = cols.checked_mul(bits as u64)?.div_ceil(PACK_WORD_BITS);
    words.checked_mul(PACK_WORD_BITS / 8)
}

/// Bytes of a packed `[rows, cols]` matrix.
pub fn packed_len(rows: u64, cols: u64, bits: u32) -> Option<u64> {
    rows.checked_mul(row_bytes(cols, bits)?)
}

fn check_bits(bits: u32) -> Result<()> {
    if PACK_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(Error::arg(format!("cannot pack {bits}-bit codes (supported: 1, 2, 3, 4, 8)")))
    }
}

fn dims(rows: usize, cols: usize, bits: u32, codes_len: usize, packed_len_: usize, what: &str) -> Result<usize> {
    check_bits(bits)?;
    let rb = row_bytes(cols as u64, bits).ok_or_else(|| Error::arg("row size overflows"))? as usize;
    let need_codes = rows.checked_mul(cols).ok_or_else(|| Error::arg("rows * cols overflows"))?;
    let need_packed = rows.checked_mul(rb).ok_or_else(|| Error::arg("packed size overflows"))?;
    if codes_len != need_codes {
        return Err(Error::arg(format!("{what}: {codes_len} codes given for a [{rows}, {cols}] matrix")));
    }
    if packed_len_ != need_packed {
        return Err(Error::arg(format!("{what}: packed buffer is {packed_len_} bytes, [{rows}, {cols}] at {bits} bits needs {need_packed}")));
    }
    Ok(rb)
}

/// Pack one code per byte (`codes.len() == rows * cols`, row-major) into `out`
/// (`packed_len(rows, cols, bits)` bytes). Fails if any code does not fit in `bits`.
pub fn pack_rows(codes: &[u8], rows: usize, cols: usize, bits: u32, out: &mut [u8]) -> Result<()> {
    let rb = dims(rows, cols, bits, codes.len(), out.len(), "pack")?;
    let max = codes.iter().fold(0u8, |m, &c| m | c);
    if bits < 8 && (max >> bits) != 0 {
        let (pos, bad) = codes.iter().enumerate().find(|(_, &c)| (c >> bits) != 0).unwrap();
        return Err(Error::arg(format!("code {bad} at index {pos} does not fit in {bits} bits")));
    }
    if cols == 0 {
        return Ok(());
    }
    for (src, dst) in codes.chunks_exact(cols).zip(out.chunks_exact_mut(rb)) {
        pack_row(src, bits, dst);
    }
    Ok(())
}

/// Unpack into one code per byte; the inverse of `pack_rows`.
pub fn unpack_rows(packed: &[u8], rows: usize, cols: usize, bits: u32, out: &mut [u8]) -> Result<()> {
    let rb = dims(rows, cols, bits, out.len(), packed.len(), "unpack")?;
    if cols == 0 {
        return Ok(());
    }
    for (src, dst) in packed.chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
        unpack_row(src, bits, dst);
    }
    Ok(())
}

/// Codes that fill whole bytes/words at a time: 8/b per byte for b | 8, 8 codes per 3 bytes at b = 3.
#[inline]
fn pack_row(src: &[u8], bits: u32, dst: &mut [u8]) {
    dst.fill(0);
    match bits {
        8 => dst[..src.len()].copy_from_slice(src),
        3 => {
            let mut chunks = src.chunks_exact(8);
            let mut o = 0;
            for c in &mut chunks {
                let mut v = 0u32;
                for (k, &x) in c.iter().enumerate() {
                    v |= (x as u32) << (3 * k);
                }
                dst[o..o + 3].copy_from_slice(&v.to_le_bytes()[..3]);
                o += 3;
            }
            pack_tail(chunks.remainder(), bits, src.len() - chunks.remainder().len(), dst);
        }
        _ => {
            // 64 bits of codes per store: 64/b codes.
            let per = (64 / bits) as usize;
            let mut chunks = src.chunks_exact(per);
            let mut o = 0;
            for c in &mut chunks {
                let mut v = 0u64;
                for (k, &x) in c.iter().enumerate() {
                    v |= (x as u64) << (bits as usize * k);
                }
                dst[o..o + 8].copy_from_slice(&v.to_le_bytes());
                o += 8;
            }
            pack_tail(chunks.remainder(), bits, src.len() - chunks.remainder().len(), dst);
        }
    }
}

#[inline]
fn pack_tail(codes: &[u8], bits: u32, first: usize, dst: &mut [u8]) {
    for (k, &x) in codes.iter().enumerate() {
        let bit = (first + k) * bits as usize;
        let v = (x as u16) << (bit % 8);
        dst[bit / 8] |= v as u8;
        if bit % 8 + bits as usize > 8 {
            dst[bit / 8 + 1] |= (v >> 8) as u8;
        }
    }
}

#[inline]
fn unpack_row(src: &[u8], bits: u32, dst: &mut [u8]) {
    let n = dst.len();
    match bits {
        8 => dst.copy_from_slice(&src[..n]),
        3 => {
            let full = n / 8;
            for (c, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(3)) {
                let v = u32::from_le_bytes([s[0], s[1], s[2], 0]);
                for (k, x) in c.iter_mut().enumerate() {
                    *x = ((v >> (3 * k)) & 7) as u8;
                }
            }
            unpack_tail(src, bits, full * 8, &mut dst[full * 8..]);
        }
        _ => {
            let per = (64 / bits) as usize;
            let mask = (1u64 << bits) - 1;
            let full = n / per;
            for (c, s) in dst.chunks_exact_mut(per).zip(src.chunks_exact(8)) {
                let v = u64::from_le_bytes(s.try_into().unwrap());
                for (k, x) in c.iter_mut().enumerate() {
                    *x = ((v >> (bits as usize * k)) & mask) as u8;
                }
            }
            unpack_tail(src, bits, full * per, &mut dst[full * per..]);
        }
    }
}

#[inline]
fn unpack_tail(src: &[u8], bits: u32, first: usize, dst: &mut [u8]) {
    let mask = (1u16 << bits) - 1;
    for (k, x) in dst.iter_mut().enumerate() {
        let bit = (first + k) * bits as usize;
        let lo = src[bit / 8] as u16;
        let hi = if bit % 8 + bits as usize > 8 { src[bit / 8 + 1] as u16 } else { 0 };
        *x = (((lo | (hi << 8)) >> (bit % 8)) & mask) as u8;
    }
}

/// Code `j` of a packed row, read the way a GPU kernel does (word, shift, maybe next word).
/// Kept deliberately naive: the tests check the fast paths against it.
pub fn code_at(row: &[u8], bits: u32, j: usize) -> u8 {
    let bit = j * bits as usize;
    let w = bit / 32;
    let word = |i: usize| u32::from_le_bytes(row[4 * i..4 * i + 4].try_into().unwrap()) as u64;
    let lo = word(w);
    let hi = if bit % 32 + bits as usize > 32 { word(w + 1) } else { 0 };
    (((lo | (hi << 32)) >> (bit % 32)) & ((1u64 << bits) - 1)) as u8
}
