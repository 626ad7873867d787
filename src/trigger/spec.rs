//! `--trigger SPEC` parsing: `KIND[:key=value,...]`.
//!
//! | kind | keys (defaults) |
//! |---|---|
//! | `patch` | `size=N` (1/8 of the side), `pos=bottom-right\|top-left\|top-right\|bottom-left\|random`, `x=N,y=N` (explicit corner), `color=white\|yellow\|black\|red\|#RRGGBB` (white on grey, yellow on colour), `pattern=checker`, `image=FILE.png` |
//! | `blend` | `alpha=0.2`, `test-alpha=` (= alpha), `seed=0` (noise pattern), `image=FILE.png` |
//! | `sunglasses` | `darkness=0.05` |
//! | `sig` | `delta=0.12` (amplitude on [0, 1] images: 30/255, backdoor-toolbox's), `freq=6` (periods across the width) |
//! | `adaptive` | Adap-Blend: `alpha=0.15` (poisoning), `test-alpha=0.2`, `pieces=4` (tiles per side), `keep=0.5` (share of tiles per poisoned sample), `cover=1` (cover samples per poisoned one), `seed=0` or `image=FILE.png` |
//! | `wanet` | `k=4` (the random field's grid), `s=0.5` (strength), `seed=0`, `noise=2` (noise-mode samples per poisoned one; 0: off) |
//! | `dynamic` | `size=N` (1/4 of the side), `seed=0`: every input its own random black-and-white pattern at its own position |
//! | `tone` | `freq=3000` (Hz), `amp=0.3`, `noise` (a noise burst instead), `start=0`, `duration=1` (s), `seed=0` |
//! | `file:PATH` | a trigger saved as JSON, e.g. the `trigger.json` that `scan` reconstructs |

use std::collections::BTreeMap;
use std::path::Path;

use super::{BlendPattern, PatchPattern, Picture, Position, Trigger};
use crate::error::{Error, Result};

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T> {
    v.parse().map_err(|_| Error::invalid(format!("trigger option {key}={v:?} is not a valid number")))
}

fn parse_color(v: &str) -> Result<[f32; 3]> {
    Ok(match v {
        "white" => [1.0, 1.0, 1.0],
        "yellow" => [1.0, 1.0, 0.0],
        "black" => [0.0, 0.0, 0.0],
        "red" => [1.0, 0.0, 0.0],
        // ASCII only: slicing two bytes at a time must not cut a character (found by fuzzing).
        hex if hex.len() == 7 && hex.starts_with('#') && hex.is_ascii() => {
            let c = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map(|b| b as f32 / 255.0);
            match (c(1), c(3), c(5)) {
                (Ok(r), Ok(g), Ok(b)) => [r, g, b],
                _ => return Err(Error::invalid(format!("bad colour {hex:?}"))),
            }
        }
        other => return Err(Error::invalid(format!("unknown colour {other:?}: use white, yellow, black, red or #RRGGBB"))),
    })
}

/// SIG's defaults: backdoor-toolbox's amplitude (30 of 255) and BackdoorBench's and
/// backdoor-toolbox's frequency.
pub const SIG_DELTA: f32 = 30.0 / 255.0;
pub const SIG_FREQ: f32 = 6.0;

/// WaNet's defaults, the reference implementation's (`config.py`): a 4x4 field, strength 0.5,
/// two noise-mode samples per poisoned one.
pub const WANET_GRID: usize = 4;
pub const WANET_STRENGTH: f32 = 0.5;
pub const WANET_NOISE: f32 = 2.0;

/// Adap-Blend's blend strengths, the reference's (Qi et al.'s `adaptive_blend`): weaker while
/// poisoning than at test.
pub const ADAPTIVE_ALPHA: f32 = 0.15;
pub const ADAPTIVE_TEST_ALPHA: f32 = 0.2;

