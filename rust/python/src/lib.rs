//! `deltapack._core`: thin pyo3 bindings of `deltapack-format`. Policy lives in the Python
//! facade (`python/deltapack/format.py`); this crate only converts types and errors.
//!
//! Buffers cross the boundary as (address, length) pairs taken from contiguous numpy/torch
//! arrays that the facade keeps alive for the duration of the call: the abi3-py310 limited API
//! has no buffer protocol. Views out of a file are DLPack capsules over the mapping that keep
//! the mapping alive until the consumer's tensor is freed.

use std::collections::BTreeMap;
use std::ffi::{c_void, CStr};
use std::sync::Arc;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use deltapack_format::encoding::ALL_ENCODINGS;
use deltapack_format::{self as fmt, DpkFile, DpkWriter, Encoding, Error, ManifestHeader, OpenOptions, QuantParams, VerifyMode};

create_exception!(deltapack, DeltapackError, PyException, "Base class of every deltapack error.");
create_exception!(deltapack, FormatError, DeltapackError, "The file is not a valid .dpk (structure, layout or manifest).");
create_exception!(deltapack, UnsupportedError, FormatError, "A valid file that uses a version, flag or encoding this reader does not know.");
create_exception!(deltapack, ChecksumError, FormatError, "Stored bytes do not match their checksum.");
create_exception!(deltapack, BaseMismatchError, DeltapackError, "The delta was made for a different base model.");
create_exception!(deltapack, TensorNotFoundError, DeltapackError, "No tensor of that name in the file.");

fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
        Error::Io { .. } => PyOSError::new_err(msg),
        Error::UnsupportedVersion { .. } | Error::UnsupportedFlags(_) | Error::UnknownEncoding { .. } => UnsupportedError::new_err(msg),
        Error::ManifestChecksum { .. } | Error::Checksum { .. } => ChecksumError::new_err(msg),
        Error::TensorNotFound(_) => TensorNotFoundError::new_err(msg),
        Error::BaseMismatch(_) => BaseMismatchError::new_err(msg),
        Error::InvalidArgument(_) => PyValueError::new_err(msg),
        Error::BadMagic { .. }
        | Error::Truncated { .. }
        | Error::ManifestTooLarge { .. }
        | Error::ManifestJson(_)
        | Error::InvalidManifest(_)
        | Error::Layout { .. }
        | Error::Overlap { .. } => FormatError::new_err(msg),
    }
}

trait OrPy<T> {
    fn py_err(self) -> PyResult<T>;
}
impl<T> OrPy<T> for fmt::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// Borrow `len` bytes at `addr`. The facade passes addresses of contiguous arrays it holds.
unsafe fn borrow<'a>(addr: usize, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(addr as *const u8, len)
    }
}
unsafe fn borrow_mut<'a>(addr: usize, len: usize) -> &'a mut [u8] {
    if len == 0 {
        &mut []
    } else {
        std::slice::from_raw_parts_mut(addr as *mut u8, len)
    }
}

// ---------------------------------------------------------------- DLPack (v0.8 legacy ABI)
#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}
#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}
#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}
#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}
const KDL_CPU: i32 = 1;
const KDL_UINT: u8 = 1;
const DLTENSOR: &CStr = c"dltensor";

/// What a DLPack view owns: its shape array and a reference that keeps the mapping alive.
struct ViewCtx {
    shape: [i64; 1],
    _file: Arc<DpkFile>,
}

unsafe extern "C" fn dl_deleter(t: *mut DLManagedTensor) {
    if t.is_null() {
        return;
    }
    let t = Box::from_raw(t);
    drop(Box::from_raw(t.manager_ctx as *mut ViewCtx));
}

