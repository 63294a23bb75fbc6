//! Writer -> reader round trips of every encoding on random shapes and data, checks on the
//! bytes of the written file, manifest fields, and the writer's error paths and atomicity.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{encode_params, header, q, Rng};
use deltapack_format::encoding::{ParamDType, ALL_ENCODINGS};
use deltapack_format::manifest::MethodRef;
use deltapack_format::pack::{pack_rows, packed_len};
use deltapack_format::spec::{DATA_ALIGN, FORMAT_VERSION, MAGIC, PRELUDE_LEN, SEGMENT_ALIGN};
use deltapack_format::{
    hash_hex, xxh3_64, BaseTensorFingerprint, DeltaEntry, DeltaForm, DeltaOp, DpkFile, DpkWriter, Encoding, EncodingKind,
    Error, LowRankBlock, Manifest, ManifestHeader, OpenOptions, QuantParams, ScaleGranularity, VerifyMode, ZeroPoint,
};
use proptest::prelude::*;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Random tensor specs

#[derive(Clone, Copy, Debug)]
enum Gran {
    Tensor,
    Row,
    Group(u64),
}

#[derive(Clone, Copy, Debug)]
enum Zero {
    Stored(ParamDType),
    Constant(f64),
}

#[derive(Clone, Debug)]
enum Kind {
    Raw(Encoding),
    Quant { bits: u32, gran: Gran, scale: ParamDType, zero: Zero },
    Sparse { bits: u32, gran: Gran, scale: ParamDType, zero: Zero },
}

#[derive(Clone, Debug)]
struct Case {
    kind: Kind,
    shape: Vec<u64>,
    seed: u64,
}

const RAW: [Encoding; 7] =
    [Encoding::RawF32, Encoding::RawF16, Encoding::RawBF16, Encoding::RawI8, Encoding::RawU8, Encoding::RawI32, Encoding::RawI64];

fn gran() -> impl Strategy<Value = Gran> {
    prop_oneof![Just(Gran::Tensor), Just(Gran::Row), (1u64..40).prop_map(Gran::Group)]
}

fn zero() -> impl Strategy<Value = Zero> {
    prop_oneof![
        prop::sample::select(vec![ParamDType::U8, ParamDType::F16, ParamDType::BF16, ParamDType::F32]).prop_map(Zero::Stored),
        prop_oneof![Just(0.0), Just(0.5), -300.0f64..300.0].prop_map(Zero::Constant),
    ]
}

fn scale_dtype() -> impl Strategy<Value = ParamDType> {
    prop::sample::select(vec![ParamDType::F32, ParamDType::F16, ParamDType::BF16])
}

/// 0-D to 3-D shapes, odd sizes, an occasional zero dim; the last dim a multiple of 4 if `sparse`.
fn shape(sparse: bool) -> impl Strategy<Value = Vec<u64>> {
    let lead = prop_oneof![1 => Just(0u64), 12 => 1u64..6];
    let last = if sparse {
        prop_oneof![1 => Just(0u64), 12 => (1u64..18).prop_map(|k| 4 * k)].boxed()
    } else {
        prop_oneof![1 => Just(0u64), 12 => 1u64..70].boxed()
    };
    // 2:4 needs a last dim that is a multiple of 4, which a 0-D tensor (1 column) is not.
    let min_ndim = if sparse { 1 } else { 0 };
    (min_ndim..=3usize, prop::collection::vec(lead, 2), last).prop_map(|(ndim, lead, last)| match ndim {
        0 => vec![],
        1 => vec![last],
        n => lead[..n - 1].iter().copied().chain([last]).collect(),
    })
}

fn case() -> impl Strategy<Value = Case> {
    let raw = (prop::sample::select(RAW.to_vec()), shape(false), any::<u64>())
        .prop_map(|(e, shape, seed)| Case { kind: Kind::Raw(e), shape, seed });
    let quant = (prop::sample::select(vec![1u32, 2, 3, 4, 8]), gran(), scale_dtype(), zero(), shape(false), any::<u64>())
        .prop_map(|(bits, gran, scale, zero, shape, seed)| Case { kind: Kind::Quant { bits, gran, scale, zero }, shape, seed });
    let sparse = (prop::sample::select(vec![2u32, 3, 4, 8]), gran(), scale_dtype(), zero(), shape(true), any::<u64>())
        .prop_map(|(bits, gran, scale, zero, shape, seed)| Case { kind: Kind::Sparse { bits, gran, scale, zero }, shape, seed });
    prop_oneof![raw, quant, sparse]
}

// ---------------------------------------------------------------------------------------------
// Independent reference decoding

fn read_param(dtype: ParamDType, bytes: &[u8], i: usize) -> f32 {
    match dtype {
        ParamDType::F32 => f32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]),
        ParamDType::F16 => half::f16::from_bits(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])).to_f32(),
        // bf16 is the top half of an f32.
        ParamDType::BF16 => f32::from_bits((u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]) as u32) << 16),
        ParamDType::U8 => bytes[i] as f32,
    }
}

fn dims_2d(shape: &[u64]) -> (usize, usize) {
    let cols = shape.last().copied().unwrap_or(1) as usize;
    let rows = if shape.len() <= 1 { 1 } else { shape[..shape.len() - 1].iter().product::<u64>() as usize };
    (rows, cols)
}

