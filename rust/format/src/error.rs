use std::path::Path;

/// Everything that can go wrong reading or writing a `.dpk`. Each variant maps to one typed
/// Python exception and one C status code; messages name the tensor and segment at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io { path: String, #[source] source: std::io::Error },
    #[error("not a .dpk file: magic bytes are {found:02x?}")]
    BadMagic { found: Vec<u8> },
    #[error("truncated file: {what} needs {needed} bytes but the file has {have}")]
    Truncated { what: String, needed: u64, have: u64 },
    #[error("unsupported format version {found} (this reader knows version {known})")]
    UnsupportedVersion { found: u32, known: u32 },
    #[error("unsupported prelude flags {0:#010x} (version 1 defines none)")]
    UnsupportedFlags(u32),
    #[error("manifest length {len} exceeds the cap of {cap} bytes")]
    ManifestTooLarge { len: u64, cap: u64 },
    #[error("manifest checksum mismatch: prelude says {stored:016x}, manifest bytes hash to {computed:016x}")]
    ManifestChecksum { stored: u64, computed: u64 },
    #[error("manifest is not valid JSON: {0}")]
    ManifestJson(String),
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("tensor '{tensor}': unknown encoding id {id}")]
    UnknownEncoding { tensor: String, id: u32 },
    #[error("tensor '{tensor}', segment '{segment}': {detail}")]
    Layout { tensor: String, segment: String, detail: String },
    #[error("segments overlap: {first} [{first_start}, {first_end}) and {second} starting at {second_start}")]
    Overlap { first: String, first_start: u64, first_end: u64, second: String, second_start: u64 },
    #[error("checksum mismatch in tensor '{tensor}', segment '{segment}': manifest says {stored}, data hashes to {computed}")]
    Checksum { tensor: String, segment: String, stored: String, computed: String },
    #[error("no tensor named '{0}' in this file")]
    TensorNotFound(String),
    #[error("delta does not match this base model: {0}")]
    BaseMismatch(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.display().to_string(), source }
    }
    pub fn layout(tensor: &str, segment: &str, detail: impl Into<String>) -> Self {
        Error::Layout { tensor: tensor.to_owned(), segment: segment.to_owned(), detail: detail.into() }
    }
    pub fn arg(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn manifest(msg: impl Into<String>) -> Self {
        Error::InvalidManifest(msg.into())
    }

    /// Stable numeric code used by the C ABI (0 is success there). Never reuse a number.
    pub fn code(&self) -> i32 {
        match self {
            Error::Io { .. } => 1,
            Error::BadMagic { .. } => 2,
            Error::Truncated { .. } => 3,
            Error::UnsupportedVersion { .. } => 4,
            Error::UnsupportedFlags(_) => 5,
            Error::ManifestTooLarge { .. } => 6,
            Error::ManifestChecksum { .. } => 7,
            Error::ManifestJson(_) => 8,
            Error::InvalidManifest(_) => 9,
            Error::UnknownEncoding { .. } => 10,
            Error::Layout { .. } => 11,
            Error::Overlap { .. } => 12,
            Error::Checksum { .. } => 13,
            Error::TensorNotFound(_) => 14,
            Error::BaseMismatch(_) => 15,
            Error::InvalidArgument(_) => 16,
        }
    }
}