unsafe extern "C" fn capsule_destructor(capsule: *mut pyo3::ffi::PyObject) {
    // A consumer renames the capsule to "used_dltensor" and takes ownership; only an
    // unconsumed capsule still owns its tensor.
    if pyo3::ffi::PyCapsule_IsValid(capsule, DLTENSOR.as_ptr()) == 1 {
        let t = pyo3::ffi::PyCapsule_GetPointer(capsule, DLTENSOR.as_ptr()) as *mut DLManagedTensor;
        if let Some(d) = (*t).deleter {
            d(t);
        }
    }
}

/// A 1-D uint8 DLPack capsule over `len` bytes at absolute file offset `off` of the mapping.
fn dlpack_u8(py: Python<'_>, file: &Arc<DpkFile>, off: usize, len: usize) -> PyResult<Py<PyAny>> {
    // `data` points at the segment itself (byte_offset 0): torch refuses a non-zero
    // byte_offset. Segments are 64-byte aligned and tensors' first segments page-aligned.
    let addr = file.map_ptr() as usize + off;
    let mut ctx = Box::new(ViewCtx { shape: [len as i64], _file: Arc::clone(file) });
    let shape = ctx.shape.as_mut_ptr();
    let managed = Box::new(DLManagedTensor {
        dl_tensor: DLTensor {
            data: addr as *mut c_void,
            device: DLDevice { device_type: KDL_CPU, device_id: 0 },
            ndim: 1,
            dtype: DLDataType { code: KDL_UINT, bits: 8, lanes: 1 },
            shape,
            strides: std::ptr::null_mut(),
            byte_offset: 0,
        },
        manager_ctx: Box::into_raw(ctx) as *mut c_void,
        deleter: Some(dl_deleter),
    });
    let raw = Box::into_raw(managed);
    // SAFETY: PyCapsule_New with a valid pointer, static name and a destructor that frees it.
    let cap = unsafe { pyo3::ffi::PyCapsule_New(raw as *mut c_void, DLTENSOR.as_ptr(), Some(capsule_destructor)) };
    if cap.is_null() {
        unsafe { dl_deleter(raw) };
        return Err(PyErr::fetch(py));
    }
    Ok(unsafe { Bound::from_owned_ptr(py, cap) }.unbind())
}

// ---------------------------------------------------------------- reader
fn verify_mode(s: &str) -> PyResult<VerifyMode> {
    match s {
        "none" => Ok(VerifyMode::None),
        "lazy" => Ok(VerifyMode::Lazy),
        "full" => Ok(VerifyMode::Full),
        _ => Err(PyValueError::new_err(format!("verify must be 'none', 'lazy' or 'full', not '{s}'"))),
    }
}

/// An open .dpk file (the mapping is shared with every view handed out).
#[pyclass(module = "deltapack._core", name = "File", frozen)]
struct PyFile {
    inner: Arc<DpkFile>,
}

#[pymethods]
impl PyFile {
    #[new]
    #[pyo3(signature = (path, verify = "lazy"))]
    fn new(py: Python<'_>, path: std::path::PathBuf, verify: &str) -> PyResult<Self> {
        let opts = OpenOptions { verify: verify_mode(verify)? };
        let f = py.detach(|| DpkFile::open(&path, opts)).py_err()?;
        Ok(PyFile { inner: Arc::new(f) })
    }

    #[getter]
    fn path(&self) -> String {
        self.inner.path().display().to_string()
    }

    /// The manifest exactly as stored.
    fn manifest_json(&self) -> PyResult<String> {
        String::from_utf8(self.inner.manifest_json().to_vec()).map_err(|e| FormatError::new_err(format!("manifest is not UTF-8: {e}")))
    }

    fn tensor_names(&self) -> Vec<String> {
        self.inner.manifest().tensors.iter().map(|t| t.name.clone()).collect()
    }

    fn file_len(&self) -> u64 {
        self.inner.file_len()
    }

    fn data_start(&self) -> u64 {
        self.inner.data_start()
    }

    /// (address, length) of the whole mapping, so callers can check views are inside it.
    fn map_range(&self) -> (usize, usize) {
        (self.inner.map_ptr() as usize, self.inner.file_len() as usize)
    }

