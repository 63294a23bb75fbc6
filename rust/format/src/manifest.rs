//! The JSON manifest: serde types and the validation every reader and writer runs.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::encoding::{Encoding, EncodingKind, ParamDType};
use crate::error::{Error, Result};
use crate::quant::TensorLayout;
use crate::spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Producer {
    pub name: String,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodRef {
    /// e.g. `delta-come`, `bitdelta`, `deltazip`, `lowrank`, `rtn`, `raw`.
    pub name: String,
    #[serde(default)]
    pub params: serde_json::Map<String, Value>,
}

/// A model named by the manifest (the fine-tune); free-form extra fields are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// Fingerprint of one base tensor the delta applies to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaseTensorFingerprint {
    /// dtype of the base tensor as stored (`bf16`, `f16`, `f32`, ...).
    pub dtype: String,
    pub shape: Vec<u64>,
    /// xxh3-64 of the tensor's little-endian bytes, 16 lowercase hex digits.
    pub xxh3: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaseRef {
    pub name: String,
    #[serde(default = "default_hash")]
    pub hash: String,
    #[serde(default)]
    pub tensors: BTreeMap<String, BaseTensorFingerprint>,
}

fn default_hash() -> String {
    spec::HASH_ALGO.to_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleGranularity {
    /// One scale (and zero) for the whole tensor.
    Tensor,
    /// One per row of the 2-D view.
    Row,
    /// One per `group_size` consecutive columns of each row; the last group may be short.
    Group,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ZeroPoint {
    /// A `zeros` segment holds one zero point per scale, in code units.
    Stored { dtype: ParamDType },
    /// One zero point for every element, in code units (e.g. 0.5 makes 1-bit codes ±scale/2).
    Constant { value: f64 },
}

/// Parameters of the packed encodings: value = (code - zero) * scale.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantParams {
    pub granularity: ScaleGranularity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<u64>,
    pub scale_dtype: ParamDType,
    pub zero: ZeroPoint,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Byte offset from the start of the data section.
    pub offset: u64,
    pub length: u64,
    /// xxh3-64 of the segment's bytes, 16 lowercase hex digits.
    pub xxh3: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    /// Logical shape; the encodings see it as a 2-D `[rows, cols]` view (see `TensorLayout`).
    pub shape: Vec<u64>,
    /// Stable encoding id (`Encoding`).
    pub encoding: u32,
    /// Informative; when present it must agree with `encoding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<QuantParams>,
    pub segments: BTreeMap<String, Segment>,
    /// Numbers the compressor measured (e.g. `bits_per_param`, `rel_error`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaOp {
    /// fine-tuned = base + delta.
    #[default]
    Add,
    /// fine-tuned = the stored tensor (used for small tensors kept whole, e.g. norms).
    Replace,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LowRankBlock {
    /// `[out, r]`; exactly one of `u` and `ut` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<String>,
    /// `[r, out]`: U stored transposed, so its quantization groups run along the output
    /// dimension (one scale per rank component and group of outputs, not per output row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ut: Option<String>,
    /// `[r]`, absent when folded into `u`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<String>,
    /// `[r, in]`
    pub vt: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "form", rename_all = "snake_case")]
pub enum DeltaForm {
    /// delta = dequantize(tensor), same shape as the target.
    Dense { tensor: String },
    /// delta · x = Σ_k U_k · diag(s_k) · Vt_k · x[input_perm].
    LowRank {
        blocks: Vec<LowRankBlock>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input_perm: Option<String>,
    },
}

/// How stored tensors combine into the change of one base tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeltaEntry {
    pub target: String,
    #[serde(default)]
    pub op: DeltaOp,
    #[serde(flatten)]
    pub form: DeltaForm,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, f64>,
}

/// What a writer's caller supplies; the writer adds format, version and tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestHeader {
    pub producer: Producer,
    pub method: MethodRef,
    pub finetune: ModelRef,
    pub base: BaseRef,
    #[serde(default)]
    pub deltas: Vec<DeltaEntry>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub producer: Producer,
    pub method: MethodRef,
    pub finetune: ModelRef,
    pub base: BaseRef,
    pub tensors: Vec<TensorEntry>,
    #[serde(default)]
    pub deltas: Vec<DeltaEntry>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, Value>,
}

