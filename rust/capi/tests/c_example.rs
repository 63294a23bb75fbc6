//! Compiles `examples/read_dpk.c` against `include/deltapack.h` and the crate's static library,
//! runs it on a file written by `DpkWriter`, and checks every byte count, hash and value it
//! prints against the Rust reader. Skipped (with a note) only when no C compiler exists.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use deltapack_format::encoding::ParamDType;
use deltapack_format::manifest::MethodRef;
use deltapack_format::{
    BaseRef, DpkFile, DpkWriter, Encoding, ManifestHeader, ModelRef, OpenOptions, Producer, QuantParams, ScaleGranularity, ZeroPoint,
};

const CRATE_DIR: &str = env!("CARGO_MANIFEST_DIR");

// ------------------------------------------------------------------------------------------
// Building the example.
// ------------------------------------------------------------------------------------------

/// The C compiler: `$CC`, else the first of cc, gcc, clang that runs.
fn c_compiler() -> Option<String> {
    let candidates: Vec<String> = match std::env::var("CC") {
        Ok(cc) if !cc.trim().is_empty() => vec![cc],
        _ => vec!["cc".into(), "gcc".into(), "clang".into()],
    };
    candidates.into_iter().find(|cc| Command::new(cc).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// `libdeltapack.a` of this build. `cargo test` compiles the library (all its crate types)
/// before the tests that depend on it, into the directory this test binary lives in
/// (`<target>/<profile>/deps`); `cargo build` puts a copy one level up. If neither exists
/// (an unusual runner), build it with cargo into a separate target directory, so as not to
/// wait on the lock of the build running us.
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for dir in [deps, deps.parent().unwrap()] {
        let p = dir.join("libdeltapack.a");
        if p.is_file() {
            return p;
        }
    }
    let target = deps.parent().unwrap().parent().unwrap().join("capi-c-example");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-p", "deltapack-capi", "--lib", "--target-dir"])
        .arg(&target)
        .current_dir(CRATE_DIR)
        .status()
        .expect("run cargo build");
    assert!(st.success(), "cargo build -p deltapack-capi failed");
    target.join("debug").join("libdeltapack.a")
}

/// Native libraries a Rust staticlib needs (`rustc --print native-static-libs`).
fn native_libs() -> &'static [&'static str] {
    if cfg!(target_os = "macos") {
        &["-lSystem", "-lc", "-lm"]
    } else {
        &["-lpthread", "-ldl", "-lm"]
    }
}

struct Built {
    exe: PathBuf,
    _dir: tempfile::TempDir,
}

/// Compile the example once per test process; `None` when there is no C compiler.
fn read_dpk() -> Option<&'static Path> {
    static BUILT: OnceLock<Option<Built>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let Some(cc) = c_compiler() else {
                eprintln!("NOTE: no C compiler found ($CC, cc, gcc, clang); skipping the C example test");
                return None;
            };
            let dir = tempfile::tempdir().unwrap();
            let exe = dir.path().join("read_dpk");
            let crate_dir = Path::new(CRATE_DIR);
            let out = Command::new(&cc)
                .args(["-std=c99", "-Wall", "-Wextra", "-O1", "-I"])
                .arg(crate_dir.join("include"))
                .arg(crate_dir.join("examples").join("read_dpk.c"))
                .arg(static_lib())
                .args(native_libs())
                .arg("-o")
                .arg(&exe)
                .output()
                .expect("run the C compiler");
            assert!(out.status.success(), "{cc} failed to build read_dpk.c:\n{}", String::from_utf8_lossy(&out.stderr));
            Some(Built { exe, _dir: dir })
        })
        .as_ref()
        .map(|b| b.exe.as_path())
}

fn run(exe: &Path, args: &[&Path]) -> Output {
    Command::new(exe).args(args).output().expect("run read_dpk")
}

// ------------------------------------------------------------------------------------------
// Test data.
// ------------------------------------------------------------------------------------------

/// A tiny deterministic generator (xorshift64*), so the test needs no rand crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn below(&mut self, n: u64) -> u8 {
        (self.next() % n) as u8
    }
}

fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// bf16 by truncation (exact for the values the test reads back).
fn bf16_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect()
}

fn header() -> ManifestHeader {
    ManifestHeader {
        producer: Producer { name: "deltapack-capi-test".into(), version: env!("CARGO_PKG_VERSION").into() },
        method: MethodRef { name: "rtn".into(), params: Default::default() },
        finetune: ModelRef { name: "test/finetune".into(), extra: Default::default() },
        base: BaseRef { name: "test/base".into(), hash: "xxh3-64".into(), tensors: BTreeMap::new() },
        deltas: vec![],
        metadata: Default::default(),
    }
}

const NAMES: [&str; 7] = ["raw.f32", "raw.bf16", "q3.group", "q1.tensor", "s24q2.row", "ints.i32", "scalar.f32"];

