//! C ABI over the `.dpk` format core (`deltapack-format`).
//!
//! Every export is `extern "C"`, never unwinds (a panic becomes [`DPK_ERR_PANIC`]), and
//! reports failure as a status code plus a thread-local message ([`dpk_last_error`]). Handles
//! are opaque; every pointer handed out (tensor names, manifest bytes, segment bytes) points
//! into memory owned by the handle and stays valid until [`dpk_close`].
//!
//! The header `include/deltapack.h` is generated from this file by cbindgen
//! (`DPK_BLESS=1 cargo test -p deltapack-capi --test header` rewrites it).

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use deltapack_format::encoding::{Encoding, ALL_ENCODINGS};
use deltapack_format::{spec, Error, OpenOptions, VerifyMode};

// ---------------------------------------------------------------------------------------------
// Constants. The values are literals so that cbindgen can write them into the header; the
// compile-time assertions below tie each one to the Rust constant it mirrors, so the format
// crate stays the single source of truth (a change there fails this crate's build).
// ---------------------------------------------------------------------------------------------

/// Version of this C ABI. Bumped on any incompatible change to a signature, struct or constant.
pub const DPK_ABI_VERSION: u32 = 1;

/// Success.
pub const DPK_OK: i32 = 0;
/// I/O error (open, stat, map).
pub const DPK_ERR_IO: i32 = 1;
/// The file does not start with the `.dpk` magic bytes.
pub const DPK_ERR_BAD_MAGIC: i32 = 2;
/// The file is shorter than its prelude or manifest says.
pub const DPK_ERR_TRUNCATED: i32 = 3;
/// Unknown format version.
pub const DPK_ERR_UNSUPPORTED_VERSION: i32 = 4;
/// Unknown prelude flags.
pub const DPK_ERR_UNSUPPORTED_FLAGS: i32 = 5;
/// The manifest length exceeds the cap.
pub const DPK_ERR_MANIFEST_TOO_LARGE: i32 = 6;
/// The manifest bytes do not match the prelude's checksum.
pub const DPK_ERR_MANIFEST_CHECKSUM: i32 = 7;
/// The manifest is not valid JSON (or not the expected shape).
pub const DPK_ERR_MANIFEST_JSON: i32 = 8;
/// The manifest breaks a format rule.
pub const DPK_ERR_INVALID_MANIFEST: i32 = 9;
/// A tensor uses an unknown encoding id.
pub const DPK_ERR_UNKNOWN_ENCODING: i32 = 10;
/// A segment is missing, has the wrong length or alignment, or lies outside the data section.
/// Also returned by `dpk_tensor_segment` for a role the tensor's encoding does not have.
pub const DPK_ERR_LAYOUT: i32 = 11;
/// Two segments overlap.
pub const DPK_ERR_OVERLAP: i32 = 12;
/// A segment's bytes do not match its checksum.
pub const DPK_ERR_CHECKSUM: i32 = 13;
/// No tensor of that name.
pub const DPK_ERR_TENSOR_NOT_FOUND: i32 = 14;
/// The delta does not match the base model.
pub const DPK_ERR_BASE_MISMATCH: i32 = 15;
/// An argument is invalid (bad UTF-8, index out of range, wrong buffer length, ...).
pub const DPK_ERR_INVALID_ARGUMENT: i32 = 16;
/// A pointer argument is NULL.
pub const DPK_ERR_NULL_ARGUMENT: i32 = 100;
/// The library panicked (a bug); the message says where.
pub const DPK_ERR_PANIC: i32 = 101;

/// `verify_mode` of `dpk_open`: never hash segments.
pub const DPK_VERIFY_NONE: u32 = 0;
/// `verify_mode` of `dpk_open`: hash a tensor's segments the first time it is accessed.
pub const DPK_VERIFY_LAZY: u32 = 1;
/// `verify_mode` of `dpk_open`: hash every segment at open.
pub const DPK_VERIFY_FULL: u32 = 2;

/// Structural format version this library reads.
pub const DPK_FORMAT_VERSION: u32 = 1;
/// Length of the fixed prelude in bytes.
pub const DPK_PRELUDE_LEN: u64 = 32;
/// Alignment of the data section and of each tensor's first segment (file offsets).
pub const DPK_DATA_ALIGN: u64 = 4096;
/// Alignment of every other segment (file offsets).
pub const DPK_SEGMENT_ALIGN: u64 = 64;
/// Packed rows are padded to a whole number of words of this many bits.
pub const DPK_PACK_WORD_BITS: u64 = 32;
/// At most this many dimensions per tensor (the length of `DpkTensorInfo.shape`).
pub const DPK_MAX_NDIM: usize = 8;

