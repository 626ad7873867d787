#![no_main]
//! MNIST IDX files (images and labels), gzip-compressed or not.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fineprune_fuzz::scratch_file("x-idx3-ubyte.gz", data);
    let bytes = fineprune::data::idx::read_maybe_gz(&path).unwrap_or_else(|_| data.to_vec());
    let _ = fineprune::data::idx::parse_images(&path, &bytes);
    let _ = fineprune::data::idx::parse_labels(&path, &bytes);
});