fn write_test_file(path: &Path) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut w = DpkWriter::create(path).unwrap();
    let none = BTreeMap::new;

    // Raw f32, 3-D.
    w.add_raw("raw.f32", &[2, 3, 4], Encoding::RawF32, &f32_bytes((0..24).map(|_| rng.f32() * 3.0)), none()).unwrap();
    // Raw bf16.
    w.add_raw("raw.bf16", &[4, 6], Encoding::RawBF16, &bf16_bytes((0..24).map(|_| rng.f32())), none()).unwrap();

    // q3 with group scales (group 16 over 45 columns: 3 groups, the last short) in bf16 and
    // stored u8 zero points, on an odd shape.
    let (rows, cols, g) = (7usize, 45usize, 16usize);
    let groups = cols.div_ceil(g);
    let codes: Vec<u8> = (0..rows * cols).map(|_| rng.below(8)).collect();
    let scales = bf16_bytes((0..rows * groups).map(|_| 0.01 + rng.f32().abs() * 0.1));
    let zeros: Vec<u8> = (0..rows * groups).map(|_| rng.below(8)).collect();
    let q = QuantParams { granularity: ScaleGranularity::Group, group_size: Some(g as u64), scale_dtype: ParamDType::BF16, zero: ZeroPoint::Stored { dtype: ParamDType::U8 } };
    w.add_quantized("q3.group", &[rows as u64, cols as u64], 3, &codes, q, &scales, Some(&zeros), none()).unwrap();

    // q1 with one scale for the whole tensor and a constant zero point of 0.5 (±scale/2).
    let codes: Vec<u8> = (0..5 * 33).map(|_| rng.below(2)).collect();
    let q = QuantParams { granularity: ScaleGranularity::Tensor, group_size: None, scale_dtype: ParamDType::F32, zero: ZeroPoint::Constant { value: 0.5 } };
    w.add_quantized("q1.tensor", &[5, 33], 1, &codes, q, &f32_bytes([0.0625]), None, none()).unwrap();

    // 2:4 sparse, 2-bit codes, per-row f32 scales and stored f32 zeros (all four segments).
    let (rows, cols) = (3usize, 16usize);
    let kc = cols / 2;
    let codes: Vec<u8> = (0..rows * kc).map(|_| rng.below(4)).collect();
    const PAIRS: [[u8; 2]; 6] = [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]];
    let indices: Vec<u8> = (0..rows * kc / 2).flat_map(|_| PAIRS[rng.below(6) as usize]).collect();
    let scales = f32_bytes((0..rows).map(|_| 0.5 + rng.f32().abs()));
    let zeros = f32_bytes((0..rows).map(|_| 1.5));
    let q = QuantParams { granularity: ScaleGranularity::Row, group_size: None, scale_dtype: ParamDType::F32, zero: ZeroPoint::Stored { dtype: ParamDType::F32 } };
    w.add_sparse24("s24q2.row", &[rows as u64, cols as u64], 2, &codes, &indices, q, &scales, Some(&zeros), none()).unwrap();

    // An integer tensor (no f32 line) and a 0-D one.
    let ints: Vec<u8> = [3i32, -1, 4, 1, -5, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    w.add_raw("ints.i32", &[2, 3], Encoding::RawI32, &ints, none()).unwrap();
    w.add_raw("scalar.f32", &[], Encoding::RawF32, &f32_bytes([-7.25]), none()).unwrap();

    let m = w.finish(header()).unwrap();
    assert_eq!(m.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), NAMES);
}

// ------------------------------------------------------------------------------------------
// What the example should print, from the Rust reader.
// ------------------------------------------------------------------------------------------

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

struct Expected {
    head: String,
    segments: Vec<String>,
    /// (sum, first up to 4 values) for float encodings.
    f32: Option<(f64, Vec<f64>)>,
}