// Encoding ids (stable, never reused): raw encodings store one segment "data"; affine-quantized
// ones (16 + bits) store "codes", "scales" and maybe "zeros"; 2:4 sparse ones (32 + bits) add
// "indices".
/// Encoding id: raw little-endian f32.
pub const DPK_ENC_F32: u32 = 1;
/// Encoding id: raw little-endian f16.
pub const DPK_ENC_F16: u32 = 2;
/// Encoding id: raw little-endian bf16.
pub const DPK_ENC_BF16: u32 = 3;
/// Encoding id: raw i8.
pub const DPK_ENC_I8: u32 = 4;
/// Encoding id: raw u8.
pub const DPK_ENC_U8: u32 = 5;
/// Encoding id: raw little-endian i32.
pub const DPK_ENC_I32: u32 = 6;
/// Encoding id: raw little-endian i64.
pub const DPK_ENC_I64: u32 = 7;
/// Encoding id: 1-bit affine-quantized codes.
pub const DPK_ENC_Q1: u32 = 17;
/// Encoding id: 2-bit affine-quantized codes.
pub const DPK_ENC_Q2: u32 = 18;
/// Encoding id: 3-bit affine-quantized codes.
pub const DPK_ENC_Q3: u32 = 19;
/// Encoding id: 4-bit affine-quantized codes.
pub const DPK_ENC_Q4: u32 = 20;
/// Encoding id: 8-bit affine-quantized codes.
pub const DPK_ENC_Q8: u32 = 24;
/// Encoding id: 2:4 sparse, 2-bit codes.
pub const DPK_ENC_S24Q2: u32 = 34;
/// Encoding id: 2:4 sparse, 3-bit codes.
pub const DPK_ENC_S24Q3: u32 = 35;
/// Encoding id: 2:4 sparse, 4-bit codes.
pub const DPK_ENC_S24Q4: u32 = 36;
/// Encoding id: 2:4 sparse, 8-bit codes.
pub const DPK_ENC_S24Q8: u32 = 40;

const _: () = {
    assert!(DPK_FORMAT_VERSION == spec::FORMAT_VERSION);
    assert!(DPK_PRELUDE_LEN == spec::PRELUDE_LEN);
    assert!(DPK_DATA_ALIGN == spec::DATA_ALIGN);
    assert!(DPK_SEGMENT_ALIGN == spec::SEGMENT_ALIGN);
    assert!(DPK_PACK_WORD_BITS == spec::PACK_WORD_BITS);
    assert!(DPK_MAX_NDIM == spec::MAX_NDIM);
    assert!(DPK_VERIFY_NONE == 0 && DPK_VERIFY_LAZY == 1 && DPK_VERIFY_FULL == 2);
    // One constant per encoding: adding an encoding fails here until it gets a constant.
    assert!(ALL_ENCODINGS.len() == 16);
    assert!(DPK_ENC_F32 == Encoding::RawF32 as u32);
    assert!(DPK_ENC_F16 == Encoding::RawF16 as u32);
    assert!(DPK_ENC_BF16 == Encoding::RawBF16 as u32);
    assert!(DPK_ENC_I8 == Encoding::RawI8 as u32);
    assert!(DPK_ENC_U8 == Encoding::RawU8 as u32);
    assert!(DPK_ENC_I32 == Encoding::RawI32 as u32);
    assert!(DPK_ENC_I64 == Encoding::RawI64 as u32);
    assert!(DPK_ENC_Q1 == Encoding::Q1 as u32);
    assert!(DPK_ENC_Q2 == Encoding::Q2 as u32);
    assert!(DPK_ENC_Q3 == Encoding::Q3 as u32);
    assert!(DPK_ENC_Q4 == Encoding::Q4 as u32);
    assert!(DPK_ENC_Q8 == Encoding::Q8 as u32);
    assert!(DPK_ENC_S24Q2 == Encoding::S24Q2 as u32);
    assert!(DPK_ENC_S24Q3 == Encoding::S24Q3 as u32);
    assert!(DPK_ENC_S24Q4 == Encoding::S24Q4 as u32);
    assert!(DPK_ENC_S24Q8 == Encoding::S24Q8 as u32);
};

// ---------------------------------------------------------------------------------------------
// Types.
// ---------------------------------------------------------------------------------------------