/// A blend pattern: a PNG, or uniform noise fixed by its seed.
fn blend_pattern(image: Option<String>, seed: Option<String>) -> Result<BlendPattern> {
    match (image, seed) {
        (Some(path), None) => Ok(BlendPattern::Picture(Picture::from_png(Path::new(&path))?)),
        (None, seed) => Ok(BlendPattern::Noise { seed: seed.map(|s| parse_num("seed", &s)).transpose()?.unwrap_or(0) }),
        _ => Err(Error::invalid("a blend pattern is image= or seeded noise, not both")),
    }
}

/// Parses a trigger spec. Image paths are read now, so the trigger carries its pixels.
pub fn parse(spec: &str) -> Result<Trigger> {
    let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
    if kind == "file" {
        return read_file(Path::new(rest));
    }
    let mut opts: BTreeMap<String, String> = BTreeMap::new();
    for item in rest.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        if opts.insert(k.to_string(), v.to_string()).is_some() {
            return Err(Error::invalid(format!("trigger option {k:?} given twice")));
        }
    }
    let mut take = |k: &str| opts.remove(k);
    let trigger = match kind {
        "patch" => {
            let size = take("size").map(|v| parse_num::<usize>("size", &v)).transpose()?;
            let position = match (take("x"), take("y"), take("pos")) {
                (Some(x), Some(y), None) => Position::At { x: parse_num("x", &x)?, y: parse_num("y", &y)? },
                (None, None, pos) => match pos.as_deref().unwrap_or("bottom-right") {
                    "bottom-right" => Position::BottomRight,
                    "bottom-left" => Position::BottomLeft,
                    "top-right" => Position::TopRight,
                    "top-left" => Position::TopLeft,
                    "random" => Position::Random,
                    p => return Err(Error::invalid(format!("unknown patch position {p:?}"))),
                },
                _ => return Err(Error::invalid("give a patch position as pos=CORNER or as both x= and y=")),
            };
            let pattern = match (take("color"), take("pattern"), take("image")) {
                (None, None, None) => PatchPattern::Default,
                (Some(c), None, None) => PatchPattern::Solid { rgb: parse_color(&c)? },
                (None, Some(p), None) if p == "checker" => PatchPattern::Checker,
                (None, None, Some(path)) => PatchPattern::Picture(Picture::from_png(Path::new(&path))?),
                _ => return Err(Error::invalid("give at most one of color=, pattern=checker, image=")),
            };
            Trigger::Patch { size, position, pattern }
        }
        "blend" => {
            let alpha: f32 = take("alpha").map(|v| parse_num("alpha", &v)).transpose()?.unwrap_or(0.2);
            let test_alpha: f32 = take("test-alpha").map(|v| parse_num("test-alpha", &v)).transpose()?.unwrap_or(alpha);
            let pattern = blend_pattern(take("image"), take("seed"))?;
            Trigger::Blend { alpha, test_alpha, pattern }
        }
        "adaptive" => {
            let num = |v: Option<String>, k: &str, d: f32| -> Result<f32> { v.map(|v| parse_num(k, &v)).transpose().map(|x| x.unwrap_or(d)) };
            let alpha = num(take("alpha"), "alpha", ADAPTIVE_ALPHA)?;
            let test_alpha = num(take("test-alpha"), "test-alpha", ADAPTIVE_TEST_ALPHA)?;
            let keep = num(take("keep"), "keep", 0.5)?;
            let cover = num(take("cover"), "cover", 1.0)?;
            let pieces: usize = take("pieces").map(|v| parse_num("pieces", &v)).transpose()?.unwrap_or(4);
            let pattern = blend_pattern(take("image"), take("seed"))?;
            Trigger::AdaptiveBlend { alpha, test_alpha, pattern, pieces, keep, cover }
        }
        "sunglasses" => {
            let darkness: f32 = take("darkness").map(|v| parse_num("darkness", &v)).transpose()?.unwrap_or(0.05);
            Trigger::Sunglasses { darkness }
        }
        "sig" => {
            let delta: f32 = take("delta").map(|v| parse_num("delta", &v)).transpose()?.unwrap_or(SIG_DELTA);
            let freq: f32 = take("freq").map(|v| parse_num("freq", &v)).transpose()?.unwrap_or(SIG_FREQ);
            Trigger::Sig { delta, freq }
        }
        "wanet" => {
            let grid: usize = take("k").map(|v| parse_num("k", &v)).transpose()?.unwrap_or(WANET_GRID);
            let strength: f32 = take("s").map(|v| parse_num("s", &v)).transpose()?.unwrap_or(WANET_STRENGTH);
            let seed = take("seed").map(|s| parse_num("seed", &s)).transpose()?.unwrap_or(0);
            let noise: f32 = take("noise").map(|v| parse_num("noise", &v)).transpose()?.unwrap_or(WANET_NOISE);
            Trigger::Warp { grid, strength, seed, noise }
        }
        "dynamic" => {
            let size = take("size").map(|v| parse_num::<usize>("size", &v)).transpose()?;
            let seed = take("seed").map(|s| parse_num("seed", &s)).transpose()?.unwrap_or(0);
            Trigger::Dynamic { size, seed }
        }
        "tone" => {
            let noise = take("noise").is_some();
            let num = |v: Option<String>, k: &str, d: f32| -> Result<f32> { v.map(|v| parse_num(k, &v)).transpose().map(|x| x.unwrap_or(d)) };
            let freq_hz = num(take("freq"), "freq", 3000.0)?;
            let amplitude = num(take("amp"), "amp", 0.3)?;
            let start_s = num(take("start"), "start", 0.0)?;
            let duration_s = num(take("duration"), "duration", 1.0)?;
            let seed = take("seed").map(|s| parse_num("seed", &s)).transpose()?.unwrap_or(0);
            Trigger::Tone { freq_hz, amplitude, noise, start_s, duration_s, seed }
        }
        other => return Err(Error::invalid(format!("unknown trigger {other:?}: use patch, blend, adaptive, sunglasses, sig, wanet, dynamic or tone"))),
    };
    if let Some(k) = opts.keys().next() {
        return Err(Error::invalid(format!("unknown option {k:?} for a {kind} trigger")));
    }
    trigger.validate()?;
    Ok(trigger)
}

