//! The `.dpk` delta file format, version 1 (normative text: `docs/FORMAT.md`).
//!
//! A `.dpk` file holds one compressed fine-tune delta: a fixed 32-byte prelude, a JSON manifest,
//! then tensor data whose segments start on 4096-byte boundaries so that a mapped region can be
//! page-locked and copied to a GPU without staging. This crate knows nothing of Python; the
//! bindings (`rust/python`) and the C ABI (`rust/capi`) are thin layers over it.
//!
//! Every layout constant lives in [`spec`] and is exported to Python and C from there.

pub mod encoding;
pub mod error;
pub mod manifest;
pub mod pack;
pub mod quant;
pub mod reader;
pub mod spec;
pub mod writer;

pub use encoding::{Encoding, EncodingKind};
pub use error::{Error, Result};
pub use manifest::{
    BaseRef, BaseTensorFingerprint, DeltaEntry, DeltaForm, DeltaOp, LowRankBlock, Manifest,
    ManifestHeader, ModelRef, Producer, QuantParams, ScaleGranularity, Segment, TensorEntry,
    ZeroPoint,
};
pub use reader::{DpkFile, OpenOptions, TensorView, VerifyMode};
pub use writer::DpkWriter;

/// xxh3-64 of a byte slice, the one hash used for segment checksums and base fingerprints.
pub fn xxh3_64(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Checksums are written in manifests as 16 lowercase hex digits.
pub fn hash_hex(h: u64) -> String {
    format!("{h:016x}")
}