/// An open `.dpk` file (opaque). Created by `dpk_open`, released by `dpk_close`. Reading
/// functions take `const DpkFile *` and may be called from several threads at once.
pub struct DpkFile {
    inner: deltapack_format::DpkFile,
    /// NUL-terminated copies of the tensor names, in manifest order.
    names: Vec<CString>,
}

// Sharing a handle across threads for reading is part of the contract.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<DpkFile>();
};

/// Facts about one tensor, filled in by `dpk_tensor_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DpkTensorInfo {
    /// NUL-terminated UTF-8 name, owned by the handle, valid until `dpk_close`.
    pub name: *const c_char,
    /// Stable encoding id (`DPK_ENC_*`).
    pub encoding: u32,
    /// Code bit width of a packed encoding; 0 for raw encodings.
    pub bits: u32,
    /// Number of dimensions; `shape[ndim..]` are 0.
    pub ndim: u32,
    /// Logical shape.
    pub shape: [u64; DPK_MAX_NDIM],
    /// 2-D view: product of all dims but the last (1 for 0-D and 1-D tensors).
    pub rows: u64,
    /// 2-D view: the last dim (1 for 0-D tensors).
    pub cols: u64,
    /// Columns that carry codes: `cols`, or `cols / 2` under 2:4 sparsity (`cols` for raw).
    pub code_cols: u64,
    /// Number of elements.
    pub numel: u64,
}

// ---------------------------------------------------------------------------------------------
// Error plumbing.
// ---------------------------------------------------------------------------------------------

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// A failed call: status code and message.
struct Failure {
    code: i32,
    msg: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure { code: e.code(), msg: e.to_string() }
    }
}

type CResult<T> = Result<T, Failure>;

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "unknown panic payload"
    }
}

/// Run `f`, turning an error into its status code and a panic into `DPK_ERR_PANIC`; either
/// sets the thread's last error. Success leaves the last error as it was.
fn guard(func: &str, f: impl FnOnce() -> CResult<()>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => DPK_OK,
        Ok(Err(e)) => {
            set_last_error(&e.msg);
            e.code
        }
        Err(payload) => {
            let msg = format!("panic in {func}: {}", panic_message(payload.as_ref()));
            // Never let a second panic (e.g. from a Drop of the payload) escape.
            let _ = catch_unwind(AssertUnwindSafe(|| set_last_error(&msg)));
            DPK_ERR_PANIC
        }
    }
}

fn null_arg(name: &str) -> Failure {
    Failure { code: DPK_ERR_NULL_ARGUMENT, msg: format!("argument '{name}' is NULL") }
}

fn invalid(msg: String) -> Failure {
    Failure { code: DPK_ERR_INVALID_ARGUMENT, msg }
}

/// # Safety
/// `p` is NULL or points to a live `T`.
unsafe fn deref<'a, T>(p: *const T, name: &str) -> CResult<&'a T> {
    p.as_ref().ok_or_else(|| null_arg(name))
}

/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn utf8_arg<'a>(p: *const c_char, name: &str) -> CResult<&'a str> {
    if p.is_null() {
        return Err(null_arg(name));
    }
    let s = CStr::from_ptr(p);
    s.to_str().map_err(|e| invalid(format!("argument '{name}' is not valid UTF-8 ({e}): {}", s.to_string_lossy())))
}

/// # Safety
/// `p` is NULL or writable.
unsafe fn out_arg<'a, T>(p: *mut T, name: &str) -> CResult<&'a mut T> {
    p.as_mut().ok_or_else(|| null_arg(name))
}

fn check_index(f: &DpkFile, index: usize) -> CResult<()> {
    if index < f.names.len() {
        Ok(())
    } else {
        Err(invalid(format!("tensor index {index} out of range (file has {} tensors)", f.names.len())))
    }
}

// ---------------------------------------------------------------------------------------------
// Exports.
// ---------------------------------------------------------------------------------------------

/// The ABI version of this library (`DPK_ABI_VERSION` of the header it was built with).
/// Compare with the header's `DPK_ABI_VERSION` when loading the library dynamically.
#[no_mangle]
pub extern "C" fn dpk_abi_version() -> u32 {
    DPK_ABI_VERSION
}

static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The library's version (e.g. "0.1.0"), a static NUL-terminated string.
#[no_mangle]
pub extern "C" fn dpk_version() -> *const c_char {
    VERSION.as_ptr().cast()
}

