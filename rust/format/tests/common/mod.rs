//! Helpers shared by the integration tests: a small deterministic RNG (seeded by proptest), a
//! manifest header, a known-valid file, and surgery on a file's prelude and manifest.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use deltapack_format::encoding::ParamDType;
use deltapack_format::manifest::MethodRef;
use deltapack_format::spec::{self, DATA_ALIGN, PRELUDE_LEN};
use deltapack_format::{
    BaseRef, DpkWriter, Encoding, ManifestHeader, ModelRef, Producer, QuantParams, ScaleGranularity, ZeroPoint,
};
use serde_json::{json, Value};

/// splitmix64: tiny, deterministic, good enough to fill test tensors from a proptest seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in [lo, hi).
    pub fn f32_in(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
    pub fn codes(&mut self, n: usize, bits: u32) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() & ((1u64 << bits) - 1)) as u8).collect()
    }
}

/// Little-endian bytes of `vals` stored as `dtype` (scales and zero points).
pub fn encode_params(dtype: ParamDType, vals: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(vals.len() * dtype.itemsize() as usize);
    for &v in vals {
        match dtype {
            ParamDType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            ParamDType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            ParamDType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            ParamDType::U8 => out.push(v as u8),
        }
    }
    out
}

pub fn header() -> ManifestHeader {
    ManifestHeader {
        producer: Producer { name: "deltapack-tests".into(), version: "0.0.1".into() },
        method: MethodRef { name: "rtn".into(), params: serde_json::Map::new() },
        finetune: ModelRef { name: "test/finetune".into(), extra: serde_json::Map::new() },
        base: BaseRef { name: "test/base".into(), hash: spec::HASH_ALGO.into(), tensors: BTreeMap::new() },
        deltas: Vec::new(),
        metadata: serde_json::Map::new(),
    }
}

pub fn q(granularity: ScaleGranularity, group_size: Option<u64>, scale_dtype: ParamDType, zero: ZeroPoint) -> QuantParams {
    QuantParams { granularity, group_size, scale_dtype, zero }
}

/// Names and segment roles of the tensors `write_valid` creates, in manifest order.
pub const VALID_TENSORS: [(&str, &[&str]); 4] = [
    ("raw", &["data"]),
    ("quant", &["codes", "scales", "zeros"]),
    ("sparse", &["codes", "indices", "scales"]),
    ("last", &["data"]),
];

/// A valid file with a raw f32 tensor, a q4 group-quantized tensor with stored f16 zeros, a
/// 2:4 q2 tensor, and a trailing raw f16 tensor whose data ends the file.
pub fn write_valid(path: &Path, seed: u64) {
    let mut rng = Rng(seed);
    let mut w = DpkWriter::create(path).unwrap();
    let raw: Vec<u8> = (0..15).flat_map(|_| rng.f32_in(-1.0, 1.0).to_le_bytes()).collect();
    w.add_raw("raw", &[3, 5], Encoding::RawF32, &raw, BTreeMap::new()).unwrap();

    // [4, 33] with groups of 8: 5 groups per row, the last one short.
    let codes = rng.codes(4 * 33, 4);
    let scales: Vec<f32> = (0..20).map(|_| rng.f32_in(0.01, 0.1)).collect();
    let zeros: Vec<f32> = (0..20).map(|_| rng.below(16) as f32).collect();
    w.add_quantized(
        "quant",
        &[4, 33],
        4,
        &codes,
        q(ScaleGranularity::Group, Some(8), ParamDType::F32, ZeroPoint::Stored { dtype: ParamDType::F16 }),
        &encode_params(ParamDType::F32, &scales),
        Some(&encode_params(ParamDType::F16, &zeros)),
        BTreeMap::new(),
    )
    .unwrap();

    let codes = rng.codes(2 * 8, 2);
    let indices: Vec<u8> = (0..8).flat_map(|_| [0u8, 3]).collect();
    let scales: Vec<f32> = (0..2).map(|_| rng.f32_in(0.01, 0.1)).collect();
    w.add_sparse24(
        "sparse",
        &[2, 16],
        2,
        &codes,
        &indices,
        q(ScaleGranularity::Row, None, ParamDType::BF16, ZeroPoint::Constant { value: 1.5 }),
        &encode_params(ParamDType::BF16, &scales),
        None,
        BTreeMap::new(),
    )
    .unwrap();

    let last: Vec<u8> = (0..7).flat_map(|_| half::f16::from_f32(rng.f32_in(-1.0, 1.0)).to_le_bytes()).collect();
    w.add_raw("last", &[7], Encoding::RawF16, &last, BTreeMap::new()).unwrap();
    w.finish(header()).unwrap();
}

/// A file taken apart: prelude fields, manifest bytes, and the data section.
#[derive(Clone, Debug)]
pub struct Parts {
    pub version: u32,
    pub flags: u32,
    pub manifest: Vec<u8>,
    pub data: Vec<u8>,
}

pub fn data_start_for(manifest_len: u64) -> u64 {
    spec::align_up(PRELUDE_LEN + manifest_len, DATA_ALIGN).unwrap()
}

pub fn split(bytes: &[u8]) -> Parts {
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let mlen = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let ds = data_start_for(mlen) as usize;
    Parts {
        version: u32_at(8),
        flags: u32_at(12),
        manifest: bytes[32..32 + mlen as usize].to_vec(),
        data: bytes[ds..].to_vec(),
    }
}

/// Reassemble a file with a correct manifest checksum and fresh padding (so `data_start`
/// follows the manifest's new length and segment offsets keep pointing at the same bytes).
pub fn assemble(p: &Parts) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&spec::MAGIC);
    out.extend_from_slice(&p.version.to_le_bytes());
    out.extend_from_slice(&p.flags.to_le_bytes());
    out.extend_from_slice(&(p.manifest.len() as u64).to_le_bytes());
    out.extend_from_slice(&deltapack_format::xxh3_64(&p.manifest).to_le_bytes());
    out.extend_from_slice(&p.manifest);
    out.resize(data_start_for(p.manifest.len() as u64) as usize, 0);
    out.extend_from_slice(&p.data);
    out
}

/// Parse the manifest as generic JSON, let `edit` change it, re-serialize and re-checksum.
pub fn edit_manifest(bytes: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut p = split(bytes);
    let mut v: Value = serde_json::from_slice(&p.manifest).unwrap();
    edit(&mut v);
    p.manifest = serde_json::to_vec(&v).unwrap();
    assemble(&p)
}

/// Replace the manifest bytes verbatim (re-checksummed).
pub fn replace_manifest(bytes: &[u8], manifest: &[u8]) -> Vec<u8> {
    let mut p = split(bytes);
    p.manifest = manifest.to_vec();
    assemble(&p)
}

/// The JSON object of tensor `name` inside a manifest value.
pub fn tensor_mut<'a>(v: &'a mut Value, name: &str) -> &'a mut Value {
    v["tensors"].as_array_mut().unwrap().iter_mut().find(|t| t["name"] == json!(name)).unwrap()
}

pub fn tensor<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["tensors"].as_array().unwrap().iter().find(|t| t["name"] == json!(name)).unwrap()
}

pub fn manifest_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(&split(bytes).manifest).unwrap()
}
