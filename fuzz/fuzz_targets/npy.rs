#![no_main]
//! A pair of NumPy .npy files (`X.npy,Y.npy`): the input is split in two at its first byte's
//! fraction.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let at = rest.len() * cut as usize / 256;
    let x = fineprune_fuzz::scratch_file("x.npy", &rest[..at]);
    let y = fineprune_fuzz::scratch_file("y.npy", &rest[at..]);
    let spec = format!("{},{}", x.display(), y.display());
    let Ok(source) = fineprune::data::npz::Source::parse(std::path::Path::new(&spec)) else { return };
    if let Ok(arrays) = fineprune::data::npz::read(&source, &mut fineprune::fsutil::DecodeBudget::new(1 << 26)) {
        let _ = fineprune::data::npz::to_split(&x, &arrays.train, None, None, None, None, &mut fineprune::fsutil::DecodeBudget::new(1 << 26));
    }
});