pub(crate) fn is_hash_hex(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Manifest {
    pub fn from_header(header: ManifestHeader, tensors: Vec<TensorEntry>) -> Manifest {
        Manifest {
            format: spec::FORMAT_NAME.to_owned(),
            format_version: spec::FORMAT_VERSION,
            producer: header.producer,
            method: header.method,
            finetune: header.finetune,
            base: header.base,
            tensors,
            deltas: header.deltas,
            metadata: header.metadata,
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        serde_json::from_slice(bytes).map_err(|e| Error::ManifestJson(e.to_string()))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serialization cannot fail")
    }

    pub fn tensor_index(&self) -> HashMap<&str, usize> {
        self.tensors.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect()
    }

    /// Check everything the format promises. `data_len` is the size of the data section
    /// (`None` while writing, when only layout rules and lengths can be checked).
    pub fn validate(&self, data_len: Option<u64>) -> Result<Vec<TensorLayout>> {
        if self.format != spec::FORMAT_NAME {
            return Err(Error::manifest(format!("field 'format' is '{}', expected '{}'", self.format, spec::FORMAT_NAME)));
        }
        if self.format_version != spec::FORMAT_VERSION {
            return Err(Error::UnsupportedVersion { found: self.format_version, known: spec::FORMAT_VERSION });
        }
        if self.base.hash != spec::HASH_ALGO {
            return Err(Error::manifest(format!("base fingerprint hash '{}' is not supported (only {})", self.base.hash, spec::HASH_ALGO)));
        }
        for (name, fp) in &self.base.tensors {
            if !is_hash_hex(&fp.xxh3) {
                return Err(Error::manifest(format!("base tensor '{name}': fingerprint '{}' is not 16 lowercase hex digits", fp.xxh3)));
            }
        }
        let mut layouts = Vec::with_capacity(self.tensors.len());
        let mut seen = HashMap::with_capacity(self.tensors.len());
        // (start, end, "tensor/segment") for the overlap sweep.
        let mut ranges: Vec<(u64, u64, String, String)> = Vec::new();
        for (i, t) in self.tensors.iter().enumerate() {
            if t.name.is_empty() {
                return Err(Error::manifest(format!("tensor #{i} has an empty name")));
            }
            if seen.insert(t.name.as_str(), i).is_some() {
                return Err(Error::manifest(format!("tensor name '{}' appears twice", t.name)));
            }
            let layout = TensorLayout::of(t)?;
            let expected = layout.segment_lengths();
            if t.segments.len() != expected.len() || expected.iter().any(|(r, _)| !t.segments.contains_key(*r)) {
                let want: Vec<&str> = expected.iter().map(|(r, _)| *r).collect();
                let got: Vec<&str> = t.segments.keys().map(String::as_str).collect();
                return Err(Error::layout(&t.name, "*", format!("encoding {} needs segments {want:?}, manifest lists {got:?}", layout.encoding.name())));
            }
            let first_role = expected[0].0;
            for (role, len) in &expected {
                let seg = &t.segments[*role];
                if seg.length != *len {
                    return Err(Error::layout(&t.name, role, format!("length is {} bytes, the shape and encoding need {len}", seg.length)));
                }
                let align = if *role == first_role { spec::DATA_ALIGN } else { spec::SEGMENT_ALIGN };
                if seg.offset % align != 0 {
                    return Err(Error::layout(&t.name, role, format!("offset {} is not a multiple of {align}", seg.offset)));
                }
                let end = seg.offset.checked_add(seg.length).ok_or_else(|| Error::layout(&t.name, role, "offset + length overflows"))?;
                if let Some(dl) = data_len {
                    if end > dl {
                        return Err(Error::layout(&t.name, role, format!("range [{}, {end}) lies outside the data section of {dl} bytes", seg.offset)));
                    }
                }
                if !is_hash_hex(&seg.xxh3) {
                    return Err(Error::layout(&t.name, role, format!("checksum '{}' is not 16 lowercase hex digits", seg.xxh3)));
                }
                ranges.push((seg.offset, end, t.name.clone(), (*role).to_owned()));
            }
            layouts.push(layout);
        }
        // Empty segments occupy no bytes and cannot overlap anything; they must also not sit
        // between two overlapping ranges in the sorted order and hide them from the sweep.
        ranges.retain(|r| r.0 < r.1);
        ranges.sort_by_key(|r| (r.0, r.1));
        for w in ranges.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            // Empty segments occupy no bytes and cannot overlap anything.
            if a.1 > b.0 && a.0 < a.1 && b.0 < b.1 {
                return Err(Error::Overlap {
                    first: format!("{}/{}", a.2, a.3),
                    first_start: a.0,
                    first_end: a.1,
                    second: format!("{}/{}", b.2, b.3),
                    second_start: b.0,
                });
            }
        }
        self.validate_deltas(&seen, &layouts)?;
        Ok(layouts)
    }

    fn validate_deltas(&self, index: &HashMap<&str, usize>, layouts: &[TensorLayout]) -> Result<()> {
        let mut targets = HashMap::new();
        for d in &self.deltas {
            if targets.insert(d.target.as_str(), ()).is_some() {
                return Err(Error::manifest(format!("delta target '{}' appears twice", d.target)));
            }
            let part = |name: &str| -> Result<&TensorLayout> {
                index
                    .get(name)
                    .map(|&i| &layouts[i])
                    .ok_or_else(|| Error::manifest(format!("delta for '{}' names tensor '{name}', which the file does not contain", d.target)))
            };
            let target_shape = self.base.tensors.get(&d.target).map(|fp| fp.shape.clone());
            match &d.form {
                DeltaForm::Dense { tensor } => {
                    let l = part(tensor)?;
                    if let Some(ts) = &target_shape {
                        if &l.shape != ts {
                            return Err(Error::manifest(format!("delta for '{}': tensor '{tensor}' has shape {:?}, base tensor has {ts:?}", d.target, l.shape)));
                        }
                    }
                }
                DeltaForm::LowRank { blocks, input_perm } => {
                    if d.op != DeltaOp::Add {
                        return Err(Error::manifest(format!("delta for '{}': low-rank deltas only support op 'add'", d.target)));
                    }
                    if blocks.is_empty() {
                        return Err(Error::manifest(format!("delta for '{}': low-rank form with no blocks", d.target)));
                    }
                    let mut dims: Option<(u64, u64)> = None;
                    for (k, b) in blocks.iter().enumerate() {
                        // (out, r) of the U factor, whichever way it is stored
                        let (out, r, what) = match (&b.u, &b.ut) {
                            (Some(u), None) => {
                                let u = part(u)?;
                                if u.shape.len() != 2 {
                                    return Err(Error::manifest(format!("delta for '{}' block {k}: u has shape {:?}, expected [out, r]", d.target, u.shape)));
                                }
                                (u.shape[0], u.shape[1], "u")
                            }
                            (None, Some(ut)) => {
                                let ut = part(ut)?;
                                if ut.shape.len() != 2 {
                                    return Err(Error::manifest(format!("delta for '{}' block {k}: ut has shape {:?}, expected [r, out]", d.target, ut.shape)));
                                }
                                (ut.shape[1], ut.shape[0], "ut")
                            }
                            _ => return Err(Error::manifest(format!("delta for '{}' block {k}: give exactly one of 'u' and 'ut'", d.target))),
                        };
                        let vt = part(&b.vt)?;
                        if vt.shape.len() != 2 || vt.shape[0] != r {
                            return Err(Error::manifest(format!("delta for '{}' block {k}: {what} gives rank {r} but vt has shape {:?}, expected [{r}, in]", d.target, vt.shape)));
                        }
                        if let Some(s) = &b.s {
                            let s = part(s)?;
                            if s.shape != [r] {
                                return Err(Error::manifest(format!("delta for '{}' block {k}: s has shape {:?}, expected [{r}]", d.target, s.shape)));
                            }
                        }
                        let io = (out, vt.shape[1]);
                        if *dims.get_or_insert(io) != io {
                            return Err(Error::manifest(format!("delta for '{}': blocks disagree on [out, in]", d.target)));
                        }
                    }
                    let (out, inp) = dims.unwrap();
                    if let Some(ts) = &target_shape {
                        if ts != &[out, inp] {
                            return Err(Error::manifest(format!("delta for '{}': blocks give [{out}, {inp}], base tensor has {ts:?}", d.target)));
                        }
                    }
                    if let Some(p) = input_perm {
                        let p = part(p)?;
                        if p.encoding != Encoding::RawI32 || p.shape != [inp] {
                            return Err(Error::manifest(format!("delta for '{}': input_perm must be i32 of shape [{inp}]", d.target)));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Shared by validation: the quant params an encoding requires.
pub(crate) fn check_quant(t: &TensorEntry, enc: Encoding) -> Result<Option<QuantParams>> {
    match (enc.kind(), &t.quant) {
        (EncodingKind::Raw { .. }, None) => Ok(None),
        (EncodingKind::Raw { .. }, Some(_)) => Err(Error::manifest(format!("tensor '{}': raw encoding {} takes no quant params", t.name, enc.name()))),
        (_, None) => Err(Error::manifest(format!("tensor '{}': encoding {} needs quant params", t.name, enc.name()))),
        (_, Some(q)) => {
            if q.scale_dtype == ParamDType::U8 {
                return Err(Error::manifest(format!("tensor '{}': scale_dtype must be f32, f16 or bf16", t.name)));
            }
            match (q.granularity, q.group_size) {
                (ScaleGranularity::Group, Some(g)) if g > 0 => {}
                (ScaleGranularity::Group, _) => return Err(Error::manifest(format!("tensor '{}': granularity 'group' needs group_size > 0", t.name))),
                (_, Some(_)) => return Err(Error::manifest(format!("tensor '{}': group_size is only allowed with granularity 'group'", t.name))),
                _ => {}
            }
            if let ZeroPoint::Constant { value } = q.zero {
                if !value.is_finite() {
                    return Err(Error::manifest(format!("tensor '{}': constant zero point must be finite", t.name)));
                }
            }
            Ok(Some(*q))
        }
    }
}
