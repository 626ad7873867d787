#![no_main]
//! The MODEL.toml sidecar beside an ONNX file.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fineprune_fuzz::scratch_file("model.toml", data);
    let model = fineprune_fuzz::scratch_dir().join("model.onnx");
    let _ = fineprune::model::onnx::Sidecar::beside(&model);
});
