#![no_main]
//! WAV recordings (FSDD) through to the spectrogram features the model reads.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fineprune_fuzz::scratch_file("0_fuzz_0.wav", data);
    if let Ok(wave) = fineprune::data::fsdd::read_wav(&path) {
        let f = fineprune::data::fsdd::features(&wave, (64, 64));
        assert!(f.iter().all(|v| v.is_finite()), "non-finite spectrogram feature");
    }
});