/// What one tensor should look like after the round trip.
struct Expected {
    name: String,
    shape: Vec<u64>,
    encoding: Encoding,
    /// (role, bytes) in canonical order.
    segments: Vec<(&'static str, Vec<u8>)>,
    /// Unpacked codes for packed encodings.
    codes: Option<Vec<u8>>,
    /// Values as f32 for float encodings; None where `to_f32` must refuse.
    values: Option<Vec<f32>>,
}

fn quant_params(gran: Gran, scale: ParamDType, zero: Zero) -> QuantParams {
    let (g, gs) = match gran {
        Gran::Tensor => (ScaleGranularity::Tensor, None),
        Gran::Row => (ScaleGranularity::Row, None),
        Gran::Group(n) => (ScaleGranularity::Group, Some(n)),
    };
    let z = match zero {
        Zero::Stored(dtype) => ZeroPoint::Stored { dtype },
        Zero::Constant(value) => ZeroPoint::Constant { value },
    };
    q(g, gs, scale, z)
}

/// Add `case` to the writer under `name` and return what the reader must give back.
fn add_case(w: &mut DpkWriter, name: &str, case: &Case) -> Expected {
    let mut rng = Rng(case.seed);
    let (rows, cols) = dims_2d(&case.shape);
    let numel: usize = case.shape.iter().product::<u64>() as usize;
    match &case.kind {
        Kind::Raw(enc) => {
            let EncodingKind::Raw { itemsize } = enc.kind() else { unreachable!() };
            let data = rng.bytes(numel * itemsize as usize);
            w.add_raw(name, &case.shape, *enc, &data, BTreeMap::new()).unwrap();
            let values = match enc {
                Encoding::RawF32 => Some((0..numel).map(|i| read_param(ParamDType::F32, &data, i)).collect()),
                Encoding::RawF16 => Some((0..numel).map(|i| read_param(ParamDType::F16, &data, i)).collect()),
                Encoding::RawBF16 => Some((0..numel).map(|i| read_param(ParamDType::BF16, &data, i)).collect()),
                _ => None,
            };
            Expected { name: name.into(), shape: case.shape.clone(), encoding: *enc, segments: vec![("data", data)], codes: None, values }
        }
        Kind::Quant { bits, gran, scale, zero } | Kind::Sparse { bits, gran, scale, zero } => {
            let sparse = matches!(case.kind, Kind::Sparse { .. });
            let bits = *bits;
            let kc = if sparse { cols / 2 } else { cols };
            let codes = rng.codes(rows * kc, bits);
            const PAIRS: [[u8; 2]; 6] = [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]];
            let indices: Vec<u8> = (0..rows * kc / 2).flat_map(|_| PAIRS[rng.below(6) as usize]).collect();
            let (ngroups, group_of): (usize, Box<dyn Fn(usize, usize) -> usize>) = match *gran {
                Gran::Tensor => (1, Box::new(|_, _| 0)),
                Gran::Row => (rows, Box::new(|r, _| r)),
                Gran::Group(g) => {
                    let per_row = kc.div_ceil(g as usize);
                    (rows * per_row, Box::new(move |r, c| r * per_row + c / g as usize))
                }
            };
            let scale_vals: Vec<f32> = (0..ngroups).map(|_| rng.f32_in(-0.5, 0.5)).collect();
            let scales = encode_params(*scale, &scale_vals);
            let zmax = (1u64 << bits) as f32;
            let zeros = match zero {
                Zero::Stored(dt) => {
                    let vals: Vec<f32> = (0..ngroups)
                        .map(|_| if *dt == ParamDType::U8 { rng.below(1 << bits) as f32 } else { rng.f32_in(0.0, zmax) })
                        .collect();
                    Some(encode_params(*dt, &vals))
                }
                Zero::Constant(_) => None,
            };
            let qp = quant_params(*gran, *scale, *zero);
            if sparse {
                w.add_sparse24(name, &case.shape, bits, &codes, &indices, qp, &scales, zeros.as_deref(), BTreeMap::new()).unwrap();
            } else {
                w.add_quantized(name, &case.shape, bits, &codes, qp, &scales, zeros.as_deref(), BTreeMap::new()).unwrap();
            }

            // Reference dequantization: (code - zero) * scale, placed at 4*block + index under 2:4.
            let zero_at = |g: usize| match zero {
                Zero::Stored(dt) => read_param(*dt, zeros.as_ref().unwrap(), g),
                Zero::Constant(v) => *v as f32,
            };
            let mut values = vec![0f32; numel];
            for r in 0..rows {
                for c in 0..kc {
                    let g = group_of(r, c);
                    let v = (codes[r * kc + c] as f32 - zero_at(g)) * read_param(*scale, &scales, g);
                    let col = if sparse { 4 * (c / 2) + indices[r * kc + c] as usize } else { c };
                    values[r * cols + col] = v;
                }
            }

            let pack = |v: &[u8], b: u32| {
                let mut out = vec![0u8; packed_len(rows as u64, kc as u64, b).unwrap() as usize];
                pack_rows(v, rows, kc, b, &mut out).unwrap();
                out
            };
            let mut segments = vec![("codes", pack(&codes, bits))];
            if sparse {
                segments.push(("indices", pack(&indices, 2)));
            }
            segments.push(("scales", scales));
            if let Some(z) = zeros {
                segments.push(("zeros", z));
            }
            let encoding = if sparse { Encoding::sparse24(bits).unwrap() } else { Encoding::quantized(bits).unwrap() };
            Expected { name: name.into(), shape: case.shape.clone(), encoding, segments, codes: Some(codes), values: Some(values) }
        }
    }
}

fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Everything the reader must give back for one tensor.
fn check_tensor(f: &DpkFile, e: &Expected) -> Result<(), TestCaseError> {
    let v = f.tensor(&e.name).map_err(|err| TestCaseError::fail(format!("{}: {err}", e.name)))?;
    prop_assert_eq!(&v.entry.shape, &e.shape);
    prop_assert_eq!(v.entry.encoding, e.encoding.id());
    prop_assert_eq!(v.entry.encoding_name.as_deref(), Some(e.encoding.name()));
    prop_assert_eq!(v.layout.encoding, e.encoding);
    prop_assert_eq!(v.layout.numel, e.shape.iter().product::<u64>());

    let roles: Vec<&str> = v.segments.iter().map(|(r, _)| *r).collect();
    let want: Vec<&str> = e.segments.iter().map(|(r, _)| *r).collect();
    prop_assert_eq!(roles, want);
    let mut stored = 0u64;
    for (role, bytes) in &e.segments {
        let got = v.segment(role).unwrap();
        prop_assert_eq!(got, bytes.as_slice(), "{} / {}", e.name, role);
        let seg = &v.entry.segments[*role];
        prop_assert_eq!(seg.length, bytes.len() as u64);
        prop_assert_eq!(&seg.xxh3, &hash_hex(xxh3_64(bytes)));
        stored += bytes.len() as u64;
    }

    // bits_per_param counts every stored byte.
    let numel = v.layout.numel;
    let bpp = *v.entry.stats.get("bits_per_param").expect("bits_per_param stat");
    let want_bpp = if numel == 0 { 0.0 } else { stored as f64 * 8.0 / numel as f64 };
    prop_assert_eq!(bpp, want_bpp, "{}", e.name);

    let mut out = vec![f32::NAN; numel as usize];
    match &e.values {
        Some(want) => {
            v.to_f32(&mut out).unwrap();
            for (i, (a, b)) in out.iter().zip(want).enumerate() {
                prop_assert!(same_f32(*a, *b), "{} element {}: got {} want {}", e.name, i, a, b);
            }
        }
        None => prop_assert!(matches!(v.to_f32(&mut out), Err(Error::InvalidArgument(_)))),
    }
    // Wrong output length is refused.
    prop_assert!(matches!(v.to_f32(&mut vec![0.0; numel as usize + 1]), Err(Error::InvalidArgument(_))));

    match &e.codes {
        Some(codes) => {
            let mut got = vec![0xFFu8; codes.len()];
            v.unpack_codes(&mut got).unwrap();
            prop_assert_eq!(&got, codes);
        }
        None => prop_assert!(matches!(v.unpack_codes(&mut []), Err(Error::InvalidArgument(_)))),
    }
    Ok(())
}