/// The message of the last failed `dpk_` call on this thread, or "" if none failed yet.
/// Successful calls leave it unchanged. The string is owned by the library and valid until
/// the next `dpk_` call on this thread; copy it to keep it. Never NULL.
#[no_mangle]
pub extern "C" fn dpk_last_error() -> *const c_char {
    static EMPTY: &[u8] = b"\0";
    catch_unwind(|| LAST_ERROR.with(|e| e.borrow().as_ptr())).unwrap_or(EMPTY.as_ptr().cast())
}

/// Open and validate a `.dpk` file. `verify_mode` is `DPK_VERIFY_NONE`, `DPK_VERIFY_LAZY`
/// (segment checksums checked on a tensor's first access) or `DPK_VERIFY_FULL` (all checked
/// now). On success `*out` receives a handle to release with `dpk_close`; on failure `*out`
/// is set to NULL.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpk_open(path: *const c_char, verify_mode: u32, out: *mut *mut DpkFile) -> i32 {
    guard("dpk_open", || {
        let out = out_arg(out, "out")?;
        *out = ptr::null_mut();
        let path = utf8_arg(path, "path")?;
        let verify = match verify_mode {
            DPK_VERIFY_NONE => VerifyMode::None,
            DPK_VERIFY_LAZY => VerifyMode::Lazy,
            DPK_VERIFY_FULL => VerifyMode::Full,
            m => return Err(invalid(format!("verify_mode {m} is not 0 (none), 1 (lazy) or 2 (full)"))),
        };
        let inner = deltapack_format::DpkFile::open(path, OpenOptions { verify })?;
        let names = inner
            .manifest()
            .tensors
            .iter()
            .map(|t| CString::new(t.name.as_str()).map_err(|_| invalid(format!("{path}: tensor name {:?} contains a NUL byte and cannot be passed to C", t.name))))
            .collect::<CResult<Vec<_>>>()?;
        *out = Box::into_raw(Box::new(DpkFile { inner, names }));
        Ok(())
    })
}

/// Release a handle and unmap the file. Every pointer obtained from it becomes invalid.
/// NULL is a no-op.
///
/// # Safety
/// `f` is NULL or a handle from `dpk_open` not yet closed, and no other thread is using it.
#[no_mangle]
pub unsafe extern "C" fn dpk_close(f: *mut DpkFile) {
    if !f.is_null() {
        let _ = guard("dpk_close", || {
            drop(Box::from_raw(f));
            Ok(())
        });
    }
}

/// Number of tensors in the file (0 if `f` is NULL).
///
/// # Safety
/// `f` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dpk_tensor_count(f: *const DpkFile) -> usize {
    catch_unwind(AssertUnwindSafe(|| f.as_ref().map_or(0, |f| f.names.len()))).unwrap_or(0)
}

/// Index of the tensor named `name` (`DPK_ERR_TENSOR_NOT_FOUND` if there is none).
///
/// # Safety
/// `f` is NULL or a live handle; `name` is NULL or NUL-terminated; `out_index` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpk_tensor_find(f: *const DpkFile, name: *const c_char, out_index: *mut usize) -> i32 {
    guard("dpk_tensor_find", || {
        let f = deref(f, "f")?;
        let name = utf8_arg(name, "name")?;
        let out = out_arg(out_index, "out_index")?;
        *out = f.inner.index_of(name)?;
        Ok(())
    })
}

/// Fill `*out` with the facts about tensor `index` (no checksum is verified).
///
/// # Safety
/// `f` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpk_tensor_info(f: *const DpkFile, index: usize, out: *mut DpkTensorInfo) -> i32 {
    guard("dpk_tensor_info", || {
        let f = deref(f, "f")?;
        let out = out_arg(out, "out")?;
        check_index(f, index)?;
        let l = f.inner.layout(index);
        let mut shape = [0u64; DPK_MAX_NDIM];
        shape[..l.shape.len()].copy_from_slice(&l.shape);
        *out = DpkTensorInfo {
            name: f.names[index].as_ptr(),
            encoding: l.encoding.id(),
            bits: l.encoding.bits().unwrap_or(0),
            ndim: l.shape.len() as u32,
            shape,
            rows: l.rows,
            cols: l.cols,
            code_cols: l.code_cols(),
            numel: l.numel,
        };
        Ok(())
    })
}

/// The manifest exactly as stored: `*len` bytes of UTF-8 JSON at `*ptr`, not NUL-terminated,
/// valid until `dpk_close`.
///
/// # Safety
/// `f` is NULL or a live handle; `ptr` and `len` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpk_manifest_json(f: *const DpkFile, ptr: *mut *const u8, len: *mut usize) -> i32 {
    guard("dpk_manifest_json", || {
        let f = deref(f, "f")?;
        let (p, n) = (out_arg(ptr, "ptr")?, out_arg(len, "len")?);
        let json = f.inner.manifest_json();
        *p = json.as_ptr();
        *n = json.len();
        Ok(())
    })
}