    /// Derived layout facts of one tensor.
    fn layout<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        let i = self.inner.index_of(name).py_err()?;
        let l = self.inner.layout(i);
        let d = PyDict::new(py);
        d.set_item("encoding", l.encoding.id())?;
        d.set_item("encoding_name", l.encoding.name())?;
        d.set_item("bits", l.encoding.bits())?;
        d.set_item("shape", l.shape.clone())?;
        d.set_item("rows", l.rows)?;
        d.set_item("cols", l.cols)?;
        d.set_item("code_cols", l.code_cols())?;
        d.set_item("numel", l.numel)?;
        d.set_item("bits_per_param", l.bits_per_param())?;
        if l.quant.is_some() {
            d.set_item("scale_grid", l.scale_grid())?;
        }
        let roles: Vec<(&str, u64)> = l.segment_lengths();
        d.set_item("segments", roles)?;
        Ok(d)
    }

    /// A zero-copy uint8 DLPack capsule over one segment; checksums are verified first
    /// according to the open mode.
    fn segment(&self, py: Python<'_>, name: &str, role: &str) -> PyResult<Py<PyAny>> {
        let i = self.inner.index_of(name).py_err()?;
        let inner = Arc::clone(&self.inner);
        py.detach(|| inner.ensure_verified(i)).py_err()?;
        let (off, len) = self.inner.segment_range(i, role).py_err()?;
        dlpack_u8(py, &self.inner, off, len)
    }

    fn verify_tensor(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let i = self.inner.index_of(name).py_err()?;
        let inner = Arc::clone(&self.inner);
        py.detach(|| inner.verify_tensor(i)).py_err()
    }

    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        let inner = Arc::clone(&self.inner);
        py.detach(|| inner.verify_all()).py_err()
    }

    /// Every checksum fault as (tensor, segment, message); empty when the file is sound.
    fn check_all(&self, py: Python<'_>) -> Vec<(String, String, String)> {
        let inner = Arc::clone(&self.inner);
        py.detach(|| inner.check_all())
            .into_iter()
            .map(|e| match &e {
                Error::Checksum { tensor, segment, .. } => (tensor.clone(), segment.clone(), e.to_string()),
                _ => (String::new(), String::new(), e.to_string()),
            })
            .collect()
    }

    /// Unpack codes into a caller buffer of rows * code_cols bytes.
    fn unpack_codes_into(&self, py: Python<'_>, name: &str, addr: usize, len: usize) -> PyResult<()> {
        let inner = Arc::clone(&self.inner);
        py.detach(|| {
            let v = inner.tensor(name)?;
            v.unpack_codes(unsafe { borrow_mut(addr, len) })
        })
        .py_err()
    }

    /// Dequantize (or convert a raw float tensor) into a caller f32 buffer of numel elements.
    fn to_f32_into(&self, py: Python<'_>, name: &str, addr: usize, numel: usize) -> PyResult<()> {
        if addr % 4 != 0 {
            return Err(PyValueError::new_err("output buffer is not 4-byte aligned"));
        }
        let inner = Arc::clone(&self.inner);
        py.detach(|| {
            let v = inner.tensor(name)?;
            let out = if numel == 0 { &mut [][..] } else { unsafe { std::slice::from_raw_parts_mut(addr as *mut f32, numel) } };
            v.to_f32(out)
        })
        .py_err()
    }

    /// Refuse a base whose tensors differ from the recorded fingerprints.
    /// `actual`: {name: (dtype, shape, xxh3_64 as int)} for the base tensors available.
    fn check_base(&self, actual: BTreeMap<String, (String, Vec<u64>, u64)>) -> PyResult<()> {
        self.inner.check_base(|n| actual.get(n).cloned()).py_err()
    }
}