/// Byte-level facts about a written file.
fn check_file_bytes(path: &Path, f: &DpkFile, data_len: u64) -> Result<(), TestCaseError> {
    let bytes = std::fs::read(path).unwrap();
    prop_assert_eq!(&bytes[..8], &MAGIC[..]);
    prop_assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), FORMAT_VERSION);
    prop_assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), 0);
    let mlen = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let mhash = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
    let manifest = &bytes[PRELUDE_LEN as usize..(PRELUDE_LEN + mlen) as usize];
    prop_assert_eq!(xxh3_64(manifest), mhash);
    prop_assert_eq!(manifest, f.manifest_json());
    let ds = f.data_start();
    prop_assert_eq!(ds % DATA_ALIGN, 0);
    prop_assert!(ds >= PRELUDE_LEN + mlen && ds < PRELUDE_LEN + mlen + DATA_ALIGN);
    // Padding between manifest and data is zero.
    prop_assert!(bytes[(PRELUDE_LEN + mlen) as usize..ds as usize].iter().all(|&b| b == 0));
    prop_assert_eq!(bytes.len() as u64, ds + data_len);
    prop_assert_eq!(f.file_len(), bytes.len() as u64);

    for t in &f.manifest().tensors {
        let first = if t.segments.contains_key("data") { "data" } else { "codes" };
        for (role, seg) in &t.segments {
            if role == first {
                prop_assert_eq!(seg.offset % DATA_ALIGN, 0, "{}/{} offset {}", t.name, role, seg.offset);
                prop_assert_eq!((ds + seg.offset) % DATA_ALIGN, 0);
            } else {
                prop_assert_eq!(seg.offset % SEGMENT_ALIGN, 0, "{}/{} offset {}", t.name, role, seg.offset);
            }
            // The manifest's checksum is the hash of the bytes at that offset in the file.
            let at = (ds + seg.offset) as usize;
            prop_assert_eq!(&seg.xxh3, &hash_hex(xxh3_64(&bytes[at..at + seg.length as usize])));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_encoding_round_trips(cases in prop::collection::vec(case(), 1..6)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt.dpk");
        let mut w = DpkWriter::create(&path).unwrap();
        let expected: Vec<Expected> = cases.iter().enumerate().map(|(i, c)| add_case(&mut w, &format!("t{i}"), c)).collect();
        let data_len = w.data_len();
        let written = w.finish(header()).unwrap();

        for mode in [VerifyMode::Lazy, VerifyMode::Full, VerifyMode::None] {
            let f = DpkFile::open(&path, OpenOptions { verify: mode }).unwrap();
            prop_assert_eq!(f.manifest(), &written);
            prop_assert_eq!(f.len(), expected.len());
            for (i, e) in expected.iter().enumerate() {
                prop_assert_eq!(f.index_of(&e.name).unwrap(), i);
                check_tensor(&f, e)?;
            }
            f.verify_all().unwrap();
            prop_assert!(f.check_all().is_empty());
            check_file_bytes(&path, &f, data_len)?;
            prop_assert!(matches!(f.tensor("no such tensor"), Err(Error::TensorNotFound(_))));
            prop_assert!(matches!(f.tensor_at(expected.len()), Err(Error::InvalidArgument(_))));
        }
    }
}

/// Every encoding in ALL_ENCODINGS at least once, deterministic shapes chosen to be awkward
/// (group size that does not divide cols, 3-D, 1-D, 0-D), so coverage does not hang on luck.
#[test]
fn every_encoding_once_with_awkward_shapes() {
    let mut cases = Vec::new();
    for (k, e) in ALL_ENCODINGS.iter().enumerate() {
        let seed = 1000 + k as u64;
        let mut push = |kind: Kind, shape: Vec<u64>| cases.push(Case { kind, shape, seed });
        match e.kind() {
            EncodingKind::Raw { .. } => {
                push(Kind::Raw(*e), vec![3, 5, 7]);
                push(Kind::Raw(*e), vec![]);
            }
            EncodingKind::Quantized { bits } => {
                for (gran, zero) in [
                    (Gran::Tensor, Zero::Constant(0.5)),
                    (Gran::Row, Zero::Stored(ParamDType::U8)),
                    (Gran::Group(7), Zero::Stored(ParamDType::F16)),
                    (Gran::Group(64), Zero::Stored(ParamDType::BF16)),
                    (Gran::Group(5), Zero::Stored(ParamDType::F32)),
                ] {
                    push(Kind::Quant { bits, gran, scale: ParamDType::F16, zero }, vec![2, 3, 33]);
                    push(Kind::Quant { bits, gran, scale: ParamDType::F32, zero }, vec![31]);
                }
            }
            EncodingKind::Sparse24 { bits } => {
                for (gran, zero) in [
                    (Gran::Tensor, Zero::Stored(ParamDType::U8)),
                    (Gran::Row, Zero::Constant(2.0)),
                    (Gran::Group(3), Zero::Stored(ParamDType::BF16)),
                ] {
                    push(Kind::Sparse { bits, gran, scale: ParamDType::BF16, zero }, vec![3, 2, 12]);
                    push(Kind::Sparse { bits, gran, scale: ParamDType::F32, zero }, vec![20]);
                }
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.dpk");
    let mut w = DpkWriter::create(&path).unwrap();
    let expected: Vec<Expected> = cases.iter().enumerate().map(|(i, c)| add_case(&mut w, &format!("t{i}"), c)).collect();
    let data_len = w.data_len();
    w.finish(header()).unwrap();
    let f = DpkFile::open(&path, OpenOptions { verify: VerifyMode::Full }).unwrap();
    let used: std::collections::HashSet<Encoding> = (0..f.len()).map(|i| f.layout(i).encoding).collect();
    assert_eq!(used.len(), ALL_ENCODINGS.len());
    for e in &expected {
        check_tensor(&f, e).unwrap();
    }
    check_file_bytes(&path, &f, data_len).unwrap();
}

/// One hand-checked dequantization, so the reference above is itself pinned.
#[test]
fn dequantization_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hand.dpk");
    let mut w = DpkWriter::create(&path).unwrap();
    // [2, 3], groups of 2: row r has groups {0,1}, {2}. scales/zeros indexed r*2 + c/2.
    let codes = [0u8, 1, 2, 3, 2, 1];
    let scales = encode_params(ParamDType::F32, &[1.0, 10.0, 0.5, 100.0]);
    let zeros = [1u8, 0, 2, 3];
    w.add_quantized(
        "g",
        &[2, 3],
        2,
        &codes,
        q(ScaleGranularity::Group, Some(2), ParamDType::F32, ZeroPoint::Stored { dtype: ParamDType::U8 }),
        &scales,
        Some(&zeros),
        BTreeMap::new(),
    )
    .unwrap();
    // 2:4, one row of 8 columns: codes [3, 1 | 0, 2] at positions (1, 3) and (0, 2), zero 1, scale 2.
    w.add_sparse24(
        "s",
        &[8],
        2,
        &[3, 1, 0, 2],
        &[1, 3, 0, 2],
        q(ScaleGranularity::Tensor, None, ParamDType::F32, ZeroPoint::Constant { value: 1.0 }),
        &encode_params(ParamDType::F32, &[2.0]),
        None,
        BTreeMap::new(),
    )
    .unwrap();
    w.finish(header()).unwrap();
    let f = DpkFile::open(&path, OpenOptions::default()).unwrap();
    let mut out = [0f32; 6];
    f.tensor("g").unwrap().to_f32(&mut out).unwrap();
    // row 0: (0-1)*1, (1-1)*1, (2-0)*10 ; row 1: (3-2)*0.5, (2-2)*0.5, (1-3)*100
    assert_eq!(out, [-1.0, 0.0, 20.0, 0.5, 0.0, -200.0]);
    let mut out = [9f32; 8];
    f.tensor("s").unwrap().to_f32(&mut out).unwrap();
    assert_eq!(out, [0.0, 4.0, 0.0, 0.0, -2.0, 0.0, 2.0, 0.0]);
    // bits_per_param of "g": codes are 2 rows of one 32-bit word (8 bytes) + 16 bytes of scales
    // + 4 of zeros = 28 bytes for 6 params.
    assert_eq!(f.tensor("g").unwrap().entry.stats["bits_per_param"], 28.0 * 8.0 / 6.0);
}

// ---------------------------------------------------------------------------------------------
// Manifest fields

fn raw_f32(w: &mut DpkWriter, rng: &mut Rng, name: &str, shape: &[u64]) {
    let n: u64 = shape.iter().product();
    let data: Vec<u8> = (0..n).flat_map(|_| rng.f32_in(-1.0, 1.0).to_le_bytes()).collect();
    w.add_raw(name, shape, Encoding::RawF32, &data, BTreeMap::new()).unwrap();
}

/// A header with everything filled in, and a writer holding the tensors its deltas name.
fn rich_file(path: &Path, seed: u64, out: u64, inp: u64, rank: u64, text: &str, number: f64) -> (ManifestHeader, Manifest) {
    let mut rng = Rng(seed);
    let mut w = DpkWriter::create(path).unwrap();
    raw_f32(&mut w, &mut rng, "w.u", &[out, rank]);
    raw_f32(&mut w, &mut rng, "w.s", &[rank]);
    raw_f32(&mut w, &mut rng, "w.vt", &[rank, inp]);
    raw_f32(&mut w, &mut rng, "w.u2", &[out, 1]);
    raw_f32(&mut w, &mut rng, "w.vt2", &[1, inp]);
    // input_perm: a random permutation of 0..inp as i32.
    let mut perm: Vec<i32> = (0..inp as i32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let perm_bytes: Vec<u8> = perm.iter().flat_map(|p| p.to_le_bytes()).collect();
    w.add_raw("w.perm", &[inp], Encoding::RawI32, &perm_bytes, BTreeMap::from([("custom".to_owned(), number)])).unwrap();
    raw_f32(&mut w, &mut rng, "b.delta", &[out]);
    raw_f32(&mut w, &mut rng, "norm.full", &[out]);

    let fp = |shape: Vec<u64>, h: u64| BaseTensorFingerprint { dtype: "bf16".into(), shape, xxh3: hash_hex(h) };
    let mut h = header();
    h.producer.version = text.to_owned();
    h.method = MethodRef {
        name: "delta-come".into(),
        params: json!({"bits": [8, 3, 2], "rank": rank, "note": text, "nested": {"x": number, "flag": true, "none": null}})
            .as_object()
            .unwrap()
            .clone(),
    };
    h.finetune.extra = json!({"revision": text, "steps": 1234}).as_object().unwrap().clone();
    h.base.tensors.insert("w".into(), fp(vec![out, inp], rng.next_u64()));
    h.base.tensors.insert("b".into(), fp(vec![out], rng.next_u64()));
    h.base.tensors.insert("norm".into(), fp(vec![out], rng.next_u64()));
    h.deltas = vec![
        DeltaEntry {
            target: "w".into(),
            op: DeltaOp::Add,
            form: DeltaForm::LowRank {
                blocks: vec![
                    LowRankBlock { u: Some("w.u".into()), ut: None, s: Some("w.s".into()), vt: "w.vt".into() },
                    LowRankBlock { u: Some("w.u2".into()), ut: None, s: None, vt: "w.vt2".into() },
                ],
                input_perm: Some("w.perm".into()),
            },
            stats: BTreeMap::from([("rel_error".to_owned(), number)]),
        },
        DeltaEntry { target: "b".into(), op: DeltaOp::Add, form: DeltaForm::Dense { tensor: "b.delta".into() }, stats: BTreeMap::new() },
        DeltaEntry { target: "norm".into(), op: DeltaOp::Replace, form: DeltaForm::Dense { tensor: "norm.full".into() }, stats: BTreeMap::new() },
    ];
    h.metadata = json!({"license": "apache-2.0", "text": text, "value": number, "list": [1, "two", 3.5]}).as_object().unwrap().clone();
    let m = w.finish(h.clone()).unwrap();
    (h, m)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn manifest_fields_survive(
        seed in any::<u64>(),
        out in 1u64..9,
        inp in 1u64..13,
        rank in 1u64..5,
        text in "\\PC{0,24}",
        number in -1e6f64..1e6,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.dpk");
        let (h, written) = rich_file(&path, seed, out, inp, rank, &text, number);
        let f = DpkFile::open(&path, OpenOptions { verify: VerifyMode::Full }).unwrap();
        let m = f.manifest();
        prop_assert_eq!(m, &written);
        prop_assert_eq!(&m.format, "deltapack");
        prop_assert_eq!(m.format_version, FORMAT_VERSION);
        prop_assert_eq!(&m.producer, &h.producer);
        prop_assert_eq!(&m.method, &h.method);
        prop_assert_eq!(&m.finetune, &h.finetune);
        prop_assert_eq!(&m.base, &h.base);
        prop_assert_eq!(&m.deltas, &h.deltas);
        prop_assert_eq!(&m.metadata, &h.metadata);
        prop_assert_eq!(m.tensors[f.index_of("w.perm").unwrap()].stats["custom"], number);
        // The same manifest parses back from the stored JSON.
        prop_assert_eq!(&Manifest::parse(f.manifest_json()).unwrap(), m);
        // And the input permutation reads back as the i32 tensor it is.
        let perm = f.tensor("w.perm").unwrap();
        let mut seen = vec![false; inp as usize];
        for c in perm.segment("data").unwrap().chunks_exact(4) {
            let p = i32::from_le_bytes(c.try_into().unwrap());
            prop_assert!((0..inp as i32).contains(&p) && !seen[p as usize]);
            seen[p as usize] = true;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writer errors and atomicity

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn is_arg(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument(_))
}

#[test]
fn duplicate_name_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.dpk");
    let mut w = DpkWriter::create(&path).unwrap();
    w.add_raw("x", &[2], Encoding::RawU8, &[1, 2], BTreeMap::new()).unwrap();
    let before = w.data_len();
    let e = w.add_raw("x", &[3], Encoding::RawU8, &[1, 2, 3], BTreeMap::new()).unwrap_err();
    assert!(is_arg(&e) && e.to_string().contains("'x'"), "{e}");
    // A rejected tensor writes nothing; the writer stays usable.
    assert_eq!(w.data_len(), before);
    w.add_raw("y", &[1], Encoding::RawU8, &[7], BTreeMap::new()).unwrap();
    w.finish(header()).unwrap();
    let f = DpkFile::open(&path, OpenOptions { verify: VerifyMode::Full }).unwrap();
    assert_eq!(f.len(), 2);
    assert_eq!(f.tensor("x").unwrap().segment("data").unwrap(), [1, 2]);
    assert_eq!(f.tensor("y").unwrap().segment("data").unwrap(), [7]);
}

#[test]
fn wrong_segment_lengths_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DpkWriter::create(dir.path().join("l.dpk")).unwrap();
    // Raw: 3 f32 need 12 bytes.
    for n in [0usize, 11, 13, 24] {
        let e = w.add_raw("r", &[3], Encoding::RawF32, &vec![0; n], BTreeMap::new()).unwrap_err();
        assert!(is_arg(&e) && e.to_string().contains("'r'"), "{n}: {e}");
    }
    let qp = q(ScaleGranularity::Row, None, ParamDType::F16, ZeroPoint::Stored { dtype: ParamDType::U8 });
    // [2, 5] row-quantized: 2 f16 scales (4 bytes), 2 u8 zeros.
    let codes = [0u8; 10];
    let e = w.add_quantized("q", &[2, 5], 4, &codes, qp, &[0; 6], Some(&[0; 2]), BTreeMap::new()).unwrap_err();
    assert!(is_arg(&e) && e.to_string().contains("scales"), "{e}");
    let e = w.add_quantized("q", &[2, 5], 4, &codes, qp, &[0; 4], Some(&[0; 3]), BTreeMap::new()).unwrap_err();
    assert!(is_arg(&e) && e.to_string().contains("zeros"), "{e}");
    // Stored zero point but no zeros given.
    let e = w.add_quantized("q", &[2, 5], 4, &codes, qp, &[0; 4], None, BTreeMap::new()).unwrap_err();
    assert!(is_arg(&e), "{e}");
    // Wrong number of codes.
    let e = w.add_quantized("q", &[2, 5], 4, &codes[..9], qp, &[0; 4], Some(&[0; 2]), BTreeMap::new()).unwrap_err();
    assert!(is_arg(&e), "{e}");
    // A code that does not fit.
    let e = w.add_quantized("q", &[2, 5], 4, &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0], qp, &[0; 4], Some(&[0; 2]), BTreeMap::new()).unwrap_err();
    assert!(is_arg(&e), "{e}");
    // add_encoded with a packed codes segment one byte short.
    let e = w.add_encoded("q", &[2, 5], Encoding::Q4, Some(qp), &[("codes", &[0; 7]), ("scales", &[0; 4]), ("zeros", &[0; 2])], BTreeMap::new()).unwrap_err();
    assert!(is_arg(&e) && e.to_string().contains("codes"), "{e}");
    // Missing / unknown role.
    let e = w.add_encoded("q", &[2, 5], Encoding::Q4, Some(qp), &[("codes", &[0; 8]), ("scales", &[0; 4]), ("zeroes", &[0; 2])], BTreeMap::new()).unwrap_err();
    assert!(is_arg(&e), "{e}");
    // Nothing was written by any of the failures.
    assert_eq!(w.data_len(), 0);
    // The correct call works.
    w.add_quantized("q", &[2, 5], 4, &codes, qp, &[0; 4], Some(&[0; 2]), BTreeMap::new()).unwrap();
}

#[test]
fn bad_sparse_indices_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DpkWriter::create(dir.path().join("s.dpk")).unwrap();
    let qp = q(ScaleGranularity::Tensor, None, ParamDType::F32, ZeroPoint::Constant { value: 0.0 });
    let scales = 1f32.to_le_bytes();
    let codes = [1u8, 2, 3, 0];
    for bad in [[1u8, 1, 0, 1], [0, 1, 2, 1], [3, 0, 0, 1], [0, 1, 2, 4], [0, 4, 0, 1]] {
        let e = w.add_sparse24("s", &[8], 2, &codes, &bad, qp, &scales, None, BTreeMap::new()).unwrap_err();
        assert!(is_arg(&e) && e.to_string().contains("strictly increasing"), "{bad:?}: {e}");
    }
    // Last dim not a multiple of 4.
    let e = w.add_sparse24("s", &[6], 2, &codes[..3], &[0, 1, 2], qp, &scales, None, BTreeMap::new()).unwrap_err();
    assert!(is_arg(&e), "{e}");
    // Unsupported widths.
    assert!(is_arg(&w.add_sparse24("s", &[8], 1, &codes, &[0, 1, 0, 1], qp, &scales, None, BTreeMap::new()).unwrap_err()));
    assert!(is_arg(&w.add_quantized("s", &[4], 5, &codes, qp, &scales, None, BTreeMap::new()).unwrap_err()));
    assert_eq!(w.data_len(), 0);
    w.add_sparse24("s", &[8], 2, &codes, &[0, 1, 2, 3], qp, &scales, None, BTreeMap::new()).unwrap();
}

#[test]
fn writer_rejects_overflowing_shapes_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DpkWriter::create(dir.path().join("o.dpk")).unwrap();
    let qp = q(ScaleGranularity::Tensor, None, ParamDType::F32, ZeroPoint::Constant { value: 0.0 });
    let huge = [1u64 << 40, 1 << 40, 4];
    assert!(is_arg(&w.add_raw("r", &huge, Encoding::RawU8, &[], BTreeMap::new()).unwrap_err()));
    assert!(is_arg(&w.add_quantized("q", &huge, 4, &[], qp, &[0; 4], None, BTreeMap::new()).unwrap_err()));
    assert!(is_arg(&w.add_sparse24("s", &huge, 4, &[], &[], qp, &[0; 4], None, BTreeMap::new()).unwrap_err()));
    // More than 8 dims.
    assert!(is_arg(&w.add_raw("r", &[1; 9], Encoding::RawU8, &[0], BTreeMap::new()).unwrap_err()));
}

/// A header whose low-rank delta is broken by `breakage`; finish must fail and publish nothing.
fn finish_must_fail(breakage: impl FnOnce(&mut ManifestHeader), expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.dpk");
    let mut w = DpkWriter::create(&path).unwrap();
    let mut rng = Rng(7);
    raw_f32(&mut w, &mut rng, "u", &[4, 2]);
    raw_f32(&mut w, &mut rng, "vt", &[2, 6]);
    raw_f32(&mut w, &mut rng, "vt_bad", &[3, 6]);
    raw_f32(&mut w, &mut rng, "s3", &[3]);
    raw_f32(&mut w, &mut rng, "perm_f32", &[6]);
    let mut h = header();
    h.deltas = vec![DeltaEntry {
        target: "w".into(),
        op: DeltaOp::Add,
        form: DeltaForm::LowRank { blocks: vec![LowRankBlock { u: Some("u".into()), ut: None, s: None, vt: "vt".into() }], input_perm: None },
        stats: BTreeMap::new(),
    }];
    breakage(&mut h);
    let e = w.finish(h).unwrap_err();
    assert!(is_arg(&e), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("'w'") && msg.contains(expect), "expected '{expect}' in: {msg}");
    assert!(!path.exists());
    assert!(dir_entries(dir.path()).is_empty(), "{:?}", dir_entries(dir.path()));
}

fn blocks(h: &mut ManifestHeader) -> &mut Vec<LowRankBlock> {
    match &mut h.deltas[0].form {
        DeltaForm::LowRank { blocks, .. } => blocks,
        _ => unreachable!(),
    }
}

#[test]
fn inconsistent_low_rank_deltas_fail_at_finish() {
    // Sanity: the unbroken header is accepted.
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.dpk");
        let mut w = DpkWriter::create(&path).unwrap();
        let mut rng = Rng(7);
        raw_f32(&mut w, &mut rng, "u", &[4, 2]);
        raw_f32(&mut w, &mut rng, "vt", &[2, 6]);
        let mut h = header();
        h.deltas = vec![DeltaEntry {
            target: "w".into(),
            op: DeltaOp::Add,
            form: DeltaForm::LowRank { blocks: vec![LowRankBlock { u: Some("u".into()), ut: None, s: None, vt: "vt".into() }], input_perm: None },
            stats: BTreeMap::new(),
        }];
        w.finish(h).unwrap();
        assert!(path.exists());
    }
    finish_must_fail(|h| blocks(h)[0].vt = "vt_bad".into(), "vt has shape [3, 6], expected [2, in]");
    finish_must_fail(|h| blocks(h)[0].vt = "missing".into(), "'missing'");
    finish_must_fail(|h| blocks(h)[0].u = Some("missing".into()), "'missing'");
    finish_must_fail(|h| blocks(h)[0].ut = Some("vt".into()), "exactly one of 'u' and 'ut'");
    finish_must_fail(|h| blocks(h)[0].u = None, "exactly one of 'u' and 'ut'");
    finish_must_fail(|h| blocks(h)[0].s = Some("s3".into()), "s has shape");
    finish_must_fail(|h| blocks(h)[0].s = Some("missing".into()), "'missing'");
    finish_must_fail(|h| blocks(h).clear(), "no blocks");
    // U stored transposed: `ut` [r, out] = [2, 4] is the same block as `u` [4, 2].
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ut.dpk");
        let mut w = DpkWriter::create(&path).unwrap();
        let mut rng = Rng(7);
        raw_f32(&mut w, &mut rng, "ut", &[2, 4]);
        raw_f32(&mut w, &mut rng, "vt", &[2, 6]);
        let mut h = header();
        h.base.tensors.insert("w".into(), BaseTensorFingerprint { dtype: "f32".into(), shape: vec![4, 6], xxh3: "0123456789abcdef".into() });
        h.deltas = vec![DeltaEntry {
            target: "w".into(),
            op: DeltaOp::Add,
            form: DeltaForm::LowRank { blocks: vec![LowRankBlock { u: None, ut: Some("ut".into()), s: None, vt: "vt".into() }], input_perm: None },
            stats: BTreeMap::new(),
        }];
        w.finish(h).unwrap();
        assert!(path.exists());
    }
    finish_must_fail(|h| h.deltas[0].op = DeltaOp::Replace, "op 'add'");
    finish_must_fail(
        |h| {
            if let DeltaForm::LowRank { input_perm, .. } = &mut h.deltas[0].form {
                *input_perm = Some("perm_f32".into());
            }
        },
        "input_perm",
    );
    finish_must_fail(
        |h| {
            h.base.tensors.insert("w".into(), BaseTensorFingerprint { dtype: "bf16".into(), shape: vec![4, 7], xxh3: hash_hex(1) });
        },
        "base tensor has",
    );
    finish_must_fail(
        |h| {
            let d = h.deltas[0].clone();
            h.deltas.push(d);
        },
        "appears twice",
    );
    finish_must_fail(|h| h.deltas[0].form = DeltaForm::Dense { tensor: "nope".into() }, "'nope'");
}

