//! Streaming, atomic writer. Tensor data goes to a staging file beside the target as it
//! arrives (a compressor never holds the whole delta in memory); `finish` writes prelude,
//! manifest and data to a second temporary file, fsyncs it, renames it over the target and
//! fsyncs the directory. A writer dropped or killed before `finish` leaves no file under the
//! target name (only hidden temporaries, removed on drop).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::encoding::{Encoding, EncodingKind};
use crate::error::{Error, Result};
use crate::manifest::{Manifest, ManifestHeader, QuantParams, Segment, TensorEntry};
use crate::pack;
use crate::quant::TensorLayout;
use crate::reader::Prelude;
use crate::{hash_hex, spec, xxh3_64};

pub struct DpkWriter {
    path: PathBuf,
    dir: PathBuf,
    staging: NamedTempFile,
    pos: u64,
    tensors: Vec<TensorEntry>,
    names: HashSet<String>,
}

const ZEROS: [u8; spec::DATA_ALIGN as usize] = [0; spec::DATA_ALIGN as usize];

fn temp_in(dir: &Path, path: &Path, suffix: &str) -> Result<NamedTempFile> {
    let stem = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{stem}."))
        .suffix(suffix)
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))
}

impl DpkWriter {
    pub fn create(path: impl AsRef<Path>) -> Result<DpkWriter> {
        let path = path.as_ref().to_path_buf();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if path.is_dir() {
            return Err(Error::arg(format!("{} is a directory", path.display())));
        }
        let staging = temp_in(&dir, &path, ".data")?;
        Ok(DpkWriter { path, dir, staging, pos: 0, tensors: Vec::new(), names: HashSet::new() })
    }

    fn pad_to(&mut self, align: u64) -> Result<()> {
        let target = spec::align_up(self.pos, align).ok_or_else(|| Error::arg("data section overflows"))?;
        let mut gap = (target - self.pos) as usize;
        while gap > 0 {
            let n = gap.min(ZEROS.len());
            self.staging.write_all(&ZEROS[..n]).map_err(|e| Error::io(&self.path, e))?;
            gap -= n;
        }
        self.pos = target;
        Ok(())
    }

    /// Add a tensor whose segments are already in their on-disk form. Every other `add_*`
    /// ends here; lengths are checked against the encoding before anything is written.
    pub fn add_encoded(
        &mut self,
        name: &str,
        shape: &[u64],
        encoding: Encoding,
        quant: Option<QuantParams>,
        segments: &[(&str, &[u8])],
        mut stats: BTreeMap<String, f64>,
    ) -> Result<()> {
        if self.names.contains(name) {
            return Err(Error::arg(format!("tensor '{name}' was already added")));
        }
        let mut entry = TensorEntry {
            name: name.to_owned(),
            shape: shape.to_vec(),
            encoding: encoding.id(),
            encoding_name: Some(encoding.name().to_owned()),
            quant,
            segments: BTreeMap::new(),
            stats: BTreeMap::new(),
        };
        let layout = TensorLayout::of(&entry).map_err(|e| Error::arg(e.to_string()))?;
        let expected = layout.segment_lengths();
        if segments.len() != expected.len() {
            let want: Vec<&str> = expected.iter().map(|(r, _)| *r).collect();
            return Err(Error::arg(format!("tensor '{name}': encoding {} needs segments {want:?}, got {}", encoding.name(), segments.len())));
        }
        for (role, len) in &expected {
            let bytes = segments.iter().find(|(r, _)| r == role).map(|(_, b)| *b).ok_or_else(|| Error::arg(format!("tensor '{name}': missing segment '{role}'")))?;
            if bytes.len() as u64 != *len {
                return Err(Error::arg(format!("tensor '{name}', segment '{role}': {} bytes given, shape {shape:?} with encoding {} needs {len}", bytes.len(), encoding.name())));
            }
        }
        for (k, (role, _)) in expected.iter().enumerate() {
            let bytes = segments.iter().find(|(r, _)| r == role).unwrap().1;
            self.pad_to(if k == 0 { spec::DATA_ALIGN } else { spec::SEGMENT_ALIGN })?;
            self.staging.write_all(bytes).map_err(|e| Error::io(&self.path, e))?;
            entry.segments.insert((*role).to_owned(), Segment { offset: self.pos, length: bytes.len() as u64, xxh3: hash_hex(xxh3_64(bytes)) });
            self.pos += bytes.len() as u64;
        }
        stats.entry("bits_per_param".into()).or_insert_with(|| layout.bits_per_param());
        entry.stats = stats;
        self.names.insert(name.to_owned());
        self.tensors.push(entry);
        Ok(())
    }

    /// A raw tensor: `data` is `numel * itemsize` little-endian bytes.
    pub fn add_raw(&mut self, name: &str, shape: &[u64], encoding: Encoding, data: &[u8], stats: BTreeMap<String, f64>) -> Result<()> {
        if !matches!(encoding.kind(), EncodingKind::Raw { .. }) {
            return Err(Error::arg(format!("add_raw: {} is not a raw encoding", encoding.name())));
        }
        self.add_encoded(name, shape, encoding, None, &[("data", data)], stats)
    }

