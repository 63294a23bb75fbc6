//! Memory-mapped, validating reader. Nothing is handed out before the prelude, the manifest
//! checksum and every range, length, alignment and overlap rule have been checked; segment
//! checksums are checked on first access (`VerifyMode::Lazy`), at open (`Full`), or never.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::{MmapMut, MmapOptions};

use crate::encoding::EncodingKind;
use crate::error::{Error, Result};
use crate::manifest::{is_hash_hex, Manifest, TensorEntry};
use crate::quant::{self, PackedParts, TensorLayout};
use crate::{hash_hex, pack, spec, xxh3_64};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VerifyMode {
    /// Never hash segments (trusted local files, fastest open).
    None,
    /// Hash a tensor's segments the first time it is accessed.
    #[default]
    Lazy,
    /// Hash every segment at open.
    Full,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    pub verify: VerifyMode,
}

/// The fixed-size prelude, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prelude {
    pub version: u32,
    pub flags: u32,
    pub manifest_len: u64,
    pub manifest_xxh3: u64,
}

impl Prelude {
    pub fn encode(&self) -> [u8; spec::PRELUDE_LEN as usize] {
        let mut b = [0u8; spec::PRELUDE_LEN as usize];
        b[..8].copy_from_slice(&spec::MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.manifest_xxh3.to_le_bytes());
        b
    }

    /// Parse and check the prelude against the file size.
    pub fn decode(b: &[u8], file_len: u64) -> Result<Prelude> {
        if (b.len() as u64) < spec::PRELUDE_LEN {
            return Err(Error::Truncated { what: "the prelude".into(), needed: spec::PRELUDE_LEN, have: file_len });
        }
        if b[..8] != spec::MAGIC {
            return Err(Error::BadMagic { found: b[..8].to_vec() });
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let p = Prelude { version: u32_at(8), flags: u32_at(12), manifest_len: u64_at(16), manifest_xxh3: u64_at(24) };
        if p.version != spec::FORMAT_VERSION {
            return Err(Error::UnsupportedVersion { found: p.version, known: spec::FORMAT_VERSION });
        }
        if p.flags != 0 {
            return Err(Error::UnsupportedFlags(p.flags));
        }
        if p.manifest_len > spec::MAX_MANIFEST_LEN {
            return Err(Error::ManifestTooLarge { len: p.manifest_len, cap: spec::MAX_MANIFEST_LEN });
        }
        let data_start = p.data_start();
        if data_start > file_len {
            return Err(Error::Truncated { what: format!("a {}-byte manifest and its padding", p.manifest_len), needed: data_start, have: file_len });
        }
        Ok(p)
    }

    /// Offset of the data section: the manifest's end rounded up to `DATA_ALIGN`.
    pub fn data_start(&self) -> u64 {
        // manifest_len is capped, so this cannot overflow.
        spec::align_up(spec::PRELUDE_LEN + self.manifest_len, spec::DATA_ALIGN).unwrap()
    }
}

/// An open `.dpk`: the mapping, the parsed manifest and per-tensor verification state.
pub struct DpkFile {
    path: PathBuf,
    // Private copy-on-write mapping: readers see the file's pages without a copy, and a
    // caller that writes through a tensor view (torch allows it) gets a private page instead
    // of a crash on a read-only page or a change to the file.
    map: MmapMut,
    manifest: Manifest,
    manifest_range: (usize, usize),
    layouts: Vec<TensorLayout>,
    index: HashMap<String, usize>,
    data_start: u64,
    verified: Vec<AtomicBool>,
}

/// One tensor's entry, layout and segment bytes.
pub struct TensorView<'a> {
    pub entry: &'a TensorEntry,
    pub layout: &'a TensorLayout,
    /// (role, bytes) in canonical role order.
    pub segments: Vec<(&'static str, &'a [u8])>,
}

