#![no_main]
//! PyTorch state dicts (plain safetensors) read into a built-in architecture (`--arch lenet`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fineprune_fuzz::scratch_file("state.safetensors", data);
    if let Ok(file) = fineprune::model::store::from_state_dict("lenet", &path, None, None, &fineprune_fuzz::device()) {
        fineprune_fuzz::forward_once(&file);
    }
});
