//! Corrupt copies of a valid file: every failure must be the right typed error, never a panic.
//!
//! The valid file (`common::write_valid`) holds, in this order:
//!   raw    f32 [3, 5]      data    @ 0     (60 B)
//!   quant  q4  [4, 33]     codes   @ 4096  (80 B), scales @ 4224 (80 B), zeros @ 4352 (40 B)
//!   sparse s24q2 [2, 16]   codes   @ 8192  (8 B),  indices @ 8256 (8 B), scales @ 8320 (4 B)
//!   last   f16 [7]         data    @ 12288 (14 B)  <- ends the file

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::{edit_manifest, manifest_value, replace_manifest, split, tensor, tensor_mut, write_valid, VALID_TENSORS};
use deltapack_format::encoding::ParamDType;
use deltapack_format::spec::{FORMAT_VERSION, MAX_MANIFEST_LEN, PRELUDE_LEN};
use deltapack_format::{
    xxh3_64, DpkFile, DpkWriter, Error, OpenOptions, QuantParams, ScaleGranularity, VerifyMode, ZeroPoint,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const MODES: [VerifyMode; 3] = [VerifyMode::None, VerifyMode::Lazy, VerifyMode::Full];

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    bytes: Vec<u8>,
    /// Every corrupted copy gets its own file, so no open mapping ever sees its file rewritten.
    n: AtomicUsize,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("valid.dpk");
    write_valid(&path, 42);
    let bytes = std::fs::read(&path).unwrap();
    Fixture { dir: dir.path().to_path_buf(), _dir: dir, bytes, n: AtomicUsize::new(0) }
}

impl Fixture {
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    /// Open a corrupted copy in `mode`.
    fn open(&self, bytes: &[u8], mode: VerifyMode) -> Result<DpkFile, Error> {
        let name = format!("bad{}.dpk", self.n.fetch_add(1, Ordering::Relaxed));
        DpkFile::open(self.write(&name, bytes), OpenOptions { verify: mode })
    }
    /// Open in every mode; all must fail the same way (structural faults do not depend on mode).
    fn open_err(&self, bytes: &[u8]) -> Error {
        let mut errs: Vec<Error> = MODES.iter().map(|&m| self.open(bytes, m).err().expect("open must fail")).collect();
        let codes: Vec<i32> = errs.iter().map(Error::code).collect();
        assert!(codes.iter().all(|&c| c == codes[0]), "modes disagree: {errs:?}");
        errs.remove(0)
    }
    fn data_start(&self) -> usize {
        let mlen = u64::from_le_bytes(self.bytes[16..24].try_into().unwrap());
        common::data_start_for(mlen) as usize
    }
    fn manifest_len(&self) -> usize {
        u64::from_le_bytes(self.bytes[16..24].try_into().unwrap()) as usize
    }
}

fn assert_layout(e: &Error, tensor: &str, segment: &str, detail: &str) {
    match e {
        Error::Layout { tensor: t, segment: s, detail: d } => {
            assert_eq!((t.as_str(), s.as_str()), (tensor, segment), "{e}");
            assert!(d.contains(detail), "expected '{detail}' in: {e}");
        }
        other => panic!("expected Layout({tensor}/{segment}), got {other:?}"),
    }
}

fn assert_invalid(e: &Error, needle: &str) {
    match e {
        Error::InvalidManifest(m) => assert!(m.contains(needle), "expected '{needle}' in: {m}"),
        other => panic!("expected InvalidManifest containing '{needle}', got {other:?}"),
    }
}

