//! Bit packing: round trips, the naive word reader, padding, rejection of bad input, and
//! golden bytes computed by hand from the layout rule (docs/FORMAT.md §Packing, pack.rs):
//! each row is a little-endian bit stream, code j in stream bits [b·j, b·j + b), stream bit i
//! is bit (i mod 8) of byte (i div 8), and every row is zero-padded to whole 32-bit words.

use deltapack_format::pack::{code_at, pack_rows, packed_len, row_bytes, unpack_rows};
use deltapack_format::Error;
use proptest::prelude::*;

const BITS: [u32; 5] = [1, 2, 3, 4, 8];

/// (bits, rows, cols, codes) with every code < 2^bits.
fn matrix() -> impl Strategy<Value = (u32, usize, usize, Vec<u8>)> {
    (prop::sample::select(BITS.to_vec()), 0usize..6, 0usize..200).prop_flat_map(|(bits, rows, cols)| {
        let max = ((1u32 << bits) - 1) as u8;
        (Just(bits), Just(rows), Just(cols), prop::collection::vec(0..=max, rows * cols))
    })
}

fn pack(codes: &[u8], rows: usize, cols: usize, bits: u32) -> Vec<u8> {
    let mut out = vec![0xAAu8; packed_len(rows as u64, cols as u64, bits).unwrap() as usize];
    pack_rows(codes, rows, cols, bits, &mut out).unwrap();
    out
}