// ---------------------------------------------------------------- writer
fn parse_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> PyResult<T> {
    serde_json::from_str(s).map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

/// Streaming atomic writer; nothing appears at `path` before `finish`.
#[pyclass(module = "deltapack._core", name = "Writer")]
struct PyWriter {
    inner: Option<DpkWriter>,
}

impl PyWriter {
    fn get(&mut self) -> PyResult<&mut DpkWriter> {
        self.inner.as_mut().ok_or_else(|| PyValueError::new_err("writer is already finished or aborted"))
    }
}

#[pymethods]
impl PyWriter {
    #[new]
    fn new(path: std::path::PathBuf) -> PyResult<Self> {
        Ok(PyWriter { inner: Some(DpkWriter::create(path).py_err()?) })
    }

    #[pyo3(signature = (name, shape, encoding, addr, nbytes, stats = BTreeMap::new()))]
    fn add_raw(&mut self, py: Python<'_>, name: &str, shape: Vec<u64>, encoding: &str, addr: usize, nbytes: usize, stats: BTreeMap<String, f64>) -> PyResult<()> {
        let enc = Encoding::from_name(encoding).ok_or_else(|| PyValueError::new_err(format!("unknown encoding '{encoding}'")))?;
        let w = self.get()?;
        py.detach(|| w.add_raw(name, &shape, enc, unsafe { borrow(addr, nbytes) }, stats)).py_err()
    }

    /// codes: one uint8 per element of the 2-D view; scales/zeros: raw little-endian bytes.
    #[pyo3(signature = (name, shape, bits, codes, quant_json, scales, zeros = None, stats = BTreeMap::new()))]
    #[allow(clippy::too_many_arguments)]
    fn add_quantized(
        &mut self,
        py: Python<'_>,
        name: &str,
        shape: Vec<u64>,
        bits: u32,
        codes: (usize, usize),
        quant_json: &str,
        scales: (usize, usize),
        zeros: Option<(usize, usize)>,
        stats: BTreeMap<String, f64>,
    ) -> PyResult<()> {
        let q: QuantParams = parse_json("quant params", quant_json)?;
        let w = self.get()?;
        py.detach(|| unsafe {
            w.add_quantized(name, &shape, bits, borrow(codes.0, codes.1), q, borrow(scales.0, scales.1), zeros.map(|z| borrow(z.0, z.1)), stats)
        })
        .py_err()
    }

    #[pyo3(signature = (name, shape, bits, codes, indices, quant_json, scales, zeros = None, stats = BTreeMap::new()))]
    #[allow(clippy::too_many_arguments)]
    fn add_sparse24(
        &mut self,
        py: Python<'_>,
        name: &str,
        shape: Vec<u64>,
        bits: u32,
        codes: (usize, usize),
        indices: (usize, usize),
        quant_json: &str,
        scales: (usize, usize),
        zeros: Option<(usize, usize)>,
        stats: BTreeMap<String, f64>,
    ) -> PyResult<()> {
        let q: QuantParams = parse_json("quant params", quant_json)?;
        let w = self.get()?;
        py.detach(|| unsafe {
            w.add_sparse24(
                name,
                &shape,
                bits,
                borrow(codes.0, codes.1),
                borrow(indices.0, indices.1),
                q,
                borrow(scales.0, scales.1),
                zeros.map(|z| borrow(z.0, z.1)),
                stats,
            )
        })
        .py_err()
    }

    fn data_len(&mut self) -> PyResult<u64> {
        Ok(self.get()?.data_len())
    }

    /// Publish the file; returns the manifest JSON that was written.
    fn finish(&mut self, py: Python<'_>, header_json: &str) -> PyResult<String> {
        let header: ManifestHeader = parse_json("manifest header", header_json)?;
        let w = self.inner.take().ok_or_else(|| PyValueError::new_err("writer is already finished or aborted"))?;
        let m = py.detach(|| w.finish(header)).py_err()?;
        Ok(String::from_utf8(m.to_json()).expect("serde_json writes UTF-8"))
    }

    /// Drop staged data; no file is written.
    fn abort(&mut self) {
        self.inner = None;
    }
}

// ---------------------------------------------------------------- free functions
#[pyfunction]
fn xxh3_64(py: Python<'_>, addr: usize, nbytes: usize) -> u64 {
    py.detach(|| fmt::xxh3_64(unsafe { borrow(addr, nbytes) }))
}

#[pyfunction]
fn xxh3_64_bytes(data: &[u8]) -> u64 {
    fmt::xxh3_64(data)
}

/// Pack `rows * cols` one-per-byte codes at `addr`; returns the packed bytes.
#[pyfunction]
fn pack_codes<'py>(py: Python<'py>, addr: usize, rows: usize, cols: usize, bits: u32) -> PyResult<Bound<'py, PyBytes>> {
    let n = fmt::pack::packed_len(rows as u64, cols as u64, bits).ok_or_else(|| PyValueError::new_err("size overflows"))? as usize;
    let codes = unsafe { borrow(addr, rows.checked_mul(cols).ok_or_else(|| PyValueError::new_err("size overflows"))?) };
    PyBytes::new_with(py, n, |out| fmt::pack::pack_rows(codes, rows, cols, bits, out).map_err(to_py))
}

