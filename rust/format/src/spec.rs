//! Layout constants of format version 1. The single source of truth: Python reads them through
//! `deltapack._core`, C through `deltapack.h`, and `docs/FORMAT.md` cites them.

/// First 8 bytes of every file. The high-bit first byte and CR LF / SUB / LF catch text-mode
/// transfers and truncation at the first byte the way PNG's signature does.
pub const MAGIC: [u8; 8] = *b"\x89DPK\r\n\x1a\n";
/// Structural format version; bumped only when the byte layout changes.
pub const FORMAT_VERSION: u32 = 1;
/// Prelude: magic (8) + version u32 (4) + flags u32 (4) + manifest length u64 (8) + manifest xxh3 u64 (8).
pub const PRELUDE_LEN: u64 = 32;
/// The data section and the first segment of every tensor start on this boundary (a page on
/// x86-64 and most ARM64 kernels; the unit cudaHostRegister pins).
pub const DATA_ALIGN: u64 = 4096;
/// Every other segment starts on this boundary (a cache line; enough for 128-bit GPU loads).
pub const SEGMENT_ALIGN: u64 = 64;
/// Manifests larger than this are refused before any allocation (safetensors caps its header
/// at 100 MB; a 70B model's manifest with per-tensor fingerprints is a few MB).
pub const MAX_MANIFEST_LEN: u64 = 256 * 1024 * 1024;
/// Packed rows are padded to a whole number of these words.
pub const PACK_WORD_BITS: u64 = 32;
/// At most this many dimensions per tensor.
pub const MAX_NDIM: usize = 8;
/// The manifest's `format` field.
pub const FORMAT_NAME: &str = "deltapack";
/// Hash used for checksums and fingerprints.
pub const HASH_ALGO: &str = "xxh3-64";

/// Round `x` up to a multiple of `align` (a power of two), or `None` on overflow.
pub fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}