/// Reference bit-by-bit packer, written straight from the rule above.
fn reference_pack(codes: &[u8], rows: usize, cols: usize, bits: u32) -> Vec<u8> {
    let rb = (cols * bits as usize).div_ceil(32) * 4;
    let mut out = vec![0u8; rows * rb];
    for r in 0..rows {
        for j in 0..cols {
            let code = codes[r * cols + j];
            for k in 0..bits as usize {
                if (code >> k) & 1 == 1 {
                    let i = j * bits as usize + k;
                    out[r * rb + i / 8] |= 1 << (i % 8);
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip((bits, rows, cols, codes) in matrix()) {
        let packed = pack(&codes, rows, cols, bits);
        prop_assert_eq!(packed.len() as u64, packed_len(rows as u64, cols as u64, bits).unwrap());
        prop_assert_eq!(packed.len() as u64, rows as u64 * row_bytes(cols as u64, bits).unwrap());
        prop_assert_eq!(row_bytes(cols as u64, bits).unwrap(), (cols as u64 * bits as u64).div_ceil(32) * 4);

        // The fast path agrees with a bit-by-bit packer (this also pins padding to zero).
        prop_assert_eq!(&packed, &reference_pack(&codes, rows, cols, bits));

        let mut back = vec![0xFFu8; rows * cols];
        unpack_rows(&packed, rows, cols, bits, &mut back).unwrap();
        prop_assert_eq!(&back, &codes);
    }

    #[test]
    fn word_reader_and_padding((bits, rows, cols, codes) in matrix()) {
        let packed = pack(&codes, rows, cols, bits);
        let rb = row_bytes(cols as u64, bits).unwrap() as usize;
        prop_assert_eq!(rb % 4, 0);
        for r in 0..rows {
            let row = &packed[r * rb..(r + 1) * rb];
            for j in 0..cols {
                prop_assert_eq!(code_at(row, bits, j), codes[r * cols + j], "row {} code {}", r, j);
            }
            // Every stream bit past the last code, up to the word boundary, is zero.
            let used = cols * bits as usize;
            for i in used..rb * 8 {
                prop_assert_eq!((row[i / 8] >> (i % 8)) & 1, 0, "row {} padding bit {}", r, i);
            }
        }
    }

    #[test]
    fn oversized_code_is_rejected(
        (bits, rows, cols, mut codes) in matrix().prop_filter("need a code and bits < 8", |m| !m.3.is_empty() && m.0 < 8),
        pos in any::<prop::sample::Index>(),
        extra in 1u16..256,
    ) {
        let i = pos.index(codes.len());
        // Some value in 2^bits..=255.
        codes[i] = ((1u16 << bits) + (extra % (256 - (1u16 << bits)))) as u8;
        let mut out = vec![0u8; packed_len(rows as u64, cols as u64, bits).unwrap() as usize];
        let err = pack_rows(&codes, rows, cols, bits, &mut out).unwrap_err();
        prop_assert!(matches!(err, Error::InvalidArgument(_)), "{:?}", err);
        prop_assert!(err.to_string().contains(&format!("index {i}")), "{}", err);
    }

    #[test]
    fn wrong_buffer_sizes_are_rejected(
        (bits, rows, cols, codes) in matrix().prop_filter("non-empty", |m| m.1 > 0 && m.2 > 0),
        delta in prop_oneof![Just(-1i64), Just(1i64), 2i64..64],
    ) {
        let plen = packed_len(rows as u64, cols as u64, bits).unwrap() as usize;
        let bad_plen = (plen as i64 + delta).max(0) as usize;
        prop_assume!(bad_plen != plen);
        let bad_clen = (codes.len() as i64 + delta).max(0) as usize;
        prop_assume!(bad_clen != codes.len());

        // pack: output too small / too large.
        let mut out = vec![0u8; bad_plen];
        let e = pack_rows(&codes, rows, cols, bits, &mut out).unwrap_err();
        prop_assert!(matches!(e, Error::InvalidArgument(_)), "{:?}", e);
        // pack: wrong number of codes.
        let mut out = vec![0u8; plen];
        let e = pack_rows(&vec![0u8; bad_clen], rows, cols, bits, &mut out).unwrap_err();
        prop_assert!(matches!(e, Error::InvalidArgument(_)), "{:?}", e);
        // unpack: wrong packed size.
        let mut back = vec![0u8; codes.len()];
        let e = unpack_rows(&vec![0u8; bad_plen], rows, cols, bits, &mut back).unwrap_err();
        prop_assert!(matches!(e, Error::InvalidArgument(_)), "{:?}", e);
        // unpack: wrong output size.
        let mut back = vec![0u8; bad_clen];
        let e = unpack_rows(&vec![0u8; plen], rows, cols, bits, &mut back).unwrap_err();
        prop_assert!(matches!(e, Error::InvalidArgument(_)), "{:?}", e);
    }
}

#[test]
fn unsupported_bit_widths_are_rejected() {
    for bits in [0u32, 5, 6, 7, 9, 16, 32] {
        let mut out = vec![0u8; 64];
        let e = pack_rows(&[0u8; 4], 1, 4, bits, &mut out).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "bits {bits}: {e:?}");
        let mut back = [0u8; 4];
        let e = unpack_rows(&[0u8; 4], 1, 4, bits, &mut back).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "bits {bits}: {e:?}");
    }
}

#[test]
fn overflowing_dimensions_are_rejected_not_panicking() {
    for bits in BITS {
        let mut out = [0u8; 0];
        assert!(pack_rows(&[], usize::MAX, 2, bits, &mut out).is_err());
        let mut back = [0u8; 0];
        assert!(unpack_rows(&[], usize::MAX, 2, bits, &mut back).is_err());
    }
    assert_eq!(packed_len(u64::MAX, 1, 8), None);
    assert_eq!(row_bytes(u64::MAX, 3), None);
}

/// Golden bytes, hand-computed.
#[test]
fn golden_bytes() {
    // 1 bit, two rows of 9 codes. 9 bits per row -> 1 word (4 bytes) per row.
    //   row 0: [1,0,1,1,0,0,0,1, 1] -> byte0 bits 0,2,3,7 = 0b1000_1101 = 0x8D, byte1 bit 0 = 0x01
    //   row 1: [0,1,0,0,0,0,0,0, 0] -> byte0 bit 1 = 0x02
    let codes = [1, 0, 1, 1, 0, 0, 0, 1, 1, /**/ 0, 1, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(pack(&codes, 2, 9, 1), [0x8D, 0x01, 0, 0, /**/ 0x02, 0, 0, 0]);

    // 2 bits, [3,0,1,2,1]: 10 bits -> 1 word.
    //   byte0 = 3 | 0<<2 | 1<<4 | 2<<6 = 0x03 + 0x10 + 0x80 = 0x93, byte1 = 1
    assert_eq!(pack(&[3, 0, 1, 2, 1], 1, 5, 2), [0x93, 0x01, 0, 0]);

    // 3 bits, [1,2,3,4,5,6,7,0,1,2,3]: 33 bits -> 2 words (8 bytes).
    //   codes 0..8 fill 24 bits: 1 | 2<<3 | 3<<6 | 4<<9 | 5<<12 | 6<<15 | 7<<18 | 0<<21
    //     = 0x1 + 0x10 + 0xC0 + 0x800 + 0x5000 + 0x30000 + 0x1C0000 = 0x1F58D1 -> D1 58 1F
    //   code 8 (=1) at bit 24, code 9 (=2) at bits 27..30 -> bit 28, code 10 (=3) at bits 30..33
    //     -> bits 30, 31 set, bit 32 clear: byte3 = 0x01 + 0x10 + 0xC0 = 0xD1, byte4 = 0
    let codes = [1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3];
    let packed = pack(&codes, 1, 11, 3);
    assert_eq!(packed, [0xD1, 0x58, 0x1F, 0xD1, 0x00, 0x00, 0x00, 0x00]);
    // Code 10 straddles words 0 and 1: read it the GPU way.
    assert_eq!(code_at(&packed, 3, 10), 3);

    // 3 bits, eleven 7s: 33 one-bits -> FF FF FF FF 01 00 00 00 (code 10's top bit is bit 0 of word 1).
    let packed = pack(&[7; 11], 1, 11, 3);
    assert_eq!(packed, [0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00, 0x00, 0x00]);
    assert_eq!(code_at(&packed, 3, 10), 7);
    // Code 21 (bits 63..66) also straddles: 22 codes of pattern [.., 21 = 0b101 ..].
    let mut codes = [0u8; 22];
    codes[21] = 0b101;
    //   bit 63 -> byte 7 bit 7 = 0x80; bit 65 -> byte 8 bit 1 = 0x02; 66 bits -> 3 words.
    let packed = pack(&codes, 1, 22, 3);
    assert_eq!(packed, [0, 0, 0, 0, 0, 0, 0, 0x80, 0x02, 0, 0, 0]);
    assert_eq!(code_at(&packed, 3, 21), 5);

    // 4 bits, [1..=9]: 36 bits -> 2 words. Low nibble first: 0x21 0x43 0x65 0x87 0x09.
    assert_eq!(pack(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 1, 9, 4), [0x21, 0x43, 0x65, 0x87, 0x09, 0, 0, 0]);

    // 8 bits, [1,2,3,250,255]: bytes as-is, padded to 8.
    assert_eq!(pack(&[1, 2, 3, 250, 255], 1, 5, 8), [1, 2, 3, 0xFA, 0xFF, 0, 0, 0]);

    // The two examples of docs/FORMAT.md §3.4.
    //   b = 3, [0,1,2,3,4,5,6,7,1]: 0 | 1<<3 | 2<<6 | 3<<9 | 4<<12 | 5<<15 | 6<<18 | 7<<21 = 0xFAC688,
    //   then code 8 (=1) at bit 24 -> 88 C6 FA 01 (27 bits used, one word).
    assert_eq!(pack(&[0, 1, 2, 3, 4, 5, 6, 7, 1], 1, 9, 3), [0x88, 0xC6, 0xFA, 0x01]);
    //   b = 1, [1,0,1,1,0,0,0,0,1] -> bits 0, 2, 3 = 0x0D, then bit 8 -> 0D 01 00 00.
    assert_eq!(pack(&[1, 0, 1, 1, 0, 0, 0, 0, 1], 1, 9, 1), [0x0D, 0x01, 0x00, 0x00]);

    // Zero columns: rows occupy nothing.
    assert_eq!(pack(&[], 3, 0, 4), Vec::<u8>::new());
}

/// Every golden vector unpacks back to its codes through both readers.
#[test]
fn golden_bytes_unpack() {
    let cases: [(u32, &[u8], &[u8]); 4] = [
        (1, &[0x8D, 0x01, 0, 0], &[1, 0, 1, 1, 0, 0, 0, 1, 1]),
        (2, &[0x93, 0x01, 0, 0], &[3, 0, 1, 2, 1]),
        (3, &[0xD1, 0x58, 0x1F, 0xD1, 0, 0, 0, 0], &[1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]),
        (4, &[0x21, 0x43, 0x65, 0x87, 0x09, 0, 0, 0], &[1, 2, 3, 4, 5, 6, 7, 8, 9]),
    ];
    for (bits, packed, codes) in cases {
        let mut out = vec![0u8; codes.len()];
        unpack_rows(packed, 1, codes.len(), bits, &mut out).unwrap();
        assert_eq!(out, codes, "bits {bits}");
        for (j, &c) in codes.iter().enumerate() {
            assert_eq!(code_at(packed, bits, j), c, "bits {bits} code {j}");
        }
    }
}