/// Zero-copy access to one segment of tensor `index`: `*len` bytes at `*ptr`, inside the
/// file mapping, valid until `dpk_close`. `role` is "data" (raw encodings) or "codes",
/// "indices" (2:4 sparse only), "scales", "zeros" (stored zero points only); a role the
/// encoding lacks gives `DPK_ERR_LAYOUT`. Unless the file was opened with
/// `DPK_VERIFY_NONE`, the tensor's checksums are verified first (once per tensor).
///
/// The mapping is private copy-on-write: writing through `*ptr` changes neither the file nor
/// other processes' view, but the API hands it out as `const` and expects it to be read only.
///
/// # Safety
/// `f` is NULL or a live handle; `role` is NULL or NUL-terminated; `ptr` and `len` are NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn dpk_tensor_segment(f: *const DpkFile, index: usize, role: *const c_char, ptr: *mut *const u8, len: *mut usize) -> i32 {
    guard("dpk_tensor_segment", || {
        let f = deref(f, "f")?;
        let role = utf8_arg(role, "role")?;
        let (p, n) = (out_arg(ptr, "ptr")?, out_arg(len, "len")?);
        check_index(f, index)?;
        let bytes = f.inner.tensor_at(index)?.segment(role)?;
        *p = bytes.as_ptr();
        *n = bytes.len();
        Ok(())
    })
}

/// Unpack the codes of a packed tensor into `out`, one code per byte, row-major
/// `[rows, code_cols]`; `out_len` must be exactly `rows * code_cols`. Raw tensors give
/// `DPK_ERR_INVALID_ARGUMENT`. Verifies checksums first like `dpk_tensor_segment`.
///
/// # Safety
/// `f` is NULL or a live handle; `out` is NULL or points to `out_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dpk_unpack_codes(f: *const DpkFile, index: usize, out: *mut u8, out_len: usize) -> i32 {
    guard("dpk_unpack_codes", || {
        let f = deref(f, "f")?;
        if out.is_null() {
            return Err(null_arg("out"));
        }
        check_index(f, index)?;
        let out = std::slice::from_raw_parts_mut(out, out_len);
        f.inner.tensor_at(index)?.unpack_codes(out)?;
        Ok(())
    })
}

/// The tensor's values as f32 (raw f32/f16/bf16 converted, packed encodings dequantized,
/// 2:4 sparse ones expanded with zeros), row-major over the logical shape; `out_len` must be
/// exactly `numel`. Integer raw encodings (i8, u8, i32, i64) give `DPK_ERR_INVALID_ARGUMENT`.
/// Verifies checksums first like `dpk_tensor_segment`.
///
/// # Safety
/// `f` is NULL or a live handle; `out` is NULL or points to `out_len` writable floats.
#[no_mangle]
pub unsafe extern "C" fn dpk_to_f32(f: *const DpkFile, index: usize, out: *mut f32, out_len: usize) -> i32 {
    guard("dpk_to_f32", || {
        let f = deref(f, "f")?;
        if out.is_null() {
            return Err(null_arg("out"));
        }
        check_index(f, index)?;
        let out = std::slice::from_raw_parts_mut(out, out_len);
        f.inner.tensor_at(index)?.to_f32(out)?;
        Ok(())
    })
}