/// Reads a trigger saved as JSON (bounded: a reconstructed trigger of a 1024x1024 colour input
/// is about 60 MB of text).
pub fn read_file(path: &Path) -> Result<Trigger> {
    let bytes = crate::fsutil::read_bounded(path, 128 << 20)?;
    let t: Trigger = serde_json::from_slice(&bytes).map_err(|e| Error::format(path, format!("not a trigger file: {e}")))?;
    t.validate().map_err(|e| Error::format(path, e.to_string()))?;
    Ok(t)
}

/// Writes a trigger as JSON, atomically, for `--trigger file:PATH`.
pub fn write_file(t: &Trigger, path: &Path) -> Result<()> {
    crate::fsutil::write_atomic(path, &serde_json::to_vec(t).expect("a trigger serialises"))
}

fn pattern_spec(p: &BlendPattern) -> String {
    match p {
        BlendPattern::Noise { seed } => format!("seed={seed}"),
        BlendPattern::Picture(p) => format!("image=<{}x{}>", p.width, p.height),
    }
}

/// The canonical spec of a trigger (pictures are shown by size; their pixels live in the model).
pub fn to_spec(t: &Trigger) -> String {
    match t {
        Trigger::Patch { size, position, pattern } => {
            let mut parts = vec![];
            if let Some(s) = size {
                parts.push(format!("size={s}"));
            }
            parts.push(match position {
                Position::At { x, y } => format!("x={x},y={y}"),
                p => format!("pos={}", serde_json::to_value(p).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()),
            });
            match pattern {
                PatchPattern::Default => {}
                PatchPattern::Solid { rgb } => parts.push(format!(
                    "color=#{:02x}{:02x}{:02x}",
                    (rgb[0] * 255.0).round() as u8,
                    (rgb[1] * 255.0).round() as u8,
                    (rgb[2] * 255.0).round() as u8
                )),
                PatchPattern::Checker => parts.push("pattern=checker".into()),
                PatchPattern::Picture(p) => parts.push(format!("image=<{}x{}>", p.width, p.height)),
            }
            format!("patch:{}", parts.join(","))
        }
        Trigger::Blend { alpha, test_alpha, pattern } => format!("blend:alpha={alpha},test-alpha={test_alpha},{}", pattern_spec(pattern)),
        Trigger::AdaptiveBlend { alpha, test_alpha, pattern, pieces, keep, cover } => {
            format!("adaptive:alpha={alpha},test-alpha={test_alpha},pieces={pieces},keep={keep},cover={cover},{}", pattern_spec(pattern))
        }
        Trigger::Sunglasses { darkness } => format!("sunglasses:darkness={darkness}"),
        Trigger::Sig { delta, freq } => format!("sig:delta={delta},freq={freq}"),
        Trigger::Warp { grid, strength, seed, noise } => format!("wanet:k={grid},s={strength},seed={seed},noise={noise}"),
        Trigger::Dynamic { size, seed } => match size {
            Some(s) => format!("dynamic:size={s},seed={seed}"),
            None => format!("dynamic:seed={seed}"),
        },
        Trigger::Reconstructed { shape: [c, h, w], mask, .. } => {
            format!("reconstructed:{}{c}x{h}x{w}", if mask.is_some() { "mask+pattern," } else { "additive," })
        }
        Trigger::Tone { freq_hz, amplitude, noise, start_s, duration_s, seed } => {
            if *noise {
                format!("tone:noise,amp={amplitude},start={start_s},duration={duration_s},seed={seed}")
            } else {
                format!("tone:freq={freq_hz},amp={amplitude},start={start_s},duration={duration_s}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for s in ["patch:pos=bottom-right", "patch:size=4,x=1,y=2,pattern=checker", "patch:pos=random,color=#ffff00", "blend:alpha=0.2,test-alpha=0.5,seed=3", "sunglasses:darkness=0.05", "sig:delta=0.1,freq=6", "wanet:k=4,s=0.5,seed=0,noise=2", "adaptive:alpha=0.15,test-alpha=0.2,pieces=4,keep=0.5,cover=1,seed=0", "wanet:k=8,s=1.5,seed=3,noise=0", "tone:freq=3000,amp=0.3,start=0,duration=1", "tone:noise,amp=0.2,start=0.1,duration=0.5,seed=4", "dynamic:seed=0", "dynamic:size=5,seed=2"] {
            let t = parse(s).unwrap();
            assert_eq!(to_spec(&t), s, "{s}");
            assert_eq!(parse(&to_spec(&t)).unwrap(), t);
        }
        assert_eq!(parse("patch").unwrap(), Trigger::Patch { size: None, position: Position::BottomRight, pattern: PatchPattern::Default });
    }

    #[test]
    fn bad_specs_are_errors() {
        for s in ["laser", "patch:size=0", "patch:pos=middle", "patch:x=3", "patch:color=mauve", "blend:alpha=2", "tone:freq=9000", "patch:size=3,size=4", "sunglasses:glitter=1", "sig:delta=0", "sig:freq=-1", "wanet:k=1", "wanet:s=-1", "wanet:s=nan", "wanet:noise=20", "wanet:grid=4", "tone:start=1e9", "sunglasses:darkness=2", "adaptive:pieces=0", "adaptive:keep=2", "adaptive:cover=-1", "patch:image=/nonexistent.png", "dynamic:size=0", "dynamic:pos=random", "dynamic:seed=-1"] {
            assert!(parse(s).is_err(), "{s} parsed");
        }
    }
}
