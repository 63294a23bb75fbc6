//! The 2-D view of a tensor, the byte length of each segment, and dequantization.

use crate::encoding::{Encoding, EncodingKind, ParamDType};
use crate::error::{Error, Result};
use crate::manifest::{check_quant, QuantParams, ScaleGranularity, TensorEntry, ZeroPoint};
use crate::pack;
use crate::spec::MAX_NDIM;

/// Derived, validated facts about one tensor entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorLayout {
    pub encoding: Encoding,
    pub shape: Vec<u64>,
    /// 2-D view: rows = product of all but the last dim (1 for 0-D and 1-D), cols = last dim.
    pub rows: u64,
    pub cols: u64,
    pub numel: u64,
    pub quant: Option<QuantParams>,
}

impl TensorLayout {
    pub fn of(t: &TensorEntry) -> Result<TensorLayout> {
        let encoding = Encoding::from_id(t.encoding).ok_or_else(|| Error::UnknownEncoding { tensor: t.name.clone(), id: t.encoding })?;
        if let Some(n) = &t.encoding_name {
            if n != encoding.name() {
                return Err(Error::manifest(format!("tensor '{}': encoding_name '{n}' disagrees with encoding id {} ({})", t.name, t.encoding, encoding.name())));
            }
        }
        if t.shape.len() > MAX_NDIM {
            return Err(Error::manifest(format!("tensor '{}': {} dimensions (at most {MAX_NDIM})", t.name, t.shape.len())));
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| Error::manifest(format!("tensor '{}': element count of shape {:?} overflows", t.name, t.shape)))?;
        let cols = t.shape.last().copied().unwrap_or(1);
        let rows = if t.shape.len() <= 1 { 1 } else { t.shape[..t.shape.len() - 1].iter().product() };
        let quant = check_quant(t, encoding)?;
        if let EncodingKind::Sparse24 { .. } = encoding.kind() {
            if cols % 4 != 0 {
                return Err(Error::manifest(format!("tensor '{}': 2:4 sparse encodings need the last dim to be a multiple of 4, got {cols}", t.name)));
            }
        }
        Ok(TensorLayout { encoding, shape: t.shape.clone(), rows, cols, numel, quant })
    }

    /// Columns that carry codes: all of them, or the kept half under 2:4 sparsity.
    pub fn code_cols(&self) -> u64 {
        match self.encoding.kind() {
            EncodingKind::Sparse24 { .. } => self.cols / 2,
            _ => self.cols,
        }
    }

    /// (rows, columns) of the scale / zero grid.
    pub fn scale_grid(&self) -> (u64, u64) {
        let q = self.quant.as_ref().expect("packed encodings have quant params");
        match q.granularity {
            ScaleGranularity::Tensor => (1, 1),
            ScaleGranularity::Row => (self.rows, 1),
            ScaleGranularity::Group => (self.rows, self.code_cols().div_ceil(q.group_size.unwrap())),
        }
    }

    /// Segment roles in canonical order, each with its exact byte length. The first role's
    /// segment is the one that must start on a `DATA_ALIGN` boundary.
    pub fn segment_lengths(&self) -> Vec<(&'static str, u64)> {
        let overflow = u64::MAX; // impossible length: validation reports a mismatch
        match self.encoding.kind() {
            EncodingKind::Raw { itemsize } => vec![("data", self.numel.checked_mul(itemsize).unwrap_or(overflow))],
            EncodingKind::Quantized { bits } | EncodingKind::Sparse24 { bits } => {
                let q = self.quant.as_ref().unwrap();
                let kc = self.code_cols();
                let mut v = vec![("codes", pack::packed_len(self.rows, kc, bits).unwrap_or(overflow))];
                if let EncodingKind::Sparse24 { .. } = self.encoding.kind() {
                    v.push(("indices", pack::packed_len(self.rows, kc, 2).unwrap_or(overflow)));
                }
                let (gr, gc) = self.scale_grid();
                let n = gr.checked_mul(gc).unwrap_or(overflow);
                v.push(("scales", n.checked_mul(q.scale_dtype.itemsize()).unwrap_or(overflow)));
                if let ZeroPoint::Stored { dtype } = q.zero {
                    v.push(("zeros", n.checked_mul(dtype.itemsize()).unwrap_or(overflow)));
                }
                v
            }
        }
    }