#[test]
fn the_fixture_is_valid_and_helpers_preserve_it() {
    let fx = fixture();
    for m in MODES {
        let f = fx.open(&fx.bytes, m).unwrap();
        assert_eq!(f.len(), VALID_TENSORS.len());
        for (name, roles) in VALID_TENSORS {
            let v = f.tensor(name).unwrap();
            assert_eq!(v.segments.iter().map(|(r, _)| *r).collect::<Vec<_>>(), roles);
        }
    }
    // The last segment ends exactly at the end of the file (the truncation cases rely on it).
    let v = manifest_value(&fx.bytes);
    // The layout the module comment (and the truncation cases) describe.
    for (t, role, off, len) in [
        ("raw", "data", 0, 60),
        ("quant", "codes", 4096, 80),
        ("quant", "scales", 4224, 80),
        ("quant", "zeros", 4352, 40),
        ("sparse", "codes", 8192, 8),
        ("sparse", "indices", 8256, 8),
        ("sparse", "scales", 8320, 4),
        ("last", "data", 12288, 14),
    ] {
        let s = &tensor(&v, t)["segments"][role];
        assert_eq!((s["offset"].as_u64().unwrap(), s["length"].as_u64().unwrap()), (off, len), "{t}/{role}");
    }
    let last = &tensor(&v, "last")["segments"]["data"];
    let end = fx.data_start() as u64 + last["offset"].as_u64().unwrap() + last["length"].as_u64().unwrap();
    assert_eq!(end, fx.bytes.len() as u64);
    // Re-serializing the manifest through the helpers gives a file that still opens, including
    // with a longer (pretty-printed) manifest that moves data_start.
    assert!(fx.open(&edit_manifest(&fx.bytes, |_| {}), VerifyMode::Full).is_ok());
    let pretty = serde_json::to_vec_pretty(&v).unwrap();
    let moved = replace_manifest(&fx.bytes, &pretty);
    let f = fx.open(&moved, VerifyMode::Full).unwrap();
    assert_eq!(f.len(), 4);
    // Padding a manifest with trailing whitespace (same data_start) is valid JSON too.
    let mut padded = split(&fx.bytes).manifest;
    padded.extend_from_slice(b"   \n");
    assert!(fx.open(&replace_manifest(&fx.bytes, &padded), VerifyMode::Full).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Prelude

#[test]
fn truncation() {
    let fx = fixture();
    let ds = fx.data_start();
    let n = fx.bytes.len();
    let mlen = fx.manifest_len();
    // (length, expected error). Before the data section: Truncated. Inside it: the manifest is
    // intact, so the cut shows up as a segment lying outside the (shorter) data section.
    enum Want {
        Truncated(u64),
        Layout(&'static str, &'static str),
    }
    let cases = [
        (0, Want::Truncated(PRELUDE_LEN)),
        (1, Want::Truncated(PRELUDE_LEN)),
        (31, Want::Truncated(PRELUDE_LEN)),
        (32, Want::Truncated(ds as u64)),
        (32 + mlen / 2, Want::Truncated(ds as u64)),
        (ds - 1, Want::Truncated(ds as u64)),
        (ds, Want::Layout("raw", "data")),
        (ds + 30, Want::Layout("raw", "data")),
        (ds + 4096 + 100, Want::Layout("quant", "scales")), // mid-data
        (ds + 8196, Want::Layout("sparse", "codes")),
        (n - 1, Want::Layout("last", "data")), // last byte removed
    ];
    // Manifest complete, padding missing (this manifest does not end on a page boundary).
    assert!(32 + mlen < ds);
    assert!(matches!(fx.open_err(&fx.bytes[..32 + mlen]), Error::Truncated { .. }));
    for (len, want) in cases {
        let e = fx.open_err(&fx.bytes[..len]);
        match want {
            Want::Truncated(needed) => match e {
                Error::Truncated { needed: got, have, .. } => {
                    assert_eq!((got, have), (needed, len as u64), "length {len}: {e}");
                }
                other => panic!("length {len}: expected Truncated, got {other:?}"),
            },
            Want::Layout(t, s) => assert_layout(&e, t, s, "outside the data section"),
        }
    }
    // Every length before the data section is Truncated; none panics.
    for len in (0..ds).step_by(97) {
        assert!(matches!(fx.open_err(&fx.bytes[..len]), Error::Truncated { .. }), "length {len}");
    }
    for len in (ds..n).step_by(61) {
        assert!(matches!(fx.open_err(&fx.bytes[..len]), Error::Layout { .. }), "length {len}");
    }
}

#[test]
fn bad_magic() {
    let fx = fixture();
    for i in 0..8 {
        let mut b = fx.bytes.clone();
        b[i] ^= 0x20;
        match fx.open_err(&b) {
            Error::BadMagic { found } => assert_eq!(found, b[..8].to_vec()),
            other => panic!("byte {i}: {other:?}"),
        }
    }
    // A text-mode transfer turning CR LF into LF.
    let mut b = fx.bytes.clone();
    b.remove(5);
    assert!(matches!(fx.open_err(&b), Error::BadMagic { .. }));
    // Not a dpk at all: 40 bytes of JSON.
    assert!(matches!(fx.open_err(br#"{"format": "deltapack", "padding": 12345}"#), Error::BadMagic { .. }));
}

#[test]
fn bad_version_and_flags() {
    let fx = fixture();
    for v in [0u32, 2, FORMAT_VERSION + 1, u32::MAX] {
        let mut b = fx.bytes.clone();
        b[8..12].copy_from_slice(&v.to_le_bytes());
        match fx.open_err(&b) {
            Error::UnsupportedVersion { found, known } => assert_eq!((found, known), (v, FORMAT_VERSION)),
            other => panic!("version {v}: {other:?}"),
        }
    }
    for flags in [1u32, 2, 0x8000_0000, u32::MAX] {
        let mut b = fx.bytes.clone();
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        match fx.open_err(&b) {
            Error::UnsupportedFlags(f) => assert_eq!(f, flags),
            other => panic!("flags {flags:#x}: {other:?}"),
        }
    }
}

#[test]
fn manifest_too_large() {
    let fx = fixture();
    for len in [u64::MAX, MAX_MANIFEST_LEN + 1, u64::MAX - 4095, 1 << 40] {
        let mut b = fx.bytes.clone();
        b[16..24].copy_from_slice(&len.to_le_bytes());
        match fx.open_err(&b) {
            Error::ManifestTooLarge { len: l, cap } => assert_eq!((l, cap), (len, MAX_MANIFEST_LEN)),
            other => panic!("len {len}: {other:?}"),
        }
    }
    // Exactly at the cap is allowed by the prelude, but this file is far too short for it.
    let mut b = fx.bytes.clone();
    b[16..24].copy_from_slice(&MAX_MANIFEST_LEN.to_le_bytes());
    assert!(matches!(fx.open_err(&b), Error::Truncated { .. }));
}

#[test]
fn manifest_checksum() {
    let fx = fixture();
    let stored = u64::from_le_bytes(fx.bytes[24..32].try_into().unwrap());
    let mlen = fx.manifest_len();
    // Flip bytes all over the manifest (and one bit in each byte of the stored hash).
    let positions: Vec<usize> = (32..32 + mlen).step_by(13).chain([32, 32 + mlen - 1]).chain(24..32).collect();
    for pos in positions {
        let mut b = fx.bytes.clone();
        b[pos] ^= 0x01;
        match fx.open_err(&b) {
            Error::ManifestChecksum { stored: s, computed } => {
                assert_eq!(s, u64::from_le_bytes(b[24..32].try_into().unwrap()));
                assert_eq!(computed, xxh3_64(&b[32..32 + mlen]));
                assert_ne!(s, computed);
                if pos >= 32 {
                    assert_eq!(s, stored);
                }
            }
            other => panic!("byte {pos}: {other:?}"),
        }
    }
    // A manifest length one short (same data_start) hashes different bytes.
    let mut b = fx.bytes.clone();
    b[16..24].copy_from_slice(&(mlen as u64 - 1).to_le_bytes());
    assert!(matches!(fx.open_err(&b), Error::ManifestChecksum { .. }));
}

// ---------------------------------------------------------------------------------------------
// Manifest contents (re-checksummed so the structural checks are what fails)

fn edit(fx: &Fixture, f: impl FnOnce(&mut Value)) -> Error {
    fx.open_err(&edit_manifest(&fx.bytes, f))
}

fn seg<'a>(v: &'a mut Value, t: &str, role: &str) -> &'a mut Value {
    &mut tensor_mut(v, t)["segments"][role]
}

#[test]
fn unknown_encoding() {
    let fx = fixture();
    for id in [0u32, 8, 16, 21, 33, 99, u32::MAX] {
        match edit(&fx, |v| tensor_mut(v, "quant")["encoding"] = json!(id)) {
            Error::UnknownEncoding { tensor, id: got } => assert_eq!((tensor.as_str(), got), ("quant", id)),
            other => panic!("id {id}: {other:?}"),
        }
    }
    // A known id whose informative name disagrees.
    assert_invalid(&edit(&fx, |v| tensor_mut(v, "raw")["encoding_name"] = json!("f16")), "disagrees");
}

#[test]
fn segment_out_of_range() {
    let fx = fixture();
    let e = edit(&fx, |v| seg(v, "last", "data")["offset"] = json!(16384));
    assert_layout(&e, "last", "data", "outside the data section");
    let e = edit(&fx, |v| seg(v, "quant", "zeros")["offset"] = json!(12288 + 64 * 100));
    assert_layout(&e, "quant", "zeros", "outside the data section");
    // Far out, no overflow yet.
    let e = edit(&fx, |v| seg(v, "last", "data")["offset"] = json!(u64::MAX - 4095));
    assert_layout(&e, "last", "data", "outside the data section");
    // offset + length overflows u64 (a 64-aligned offset 64 bytes from the top, 80 bytes long).
    let e = edit(&fx, |v| seg(v, "quant", "scales")["offset"] = json!(u64::MAX - 63));
    assert_layout(&e, "quant", "scales", "overflows");
    // Offsets that do not fit u64 at all are a JSON (type) error.
    assert!(matches!(edit(&fx, |v| seg(v, "last", "data")["offset"] = json!(-4096)), Error::ManifestJson(_)));
    assert!(matches!(edit(&fx, |v| seg(v, "last", "data")["offset"] = json!(1e30)), Error::ManifestJson(_)));
}

#[test]
fn overlapping_segments() {
    let fx = fixture();
    // Two tensors sharing offset 0.
    match edit(&fx, |v| seg(v, "last", "data")["offset"] = json!(0)) {
        Error::Overlap { first, second, first_start, .. } => {
            let mut pair = [first, second];
            pair.sort();
            assert_eq!(pair, ["last/data".to_owned(), "raw/data".to_owned()]);
            assert_eq!(first_start, 0);
        }
        other => panic!("{other:?}"),
    }
    // A segment inside another segment of the same tensor: scales over codes [4096, 4176).
    match edit(&fx, |v| seg(v, "quant", "scales")["offset"] = json!(4160)) {
        Error::Overlap { first, second, .. } => assert_eq!((first.as_str(), second.as_str()), ("quant/codes", "quant/scales")),
        other => panic!("{other:?}"),
    }
    // One tensor grown across the next one's start: raw [1, 1030] f32 = [0, 4120) over quant/codes.
    let grow = |v: &mut Value| {
        tensor_mut(v, "raw")["shape"] = json!([1, 1030]);
        seg(v, "raw", "data")["length"] = json!(4120);
    };
    assert!(matches!(edit(&fx, grow), Error::Overlap { .. }));
}

/// An empty segment sorted between two overlapping ones must not hide the overlap.
#[test]
fn overlap_hidden_behind_an_empty_segment() {
    let fx = fixture();
    let e = edit(&fx, |v| {
        tensor_mut(v, "raw")["shape"] = json!([1, 1030]);
        seg(v, "raw", "data")["length"] = json!(4120);
        let mut empty = tensor(v, "last").clone();
        empty["name"] = json!("empty");
        empty["shape"] = json!([0]);
        empty["segments"]["data"] = json!({"offset": 4096, "length": 0, "xxh3": format!("{:016x}", xxh3_64(b""))});
        v["tensors"].as_array_mut().unwrap().push(empty);
    });
    match e {
        Error::Overlap { first, second, .. } => assert_eq!((first.as_str(), second.as_str()), ("raw/data", "quant/codes")),
        other => panic!("expected Overlap, got {other:?}"),
    }
    // Empty segments themselves may sit anywhere (aligned): alone they overlap nothing.
    let f = fx
        .open(
            &edit_manifest(&fx.bytes, |v| {
                let mut empty = tensor(v, "last").clone();
                empty["name"] = json!("empty");
                empty["shape"] = json!([2, 0]);
                empty["segments"]["data"] = json!({"offset": 4096, "length": 0, "xxh3": format!("{:016x}", xxh3_64(b""))});
                v["tensors"].as_array_mut().unwrap().push(empty);
            }),
            VerifyMode::Full,
        )
        .unwrap();
    assert!(f.tensor("empty").unwrap().segment("data").unwrap().is_empty());
}

#[test]
fn misaligned_offsets() {
    let fx = fixture();
    // First segment of a tensor: 4096.
    let e = edit(&fx, |v| seg(v, "last", "data")["offset"] = json!(12288 + 64));
    assert_layout(&e, "last", "data", "not a multiple of 4096");
    let e = edit(&fx, |v| seg(v, "quant", "codes")["offset"] = json!(4096 + 2048));
    assert_layout(&e, "quant", "codes", "not a multiple of 4096");
    // Other segments: 64.
    let e = edit(&fx, |v| seg(v, "quant", "scales")["offset"] = json!(4224 + 1));
    assert_layout(&e, "quant", "scales", "not a multiple of 64");
    let e = edit(&fx, |v| seg(v, "sparse", "indices")["offset"] = json!(8256 + 32));
    assert_layout(&e, "sparse", "indices", "not a multiple of 64");
}

#[test]
fn wrong_lengths_and_segment_sets() {
    let fx = fixture();
    for (t, role, delta) in [("raw", "data", 4i64), ("raw", "data", -1), ("quant", "codes", 4), ("quant", "zeros", -2), ("sparse", "indices", 1)] {
        let e = edit(&fx, |v| {
            let s = seg(v, t, role);
            s["length"] = json!((s["length"].as_u64().unwrap() as i64 + delta) as u64);
        });
        assert_layout(&e, t, role, "the shape and encoding need");
    }
    // Shape changed but lengths kept.
    let e = edit(&fx, |v| tensor_mut(v, "raw")["shape"] = json!([3, 6]));
    assert_layout(&e, "raw", "data", "the shape and encoding need");
    // Missing and extra segments.
    let e = edit(&fx, |v| {
        tensor_mut(v, "quant")["segments"].as_object_mut().unwrap().remove("zeros");
    });
    assert_layout(&e, "quant", "*", "needs segments");
    let e = edit(&fx, |v| {
        let extra = seg(v, "raw", "data").clone();
        tensor_mut(v, "raw")["segments"]["extra"] = extra;
    });
    assert_layout(&e, "raw", "*", "needs segments");
    // Stored zero point turned constant: the zeros segment is now one too many.
    let e = edit(&fx, |v| tensor_mut(v, "quant")["quant"]["zero"] = json!({"kind": "constant", "value": 3.0}));
    assert_layout(&e, "quant", "*", "needs segments");
}

#[test]
fn duplicate_tensor_name() {
    let fx = fixture();
    let e = edit(&fx, |v| v["tensors"][3]["name"] = json!("raw"));
    assert_invalid(&e, "'raw' appears twice");
    assert_invalid(&edit(&fx, |v| v["tensors"][0]["name"] = json!("")), "empty name");
}

#[test]
fn invalid_json() {
    let fx = fixture();
    for m in [&b"{not json"[..], b"", b"[]", b"null", b"{}", b"\xff\xfe{}", &split(&fx.bytes).manifest[..100]] {
        match fx.open_err(&replace_manifest(&fx.bytes, m)) {
            Error::ManifestJson(_) => {}
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(m)),
        }
    }
    // Valid JSON, wrong shape of document.
    assert!(matches!(edit(&fx, |v| { v.as_object_mut().unwrap().remove("tensors"); }), Error::ManifestJson(_)));
    assert!(matches!(edit(&fx, |v| v["tensors"] = json!({"raw": 1})), Error::ManifestJson(_)));
    assert!(matches!(edit(&fx, |v| tensor_mut(v, "raw")["shape"] = json!([3, "5"])), Error::ManifestJson(_)));
    assert!(matches!(edit(&fx, |v| tensor_mut(v, "quant")["quant"]["granularity"] = json!("column")), Error::ManifestJson(_)));
    assert!(matches!(edit(&fx, |v| tensor_mut(v, "quant")["quant"]["scale_dtype"] = json!("f64")), Error::ManifestJson(_)));
}

#[test]
fn bad_checksum_hex() {
    let fx = fixture();
    for bad in ["XYZ", "", "0123456789abcde", "0123456789abcdef0", "0123456789ABCDEF", "0123456789abcdeg", " 123456789abcdef"] {
        let e = edit(&fx, |v| seg(v, "sparse", "scales")["xxh3"] = json!(bad));
        assert_layout(&e, "sparse", "scales", "not 16 lowercase hex digits");
    }
    // Base fingerprints are checked too.
    let e = edit(&fx, |v| v["base"]["tensors"]["w"] = json!({"dtype": "bf16", "shape": [2], "xxh3": "NOPE"}));
    assert_invalid(&e, "'w'");
    assert_invalid(&edit(&fx, |v| v["base"]["hash"] = json!("sha256")), "sha256");
}

#[test]
fn unknown_format_version_and_name() {
    let fx = fixture();
    for ver in [0u32, 2, 1000] {
        match edit(&fx, |v| v["format_version"] = json!(ver)) {
            Error::UnsupportedVersion { found, known } => assert_eq!((found, known), (ver, FORMAT_VERSION)),
            other => panic!("{other:?}"),
        }
    }
    assert_invalid(&edit(&fx, |v| v["format"] = json!("safetensors")), "safetensors");
}

#[test]
fn huge_and_bad_shapes() {
    let fx = fixture();
    for shape in [json!([1u64 << 32, 1u64 << 32, 1]), json!([u64::MAX, 2]), json!([1u64 << 62, 4]), json!([1u64 << 40, 1u64 << 40, 0])] {
        let e = edit(&fx, |v| tensor_mut(v, "raw")["shape"] = shape.clone());
        assert_invalid(&e, "overflows");
    }
    assert_invalid(&edit(&fx, |v| tensor_mut(v, "raw")["shape"] = json!([1, 1, 1, 1, 1, 1, 1, 1, 1])), "dimensions");
    // 2:4 needs the last dim to be a multiple of 4.
    assert_invalid(&edit(&fx, |v| tensor_mut(v, "sparse")["shape"] = json!([4, 8, 2])), "multiple of 4");
}

fn qv(v: &mut Value) -> &mut Value {
    &mut tensor_mut(v, "quant")["quant"]
}

#[test]
fn bad_quant_params() {
    let fx = fixture();
    assert_invalid(&edit(&fx, |v| { tensor_mut(v, "quant").as_object_mut().unwrap().remove("quant"); }), "needs quant params");
    assert_invalid(&edit(&fx, |v| tensor_mut(v, "raw")["quant"] = json!({"granularity": "tensor", "scale_dtype": "f32", "zero": {"kind": "constant", "value": 0.0}})), "takes no quant params");
    assert_invalid(&edit(&fx, |v| qv(v)["group_size"] = json!(0)), "group_size > 0");
    assert_invalid(&edit(&fx, |v| { qv(v).as_object_mut().unwrap().remove("group_size"); }), "group_size > 0");
    assert_invalid(&edit(&fx, |v| qv(v)["scale_dtype"] = json!("u8")), "scale_dtype");
    assert_invalid(&edit(&fx, |v| tensor_mut(v, "sparse")["quant"]["group_size"] = json!(4)), "only allowed with granularity 'group'");
}

#[test]
fn bad_deltas() {
    let fx = fixture();
    let e = edit(&fx, |v| v["deltas"] = json!([{"target": "w", "form": "dense", "tensor": "missing"}]));
    assert_invalid(&e, "'missing'");
    let e = edit(&fx, |v| {
        v["base"]["tensors"]["w"] = json!({"dtype": "f32", "shape": [3, 4], "xxh3": "0000000000000000"});
        v["deltas"] = json!([{"target": "w", "form": "dense", "tensor": "raw"}]);
    });
    assert_invalid(&e, "base tensor has");
    let e = edit(&fx, |v| v["deltas"] = json!([{"target": "w", "form": "low_rank", "blocks": [{"u": "raw", "vt": "quant"}]}]));
    assert_invalid(&e, "expected [5, in]");
    let e = edit(&fx, |v| v["deltas"] = json!([{"target": "w", "form": "sideways", "tensor": "raw"}]));
    assert!(matches!(e, Error::ManifestJson(_)), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Segment checksums

#[test]
fn flipped_data_byte_is_a_checksum_error_for_that_tensor_only() {
    let fx = fixture();
    let ds = fx.data_start() as u64;
    let v = manifest_value(&fx.bytes);
    for (name, roles) in VALID_TENSORS {
        for role in roles {
            let s = &tensor(&v, name)["segments"][*role];
            let (off, len) = (s["offset"].as_u64().unwrap(), s["length"].as_u64().unwrap());
            for at in [0, len / 2, len - 1] {
                let mut b = fx.bytes.clone();
                b[(ds + off + at) as usize] ^= 0x10;
                let is_it = |e: &Error| matches!(e, Error::Checksum { tensor, segment, .. } if tensor == name && segment == role);

                // Lazy: open succeeds; only this tensor fails, on every access.
                let f = fx.open(&b, VerifyMode::Lazy).unwrap();
                for _ in 0..2 {
                    let e = f.tensor(name).err().expect("lazy access must verify");
                    assert!(is_it(&e), "{name}/{role}+{at}: {e:?}");
                    assert!(e.to_string().contains(name) && e.to_string().contains(role));
                }
                for (other, _) in VALID_TENSORS.iter().filter(|(o, _)| o != &name) {
                    let t = f.tensor(other).unwrap();
                    let mut out = vec![0f32; t.layout.numel as usize];
                    t.to_f32(&mut out).unwrap();
                }
                let all = f.check_all();
                assert_eq!(all.len(), 1);
                assert!(is_it(&all[0]));
                assert!(is_it(&f.verify_all().unwrap_err()));

                // Full: open fails with the same error.
                let e = fx.open(&b, VerifyMode::Full).err().expect("full verification must fail");
                assert!(is_it(&e), "{name}/{role}+{at}: {e:?}");

                // None: no verification at all.
                let f = fx.open(&b, VerifyMode::None).unwrap();
                let t = f.tensor(name).unwrap();
                assert_eq!(t.segment(role).unwrap()[at as usize], b[(ds + off + at) as usize]);
                let mut out = vec![0f32; t.layout.numel as usize];
                let r = t.to_f32(&mut out);
                // Corrupt 2:4 indices may be caught by dequantization itself; everything else decodes.
                if *role != "indices" {
                    r.unwrap();
                }
            }
        }
    }
}

#[test]
fn flipped_padding_byte_is_harmless() {
    let fx = fixture();
    let ds = fx.data_start();
    // Between raw/data [0, 60) and quant/codes at 4096: padding nobody checksums.
    let mut b = fx.bytes.clone();
    b[ds + 1000] ^= 0xFF;
    let f = fx.open(&b, VerifyMode::Full).unwrap();
    assert!(f.check_all().is_empty());
    // Same for the manifest padding before data_start.
    let mut b = fx.bytes.clone();
    b[ds - 1] ^= 0xFF;
    assert!(fx.open(&b, VerifyMode::Full).is_ok());
}

#[test]
fn non_increasing_sparse_indices_in_a_file_are_a_layout_error() {
    // A writer refuses these, but a crafted file (checksums recomputed) must fail cleanly.
    let fx = fixture();
    let mut p = split(&fx.bytes);
    let mut v: Value = serde_json::from_slice(&p.manifest).unwrap();
    let s = &tensor(&v, "sparse")["segments"]["indices"];
    let off = s["offset"].as_u64().unwrap() as usize;
    // Pair (0, 3) = 0b11_00 in the low nibble; make it (3, 3).
    p.data[off] = (p.data[off] & 0xF0) | 0b1111;
    let h = format!("{:016x}", xxh3_64(&p.data[off..off + s["length"].as_u64().unwrap() as usize]));
    seg(&mut v, "sparse", "indices")["xxh3"] = json!(h);
    p.manifest = serde_json::to_vec(&v).unwrap();
    let f = fx.open(&common::assemble(&p), VerifyMode::Full).unwrap();
    let t = f.tensor("sparse").unwrap();
    let mut out = vec![0f32; 32];
    match t.to_f32(&mut out).unwrap_err() {
        Error::Layout { tensor, segment, .. } => assert_eq!((tensor.as_str(), segment.as_str()), ("sparse", "indices")),
        other => panic!("{other:?}"),
    }
}

/// Valid zero-element tensors whose other dims are huge must not iterate over those dims.
#[test]
fn zero_column_tensor_with_huge_rows_reads_promptly() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zero.dpk");
        let mut w = DpkWriter::create(&path).unwrap();
        let qp = QuantParams {
            granularity: ScaleGranularity::Tensor,
            group_size: None,
            scale_dtype: ParamDType::F32,
            zero: ZeroPoint::Constant { value: 0.0 },
        };
        w.add_quantized("q", &[1 << 62, 0], 4, &[], qp, &1f32.to_le_bytes(), None, BTreeMap::new()).unwrap();
        w.add_sparse24("s", &[1 << 62, 0], 4, &[], &[], qp, &1f32.to_le_bytes(), None, BTreeMap::new()).unwrap();
        w.finish(common::header()).unwrap();
        let f = DpkFile::open(&path, OpenOptions { verify: VerifyMode::Full }).unwrap();
        let r: Vec<_> = ["q", "s"]
            .iter()
            .map(|n| {
                let t = f.tensor(n).unwrap();
                assert_eq!(t.layout.numel, 0);
                t.to_f32(&mut []).map_err(|e| e.to_string())?;
                t.unpack_codes(&mut []).map_err(|e| e.to_string())
            })
            .collect();
        let _ = tx.send(r);
    });
    let r = rx.recv_timeout(Duration::from_secs(10)).expect("reading a zero-element tensor did not finish in 10 s");
    for x in r {
        x.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz: nothing panics

/// Open in every mode and touch everything a caller could; errors are fine, panics are not.
fn exercise(path: &Path) {
    for mode in MODES {
        let Ok(f) = DpkFile::open(path, OpenOptions { verify: mode }) else { continue };
        let _ = f.check_all();
        let _ = f.check_base(|_| None);
        for i in 0..f.len() {
            let Ok(t) = f.tensor_at(i) else { continue };
            // Bound the work: a validated tensor's numel is tied to bytes present in the file.
            let numel = t.layout.numel as usize;
            assert!(numel <= 64 * f.file_len() as usize, "numel {numel} for a {}-byte file", f.file_len());
            let mut out = vec![0f32; numel];
            let _ = t.to_f32(&mut out);
            let mut codes = vec![0u8; (t.layout.rows * t.layout.code_cols()) as usize];
            let _ = t.unpack_codes(&mut codes);
        }
    }
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(3),
        Just(4),
        Just(64),
        Just(4096),
        Just(1 << 32),
        Just(1 << 62),
        Just(u64::MAX),
        Just(u64::MAX - 4095),
        0u64..20000,
        any::<u64>(),
    ]
}

/// Set the `k`-th numeric leaf of a JSON value (in document order) to `x`.
fn set_nth_number(v: &mut Value, k: &mut usize, x: u64) -> bool {
    match v {
        Value::Number(_) => {
            if *k == 0 {
                *v = json!(x);
                return true;
            }
            *k -= 1;
            false
        }
        Value::Array(a) => a.iter_mut().any(|e| set_nth_number(e, k, x)),
        Value::Object(o) => o.values_mut().any(|e| set_nth_number(e, k, x)),
        _ => false,
    }
}

/// 256 cases by default; `PROPTEST_CASES=100000 cargo test --test malformed` fuzzes harder.
fn fuzz_cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    #[test]
    fn random_flips_and_truncations_never_panic(
        seed in any::<u64>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.dpk");
        write_valid(&path, seed);
        let mut b = std::fs::read(&path).unwrap();
        for (at, x) in &flips {
            let i = at.index(b.len());
            b[i] ^= x;
        }
        if let Some(c) = cut {
            b.truncate(c.index(b.len()));
        }
        std::fs::write(&path, &b).unwrap();
        exercise(&path);
    }

    #[test]
    fn random_manifest_edits_never_panic(
        seed in any::<u64>(),
        edits in prop::collection::vec((0usize..200, interesting_u64()), 1..4),
        byte_flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..3),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.dpk");
        write_valid(&path, seed);
        let bytes = std::fs::read(&path).unwrap();
        // Numeric edits (shapes, offsets, lengths, ids, group sizes, ...), re-checksummed so the
        // parser and validator, not the manifest checksum, see them.
        let mut p = split(&bytes);
        let mut v: Value = serde_json::from_slice(&p.manifest).unwrap();
        for (k, x) in &edits {
            let mut k = *k;
            set_nth_number(&mut v, &mut k, *x);
        }
        p.manifest = serde_json::to_vec(&v).unwrap();
        // Raw byte flips in the JSON text, also re-checksummed.
        for (at, x) in &byte_flips {
            let i = at.index(p.manifest.len());
            p.manifest[i] ^= x;
        }
        std::fs::write(&path, common::assemble(&p)).unwrap();
        exercise(&path);
    }
}
