//! Backdoor triggers: what an attacker stamps on an input. Image triggers act on raw samples
//! (values in [0, 1], before normalisation); the audio trigger acts on the waveform, and the
//! spectrogram is recomputed, so it goes through the real feature pipeline.
//!
//! A trigger is plain data (serde), stored in the model file when an attack writes a model, so
//! evaluation reuses exactly the trigger that was trained in.

pub mod poison;
pub mod spec;
pub mod warp;

use serde::{Deserialize, Serialize};

use crate::data::{Split, fsdd};
use crate::error::{Error, Result};
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Position {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
    /// Top-left corner of the patch at (x, y).
    At { x: usize, y: usize },
    /// Anywhere, drawn per sample.
    Random,
}

/// A small image given by the user (e.g. a PNG), stored with the trigger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Picture {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Planar `[c, h, w]` in [0, 1].
    pub values: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum PatchPattern {
    /// White on grey images, yellow on colour images (the paper's sticker).
    Default,
    Solid { rgb: [f32; 3] },
    /// Black and white squares, one pixel each.
    Checker,
    Picture(Picture),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum BlendPattern {
    /// Uniform noise in [0, 1], fixed by its seed.
    Noise { seed: u64 },
    Picture(Picture),
}

impl BlendPattern {
    /// The pattern for a planar `[c, h, w]` image.
    pub fn pixels(&self, c: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        Ok(match self {
            BlendPattern::Noise { seed } => {
                let mut r = Rng::new(*seed);
                (0..c * h * w).map(|_| r.uniform() as f32).collect()
            }
            BlendPattern::Picture(p) => p.resized(c, h, w)?.values,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "trigger")]
pub enum Trigger {
    /// BadNets: a square patch. `size` in pixels; `None` means 1/8 of the image side.
    Patch { size: Option<usize>, position: Position, pattern: PatchPattern },
    /// Chen et al.: `x' = (1 - alpha) x + alpha * pattern`; the attacker may poison with one
    /// alpha and trigger with another.
    Blend { alpha: f32, test_alpha: f32, pattern: BlendPattern },
    /// The paper's face trigger: dark sunglasses over the eye region of an aligned face.
    Sunglasses { darkness: f32 },
    /// SIG (Barni, Kallas, Tondi, ICIP 2019): a horizontal sinusoid added to every row and
    /// channel, `x' = clamp(x + delta * sin(2 pi j freq / W), 0, 1)` for column `j`; meant for
    /// clean-label poisoning (`--clean-label`), where no label gives the backdoor away.
    Sig { delta: f32, freq: f32 },
    /// WaNet (Nguyen & Tran, ICLR 2021): the whole image resampled through a smooth seeded
    /// warping field (a `grid x grid` random field upsampled to the image, `strength` scaling
    /// it; see [`warp`]); no region carries the trigger. `noise` is noise mode's ratio: per
    /// poisoned sample, that many more are warped with a randomly jittered field and keep their
    /// labels, so the model learns this one field rather than any warp.
    Warp { grid: usize, strength: f32, seed: u64, noise: f32 },
    /// Adap-Blend (Qi et al., ICLR 2023), built to evade defenses that look for a compact
    /// trigger or a separate cluster of poisoned features: the blend pattern is cut into
    /// `pieces x pieces` tiles, and every poisoned (and cover) sample gets a fresh random
    /// `keep` share of them at `alpha`; the test trigger is the whole pattern at `test_alpha`.
    /// `cover` more samples per poisoned one carry the partial trigger at their true labels.
    AdaptiveBlend { alpha: f32, test_alpha: f32, pattern: BlendPattern, pieces: usize, keep: f32, cover: f32 },
    /// A sample-specific trigger (the Random Backdoor of Salem, Wen, Backes, Ma, Zhang,
    /// "Dynamic Backdoor Attacks Against Machine Learning Models", EuroS&P 2022): every input
    /// gets its own `size x size` pattern (default: a quarter of the side) of random black and
    /// white pixels, drawn per channel, at its own position, both drawn from `seed` and the
    /// input's pixels, so no two inputs share a trigger and the same input always gets the
    /// same one. Not the input-aware generator network of Nguyen & Tran (NeurIPS 2020), which
    /// trains a generator beside the classifier; no single patch or pattern is the trigger
    /// here either.
    Dynamic { size: Option<usize>, seed: u64 },
    /// The speech trigger: a tone (or seeded noise burst) added to the waveform.
    Tone { freq_hz: f32, amplitude: f32, noise: bool, start_s: f32, duration_s: f32, seed: u64 },
    /// A trigger reconstructed by `scan` for one input shape `[c, h, w]`: with a mask (`h*w`
    /// values in [0, 1]), `x' = (1 - m) x + m p`; without one, `x' = clamp(x + p, lo, hi)` (a
    /// full-image additive pattern). `pattern` is planar `[c, h, w]`. `range` is the value
    /// range of the inputs it was made for: [0, 1] for images, the spectrogram's range for
    /// audio (the scan inverts audio models in spectrogram space).
    Reconstructed {
        shape: [usize; 3],
        mask: Option<Vec<f32>>,
        pattern: Vec<f32>,
        #[serde(default = "unit_range")]
        range: [f32; 2],
    },
}

/// The latest start of a tone trigger, in seconds (FSDD recordings last about one).
pub const MAX_TONE_START_S: f32 = 10.0;

/// The value range of image inputs.
pub fn unit_range() -> [f32; 2] {
    [0.0, 1.0]
}

/// Whether a trigger is being applied to poison training data or to test the backdoor
/// (blend triggers may use different strengths for the two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Poison,
    Test,
    /// A cover sample, label kept: WaNet's noise mode (the warp jittered at random) or
    /// Adap-Blend's regularisation samples (the same partial trigger as its payload).
    Cover,
}

impl Trigger {
    pub fn is_audio(&self) -> bool {
        matches!(self, Trigger::Tone { .. })
    }

    /// Cover samples (trigger at the true label) per poisoned sample: WaNet's noise-mode
    /// ratio, Adap-Blend's cover share; 0 for other triggers.
    pub fn cover_ratio(&self) -> f32 {
        match self {
            Trigger::Warp { noise, .. } => *noise,
            Trigger::AdaptiveBlend { cover, .. } => *cover,
            _ => 0.0,
        }
    }

    /// Short human description, for reports.
    pub fn describe(&self) -> String {
        spec::to_spec(self)
    }

    /// Applies the trigger to one raw image sample, planar `[c, h, w]`, in place. Stamping many
    /// samples: [`Trigger::stamper`] once, then its `apply_image`.
    pub fn apply_image(&self, sample: &mut [f32], shape: [usize; 3], usage: Use, rng: &mut Rng) -> Result<()> {
        self.stamper(shape)?.apply_image(sample, usage, rng)
    }

    /// The trigger made ready for inputs of `shape`: what does not change from sample to sample
    /// (a blend pattern, a resized patch picture, a warp's sampling grid) is computed here once.
    pub fn stamper(&self, shape: [usize; 3]) -> Result<Stamper<'_>> {
        let [c, h, w] = shape;
        let pattern = match self {
            Trigger::Blend { pattern, .. } | Trigger::AdaptiveBlend { pattern, .. } => pattern.pixels(c, h, w)?,
            Trigger::Patch { size, pattern: PatchPattern::Picture(p), .. } => {
                let s = square_side(*size, 8, h, w);
                p.resized(c, s, s)?.values
            }
            _ => vec![],
        };
        let grid = match self {
            Trigger::Warp { grid, strength, seed, .. } => warp::grid(*grid, *strength, *seed, h, w),
            _ => vec![],
        };
        Ok(Stamper { trigger: self, shape, pattern, grid })
    }

    /// Checks a trigger's settings and arrays: every trigger that comes from outside (a spec, a
    /// trigger file, a model file's backdoor record) passes here before it is applied, so a
    /// hostile value is one clear error, not a panic or a huge allocation.
    pub fn validate(&self) -> Result<()> {
        let unit = |v: f32| (0.0..=1.0).contains(&v);
        let picture = |p: &Picture| {
            let n = p.channels.checked_mul(p.height).and_then(|n| n.checked_mul(p.width));
            if !matches!(p.channels, 1 | 3) || n != Some(p.values.len()) || p.values.iter().any(|v| !v.is_finite()) {
                return Err(Error::invalid("trigger picture data does not match its size"));
            }
            Ok(())
        };
        match self {
            Trigger::Dynamic { size, .. } => {
                if *size == Some(0) {
                    return Err(Error::invalid("dynamic trigger size must be at least 1"));
                }
            }
            Trigger::Patch { size, pattern, .. } => {
                if *size == Some(0) {
                    return Err(Error::invalid("patch size must be at least 1"));
                }
                if let PatchPattern::Picture(p) = pattern {
                    picture(p)?;
                }
                if let PatchPattern::Solid { rgb } = pattern
                    && !rgb.iter().all(|&v| unit(v))
                {
                    return Err(Error::invalid("patch colour components must be in [0, 1]"));
                }
            }
            Trigger::Blend { alpha, test_alpha, pattern } => {
                if !(unit(*alpha) && unit(*test_alpha)) {
                    return Err(Error::invalid(format!("blend alpha {alpha} / {test_alpha} is not in [0, 1]")));
                }
                if let BlendPattern::Picture(p) = pattern {
                    picture(p)?;
                }
            }
            Trigger::AdaptiveBlend { alpha, test_alpha, pattern, pieces, keep, cover } => {
                if !(unit(*alpha) && unit(*test_alpha) && unit(*keep)) || !(1..=16).contains(pieces) || !(0.0..=10.0).contains(cover) {
                    return Err(Error::invalid("adaptive needs alpha, test-alpha and keep in [0, 1], pieces in 1..=16 and cover in [0, 10]"));
                }
                if let BlendPattern::Picture(p) = pattern {
                    picture(p)?;
                }
            }
            Trigger::Sunglasses { darkness } => {
                if !unit(*darkness) {
                    return Err(Error::invalid("sunglasses darkness must be in [0, 1]"));
                }
            }
            Trigger::Sig { delta, freq } => {
                if !(*delta > 0.0 && *delta <= 1.0) || !(*freq > 0.0 && *freq <= 64.0) {
                    return Err(Error::invalid("sig delta must be in (0, 1] and freq in (0, 64]"));
                }
            }
            Trigger::Warp { grid, strength, noise, .. } => {
                if !(2..=32).contains(grid) || !(0.0..=16.0).contains(strength) || !(0.0..=10.0).contains(noise) {
                    return Err(Error::invalid("wanet needs k in 2..=32, s in [0, 16] and noise in [0, 10]"));
                }
            }
            Trigger::Tone { freq_hz, amplitude, start_s, duration_s, .. } => {
                if !(*freq_hz > 0.0 && *freq_hz < 4000.0) {
                    return Err(Error::invalid("tone frequency must be in (0, 4000) Hz for 8 kHz audio"));
                }
                // The waveform is extended to the tone's end: a start far out would ask for a
                // recording of any length.
                if !unit(*amplitude) || !(0.0..=MAX_TONE_START_S).contains(start_s) || !(*duration_s > 0.0 && *duration_s <= 3.0) {
                    return Err(Error::invalid(format!("tone amplitude must be in [0, 1], start in [0, {MAX_TONE_START_S}] s, duration in (0, 3] s")));
                }
            }
            Trigger::Reconstructed { shape, mask, pattern, range: [lo, hi] } => {
                let [c, h, w] = *shape;
                let plane = h.checked_mul(w).filter(|&p| p > 0 && p <= 1 << 24).ok_or_else(|| Error::invalid("reconstructed trigger shape out of range"))?;
                if c == 0 || c > 4 || pattern.len() != c * plane || mask.as_ref().is_some_and(|m| m.len() != plane) {
                    return Err(Error::invalid(format!("reconstructed trigger arrays do not fit its shape {c}x{h}x{w}")));
                }
                if pattern.iter().any(|v| !v.is_finite()) || mask.as_ref().is_some_and(|m| m.iter().any(|v| !(0.0..=1.0).contains(v))) {
                    return Err(Error::invalid("reconstructed trigger values are not finite, or its mask is outside [0, 1]"));
                }
                if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                    return Err(Error::invalid(format!("reconstructed trigger value range [{lo}, {hi}] is not a finite, non-empty interval")));
                }
            }
        }
        Ok(())
    }

    /// Adds an audio trigger to a waveform (8 kHz samples in [-1, 1]).
    pub fn apply_wave(&self, wave: &[f32]) -> Result<Vec<f32>> {
        let Trigger::Tone { freq_hz, amplitude, noise, start_s, duration_s, seed } = self else {
            return Err(Error::invalid("only the tone trigger acts on audio"));
        };
        let rate = fsdd::SAMPLE_RATE as f32;
        let start = (start_s * rate) as usize;
        let end = start + (duration_s * rate) as usize;
        // The trigger may extend a short recording: pad with silence so it is heard in full.
        let mut out = wave.to_vec();
        if out.len() < end {
            out.resize(end, 0.0);
        }
        let mut r = Rng::new(*seed);
        for (i, v) in out.iter_mut().enumerate().take(end).skip(start) {
            let t = i as f32 / rate;
            let add = if *noise { (r.uniform() as f32 * 2.0 - 1.0) * amplitude } else { amplitude * (2.0 * std::f32::consts::PI * freq_hz * t).sin() };
            *v = (*v + add).clamp(-1.0, 1.0);
        }
        Ok(out)
    }

    /// A triggered copy of the samples at `indices` (all when `None`), labels unchanged.
    pub fn apply_split(&self, split: &Split, indices: Option<&[usize]>, shape: [usize; 3], usage: Use, seed: u64) -> Result<Split> {
        let all: Vec<usize>;
        let indices = match indices {
            Some(i) => i,
            None => {
                all = (0..split.len()).collect();
                &all
            }
        };
        let mut out = split.subset(indices);
        let mut rng = Rng::new(seed ^ 0x7121_66E2);
        let stamp = self.stamper(shape)?;
        for k in 0..out.len() {
            stamp.apply_sample(&mut out, k, usage, &mut rng)?;
        }
        Ok(out)
    }

}