fn expected(path: &Path) -> Vec<Expected> {
    let f = DpkFile::open(path, OpenOptions::default()).unwrap();
    (0..f.len())
        .map(|i| {
            let v = f.tensor_at(i).unwrap();
            let l = v.layout;
            let shape: Vec<String> = l.shape.iter().map(u64::to_string).collect();
            let head = format!("{} {} {} [{}] {} {}", v.entry.name, l.encoding.id(), l.encoding.bits().unwrap_or(0), shape.join(","), l.rows, l.cols);
            let segments = v.segments.iter().map(|(role, b)| format!("  segment {role} {} {:016x}", b.len(), fnv1a64(b))).collect();
            let is_int = matches!(l.encoding, Encoding::RawI8 | Encoding::RawU8 | Encoding::RawI32 | Encoding::RawI64);
            let f32 = (!is_int).then(|| {
                let mut out = vec![0f32; l.numel as usize];
                v.to_f32(&mut out).unwrap();
                let sum = out.iter().map(|&x| x as f64).sum::<f64>();
                (sum, out.iter().take(4).map(|&x| x as f64).collect())
            });
            Expected { head, segments, f32 }
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()) + 1e-30
}

/// Check the per-tensor blocks of read_dpk's stdout against `want`.
fn check_blocks(lines: &[&str], want: &[&Expected]) {
    let mut it = lines.iter();
    for e in want {
        assert_eq!(it.next().copied(), Some(e.head.as_str()));
        for s in &e.segments {
            assert_eq!(it.next().copied(), Some(s.as_str()), "segment line of '{}'", e.head);
        }
        if let Some((sum, first)) = &e.f32 {
            let line = it.next().unwrap_or_else(|| panic!("no f32 line for '{}'", e.head));
            let mut fields = line.strip_prefix("  f32 ").unwrap_or_else(|| panic!("expected an f32 line, got {line:?}")).split(' ');
            let got_sum: f64 = fields.next().unwrap().parse().unwrap();
            assert!(close(got_sum, *sum), "'{}': sum {got_sum} vs {sum}", e.head);
            let got: Vec<f64> = fields.map(|x| x.parse().unwrap()).collect();
            assert_eq!(got.len(), first.len(), "'{}': {line}", e.head);
            for (g, w) in got.iter().zip(first) {
                assert!(close(*g, *w), "'{}': value {g} vs {w}", e.head);
            }
            // The exact printf format.
            assert!(line.split(' ').skip(3).all(|x| x.contains('e') && x.split_once('.').is_some_and(|(_, frac)| frac.len() == 6 + 4)), "{line}");
        }
    }
    assert_eq!(it.next(), None, "unexpected trailing output");
}

// ------------------------------------------------------------------------------------------
// Tests.
// ------------------------------------------------------------------------------------------

#[test]
fn c_example_reads_every_tensor() {
    let Some(exe) = read_dpk() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("delta.dpk");
    write_test_file(&path);
    let want = expected(&path);

    let out = run(exe, &[&path]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "read_dpk failed ({:?}): {}\n{stdout}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    println!("{stdout}"); // shown with --nocapture
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "abi_version 1");
    assert_eq!(lines[1], format!("tensor_count {}", NAMES.len()));
    check_blocks(&lines[2..], &want.iter().collect::<Vec<_>>());

    // Spot-check the shapes of the lines themselves.
    assert!(stdout.contains("\nq3.group 19 3 [7,45] 7 45\n  segment codes 140 "), "{stdout}");
    assert!(stdout.contains("\nscalar.f32 1 0 [] 1 1\n  segment data 4 "), "{stdout}");
    assert!(stdout.contains("\n  f32 -7.250000e+00 -7.250000e+00\n"), "{stdout}");
    assert!(stdout.contains("\nints.i32 6 0 [2,3] 2 3\n  segment data 24 "), "{stdout}");
    let s24: Vec<&str> = lines.iter().skip_while(|l| !l.starts_with("s24q2.row ")).skip(1).take(4).map(|l| l.split(' ').nth(3).unwrap()).collect();
    assert_eq!(s24, ["codes", "indices", "scales", "zeros"]);

    // One tensor by name.
    let out = run(exe, &[&path, Path::new("q1.tensor")]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(&lines[..2], ["abi_version 1", &format!("tensor_count {}", NAMES.len())]);
    check_blocks(&lines[2..], &[&want[3]]);

    // An unknown name: DPK_ERR_TENSOR_NOT_FOUND.
    let out = run(exe, &[&path, Path::new("nope")]);
    assert_eq!(out.status.code(), Some(14));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "error: no tensor named 'nope' in this file\n");

    // A missing file: DPK_ERR_IO.
    let out = run(exe, &[&dir.path().join("missing.dpk")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: I/O error on "));
}

#[test]
fn c_example_reports_a_flipped_byte() {
    let Some(exe) = read_dpk() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("delta.dpk");
    write_test_file(&path);

    // Flip one byte inside the codes of the q3 tensor (the third tensor).
    let (offset, len) = {
        let f = DpkFile::open(&path, OpenOptions::default()).unwrap();
        f.segment_range(f.index_of("q3.group").unwrap(), "codes").unwrap()
    };
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset + len / 2] ^= 0x10;
    let bad = dir.path().join("flipped.dpk");
    std::fs::write(&bad, &bytes).unwrap();

    let out = run(exe, &[&bad]);
    assert_eq!(out.status.code(), Some(13), "expected DPK_ERR_CHECKSUM; stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8(out.stderr).unwrap();
    println!("{}{stderr}", String::from_utf8_lossy(&out.stdout)); // shown with --nocapture
    assert!(stderr.starts_with("error: checksum mismatch in tensor 'q3.group', segment 'codes'"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // The tensors before it were printed in full (lazy verification); the bad one only by its header.
    let want = expected(&path);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.last().copied(), Some(want[2].head.as_str()));
    check_blocks(&lines[2..lines.len() - 1], &[&want[0], &want[1]]);
}
