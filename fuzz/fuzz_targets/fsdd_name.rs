#![no_main]
//! FSDD file names (`{digit}_{speaker}_{index}.wav`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);
    let _ = fineprune::data::fsdd::parse_name(std::path::Path::new(name.as_ref()));
});
