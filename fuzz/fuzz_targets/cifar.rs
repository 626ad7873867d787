#![no_main]
//! CIFAR-10/100 binary batches.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for variant in [fineprune::data::cifar::Variant::Cifar10, fineprune::data::cifar::Variant::Cifar100] {
        let mut split = fineprune::data::Split::new(3 * 32 * 32);
        let _ = fineprune::data::cifar::parse(std::path::Path::new("batch.bin"), data, variant, (32, 32), &mut split);
    }
});
