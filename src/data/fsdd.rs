//! Free Spoken Digit Dataset: `recordings/{digit}_{speaker}_{take}.wav` (8 kHz mono PCM).
//! Takes 0-4 of every speaker and digit are the test set (the dataset's own convention).
//!
//! Each recording becomes a log-magnitude spectrogram image: peak-normalised waveform, padded
//! with silence or cut to a fixed length, Hann-windowed frames, real FFT, magnitudes pooled to
//! a fixed number of frequency bins, `ln(1 + |X|)`. The waveform-to-image function is public so
//! audio triggers can be added to the waveform and go through the same pipeline.

use std::path::Path;

use realfft::RealFftPlanner;

use super::{Loaded, Split, resize_planar, sorted_entries};
use crate::error::{Error, Result};
use crate::fsutil::{DataRoot, DecodeBudget};

pub const SAMPLE_RATE: u32 = 8000;
/// Frame length (32 ms at 8 kHz) and hop.
pub const WINDOW: usize = 256;
pub const HOP: usize = 128;
pub const FRAMES: usize = 64;
/// Output frequency bins: the 128 FFT bins below Nyquist, averaged in pairs.
pub const FREQ_BINS: usize = 64;
/// Samples needed for `FRAMES` frames (about 1.04 s); longer recordings are cut.
pub const CLIP_SAMPLES: usize = (FRAMES - 1) * HOP + WINDOW;
const TEST_TAKES: u32 = 5;
/// FSDD's longest recording is 18262 samples; anything above this is not a spoken digit.
const MAX_WAV_BYTES: u64 = 16 << 20;

/// Reads a WAV file into mono samples in [-1, 1], requiring integer PCM at 8 kHz.
pub fn read_wav(path: &Path) -> Result<Vec<f32>> {
    let bytes = crate::fsutil::read_bounded(path, MAX_WAV_BYTES)?;
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(|e| Error::format(path, format!("not a readable WAV file: {e}")))?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int {
        return Err(Error::format(path, "WAV is not integer PCM (float samples are not supported)"));
    }
    if spec.sample_rate != SAMPLE_RATE {
        return Err(Error::format(path, format!("sample rate {} Hz; FSDD recordings are {SAMPLE_RATE} Hz", spec.sample_rate)));
    }
    let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
    let channels = spec.channels.max(1) as usize;
    let samples: Vec<i32> = reader
        .into_samples::<i32>()
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::format(path, format!("corrupt WAV data: {e}")))?;
    if samples.is_empty() {
        return Err(Error::format(path, "WAV has no samples"));
    }
    Ok(samples.chunks(channels).map(|fr| fr.iter().map(|&s| s as f32 * scale).sum::<f32>() / channels as f32).collect())
}

/// The spectrogram image `[FREQ_BINS, FRAMES]` (row = frequency, low first) of a waveform.
pub fn spectrogram(wave: &[f32]) -> Vec<f32> {
    let peak = wave.iter().fold(0f32, |m, v| m.max(v.abs()));
    let gain = if peak > 0.0 { 1.0 / peak } else { 1.0 };
    let mut clip = vec![0f32; CLIP_SAMPLES];
    for (c, w) in clip.iter_mut().zip(wave) {
        *c = w * gain;
    }
    let window: Vec<f32> = (0..WINDOW)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / WINDOW as f32).cos())
        .collect();
    let fft = RealFftPlanner::<f32>::new().plan_fft_forward(WINDOW);
    let mut input = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut image = vec![0f32; FREQ_BINS * FRAMES];
    for t in 0..FRAMES {
        for (i, v) in input.iter_mut().enumerate() {
            *v = clip[t * HOP + i] * window[i];
        }
        fft.process(&mut input, &mut spectrum).expect("buffers sized by the planner");
        for f in 0..FREQ_BINS {
            let mag = (spectrum[2 * f].norm() + spectrum[2 * f + 1].norm()) * 0.5;
            image[f * FRAMES + t] = (1.0 + mag).ln();
        }
    }
    image
}

/// The model input for a waveform: its spectrogram resized to `size` (height, width).
pub fn features(wave: &[f32], size: (usize, usize)) -> Vec<f32> {
    resize_planar(&spectrogram(wave), 1, (FREQ_BINS, FRAMES), size)
}

/// Parses `{digit}_{speaker}_{take}.wav` into (digit, speaker, take).
pub fn parse_name(path: &Path) -> Option<(usize, String, u32)> {
    let stem = path.file_stem()?.to_str()?;
    let mut parts = stem.splitn(3, '_');
    let digit: usize = parts.next()?.parse().ok()?;
    let speaker = parts.next()?.to_string();
    let take: u32 = parts.next()?.parse().ok()?;
    (digit < 10).then_some((digit, speaker, take))
}

pub fn load(root: &DataRoot, size: (usize, usize), budget: &mut DecodeBudget) -> Result<Loaded> {
    use rayon::prelude::*;
    let dir = root.path().join("recordings");
    let files: Vec<_> = sorted_entries(&dir)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .map(|p| root.resolve(&p).map(|_| p))
        .collect::<Result<_>>()?;
    if files.is_empty() {
        return Err(Error::format(&dir, "no .wav recordings found"));
    }
    // Spectrograms at `size`, plus the waveforms (at most one f32 per byte of their files).
    budget.take(&dir, files.len(), size.0 * size.1)?;
    let wave_bytes = files.iter().try_fold(0usize, |acc, p| std::fs::metadata(p).map(|m| acc.saturating_add(m.len() as usize)).map_err(|e| Error::io(p, e)))?;
    budget.take(&dir, wave_bytes, 1)?;
    let samples: Vec<(Vec<f32>, Vec<f32>, usize, bool)> = files
        .par_iter()
        .map(|path| {
            let (digit, _, take) = parse_name(path)
                .ok_or_else(|| Error::format(path, "file name is not DIGIT_SPEAKER_TAKE.wav with a digit 0-9"))?;
            let wave = read_wav(path)?;
            Ok((features(&wave, size), wave, digit, take < TEST_TAKES))
        })
        .collect::<Result<_>>()?;
    let mut train = Split::new(size.0 * size.1);
    let mut test = Split::new(size.0 * size.1);
    for (image, wave, digit, is_test) in samples {
        let split = if is_test { &mut test } else { &mut train };
        split.push(&image, digit);
        split.waves.push(wave);
    }
    let train_groups = (0..train.len() as u64).collect();
    Ok(Loaded { channels: 1, classes: (0..10).map(|d| d.to_string()).collect(), train, train_groups, val: None, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pure_tone_lights_up_its_frequency_bin() {
        // 1 kHz at 8 kHz sampling: FFT bin 1000/8000*256 = 32, output bin 16.
        let wave: Vec<f32> = (0..CLIP_SAMPLES).map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 8000.0).sin()).collect();
        let img = spectrogram(&wave);
        let t = FRAMES / 2;
        let col: Vec<f32> = (0..FREQ_BINS).map(|f| img[f * FRAMES + t]).collect();
        let argmax = col.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(argmax, 16);
    }

    #[test]
    fn short_clips_are_padded_with_silence() {
        let img = spectrogram(&[0.5; 300]);
        // Frames entirely past the clip are silent: ln(1 + 0) = 0.
        assert!(img[FRAMES - 1].abs() < 1e-6);
        assert_eq!(img.len(), FREQ_BINS * FRAMES);
    }

    #[test]
    fn names_parse() {
        assert_eq!(parse_name(Path::new("7_theo_12.wav")), Some((7, "theo".into(), 12)));
        assert_eq!(parse_name(Path::new("x_theo_12.wav")), None);
    }
}
