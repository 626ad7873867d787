#![no_main]
//! NumPy .npz archives (zip of .npy) through to a split.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fineprune_fuzz::scratch_file("data.npz", data);
    let Ok(source) = fineprune::data::npz::Source::parse(&path) else { return };
    if let Ok(arrays) = fineprune::data::npz::read(&source, &mut fineprune::fsutil::DecodeBudget::new(1 << 26)) {
        let _ = fineprune::data::npz::to_split(&path, &arrays.train, None, None, None, None, &mut fineprune::fsutil::DecodeBudget::new(1 << 26));
    }
});