    /// Affine-quantized codes, one per byte (`[rows, cols]` of the 2-D view), packed here.
    #[allow(clippy::too_many_arguments)]
    pub fn add_quantized(
        &mut self,
        name: &str,
        shape: &[u64],
        bits: u32,
        codes: &[u8],
        quant: QuantParams,
        scales: &[u8],
        zeros: Option<&[u8]>,
        stats: BTreeMap<String, f64>,
    ) -> Result<()> {
        let enc = Encoding::quantized(bits)?;
        let (rows, cols) = view_2d(shape);
        let packed = pack_codes(name, codes, rows, cols, bits)?;
        let mut segs: Vec<(&str, &[u8])> = vec![("codes", &packed), ("scales", scales)];
        if let Some(z) = zeros {
            segs.push(("zeros", z));
        }
        self.add_encoded(name, shape, enc, Some(quant), &segs, stats)
    }

    /// 2:4 sparse codes: `codes` and `indices` are `[rows, cols / 2]`, one per byte; each
    /// consecutive pair of indices gives the strictly increasing positions (0..4) of the two
    /// kept values inside a block of four columns.
    #[allow(clippy::too_many_arguments)]
    pub fn add_sparse24(
        &mut self,
        name: &str,
        shape: &[u64],
        bits: u32,
        codes: &[u8],
        indices: &[u8],
        quant: QuantParams,
        scales: &[u8],
        zeros: Option<&[u8]>,
        stats: BTreeMap<String, f64>,
    ) -> Result<()> {
        let enc = Encoding::sparse24(bits)?;
        let (rows, cols) = view_2d(shape);
        if cols % 4 != 0 {
            return Err(Error::arg(format!("tensor '{name}': 2:4 sparsity needs the last dim to be a multiple of 4, got {cols}")));
        }
        let kc = cols / 2;
        if let Some((k, p)) = indices.chunks_exact(2).enumerate().find(|(_, p)| p[0] >= p[1] || p[1] > 3) {
            return Err(Error::arg(format!("tensor '{name}': index pair {k} is {p:?}, positions must be strictly increasing in 0..4")));
        }
        let packed = pack_codes(name, codes, rows, kc, bits)?;
        let packed_idx = pack_codes(name, indices, rows, kc, 2)?;
        let mut segs: Vec<(&str, &[u8])> = vec![("codes", &packed), ("indices", &packed_idx), ("scales", scales)];
        if let Some(z) = zeros {
            segs.push(("zeros", z));
        }
        self.add_encoded(name, shape, enc, Some(quant), &segs, stats)
    }

    /// Bytes of tensor data written so far.
    pub fn data_len(&self) -> u64 {
        self.pos
    }

    /// Validate the whole manifest, then publish the file atomically. Returns the manifest.
    pub fn finish(mut self, header: ManifestHeader) -> Result<Manifest> {
        let manifest = Manifest::from_header(header, std::mem::take(&mut self.tensors));
        manifest.validate(Some(self.pos)).map_err(|e| match e {
            Error::InvalidManifest(m) => Error::arg(format!("manifest would be invalid: {m}")),
            other => other,
        })?;
        let json = manifest.to_json();
        let prelude = Prelude { version: spec::FORMAT_VERSION, flags: 0, manifest_len: json.len() as u64, manifest_xxh3: xxh3_64(&json) };
        if prelude.manifest_len > spec::MAX_MANIFEST_LEN {
            return Err(Error::ManifestTooLarge { len: prelude.manifest_len, cap: spec::MAX_MANIFEST_LEN });
        }
        let io = |e| Error::io(&self.path, e);
        self.staging.as_file_mut().flush().map_err(io)?;
        let mut out = temp_in(&self.dir, &self.path, ".tmp")?;
        {
            let f = out.as_file_mut();
            f.write_all(&prelude.encode()).map_err(io)?;
            f.write_all(&json).map_err(io)?;
            let pad = (prelude.data_start() - spec::PRELUDE_LEN - prelude.manifest_len) as usize;
            f.write_all(&ZEROS[..pad]).map_err(io)?;
            let data = self.staging.as_file_mut();
            data.seek(SeekFrom::Start(0)).map_err(io)?;
            let copied = std::io::copy(data, f).map_err(io)?;
            if copied != self.pos {
                return Err(Error::io(&self.path, std::io::Error::other(format!("staged {} bytes but copied {copied}", self.pos))));
            }
            f.sync_all().map_err(io)?;
        }
        out.persist(&self.path).map_err(|e| Error::io(&self.path, e.error))?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(manifest)
    }
}

/// 2-D view `[rows, cols]` of a logical shape (see `TensorLayout`).
pub fn view_2d(shape: &[u64]) -> (usize, usize) {
    let cols = shape.last().copied().unwrap_or(1) as usize;
    // Saturating: an overflowing shape must reach the checked size arithmetic (and fail there
    // with InvalidArgument) instead of panicking here in debug builds.
    let rows = if shape.len() <= 1 { 1 } else { shape[..shape.len() - 1].iter().fold(1u64, |a, &d| a.saturating_mul(d)) as usize };
    (rows, cols)
}

fn pack_codes(name: &str, codes: &[u8], rows: usize, cols: usize, bits: u32) -> Result<Vec<u8>> {
    let n = pack::packed_len(rows as u64, cols as u64, bits).ok_or_else(|| Error::arg("packed size overflows"))?;
    let mut packed = vec![0u8; n as usize];
    pack::pack_rows(codes, rows, cols, bits, &mut packed).map_err(|e| Error::arg(format!("tensor '{name}': {e}")))?;
    Ok(packed)
}
