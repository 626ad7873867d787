#![no_main]
//! fineprune model files: safetensors header, graph and info metadata, tensors, then one
//! forward pass.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = fineprune::model::ModelFile::from_bytes(data.to_vec(), &fineprune_fuzz::device()) {
        fineprune_fuzz::forward_once(&file);
    }
});
