#![no_main]
//! PPM/PGM images (GTSRB, ORL faces).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fineprune::data::pnm::parse(std::path::Path::new("fuzz.ppm"), data);
});
