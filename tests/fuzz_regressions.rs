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
        let err = fineprune::data::npz::read(&source, &mut fineprune::fsutil::DecodeBudget::new(1 << 26)).err().unwrap_or_else(|| panic!("{}: read", path.display()));
        // Refused from the preamble, before npyz allocates or parses the header.
        assert!(err.to_string().contains("header"), "{}: {err}", path.display());
    }
}

/// Feeds every ONNX file kept for `target` to the import the fuzz target calls: each must now
/// either be refused with an ordinary error (not a panic caught around onnx-ir or the
/// importer) or import and run.
fn onnx_refused_or_run(target: &str) {
    let device = fineprune::cpu_device();
    for (path, data) in inputs(target) {
        let opts = fineprune::model::onnx::ImportOptions::default();
        match fineprune::model::onnx::import_bytes(&data, None, &opts, &device) {
            Err(e) => assert!(!fineprune::model::onnx::is_caught_panic(&e), "{}: {e}", path.display()),
            Ok(file) => {
                let [c, h, w] = file.model.graph.input_shape;
                let logits = file.model.forward(burn::tensor::Tensor::<4>::zeros([2, c, h, w], &device));
                assert_eq!(logits.dims()[0], 2, "{}", path.display());
            }
        }
    }
}

/// Models the structure-aware target built (saved with FINEPRUNE_FUZZ_DUMP) that panicked in
/// our importer or on their first forward pass.
#[test]
fn onnx_graphs_found_by_fuzzing_are_refused_or_run() {
    onnx_refused_or_run("onnx_graph");
}

/// Files the raw-bytes ONNX target found, reduced by hand to the one field that mattered
/// (libFuzzer's minimiser did not shrink the 50 kB original).
#[test]
fn onnx_files_found_by_fuzzing_are_refused_or_run() {
    onnx_refused_or_run("onnx");
}