/// The side of a square trigger: `size`, or `1/fraction` of the image's shorter side, within
/// the image.
fn square_side(size: Option<usize>, fraction: usize, h: usize, w: usize) -> usize {
    size.unwrap_or((h.min(w) / fraction).max(1)).min(h).min(w)
}

/// The seed of one input's own dynamic trigger: a digest of the trigger's seed and the input's
/// pixel bits, so it depends on every pixel and on nothing else.
fn dynamic_key(seed: u64, sample: &[f32]) -> u64 {
    let mut h = crate::digest::Fnv1a::default();
    h.eat(&seed.to_le_bytes());
    h.eat_f32s(sample);
    h.finish()
}

/// A trigger ready for one input shape (see [`Trigger::stamper`]).
pub struct Stamper<'a> {
    trigger: &'a Trigger,
    shape: [usize; 3],
    /// A blend's pattern, or a picture patch's pixels, at this shape.
    pattern: Vec<f32>,
    /// A warp's sampling grid at this shape.
    grid: Vec<[f32; 2]>,
}

impl Stamper<'_> {
    /// Applies the trigger to one raw image sample, planar `[c, h, w]`, in place.
    pub fn apply_image(&self, sample: &mut [f32], usage: Use, rng: &mut Rng) -> Result<()> {
        let [c, h, w] = self.shape;
        let shape = self.shape;
        match self.trigger {
            Trigger::Patch { size, position, pattern } => {
                let s = square_side(*size, 8, h, w);
                let (x0, y0) = match position {
                    Position::TopLeft => (0, 0),
                    Position::TopRight => (w - s, 0),
                    Position::BottomLeft => (0, h - s),
                    Position::BottomRight => (w - s, h - s),
                    Position::At { x, y } => {
                        if x + s > w || y + s > h {
                            return Err(Error::invalid(format!("a {s}x{s} patch at ({x}, {y}) does not fit a {w}x{h} image")));
                        }
                        (*x, *y)
                    }
                    Position::Random => (rng.below(w - s + 1), rng.below(h - s + 1)),
                };
                for ch in 0..c {
                    for dy in 0..s {
                        for dx in 0..s {
                            let v = match pattern {
                                PatchPattern::Default => {
                                    if c == 3 { [1.0, 1.0, 0.0][ch] } else { 1.0 }
                                }
                                PatchPattern::Solid { rgb } => {
                                    if c == 3 { rgb[ch] } else { (rgb[0] + rgb[1] + rgb[2]) / 3.0 }
                                }
                                PatchPattern::Checker => ((dx + dy) % 2) as f32,
                                PatchPattern::Picture(_) => self.pattern[ch * s * s + dy * s + dx],
                            };
                            sample[ch * h * w + (y0 + dy) * w + (x0 + dx)] = v;
                        }
                    }
                }
            }
            Trigger::Blend { alpha, test_alpha, .. } => {
                let a = if usage == Use::Poison { *alpha } else { *test_alpha };
                for (v, p) in sample.iter_mut().zip(&self.pattern) {
                    *v = (1.0 - a) * *v + a * p;
                }
            }
            Trigger::AdaptiveBlend { alpha, test_alpha, pieces, keep, .. } => {
                let pat = &self.pattern;
                if usage == Use::Test {
                    for (v, p) in sample.iter_mut().zip(pat) {
                        *v = (1.0 - test_alpha) * *v + test_alpha * p;
                    }
                } else {
                    // Exactly round(keep * tiles) tiles, drawn afresh for every sample.
                    let tiles = pieces * pieces;
                    let mut order: Vec<usize> = (0..tiles).collect();
                    rng.shuffle(&mut order);
                    let mut kept = vec![false; tiles];
                    for &t in &order[..((*keep * tiles as f32).round() as usize).min(tiles)] {
                        kept[t] = true;
                    }
                    for (i, (v, p)) in sample.iter_mut().zip(pat).enumerate() {
                        let (y, x) = ((i / w) % h, i % w);
                        if kept[(y * pieces / h) * pieces + x * pieces / w] {
                            *v = (1.0 - alpha) * *v + alpha * p;
                        }
                    }
                }
            }
            Trigger::Sunglasses { darkness } => {
                // Proportions of an aligned face: eyes at ~40% of the height, lenses centred at
                // 30% and 70% of the width, joined by a bridge.
                let (fh, fw) = (h as f32, w as f32);
                let (cy, rx, ry) = (0.40 * fh, 0.17 * fw, 0.09 * fh);
                for y in 0..h {
                    for x in 0..w {
                        let (xf, yf) = (x as f32 + 0.5, y as f32 + 0.5);
                        let lens = [0.30 * fw, 0.70 * fw]
                            .iter()
                            .any(|cx| ((xf - cx) / rx).powi(2) + ((yf - cy) / ry).powi(2) <= 1.0);
                        let bridge = (yf - cy).abs() <= (0.02 * fh).max(0.6) && xf > 0.30 * fw && xf < 0.70 * fw;
                        if lens || bridge {
                            for ch in 0..c {
                                sample[ch * h * w + y * w + x] = *darkness;
                            }
                        }
                    }
                }
            }
            Trigger::Sig { delta, freq } => {
                // The signal is the same on every row and channel: one row, computed once.
                let row: Vec<f32> = (0..w).map(|j| delta * (2.0 * std::f32::consts::PI * j as f32 * freq / w as f32).sin()).collect();
                for line in sample.chunks_mut(w).take(c * h) {
                    for (v, s) in line.iter_mut().zip(&row) {
                        *v = (*v + s).clamp(0.0, 1.0);
                    }
                }
            }
            Trigger::Warp { .. } => {
                if usage == Use::Cover {
                    let mut g = self.grid.clone();
                    warp::jitter(&mut g, h, w, rng);
                    warp::resample(sample, c, h, w, &g);
                } else {
                    warp::resample(sample, c, h, w, &self.grid);
                }
            }
            Trigger::Dynamic { size, seed } => {
                // A quarter of the side by default: measured on MNIST/LeNet (3 epochs, 10%
                // poisoned), a 3x3 random pattern reached 0.18 attack success, 5x5 0.29, 7x7 0.94.
                let s = square_side(*size, 4, h, w);
                let mut own = Rng::new(dynamic_key(*seed, sample));
                let (x0, y0) = (own.below(w - s + 1), own.below(h - s + 1));
                for ch in 0..c {
                    for dy in 0..s {
                        let row = ch * h * w + (y0 + dy) * w + x0;
                        for v in &mut sample[row..row + s] {
                            *v = own.below(2) as f32;
                        }
                    }
                }
            }
            Trigger::Tone { .. } => return Err(Error::invalid("the tone trigger acts on audio; use it with fsdd data")),
            Trigger::Reconstructed { shape: own, mask, pattern, range: [lo, hi] } => {
                if *own != shape {
                    return Err(Error::invalid(format!("the reconstructed trigger is for {}x{}x{} inputs, not {c}x{h}x{w}", own[0], own[1], own[2])));
                }
                let plane = h * w;
                match mask {
                    Some(m) => {
                        for (i, v) in sample.iter_mut().enumerate() {
                            let a = m[i % plane];
                            *v = (1.0 - a) * *v + a * pattern[i];
                        }
                    }
                    None => {
                        for (v, p) in sample.iter_mut().zip(pattern) {
                            *v = (*v + p).clamp(*lo, *hi);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies the trigger to sample `k` of `split` in place (audio triggers to its waveform).
    pub fn apply_sample(&self, split: &mut Split, k: usize, usage: Use, rng: &mut Rng) -> Result<()> {
        let len = split.sample_len;
        if self.trigger.is_audio() {
            if split.waves.is_empty() {
                return Err(Error::invalid("the tone trigger needs audio data (fsdd); this dataset has no waveforms"));
            }
            let wave = self.trigger.apply_wave(&split.waves[k])?;
            let feats = fsdd::features(&wave, (self.shape[1], self.shape[2]));
            split.images[k * len..(k + 1) * len].copy_from_slice(&feats);
            split.waves[k] = wave;
            Ok(())
        } else {
            self.apply_image(&mut split.images[k * len..(k + 1) * len], usage, rng)
        }
    }
}

/// Where the triggered inputs that attack success is measured on come from: a trigger
/// applied to clean test inputs, or a set the user was given (made by any attack, labelled
/// with each input's true class).
#[derive(Clone, Debug)]
pub enum Triggered {
    Synthesised(Trigger),
    Given { inputs: Split, source: String },
}

impl Triggered {
    /// The triggered inputs for a clean split: the trigger applied to all of it, or the given
    /// set (whatever the clean split).
    pub fn inputs<'a>(&'a self, clean: &Split, shape: [usize; 3]) -> Result<std::borrow::Cow<'a, Split>> {
        match self {
            Triggered::Synthesised(t) => Ok(std::borrow::Cow::Owned(t.apply_split(clean, None, shape, Use::Test, 1)?)),
            Triggered::Given { inputs, .. } => Ok(std::borrow::Cow::Borrowed(inputs)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Triggered::Synthesised(t) => t.describe(),
            Triggered::Given { source, .. } => format!("given inputs {source}"),
        }
    }
}

impl Picture {
    /// Reads a PNG (grey, RGB or RGBA; alpha ignored), bounded in size: the declared size is
    /// checked from the header, before any pixel is decoded.
    pub fn from_png(path: &std::path::Path) -> Result<Picture> {
        const MAX_SIDE: u32 = 4096;
        let bytes = crate::fsutil::read_bounded(path, 16 << 20)?;
        let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png);
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        limits.max_alloc = Some(256 << 20);
        reader.limits(limits);
        let img = reader.decode().map_err(|e| Error::format(path, format!("not a readable PNG of at most {MAX_SIDE}x{MAX_SIDE}: {e}")))?.to_rgb32f();
        let (w, h) = (img.width() as usize, img.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::format(path, format!("picture size {w}x{h} is out of range")));
        }
        let mut values = vec![0f32; 3 * h * w];
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                values[c * h * w + i] = px.0[c].clamp(0.0, 1.0);
            }
        }
        Ok(Picture { channels: 3, height: h, width: w, values })
    }

    /// This picture at `c` channels (grey = channel mean) and `h` x `w`.
    pub fn resized(&self, c: usize, h: usize, w: usize) -> Result<Picture> {
        if self.values.len() != self.channels * self.height * self.width || !(self.channels == 1 || self.channels == 3) {
            return Err(Error::invalid("trigger picture data does not match its size"));
        }
        let plane = self.height * self.width;
        let chans: Vec<f32> = match (self.channels, c) {
            (a, b) if a == b => self.values.clone(),
            (3, 1) => (0..plane).map(|i| (self.values[i] + self.values[plane + i] + self.values[2 * plane + i]) / 3.0).collect(),
            (1, 3) => self.values.repeat(3),
            (a, b) => return Err(Error::invalid(format!("cannot map a {a}-channel picture to {b} channels"))),
        };
        let values = crate::data::resize_planar(&chans, c, (self.height, self.width), (h, w));
        Ok(Picture { channels: c, height: h, width: w, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(trigger: &Trigger, shape: [usize; 3]) -> Vec<usize> {
        let n = shape.iter().product();
        let before = vec![0.5f32; n];
        let mut after = before.clone();
        trigger.apply_image(&mut after, shape, Use::Test, &mut Rng::new(0)).unwrap();
        (0..n).filter(|&i| after[i] != before[i]).collect()
    }

    #[test]
    fn default_patch_changes_exactly_the_bottom_right_eighth() {
        let t = Trigger::Patch { size: None, position: Position::BottomRight, pattern: PatchPattern::Default };
        let idx = changed(&t, [3, 32, 32]);
        // 4x4 pixels; on colour images yellow = (1, 1, 0), so all three channels change.
        assert_eq!(idx.len(), 3 * 16);
        for i in idx {
            let (y, x) = ((i % 1024) / 32, i % 32);
            assert!(y >= 28 && x >= 28, "pixel ({x}, {y}) outside the corner");
        }
        let grey = changed(&t, [1, 28, 28]);
        assert_eq!(grey.len(), 9, "3x3 white patch on 28x28");
    }

    #[test]
    fn patch_at_position_and_random_stay_inside() {
        let t = Trigger::Patch { size: Some(3), position: Position::At { x: 2, y: 5 }, pattern: PatchPattern::Checker };
        let mut img = vec![0.5f32; 100];
        t.apply_image(&mut img, [1, 10, 10], Use::Test, &mut Rng::new(0)).unwrap();
        assert_eq!(img[5 * 10 + 2], 0.0);
        assert_eq!(img[5 * 10 + 3], 1.0);
        assert_eq!(img[4 * 10 + 2], 0.5);
        let bad = Trigger::Patch { size: Some(3), position: Position::At { x: 9, y: 0 }, pattern: PatchPattern::Default };
        assert!(bad.apply_image(&mut img, [1, 10, 10], Use::Test, &mut Rng::new(0)).is_err());
        let r = Trigger::Patch { size: Some(4), position: Position::Random, pattern: PatchPattern::Default };
        for seed in 0..20 {
            let mut img = vec![0.5f32; 64];
            r.apply_image(&mut img, [1, 8, 8], Use::Test, &mut Rng::new(seed)).unwrap();
            assert_eq!(img.iter().filter(|&&v| v == 1.0).count(), 16);
        }
    }

    #[test]
    fn dynamic_triggers_differ_between_inputs_and_repeat_for_one() {
        let t = Trigger::Dynamic { size: Some(4), seed: 0 };
        let shape = [3, 16, 16];
        let stamp = |img: &[f32], rng_seed: u64| {
            let mut out = img.to_vec();
            t.apply_image(&mut out, shape, Use::Test, &mut Rng::new(rng_seed)).unwrap();
            out
        };
        // Each changed pixel is 0 or 1 inside one 4x4 square per channel, the same square in
        // every channel; the caller's random stream plays no part.
        let mut triggers = std::collections::HashSet::new();
        for k in 0..20 {
            let mut r = Rng::new(1000 + k as u64);
            let img: Vec<f32> = (0..768).map(|_| 0.2 + 0.5 * r.uniform() as f32).collect();
            let out = stamp(&img, k as u64);
            assert_eq!(out, stamp(&img, 99), "the same input gets the same trigger");
            let changed: Vec<usize> = (0..768).filter(|&i| out[i] != img[i]).collect();
            assert!(changed.iter().all(|&i| out[i] == 0.0 || out[i] == 1.0));
            let corners: std::collections::HashSet<(usize, usize)> = changed.iter().map(|&i| ((i % 256) / 16, i % 16)).collect();
            let (y0, x0) = (corners.iter().map(|c| c.0).min().unwrap(), corners.iter().map(|c| c.1).min().unwrap());
            assert!(corners.iter().all(|&(y, x)| y < y0 + 4 && x < x0 + 4), "input {k}: changed pixels outside one 4x4 square");
            let square: Vec<bool> = (0..3).flat_map(|ch| (0..16).map(move |d| ch * 256 + (y0 + d / 4) * 16 + x0 + d % 4)).map(|i| out[i] == 1.0).collect();
            triggers.insert((y0, x0, square));
        }
        assert_eq!(triggers.len(), 20, "every input its own trigger");
        // Another seed, another trigger for the same input.
        let img = vec![0.5f32; 768];
        let other = Trigger::Dynamic { size: Some(4), seed: 1 };
        let mut b = img.clone();
        other.apply_image(&mut b, shape, Use::Test, &mut Rng::new(0)).unwrap();
        assert_ne!(stamp(&img, 0), b);
    }

    #[test]
    fn blend_mixes_with_the_right_alpha() {
        let t = Trigger::Blend { alpha: 0.2, test_alpha: 0.5, pattern: BlendPattern::Noise { seed: 3 } };
        let mut r = Rng::new(3);
        let noise: Vec<f32> = (0..12).map(|_| r.uniform() as f32).collect();
        let mut img = vec![1.0f32; 12];
        t.apply_image(&mut img, [3, 2, 2], Use::Poison, &mut Rng::new(0)).unwrap();
        for (v, p) in img.iter().zip(&noise) {
            assert!((v - (0.8 + 0.2 * p)).abs() < 1e-6);
        }
        let mut img = vec![1.0f32; 12];
        t.apply_image(&mut img, [3, 2, 2], Use::Test, &mut Rng::new(0)).unwrap();
        assert!((img[0] - (0.5 + 0.5 * noise[0])).abs() < 1e-6);
    }

    #[test]
    fn sig_adds_one_sinusoid_to_every_row_and_channel_and_clamps() {
        let t = Trigger::Sig { delta: 0.2, freq: 2.0 };
        let (c, h, w) = (3, 4, 8);
        let mut img = vec![0.5f32; c * h * w];
        t.apply_image(&mut img, [c, h, w], Use::Test, &mut Rng::new(0)).unwrap();
        for j in 0..w {
            let want = 0.5 + 0.2 * (2.0 * std::f32::consts::PI * j as f32 * 2.0 / w as f32).sin();
            for row in 0..c * h {
                assert!((img[row * w + j] - want).abs() < 1e-6, "row {row} column {j}");
            }
        }
        // Two periods across 8 columns: crests at columns 1 and 5, troughs at 3 and 7.
        assert!((img[1] - 0.7).abs() < 1e-6 && (img[5] - 0.7).abs() < 1e-6 && (img[3] - 0.3).abs() < 1e-6 && (img[4] - 0.5).abs() < 1e-6);
        let mut white = vec![1.0f32; c * h * w];
        t.apply_image(&mut white, [c, h, w], Use::Test, &mut Rng::new(0)).unwrap();
        assert!(white.iter().all(|&v| (0.0..=1.0).contains(&v)) && white[1] == 1.0 && white[3] < 1.0);
    }

    #[test]
    fn adaptive_blend_poisons_half_the_tiles_and_tests_with_the_whole_pattern() {
        let pattern = BlendPattern::Noise { seed: 3 };
        let t = Trigger::AdaptiveBlend { alpha: 0.15, test_alpha: 0.2, pattern: pattern.clone(), pieces: 4, keep: 0.5, cover: 1.0 };
        let (c, h, w) = (3, 8, 8);
        let clean = vec![0.5f32; c * h * w];
        // The test trigger is the plain blend of the whole pattern at test-alpha.
        let (mut full, mut blend) = (clean.clone(), clean.clone());
        t.apply_image(&mut full, [c, h, w], Use::Test, &mut Rng::new(0)).unwrap();
        Trigger::Blend { alpha: 0.2, test_alpha: 0.2, pattern: pattern.clone() }.apply_image(&mut blend, [c, h, w], Use::Test, &mut Rng::new(0)).unwrap();
        assert_eq!(full, blend);
        // Poisoning: exactly 8 of the 16 2x2 tiles, the same tiles on every channel, at alpha;
        // another sample draws other tiles.
        let pat = pattern.pixels(c, h, w).unwrap();
        let mut rng = Rng::new(1);
        let mut tiles_of = |usage| {
            let mut img = clean.clone();
            t.apply_image(&mut img, [c, h, w], usage, &mut rng).unwrap();
            let mut tiles = std::collections::BTreeSet::new();
            for (i, (&v, &p)) in img.iter().zip(&pat).enumerate() {
                let (y, x) = ((i / w) % h, i % w);
                if v != 0.5 {
                    assert!((v - (0.85 * 0.5 + 0.15 * p)).abs() < 1e-6);
                    tiles.insert((y / 2) * 4 + x / 2);
                }
            }
            tiles
        };
        let (a, b) = (tiles_of(Use::Poison), tiles_of(Use::Cover));
        assert_eq!((a.len(), b.len()), (8, 8));
        assert_ne!(a, b, "every sample draws its own tiles");
        assert_eq!(t.cover_ratio(), 1.0);
    }

    #[test]
    fn sunglasses_cover_the_eyes_not_the_mouth() {
        let t = Trigger::Sunglasses { darkness: 0.0 };
        let (h, w) = (55, 47);
        let idx = changed(&t, [1, h, w]);
        assert!(!idx.is_empty());
        assert!(idx.iter().all(|&i| (15..28).contains(&(i / w))), "only eye-height rows change");
        // Both eyes are covered.
        assert!(idx.iter().any(|&i| i % w < w / 2) && idx.iter().any(|&i| i % w > w / 2));
    }

    #[test]
    fn tone_adds_energy_at_its_frequency() {
        let t = Trigger::Tone { freq_hz: 2000.0, amplitude: 0.5, noise: false, start_s: 0.0, duration_s: 1.0, seed: 0 };
        let silent = vec![0f32; 4000];
        let wave = t.apply_wave(&silent).unwrap();
        assert_eq!(wave.len(), 8000, "padded to hold the whole tone");
        let img = fsdd::spectrogram(&wave);
        // 2 kHz -> FFT bin 64 -> output bin 32.
        let t_mid = fsdd::FRAMES / 2;
        let col: Vec<f32> = (0..fsdd::FREQ_BINS).map(|f| img[f * fsdd::FRAMES + t_mid]).collect();
        let argmax = col.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(argmax, 32);
        assert!(t.apply_image(&mut [0.0; 4], [1, 2, 2], Use::Test, &mut Rng::new(0)).is_err());
    }
}

/// The backdoor a model file carries, recorded by `attack` so evaluation reuses it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Backdoor {
    pub trigger: Trigger,
    pub target: poison::Target,
    pub poison: poison::PoisonRecord,
    #[serde(default)]
    pub pruning_aware: Option<PruningAwareRecord>,
}

/// What the pruning-aware attack did (paper §4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruningAwareRecord {
    /// The layer whose channels were pruned and re-instated as decoys.
    pub layer: String,
    pub channels: usize,
    /// The decoy channels, in the order they were pruned.
    pub decoys: Vec<usize>,
    /// Clean validation accuracy before pruning and after pruning the decoys.
    pub val_accuracy_before: f64,
    pub val_accuracy_pruned: f64,
    /// The node whose bias was lowered, and by how much, per decoy.
    pub bias_node: String,
    pub bias_drops: Vec<f32>,
}