/// Unpack `packed` into a caller buffer of `rows * cols` bytes.
#[pyfunction]
fn unpack_codes_into(packed: &[u8], rows: usize, cols: usize, bits: u32, addr: usize, len: usize) -> PyResult<()> {
    fmt::pack::unpack_rows(packed, rows, cols, bits, unsafe { borrow_mut(addr, len) }).py_err()
}

#[pyfunction]
fn packed_len(rows: u64, cols: u64, bits: u32) -> PyResult<u64> {
    if !fmt::encoding::PACK_BITS.contains(&bits) {
        return Err(PyValueError::new_err(format!("cannot pack {bits}-bit codes")));
    }
    fmt::pack::packed_len(rows, cols, bits).ok_or_else(|| PyValueError::new_err("size overflows"))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("FORMAT_VERSION", fmt::spec::FORMAT_VERSION)?;
    m.add("MAGIC", PyBytes::new(py, &fmt::spec::MAGIC))?;
    m.add("PRELUDE_LEN", fmt::spec::PRELUDE_LEN)?;
    m.add("DATA_ALIGN", fmt::spec::DATA_ALIGN)?;
    m.add("SEGMENT_ALIGN", fmt::spec::SEGMENT_ALIGN)?;
    m.add("MAX_MANIFEST_LEN", fmt::spec::MAX_MANIFEST_LEN)?;
    m.add("PACK_WORD_BITS", fmt::spec::PACK_WORD_BITS)?;
    m.add("MAX_NDIM", fmt::spec::MAX_NDIM)?;
    m.add("PACK_BITS", fmt::encoding::PACK_BITS.to_vec())?;
    let enc = PyDict::new(py);
    for e in ALL_ENCODINGS {
        enc.set_item(e.name(), e.id())?;
    }
    m.add("ENCODINGS", enc)?;
    m.add("DeltapackError", py.get_type::<DeltapackError>())?;
    m.add("FormatError", py.get_type::<FormatError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add("ChecksumError", py.get_type::<ChecksumError>())?;
    m.add("BaseMismatchError", py.get_type::<BaseMismatchError>())?;
    m.add("TensorNotFoundError", py.get_type::<TensorNotFoundError>())?;
    m.add_class::<PyFile>()?;
    m.add_class::<PyWriter>()?;
    m.add_function(wrap_pyfunction!(xxh3_64, m)?)?;
    m.add_function(wrap_pyfunction!(xxh3_64_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(pack_codes, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_codes_into, m)?)?;
    m.add_function(wrap_pyfunction!(packed_len, m)?)?;
    Ok(())
}
