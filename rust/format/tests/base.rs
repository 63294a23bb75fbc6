//! `DpkFile::check_base`: a delta refuses a base whose tensors differ from its fingerprints.

mod common;

use std::collections::BTreeMap;

use common::{header, Rng};
use deltapack_format::{hash_hex, xxh3_64, BaseTensorFingerprint, DpkFile, DpkWriter, Encoding, Error, OpenOptions};
use proptest::prelude::*;

const DTYPES: [&str; 4] = ["bf16", "f16", "f32", "i64"];

/// A stand-in base model: name -> (dtype, shape, bytes).
type Base = BTreeMap<String, (String, Vec<u64>, Vec<u8>)>;

fn base_model() -> impl Strategy<Value = (Base, u64)> {
    let tensor = (prop::sample::select(DTYPES.to_vec()), prop::collection::vec(1u64..6, 0..4), any::<u64>());
    (prop::collection::btree_map("[a-z]{1,6}(\\.[a-z0-9]{1,4}){0,2}", tensor, 1..8), any::<u64>()).prop_map(|(m, seed)| {
        let mut rng = Rng(seed);
        let base = m
            .into_iter()
            .map(|(name, (dtype, shape, _))| {
                let n = shape.iter().product::<u64>() as usize * 2;
                (name, (dtype.to_owned(), shape, rng.bytes(n)))
            })
            .collect();
        (base, seed)
    })
}

/// Write a delta whose manifest fingerprints `base` (and holds one unrelated tensor).
fn delta_for(dir: &std::path::Path, base: &Base) -> DpkFile {
    let path = dir.join("delta.dpk");
    let mut w = DpkWriter::create(&path).unwrap();
    w.add_raw("payload", &[2], Encoding::RawU8, &[1, 2], BTreeMap::new()).unwrap();
    let mut h = header();
    for (name, (dtype, shape, bytes)) in base {
        h.base.tensors.insert(name.clone(), BaseTensorFingerprint { dtype: dtype.clone(), shape: shape.clone(), xxh3: hash_hex(xxh3_64(bytes)) });
    }
    w.finish(h).unwrap();
    DpkFile::open(&path, OpenOptions::default()).unwrap()
}

/// What a loader would report for each base tensor.
fn lookup(base: &Base) -> impl Fn(&str) -> Option<(String, Vec<u64>, u64)> + '_ {
    |name| base.get(name).map(|(d, s, b)| (d.clone(), s.clone(), xxh3_64(b)))
}

fn mismatch_naming(r: deltapack_format::Result<()>, name: &str, what: &str) -> Result<(), TestCaseError> {
    match r {
        Err(Error::BaseMismatch(m)) => {
            prop_assert!(m.contains(&format!("'{name}'")), "message does not name '{}': {}", name, m);
            prop_assert!(m.contains(what), "expected '{}' in: {}", what, m);
            Ok(())
        }
        other => Err(TestCaseError::fail(format!("expected BaseMismatch for '{name}', got {other:?}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn matching_base_is_accepted((base, _) in base_model(), extra in prop::collection::vec(any::<u8>(), 0..16)) {
        let dir = tempfile::tempdir().unwrap();
        let f = delta_for(dir.path(), &base);
        prop_assert_eq!(f.manifest().base.tensors.len(), base.len());
        f.check_base(lookup(&base)).unwrap();
        // Tensors the delta did not fingerprint do not matter.
        let mut bigger = base.clone();
        bigger.insert("zz.unrelated".into(), ("f32".into(), vec![extra.len() as u64], extra));
        f.check_base(lookup(&bigger)).unwrap();
    }

    #[test]
    fn different_base_is_rejected((base, seed) in base_model(), pick in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().unwrap();
        let f = delta_for(dir.path(), &base);
        let names: Vec<String> = base.keys().cloned().collect();
        let victim = &names[pick.index(names.len())];
        let mut rng = Rng(seed ^ 0x5555);

        // Different bytes, same dtype and shape.
        let mut changed = base.clone();
        let bytes = &mut changed.get_mut(victim).unwrap().2;
        if bytes.is_empty() {
            bytes.push(0); // a 0-D or empty tensor: any byte differs from none
        } else {
            let i = rng.below(bytes.len() as u64) as usize;
            bytes[i] ^= 1 + rng.below(255) as u8;
        }
        mismatch_naming(f.check_base(lookup(&changed)), victim, "hashes to")?;

        // Different shape (same bytes).
        let mut changed = base.clone();
        changed.get_mut(victim).unwrap().1.push(1);
        mismatch_naming(f.check_base(lookup(&changed)), victim, "shape")?;

        // Different dtype.
        let mut changed = base.clone();
        let d = &mut changed.get_mut(victim).unwrap().0;
        *d = DTYPES.iter().find(|x| **x != d.as_str()).unwrap().to_string();
        mismatch_naming(f.check_base(lookup(&changed)), victim, &changed[victim].0)?;

        // Missing tensor.
        let mut changed = base.clone();
        changed.remove(victim);
        mismatch_naming(f.check_base(lookup(&changed)), victim, "no tensor")?;

        // Renamed tensor: the old name is missing.
        let mut changed = base.clone();
        let t = changed.remove(victim).unwrap();
        changed.insert(format!("{victim}_renamed"), t);
        mismatch_naming(f.check_base(lookup(&changed)), victim, "no tensor")?;
    }
}

#[test]
fn no_fingerprints_accepts_any_base() {
    let dir = tempfile::tempdir().unwrap();
    let f = delta_for(dir.path(), &Base::new());
    f.check_base(|_| None).unwrap();
    f.check_base(|_| Some(("f32".into(), vec![1], 0))).unwrap();
}

#[test]
fn exact_hash_is_compared() {
    // Hashes that agree in all but the last hex digit must still be rejected.
    let dir = tempfile::tempdir().unwrap();
    let mut base = Base::new();
    base.insert("w".into(), ("bf16".into(), vec![2, 2], vec![1, 2, 3, 4, 5, 6, 7, 8]));
    let f = delta_for(dir.path(), &base);
    let h = xxh3_64(&base["w"].2);
    f.check_base(|_| Some(("bf16".into(), vec![2, 2], h))).unwrap();
    for other in [h ^ 1, h ^ (1 << 63), 0, u64::MAX] {
        let e = f.check_base(|_| Some(("bf16".into(), vec![2, 2], other))).unwrap_err();
        assert!(matches!(&e, Error::BaseMismatch(m) if m.contains("'w'") && m.contains(&hash_hex(h))), "{e}");
    }
    // Shape [2, 2] is not [4] even though the element count matches.
    let e = f.check_base(|_| Some(("bf16".into(), vec![4], h))).unwrap_err();
    assert!(matches!(&e, Error::BaseMismatch(m) if m.contains("'w'")), "{e}");
    // The error carries its own C status code.
    assert_eq!(e.code(), 15);
}