    /// Bits per logical parameter counting every stored byte of every segment.
    pub fn bits_per_param(&self) -> f64 {
        let bytes: u64 = self.segment_lengths().iter().map(|(_, l)| l).sum();
        if self.numel == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / self.numel as f64
        }
    }
}

/// Segment bytes of one tensor, in canonical role order.
pub struct PackedParts<'a> {
    pub codes: &'a [u8],
    pub indices: Option<&'a [u8]>,
    pub scales: &'a [u8],
    pub zeros: Option<&'a [u8]>,
}

/// Dequantize a packed tensor into `out` (`numel` f32, row-major over the logical shape).
pub fn dequantize_into(name: &str, l: &TensorLayout, parts: &PackedParts<'_>, out: &mut [f32]) -> Result<()> {
    let q = l.quant.as_ref().ok_or_else(|| Error::arg("dequantize: raw tensors are not quantized"))?;
    let bits = l.encoding.bits().unwrap();
    if out.len() as u64 != l.numel {
        return Err(Error::arg(format!("dequantize: output has {} elements, tensor has {}", out.len(), l.numel)));
    }
    // No elements: a shape like [2^62, 0] must not loop over its (huge) row count.
    if l.numel == 0 {
        return Ok(());
    }
    let (rows, kc) = (l.rows as usize, l.code_cols() as usize);
    let mut codes = vec![0u8; rows * kc];
    pack::unpack_rows(parts.codes, rows, kc, bits, &mut codes)?;
    let (_, gc) = l.scale_grid();
    let scale_idx = |r: usize, c: usize| -> usize {
        match q.granularity {
            ScaleGranularity::Tensor => 0,
            ScaleGranularity::Row => r,
            ScaleGranularity::Group => r * gc as usize + c / q.group_size.unwrap() as usize,
        }
    };
    let zero = |i: usize| -> f32 {
        match (q.zero, parts.zeros) {
            (ZeroPoint::Constant { value }, _) => value as f32,
            (ZeroPoint::Stored { dtype }, Some(z)) => dtype.read_f32(z, i),
            (ZeroPoint::Stored { .. }, None) => unreachable!("validated: stored zeros have a segment"),
        }
    };
    let value = |r: usize, c: usize| -> f32 {
        let i = scale_idx(r, c);
        (codes[r * kc + c] as f32 - zero(i)) * q.scale_dtype.read_f32(parts.scales, i)
    };
    match l.encoding.kind() {
        EncodingKind::Quantized { .. } => {
            for r in 0..rows {
                for c in 0..kc {
                    out[r * kc + c] = value(r, c);
                }
            }
        }
        EncodingKind::Sparse24 { .. } => {
            let mut idx = vec![0u8; rows * kc];
            pack::unpack_rows(parts.indices.unwrap(), rows, kc, 2, &mut idx)?;
            out.fill(0.0);
            let cols = l.cols as usize;
            for r in 0..rows {
                for pair in 0..kc / 2 {
                    let (c0, c1) = (2 * pair, 2 * pair + 1);
                    let (i0, i1) = (idx[r * kc + c0] as usize, idx[r * kc + c1] as usize);
                    if i0 >= i1 {
                        return Err(Error::layout(name, "indices", format!("row {r}, block {pair}: positions {i0}, {i1} are not strictly increasing")));
                    }
                    out[r * cols + 4 * pair + i0] = value(r, c0);
                    out[r * cols + 4 * pair + i1] = value(r, c1);
                }
            }
        }
        EncodingKind::Raw { .. } => unreachable!(),
    }
    Ok(())
}

/// Read a raw floating-point tensor as f32.
pub fn raw_to_f32(enc: Encoding, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let dt = match enc {
        Encoding::RawF32 => ParamDType::F32,
        Encoding::RawF16 => ParamDType::F16,
        Encoding::RawBF16 => ParamDType::BF16,
        _ => return Err(Error::arg(format!("cannot read {} as floating point", enc.name()))),
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = dt.read_f32(bytes, i);
    }
    Ok(())
}
