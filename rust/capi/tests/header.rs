//! The committed C header must be exactly what cbindgen generates from the current source.

use std::ffi::CStr;
use std::path::{Path, PathBuf};

use deltapack::{dpk_abi_version, dpk_version, DPK_ABI_VERSION};
use deltapack_format::encoding::ALL_ENCODINGS;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn header_path() -> PathBuf {
    crate_dir().join("include").join("deltapack.h")
}

fn generate() -> Vec<u8> {
    let dir = crate_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src").join("lib.rs"))
        .generate()
        .expect("cbindgen failed to generate the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn header_is_up_to_date() {
    let generated = generate();
    let path = header_path();
    if std::env::var_os("DPK_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        eprintln!("DPK_BLESS=1: rewrote {}", path.display());
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    if committed != generated {
        let (c, g) = (String::from_utf8_lossy(&committed), String::from_utf8_lossy(&generated));
        let first_diff = c.lines().zip(g.lines()).position(|(a, b)| a != b).unwrap_or(c.lines().count().min(g.lines().count()));
        panic!(
            "{} is out of date with src/lib.rs (first difference at line {}).\n\
             Regenerate it with:\n\n    DPK_BLESS=1 cargo test -p deltapack-capi --test header\n\n\
             and commit the result.",
            path.display(),
            first_diff + 1
        );
    }
}

/// Value of `#define NAME VALUE` in the committed header.
fn define(header: &str, name: &str) -> Option<String> {
    header.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some("#define") && it.next() == Some(name)).then(|| it.collect::<Vec<_>>().join(" "))
    })
}

#[test]
fn abi_and_crate_versions_match() {
    let h = read(&header_path());
    let v = define(&h, "DPK_ABI_VERSION").expect("header defines DPK_ABI_VERSION");
    assert_eq!(v.parse::<u32>().unwrap(), dpk_abi_version());
    assert_eq!(dpk_abi_version(), DPK_ABI_VERSION);
    let version = unsafe { CStr::from_ptr(dpk_version()) };
    assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn header_has_every_encoding_and_layout_constant() {
    use deltapack_format::spec;
    let h = read(&header_path());
    for e in ALL_ENCODINGS {
        let name = format!("DPK_ENC_{}", e.name().to_uppercase());
        assert_eq!(define(&h, &name), Some(e.id().to_string()), "{name}");
    }
    let layout = [
        ("DPK_FORMAT_VERSION", spec::FORMAT_VERSION as u64),
        ("DPK_PRELUDE_LEN", spec::PRELUDE_LEN),
        ("DPK_DATA_ALIGN", spec::DATA_ALIGN),
        ("DPK_SEGMENT_ALIGN", spec::SEGMENT_ALIGN),
        ("DPK_PACK_WORD_BITS", spec::PACK_WORD_BITS),
        ("DPK_MAX_NDIM", spec::MAX_NDIM as u64),
    ];
    for (name, value) in layout {
        assert_eq!(define(&h, name), Some(value.to_string()), "{name}");
    }
    assert_eq!(define(&h, "DPK_ERR_INVALID_ARGUMENT").as_deref(), Some("16"));
    assert_eq!(define(&h, "DPK_ERR_NULL_ARGUMENT").as_deref(), Some("100"));
    assert!(h.contains("uint64_t shape[DPK_MAX_NDIM];"), "DpkTensorInfo.shape is sized by DPK_MAX_NDIM");
}
