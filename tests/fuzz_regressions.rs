//! Every input the fuzzers (scripts/fuzz.sh) found a crash, hang or unbounded allocation with,
//! minimised and kept under tests/fixtures/fuzz/TARGET/, fed to the same library function the
//! fuzz target calls: each must now be a clean error (a panic fails the test).

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no regression inputs in {}", dir.display());
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn trigger_specs_found_by_fuzzing_are_errors() {
    for (path, data) in inputs("trigger_spec") {
        let spec = String::from_utf8(data).unwrap();
        let err = fineprune::trigger::spec::parse(&spec).expect_err(&format!("{}: {spec:?} parsed", path.display()));
        assert!(err.to_string().contains("colour"), "{}: {err}", path.display());
    }
}

#[test]
fn npy_files_found_by_fuzzing_are_quick_errors_without_large_allocations() {
    let dir = tempfile::tempdir().unwrap();
    for (path, data) in inputs("npy") {
        // As the npy fuzz target: the first byte says where x.npy ends and y.npy begins.
        let (&cut, rest) = data.split_first().unwrap();
        let at = rest.len() * cut as usize / 256;
        let (x, y) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
        std::fs::write(&x, &rest[..at]).unwrap();
        std::fs::write(&y, &rest[at..]).unwrap();
        let spec = format!("{},{}", x.display(), y.display());
        let source = fineprune::data::npz::Source::parse(Path::new(&spec)).unwrap();
        let err = fineprune::data::npz::read(&source, 1 << 26).err().unwrap_or_else(|| panic!("{}: read", path.display()));
        // Refused from the preamble, before npyz allocates or parses the header.
        assert!(err.to_string().contains("header"), "{}: {err}", path.display());
    }
}