/// Hash every segment of every tensor and compare with the manifest; the first mismatch is
/// returned as `DPK_ERR_CHECKSUM` with a message naming the tensor and segment.
///
/// # Safety
/// `f` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dpk_verify(f: *const DpkFile) -> i32 {
    guard("dpk_verify", || {
        let f = deref(f, "f")?;
        f.inner.verify_all()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltapack_format::manifest::MethodRef;
    use deltapack_format::{BaseRef, DpkWriter, ManifestHeader, ModelRef, Producer};
    use std::collections::BTreeMap;
    use std::path::Path;

    fn last_error() -> String {
        unsafe { CStr::from_ptr(dpk_last_error()) }.to_str().unwrap().to_owned()
    }

    fn header() -> ManifestHeader {
        ManifestHeader {
            producer: Producer { name: "capi-test".into(), version: "0".into() },
            method: MethodRef { name: "raw".into(), params: Default::default() },
            finetune: ModelRef { name: "ft".into(), extra: Default::default() },
            base: BaseRef { name: "base".into(), hash: spec::HASH_ALGO.into(), tensors: BTreeMap::new() },
            deltas: vec![],
            metadata: Default::default(),
        }
    }

    fn write_small(path: &Path) {
        let mut w = DpkWriter::create(path).unwrap();
        let data: Vec<u8> = [1.0f32, -2.0, 3.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        w.add_raw("a", &[3], Encoding::RawF32, &data, BTreeMap::new()).unwrap();
        let ints: Vec<u8> = [7i32, 8].iter().flat_map(|v| v.to_le_bytes()).collect();
        w.add_raw("b", &[1, 2], Encoding::RawI32, &ints, BTreeMap::new()).unwrap();
        w.finish(header()).unwrap();
    }

    fn open(path: &Path) -> *mut DpkFile {
        let c = CString::new(path.to_str().unwrap()).unwrap();
        let mut f = ptr::null_mut();
        assert_eq!(unsafe { dpk_open(c.as_ptr(), DPK_VERIFY_LAZY, &mut f) }, DPK_OK, "{}", last_error());
        assert!(!f.is_null());
        f
    }

    #[test]
    fn error_codes_match_format_crate() {
        let io = || std::io::Error::other("x");
        let cases: Vec<(Error, i32)> = vec![
            (Error::Io { path: "p".into(), source: io() }, DPK_ERR_IO),
            (Error::BadMagic { found: vec![] }, DPK_ERR_BAD_MAGIC),
            (Error::Truncated { what: "w".into(), needed: 1, have: 0 }, DPK_ERR_TRUNCATED),
            (Error::UnsupportedVersion { found: 9, known: 1 }, DPK_ERR_UNSUPPORTED_VERSION),
            (Error::UnsupportedFlags(1), DPK_ERR_UNSUPPORTED_FLAGS),
            (Error::ManifestTooLarge { len: 1, cap: 0 }, DPK_ERR_MANIFEST_TOO_LARGE),
            (Error::ManifestChecksum { stored: 1, computed: 2 }, DPK_ERR_MANIFEST_CHECKSUM),
            (Error::ManifestJson("j".into()), DPK_ERR_MANIFEST_JSON),
            (Error::InvalidManifest("m".into()), DPK_ERR_INVALID_MANIFEST),
            (Error::UnknownEncoding { tensor: "t".into(), id: 99 }, DPK_ERR_UNKNOWN_ENCODING),
            (Error::layout("t", "s", "d"), DPK_ERR_LAYOUT),
            (Error::Overlap { first: "a".into(), first_start: 0, first_end: 2, second: "b".into(), second_start: 1 }, DPK_ERR_OVERLAP),
            (Error::Checksum { tensor: "t".into(), segment: "s".into(), stored: "a".into(), computed: "b".into() }, DPK_ERR_CHECKSUM),
            (Error::TensorNotFound("t".into()), DPK_ERR_TENSOR_NOT_FOUND),
            (Error::BaseMismatch("b".into()), DPK_ERR_BASE_MISMATCH),
            (Error::arg("a"), DPK_ERR_INVALID_ARGUMENT),
        ];
        for (k, (e, code)) in cases.iter().enumerate() {
            assert_eq!(e.code(), *code, "{e}");
            assert_eq!(*code, k as i32 + 1);
        }
    }

    #[test]
    fn null_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.dpk");
        write_small(&p);
        let f = open(&p);
        let name = CString::new("a").unwrap();
        let role = CString::new("data").unwrap();
        let mut idx = 0usize;
        let mut info = std::mem::MaybeUninit::<DpkTensorInfo>::uninit();
        let (mut bp, mut bl) = (ptr::null(), 0usize);
        let mut buf = [0f32; 3];
        let mut codes = [0u8; 3];
        let nf: *const DpkFile = ptr::null();
        unsafe {
            let mut h = ptr::null_mut();
            assert_eq!(dpk_open(ptr::null(), 0, &mut h), DPK_ERR_NULL_ARGUMENT);
            assert!(h.is_null());
            assert!(last_error().contains("'path' is NULL"), "{}", last_error());
            assert_eq!(dpk_open(name.as_ptr(), 0, ptr::null_mut()), DPK_ERR_NULL_ARGUMENT);
            assert!(last_error().contains("'out' is NULL"));
            assert_eq!(dpk_tensor_count(nf), 0);
            assert_eq!(dpk_tensor_find(nf, name.as_ptr(), &mut idx), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_tensor_find(f, ptr::null(), &mut idx), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_tensor_find(f, name.as_ptr(), ptr::null_mut()), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_tensor_info(nf, 0, info.as_mut_ptr()), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_tensor_info(f, 0, ptr::null_mut()), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_manifest_json(nf, &mut bp, &mut bl), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_manifest_json(f, ptr::null_mut(), &mut bl), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_manifest_json(f, &mut bp, ptr::null_mut()), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_tensor_segment(nf, 0, role.as_ptr(), &mut bp, &mut bl), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_tensor_segment(f, 0, ptr::null(), &mut bp, &mut bl), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_tensor_segment(f, 0, role.as_ptr(), ptr::null_mut(), &mut bl), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_tensor_segment(f, 0, role.as_ptr(), &mut bp, ptr::null_mut()), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_unpack_codes(nf, 0, codes.as_mut_ptr(), 3), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_unpack_codes(f, 0, ptr::null_mut(), 3), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_to_f32(nf, 0, buf.as_mut_ptr(), 3), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_to_f32(f, 0, ptr::null_mut(), 3), DPK_ERR_NULL_ARGUMENT);
            assert_eq!(dpk_verify(nf), DPK_ERR_NULL_ARGUMENT);
            assert!(last_error().contains("'f' is NULL"));
            dpk_close(ptr::null_mut());

            // The handle still works after all that.
            assert_eq!(dpk_tensor_count(f), 2);
            assert_eq!(dpk_to_f32(f, 0, buf.as_mut_ptr(), 3), DPK_OK);
            assert_eq!(buf, [1.0, -2.0, 3.5]);
            assert_eq!(dpk_verify(f), DPK_OK);
            dpk_close(f);
        }
    }

    #[test]
    fn bad_path_is_io_error_with_message() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("does-not-exist.dpk");
        let c = CString::new(p.to_str().unwrap()).unwrap();
        let mut f = 1 as *mut DpkFile; // must be overwritten with NULL
        assert_eq!(unsafe { dpk_open(c.as_ptr(), DPK_VERIFY_LAZY, &mut f) }, DPK_ERR_IO);
        assert!(f.is_null());
        let msg = last_error();
        assert!(msg.starts_with("I/O error on ") && msg.contains("does-not-exist.dpk"), "{msg}");

        // Not UTF-8.
        let bad = CString::new(vec![b'/', 0xff, b'x']).unwrap();
        assert_eq!(unsafe { dpk_open(bad.as_ptr(), DPK_VERIFY_LAZY, &mut f) }, DPK_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("not valid UTF-8"), "{}", last_error());

        // Not a .dpk.
        let junk = dir.path().join("junk.dpk");
        std::fs::write(&junk, vec![0u8; 64]).unwrap();
        let c = CString::new(junk.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { dpk_open(c.as_ptr(), DPK_VERIFY_LAZY, &mut f) }, DPK_ERR_BAD_MAGIC);
        assert!(last_error().starts_with("not a .dpk file"), "{}", last_error());

        // Bad verify mode.
        let good = dir.path().join("good.dpk");
        write_small(&good);
        let c = CString::new(good.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { dpk_open(c.as_ptr(), 3, &mut f) }, DPK_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("verify_mode 3"), "{}", last_error());
    }

    #[test]
    fn last_error_is_thread_local() {
        let c = CString::new("/nonexistent/dir/x.dpk").unwrap();
        let mut f = ptr::null_mut();
        assert_eq!(unsafe { dpk_open(c.as_ptr(), 0, &mut f) }, DPK_ERR_IO);
        assert!(last_error().contains("/nonexistent/dir/x.dpk"));
        std::thread::spawn(|| {
            assert_eq!(last_error(), "", "a fresh thread has no error");
            let mut f = ptr::null_mut();
            assert_eq!(unsafe { dpk_open(ptr::null(), 0, &mut f) }, DPK_ERR_NULL_ARGUMENT);
            assert!(last_error().contains("'path' is NULL"));
        })
        .join()
        .unwrap();
        // Untouched by the other thread's failure, and by a success on this one.
        assert!(last_error().contains("/nonexistent/dir/x.dpk"), "{}", last_error());
        assert_eq!(dpk_abi_version(), DPK_ABI_VERSION);
        assert!(last_error().contains("/nonexistent/dir/x.dpk"));
    }

    #[test]
    fn index_out_of_range_and_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.dpk");
        write_small(&p);
        let f = open(&p);
        unsafe {
            let mut info = std::mem::MaybeUninit::<DpkTensorInfo>::uninit();
            assert_eq!(dpk_tensor_info(f, 2, info.as_mut_ptr()), DPK_ERR_INVALID_ARGUMENT);
            assert!(last_error().contains("tensor index 2 out of range (file has 2 tensors)"), "{}", last_error());
            assert_eq!(dpk_tensor_info(f, usize::MAX, info.as_mut_ptr()), DPK_ERR_INVALID_ARGUMENT);
            let role = CString::new("data").unwrap();
            let (mut bp, mut bl) = (ptr::null(), 0usize);
            assert_eq!(dpk_tensor_segment(f, 5, role.as_ptr(), &mut bp, &mut bl), DPK_ERR_INVALID_ARGUMENT);
            let mut buf = [0f32; 3];
            assert_eq!(dpk_to_f32(f, 2, buf.as_mut_ptr(), 3), DPK_ERR_INVALID_ARGUMENT);
            let mut codes = [0u8; 3];
            assert_eq!(dpk_unpack_codes(f, 2, codes.as_mut_ptr(), 3), DPK_ERR_INVALID_ARGUMENT);

            // In-range lookups.
            let name = CString::new("b").unwrap();
            let mut idx = 99usize;
            assert_eq!(dpk_tensor_find(f, name.as_ptr(), &mut idx), DPK_OK);
            assert_eq!(idx, 1);
            assert_eq!(dpk_tensor_info(f, 1, info.as_mut_ptr()), DPK_OK);
            let info = info.assume_init();
            assert_eq!(CStr::from_ptr(info.name).to_str().unwrap(), "b");
            assert_eq!((info.encoding, info.bits, info.ndim), (DPK_ENC_I32, 0, 2));
            assert_eq!(info.shape, [1, 2, 0, 0, 0, 0, 0, 0]);
            assert_eq!((info.rows, info.cols, info.code_cols, info.numel), (1, 2, 2, 2));
            let missing = CString::new("zz").unwrap();
            assert_eq!(dpk_tensor_find(f, missing.as_ptr(), &mut idx), DPK_ERR_TENSOR_NOT_FOUND);
            assert!(last_error().contains("'zz'"));
            // Integer tensors cannot be read as f32; raw tensors have no codes; missing roles.
            let mut two = [0f32; 2];
            assert_eq!(dpk_to_f32(f, 1, two.as_mut_ptr(), 2), DPK_ERR_INVALID_ARGUMENT);
            assert_eq!(dpk_unpack_codes(f, 0, codes.as_mut_ptr(), 3), DPK_ERR_INVALID_ARGUMENT);
            assert_eq!(dpk_to_f32(f, 0, buf.as_mut_ptr(), 2), DPK_ERR_INVALID_ARGUMENT);
            let scales = CString::new("scales").unwrap();
            assert_eq!(dpk_tensor_segment(f, 0, scales.as_ptr(), &mut bp, &mut bl), DPK_ERR_LAYOUT);
            assert_eq!(dpk_tensor_segment(f, 1, role.as_ptr(), &mut bp, &mut bl), DPK_OK);
            assert_eq!(std::slice::from_raw_parts(bp, bl), &[7, 0, 0, 0, 8, 0, 0, 0]);
            assert_eq!(dpk_manifest_json(f, &mut bp, &mut bl), DPK_OK);
            assert_eq!(std::slice::from_raw_parts(bp, bl), (*f).inner.manifest_json());
            dpk_close(f);
        }
    }

    #[test]
    fn handle_is_shared_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.dpk");
        write_small(&p);
        let f = open(&p) as usize; // raw pointers are not Send; the handle is
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let f = f as *const DpkFile;
                    for _ in 0..50 {
                        let mut buf = [0f32; 3];
                        assert_eq!(unsafe { dpk_to_f32(f, 0, buf.as_mut_ptr(), 3) }, DPK_OK);
                        assert_eq!(buf, [1.0, -2.0, 3.5]);
                        assert_eq!(unsafe { dpk_verify(f) }, DPK_OK);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        unsafe { dpk_close(f as *mut DpkFile) };
    }

    #[test]
    fn panics_become_status_codes() {
        // (The default hook still prints the panic to stderr; that is expected here.)
        let code = guard("dpk_test", || panic!("boom {}", 42));
        assert_eq!(code, DPK_ERR_PANIC);
        assert_eq!(last_error(), "panic in dpk_test: boom 42");
    }

    #[test]
    fn version_strings() {
        let v = unsafe { CStr::from_ptr(dpk_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
