//! Tensor encodings with stable numeric ids (never reused, never renumbered).

use crate::error::{Error, Result};

/// The storage encoding of one tensor. The discriminant is the id written in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Encoding {
    RawF32 = 1,
    RawF16 = 2,
    RawBF16 = 3,
    RawI8 = 4,
    RawU8 = 5,
    RawI32 = 6,
    RawI64 = 7,
    /// Affine-quantized codes, `16 + bits`: value = (code - zero) * scale.
    Q1 = 17,
    Q2 = 18,
    Q3 = 19,
    Q4 = 20,
    Q8 = 24,
    /// 2:4 structured-sparse affine-quantized codes, `32 + bits`.
    S24Q2 = 34,
    S24Q3 = 35,
    S24Q4 = 36,
    S24Q8 = 40,
}

/// What a family of encodings stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodingKind {
    /// One segment `data`: little-endian elements of `itemsize` bytes, row-major.
    Raw { itemsize: u64 },
    /// Segments `codes`, `scales`, and `zeros` when the zero point is stored.
    Quantized { bits: u32 },
    /// Segments `codes`, `indices`, `scales`, and `zeros` when the zero point is stored.
    Sparse24 { bits: u32 },
}

pub const ALL_ENCODINGS: [Encoding; 16] = [
    Encoding::RawF32,
    Encoding::RawF16,
    Encoding::RawBF16,
    Encoding::RawI8,
    Encoding::RawU8,
    Encoding::RawI32,
    Encoding::RawI64,
    Encoding::Q1,
    Encoding::Q2,
    Encoding::Q3,
    Encoding::Q4,
    Encoding::Q8,
    Encoding::S24Q2,
    Encoding::S24Q3,
    Encoding::S24Q4,
    Encoding::S24Q8,
];

/// Bit widths the packer supports.
pub const PACK_BITS: [u32; 5] = [1, 2, 3, 4, 8];

impl Encoding {
    pub fn id(self) -> u32 {
        self as u32
    }

    pub fn from_id(id: u32) -> Option<Encoding> {
        ALL_ENCODINGS.iter().copied().find(|e| e.id() == id)
    }

    pub fn from_name(name: &str) -> Option<Encoding> {
        ALL_ENCODINGS.iter().copied().find(|e| e.name() == name)
    }

    /// The manifest's informative `encoding_name`.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::RawF32 => "f32",
            Encoding::RawF16 => "f16",
            Encoding::RawBF16 => "bf16",
            Encoding::RawI8 => "i8",
            Encoding::RawU8 => "u8",
            Encoding::RawI32 => "i32",
            Encoding::RawI64 => "i64",
            Encoding::Q1 => "q1",
            Encoding::Q2 => "q2",
            Encoding::Q3 => "q3",
            Encoding::Q4 => "q4",
            Encoding::Q8 => "q8",
            Encoding::S24Q2 => "s24q2",
            Encoding::S24Q3 => "s24q3",
            Encoding::S24Q4 => "s24q4",
            Encoding::S24Q8 => "s24q8",
        }
    }

    pub fn kind(self) -> EncodingKind {
        use Encoding::*;
        match self {
            RawF32 | RawI32 => EncodingKind::Raw { itemsize: 4 },
            RawF16 | RawBF16 => EncodingKind::Raw { itemsize: 2 },
            RawI8 | RawU8 => EncodingKind::Raw { itemsize: 1 },
            RawI64 => EncodingKind::Raw { itemsize: 8 },
            Q1 | Q2 | Q3 | Q4 | Q8 => EncodingKind::Quantized { bits: self.id() - 16 },
            S24Q2 | S24Q3 | S24Q4 | S24Q8 => EncodingKind::Sparse24 { bits: self.id() - 32 },
        }
    }

    pub fn quantized(bits: u32) -> Result<Encoding> {
        Encoding::from_id(16 + bits)
            .filter(|e| matches!(e.kind(), EncodingKind::Quantized { .. }))
            .ok_or_else(|| Error::arg(format!("no quantized encoding for {bits} bits (supported: 1, 2, 3, 4, 8)")))
    }

    pub fn sparse24(bits: u32) -> Result<Encoding> {
        Encoding::from_id(32 + bits)
            .filter(|e| matches!(e.kind(), EncodingKind::Sparse24 { .. }))
            .ok_or_else(|| Error::arg(format!("no 2:4 sparse encoding for {bits} bits (supported: 2, 3, 4, 8)")))
    }

    /// Code bit width of a packed encoding, `None` for raw encodings.
    pub fn bits(self) -> Option<u32> {
        match self.kind() {
            EncodingKind::Raw { .. } => None,
            EncodingKind::Quantized { bits } | EncodingKind::Sparse24 { bits } => Some(bits),
        }
    }
}

/// Element type of scales and stored zero points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamDType {
    F32,
    F16,
    BF16,
    U8,
}

impl ParamDType {
    pub fn itemsize(self) -> u64 {
        match self {
            ParamDType::F32 => 4,
            ParamDType::F16 | ParamDType::BF16 => 2,
            ParamDType::U8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ParamDType::F32 => "f32",
            ParamDType::F16 => "f16",
            ParamDType::BF16 => "bf16",
            ParamDType::U8 => "u8",
        }
    }

    /// Decode element `i` of a little-endian array of this type.
    #[inline]
    pub fn read_f32(self, bytes: &[u8], i: usize) -> f32 {
        match self {
            ParamDType::F32 => f32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()),
            ParamDType::F16 => half::f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
            ParamDType::BF16 => half::bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
            ParamDType::U8 => bytes[i] as f32,
        }
    }
}
