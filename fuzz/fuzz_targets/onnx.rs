#![no_main]
//! ONNX model bytes: protobuf decoding, the guard, onnx-ir, the import, then one forward pass.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = fineprune::model::onnx::ImportOptions::default();
    match fineprune::model::onnx::import_bytes(data, None, &opts, &fineprune_fuzz::device()) {
        Ok(file) => fineprune_fuzz::forward_once(&file),
        Err(e) => fineprune_fuzz::no_caught_panic(&e),
    }
});