#[test]
fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dropped.dpk");
    {
        let mut w = DpkWriter::create(&path).unwrap();
        w.add_raw("x", &[4096], Encoding::RawU8, &[5; 4096], BTreeMap::new()).unwrap();
        // While writing, only a hidden staging file exists, never the target.
        assert!(!path.exists());
        let during = dir_entries(dir.path());
        assert!(during.iter().all(|n| n.starts_with('.')), "{during:?}");
    }
    assert!(!path.exists());
    assert!(dir_entries(dir.path()).is_empty(), "{:?}", dir_entries(dir.path()));
}

#[test]
fn finish_replaces_existing_file_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("over.dpk");
    // Old content: larger than the new file, so a non-truncating overwrite would leave a tail.
    let old = vec![0xEEu8; 64 * 1024];
    std::fs::write(&path, &old).unwrap();

    let mut w = DpkWriter::create(&path).unwrap();
    w.add_raw("x", &[3], Encoding::RawU8, &[1, 2, 3], BTreeMap::new()).unwrap();
    let data_len = w.data_len();
    // Until finish, the old file is untouched.
    assert_eq!(std::fs::read(&path).unwrap(), old);
    w.finish(header()).unwrap();

    let new = std::fs::read(&path).unwrap();
    let f = DpkFile::open(&path, OpenOptions { verify: VerifyMode::Full }).unwrap();
    assert_eq!(new.len() as u64, f.data_start() + data_len);
    assert!(new.len() < old.len());
    assert_eq!(&new[..8], &MAGIC[..]);
    assert_eq!(f.tensor("x").unwrap().segment("data").unwrap(), [1, 2, 3]);
    // No temporaries left beside it.
    assert_eq!(dir_entries(dir.path()), vec!["over.dpk".to_owned()]);

    // A failing finish leaves the existing file exactly as it was.
    let mut w = DpkWriter::create(&path).unwrap();
    w.add_raw("y", &[1], Encoding::RawU8, &[9], BTreeMap::new()).unwrap();
    let mut h = header();
    h.deltas.push(DeltaEntry { target: "t".into(), op: DeltaOp::Add, form: DeltaForm::Dense { tensor: "missing".into() }, stats: BTreeMap::new() });
    assert!(w.finish(h).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), new);
    assert_eq!(dir_entries(dir.path()), vec!["over.dpk".to_owned()]);
}

#[test]
fn empty_file_and_zero_sized_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.dpk");
    DpkWriter::create(&path).unwrap().finish(header()).unwrap();
    let f = DpkFile::open(&path, OpenOptions { verify: VerifyMode::Full }).unwrap();
    assert!(f.is_empty());
    assert_eq!(f.file_len(), f.data_start());

    let mut w = DpkWriter::create(&path).unwrap();
    w.add_raw("z", &[0], Encoding::RawF32, &[], BTreeMap::new()).unwrap();
    w.add_raw("a", &[2], Encoding::RawF32, &[0; 8], BTreeMap::new()).unwrap();
    w.add_raw("z2", &[4, 0, 3], Encoding::RawI64, &[], BTreeMap::new()).unwrap();
    w.finish(header()).unwrap();
    let f = DpkFile::open(&path, OpenOptions { verify: VerifyMode::Full }).unwrap();
    assert_eq!(f.len(), 3);
    assert!(f.tensor("z").unwrap().segment("data").unwrap().is_empty());
    assert_eq!(f.tensor("z").unwrap().entry.stats["bits_per_param"], 0.0);
}
