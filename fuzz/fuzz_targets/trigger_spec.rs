#![no_main]
//! `--trigger` strings: a spec that parses prints back to a spec that parses to the same, and
//! stamps a small image of any shape without a panic (an error is fine: a patch that does not
//! fit, an audio trigger on an image).
use fineprune::trigger::{Use, spec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the image's shape, the rest is the spec.
    let Some((&shape, rest)) = data.split_first() else { return };
    let Ok(s) = std::str::from_utf8(rest) else { return };
    if let Ok(t) = spec::parse(s) {
        let printed = spec::to_spec(&t);
        let again = spec::parse(&printed).expect("a printed spec parses");
        assert_eq!(spec::to_spec(&again), printed);
        let c = if shape & 1 == 0 { 1 } else { 3 };
        let (h, w) = (1 + (shape >> 1 & 7) as usize * 3, 1 + (shape >> 4) as usize * 2);
        let mut image: Vec<f32> = (0..c * h * w).map(|i| (i % 7) as f32 / 7.0).collect();
        let mut rng = fineprune::rng::Rng::new(shape as u64);
        for usage in [Use::Poison, Use::Test, Use::Cover] {
            if t.apply_image(&mut image, [c, h, w], usage, &mut rng).is_ok() {
                assert_eq!(image.len(), c * h * w);
            }
        }
    }
});