impl<'a> TensorView<'a> {
    pub fn segment(&self, role: &str) -> Result<&'a [u8]> {
        self.segments
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, b)| *b)
            .ok_or_else(|| Error::layout(&self.entry.name, role, format!("encoding {} has no such segment", self.layout.encoding.name())))
    }

    fn parts(&self) -> Result<PackedParts<'a>> {
        Ok(PackedParts {
            codes: self.segment("codes")?,
            indices: self.segment("indices").ok(),
            scales: self.segment("scales")?,
            zeros: self.segment("zeros").ok(),
        })
    }

    /// Unpack the codes (one per byte, `[rows, code_cols]`) into `out`.
    pub fn unpack_codes(&self, out: &mut [u8]) -> Result<()> {
        let bits = self.layout.encoding.bits().ok_or_else(|| Error::arg(format!("tensor '{}' is raw, it has no codes", self.entry.name)))?;
        pack::unpack_rows(self.segment("codes")?, self.layout.rows as usize, self.layout.code_cols() as usize, bits, out)
    }

    /// The tensor's values as f32 (dequantized or converted), `numel` elements.
    pub fn to_f32(&self, out: &mut [f32]) -> Result<()> {
        if out.len() as u64 != self.layout.numel {
            return Err(Error::arg(format!("tensor '{}' has {} elements, buffer holds {}", self.entry.name, self.layout.numel, out.len())));
        }
        match self.layout.encoding.kind() {
            EncodingKind::Raw { .. } => quant::raw_to_f32(self.layout.encoding, self.segment("data")?, out),
            _ => quant::dequantize_into(&self.entry.name, self.layout, &self.parts()?, out),
        }
    }
}

