#![no_main]
//! Image files of a `folder:` dataset (PNG, JPEG, BMP, PNM, WebP), by extension as the loader
//! picks them: the first byte chooses the extension.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let ext = ["png", "jpg", "bmp", "ppm", "webp", "jpeg", "pgm", "gif"][pick as usize % 8];
    let path = fineprune_fuzz::scratch_file(&format!("image.{ext}"), rest);
    let _ = fineprune::data::folder::decode(&path);
});