impl DpkFile {
    pub fn open(path: impl AsRef<Path>, opts: OpenOptions) -> Result<DpkFile> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut head = Vec::with_capacity(spec::PRELUDE_LEN as usize);
        (&mut file).take(spec::PRELUDE_LEN).read_to_end(&mut head).map_err(|e| Error::io(path, e))?;
        let prelude = Prelude::decode(&head, file_len)?;
        let len = usize::try_from(file_len).map_err(|_| Error::arg("file too large for this address space"))?;
        // SAFETY: a private mapping of a file we opened. If another process truncates the file
        // while it is mapped, accesses past the new end fault (SIGBUS) — the usual mmap caveat,
        // documented in docs/FORMAT.md; writers never modify a published file in place.
        let map = unsafe { MmapOptions::new().len(len).map_copy(&file) }.map_err(|e| Error::io(path, e))?;
        DpkFile::from_mapping(path.to_path_buf(), map, prelude, opts)
    }

    fn from_mapping(path: PathBuf, map: MmapMut, prelude: Prelude, opts: OpenOptions) -> Result<DpkFile> {
        let m0 = spec::PRELUDE_LEN as usize;
        let m1 = m0 + prelude.manifest_len as usize;
        let computed = xxh3_64(&map[m0..m1]);
        if computed != prelude.manifest_xxh3 {
            return Err(Error::ManifestChecksum { stored: prelude.manifest_xxh3, computed });
        }
        let manifest = Manifest::parse(&map[m0..m1])?;
        let data_start = prelude.data_start();
        let layouts = manifest.validate(Some(map.len() as u64 - data_start))?;
        let index = manifest.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        let verified = manifest.tensors.iter().map(|_| AtomicBool::new(opts.verify == VerifyMode::None)).collect();
        let f = DpkFile { path, map, manifest, manifest_range: (m0, m1), layouts, index, data_start, verified };
        if opts.verify == VerifyMode::Full {
            f.verify_all()?;
        }
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The manifest exactly as stored (UTF-8 JSON).
    pub fn manifest_json(&self) -> &[u8] {
        &self.map[self.manifest_range.0..self.manifest_range.1]
    }
    pub fn len(&self) -> usize {
        self.manifest.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.manifest.tensors.is_empty()
    }
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }
    pub fn data_start(&self) -> u64 {
        self.data_start
    }
    pub fn index_of(&self, name: &str) -> Result<usize> {
        self.index.get(name).copied().ok_or_else(|| Error::TensorNotFound(name.to_owned()))
    }
    pub fn layout(&self, i: usize) -> &TensorLayout {
        &self.layouts[i]
    }

    /// Base address of the mapping, for zero-copy views handed to other runtimes. The caller
    /// keeps this `DpkFile` alive for as long as it uses the pointer.
    pub fn map_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// Absolute file offset and length of one segment (already bounds-checked at open).
    pub fn segment_range(&self, i: usize, role: &str) -> Result<(usize, usize)> {
        let t = &self.manifest.tensors[i];
        let s = t.segments.get(role).ok_or_else(|| Error::layout(&t.name, role, "no such segment"))?;
        Ok(((self.data_start + s.offset) as usize, s.length as usize))
    }

    fn segment_bytes(&self, i: usize, role: &str) -> Result<&[u8]> {
        let (o, l) = self.segment_range(i, role)?;
        Ok(&self.map[o..o + l])
    }

    /// Hash every segment of tensor `i` and compare with the manifest.
    pub fn verify_tensor(&self, i: usize) -> Result<()> {
        let t = &self.manifest.tensors[i];
        for (role, seg) in &t.segments {
            let computed = hash_hex(xxh3_64(self.segment_bytes(i, role)?));
            if computed != seg.xxh3 {
                debug_assert!(is_hash_hex(&seg.xxh3));
                return Err(Error::Checksum { tensor: t.name.clone(), segment: role.clone(), stored: seg.xxh3.clone(), computed });
            }
        }
        self.verified[i].store(true, Ordering::Release);
        Ok(())
    }

    /// Verify tensor `i` unless it was already verified (or verification is off).
    pub fn ensure_verified(&self, i: usize) -> Result<()> {
        if self.verified[i].load(Ordering::Acquire) {
            Ok(())
        } else {
            self.verify_tensor(i)
        }
    }

    /// Hash every segment; the first fault is returned.
    pub fn verify_all(&self) -> Result<()> {
        (0..self.len()).try_for_each(|i| self.verify_tensor(i))
    }

    /// Hash every segment and collect every fault (for `deltapack verify`).
    pub fn check_all(&self) -> Vec<Error> {
        (0..self.len()).filter_map(|i| self.verify_tensor(i).err()).collect()
    }

    /// A verified view of tensor `i`.
    pub fn tensor_at(&self, i: usize) -> Result<TensorView<'_>> {
        if i >= self.len() {
            return Err(Error::arg(format!("tensor index {i} out of range (file has {})", self.len())));
        }
        self.ensure_verified(i)?;
        let layout = &self.layouts[i];
        let segments = layout
            .segment_lengths()
            .into_iter()
            .map(|(role, _)| Ok((role, self.segment_bytes(i, role)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(TensorView { entry: &self.manifest.tensors[i], layout, segments })
    }

    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        self.tensor_at(self.index_of(name)?)
    }

    /// Refuse to apply this delta to a base whose tensors differ from the recorded fingerprints.
    /// `actual` maps a base tensor name to its (dtype, shape, xxh3-64).
    pub fn check_base<'a>(&self, actual: impl Fn(&str) -> Option<(String, Vec<u64>, u64)> + 'a) -> Result<()> {
        for (name, fp) in &self.manifest.base.tensors {
            match actual(name) {
                None => return Err(Error::BaseMismatch(format!("base model has no tensor '{name}'"))),
                Some((dtype, shape, h)) => {
                    if shape != fp.shape {
                        return Err(Error::BaseMismatch(format!("'{name}' has shape {shape:?}, the delta was made for {:?}", fp.shape)));
                    }
                    if dtype != fp.dtype {
                        return Err(Error::BaseMismatch(format!("'{name}' is {dtype}, the delta was made for {}", fp.dtype)));
                    }
                    if hash_hex(h) != fp.xxh3 {
                        return Err(Error::BaseMismatch(format!("'{name}' hashes to {}, the delta was made for a base where it hashes to {}", hash_hex(h), fp.xxh3)));
                    }
                }
            }
        }
        Ok(())
    }
}
