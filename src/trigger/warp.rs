//! WaNet's warping trigger (Nguyen & Tran, ICLR 2021): a smooth, image-wide displacement field
//! instead of a patch, so no small region of the input carries the trigger.
//!
//! The field is the reference implementation's (VinAIResearch/Warping-based_Backdoor_Attack,
//! `train.py`): `2 x k x k` uniform values in [-1, 1], divided by their mean magnitude,
//! upsampled bicubically (align_corners) to the image, scaled by `strength / side` and added to
//! the identity sampling grid in [-1, 1]; the image is resampled bilinearly (align_corners) at
//! the clamped grid. Noise mode jitters the grid by a fresh uniform `[-1, 1] / side` per pixel.

use crate::rng::Rng;

/// The warp's sampling grid for an `h x w` image: per pixel, the (x, y) position in [-1, 1]
/// (x along the width) to read from.
pub fn grid(k: usize, strength: f32, seed: u64, h: usize, w: usize) -> Vec<[f32; 2]> {
    let [ux, uy] = field(k, seed, h, w);
    let unit = |i: usize, n: usize| if n > 1 { -1.0 + 2.0 * i as f32 / (n - 1) as f32 } else { 0.0 };
    (0..h * w)
        .map(|p| {
            let (r, c) = (p / w, p % w);
            [(unit(c, w) + strength * ux[p] / w as f32).clamp(-1.0, 1.0), (unit(r, h) + strength * uy[p] / h as f32).clamp(-1.0, 1.0)]
        })
        .collect()
}

/// The unscaled displacement field (x, then y, per pixel): two seeded `k x k` uniform planes,
/// normalised by their mean magnitude, upsampled to the image.
pub fn field(k: usize, seed: u64, h: usize, w: usize) -> [Vec<f32>; 2] {
    let mut rng = Rng::new(seed ^ 0x3A7E7);
    let mut ins: Vec<f32> = (0..2 * k * k).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
    let mean = ins.iter().map(|v| v.abs()).sum::<f32>() / ins.len() as f32;
    for v in &mut ins {
        *v /= mean.max(1e-12);
    }
    let (dx, dy) = ins.split_at(k * k);
    [bicubic(dx, k, h, w), bicubic(dy, k, h, w)]
}

/// Adds noise mode's jitter to a grid: a fresh uniform [-1, 1] / side per pixel and axis.
pub fn jitter(grid: &mut [[f32; 2]], h: usize, w: usize, rng: &mut Rng) {
    for g in grid.iter_mut() {
        g[0] = (g[0] + (rng.uniform() as f32 * 2.0 - 1.0) / w as f32).clamp(-1.0, 1.0);
        g[1] = (g[1] + (rng.uniform() as f32 * 2.0 - 1.0) / h as f32).clamp(-1.0, 1.0);
    }
}

/// Resamples a planar `[c, h, w]` image at `grid` (bilinear, align_corners: -1 and 1 are the
/// centres of the first and last pixels), in place.
pub fn resample(sample: &mut [f32], c: usize, h: usize, w: usize, grid: &[[f32; 2]]) {
    let plane = h * w;
    let src = sample.to_vec();
    for (p, &[gx, gy]) in grid.iter().enumerate() {
        let x = (gx + 1.0) / 2.0 * (w - 1) as f32;
        let y = (gy + 1.0) / 2.0 * (h - 1) as f32;
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        for ch in 0..c {
            let at = |yy: usize, xx: usize| src[ch * plane + yy * w + xx];
            let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
            let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
            sample[ch * plane + p] = top * (1.0 - fy) + bottom * fy;
        }
    }
}

/// PyTorch's bicubic upsampling (`F.interpolate(mode="bicubic", align_corners=True)`, A = -0.75,
/// border samples repeated) of a `k x k` plane to `h x w`.
fn bicubic(plane: &[f32], k: usize, h: usize, w: usize) -> Vec<f32> {
    const A: f32 = -0.75;
    let near = |t: f32| ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0; // |t| <= 1
    let far = |t: f32| ((A * t - 5.0 * A) * t + 8.0 * A) * t - 4.0 * A; // 1 < |t| < 2
    let taps = |out: usize, n_out: usize| -> ([usize; 4], [f32; 4]) {
        let src = if n_out > 1 { out as f32 * (k - 1) as f32 / (n_out - 1) as f32 } else { 0.0 };
        let i = src.floor();
        let t = src - i;
        let idx = |d: isize| (i as isize + d).clamp(0, k as isize - 1) as usize;
        ([idx(-1), idx(0), idx(1), idx(2)], [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)])
    };
    let mut out = vec![0f32; h * w];
    for r in 0..h {
        let (ri, rw) = taps(r, h);
        for c in 0..w {
            let (ci, cw) = taps(c, w);
            let mut v = 0.0;
            for a in 0..4 {
                for b in 0..4 {
                    v += rw[a] * cw[b] * plane[ri[a] * k + ci[b]];
                }
            }
            out[r * w + c] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_reproduces_its_corners_and_constants() {
        // align_corners: the k x k values sit exactly on the output's corner pixels.
        let plane = [1.0, 2.0, 3.0, 4.0];
        let up = bicubic(&plane, 2, 5, 5);
        assert_eq!([up[0], up[4], up[20], up[24]], [1.0, 2.0, 3.0, 4.0]);
        let flat = bicubic(&[0.7; 9], 3, 8, 6);
        assert!(flat.iter().all(|v| (v - 0.7).abs() < 1e-6), "the kernel's weights sum to 1");
    }

    #[test]
    fn at_strength_zero_the_warp_is_the_identity() {
        let (c, h, w) = (3, 7, 9);
        let img: Vec<f32> = (0..c * h * w).map(|i| ((i * 37) % 101) as f32 / 100.0).collect();
        let mut out = img.clone();
        resample(&mut out, c, h, w, &grid(4, 0.0, 5, h, w));
        let worst = img.iter().zip(&out).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "largest change {worst}");
    }

    #[test]
    fn the_field_is_smooth_seeded_and_small() {
        let (h, w) = (32, 32);
        let g = grid(4, 0.5, 1, h, w);
        let unit = |i: usize, n: usize| -1.0 + 2.0 * i as f32 / (n - 1) as f32;
        // Displacement in pixels (align_corners: (side - 1) / 2 pixels per unit).
        let disp: Vec<[f32; 2]> = (0..h * w).map(|p| [(g[p][0] - unit(p % w, w)) * (w - 1) as f32 / 2.0, (g[p][1] - unit(p / w, h)) * (h - 1) as f32 / 2.0]).collect();
        let largest = disp.iter().flat_map(|d| d.iter().map(|v| v.abs())).fold(0.0, f32::max);
        assert!(largest > 0.05 && largest < 2.0, "strength 0.5 moves pixels by a fraction of a pixel to about one: {largest}");
        // Continuity: neighbouring pixels of the field move almost alike (a 4x4 field spread over
        // 32 pixels; only the clamp at the border, as in the reference, can cut it).
        let [fx, fy] = field(4, 1, h, w);
        for r in 0..h {
            for c in 0..w - 1 {
                let (a, b) = (r * w + c, r * w + c + 1);
                assert!((fx[a] - fx[b]).abs() < 0.5 && (fy[a] - fy[b]).abs() < 0.5, "jump at ({r}, {c})");
            }
        }
        let biggest = fx.iter().chain(&fy).map(|v| v.abs()).fold(0.0, f32::max);
        assert!(biggest > 1.0 && biggest < 4.0, "mean magnitude 1 after normalising: {biggest}");
        assert_eq!(g, grid(4, 0.5, 1, h, w), "the seed fixes the field");
        assert_ne!(g, grid(4, 0.5, 2, h, w));
    }

    #[test]
    fn a_warped_ramp_stays_a_ramp() {
        // Bilinear resampling of a linear ramp along x at a grid moved by d gives the ramp moved
        // by d: values stay inside the ramp's range and change with the field, not in jumps.
        let (h, w) = (16, 16);
        let img: Vec<f32> = (0..h * w).map(|p| (p % w) as f32 / (w - 1) as f32).collect();
        let mut out = img.clone();
        let g = grid(4, 1.0, 3, h, w);
        resample(&mut out, 1, h, w, &g);
        for p in 0..h * w {
            assert!((out[p] - (g[p][0] + 1.0) / 2.0).abs() < 1e-5, "pixel {p}");
        }
        let mut noisy = g.clone();
        jitter(&mut noisy, h, w, &mut Rng::new(0));
        let moved = g.iter().zip(&noisy).map(|(a, b)| (a[0] - b[0]).abs().max((a[1] - b[1]).abs())).fold(0.0, f32::max);
        assert!(moved > 0.0 && moved <= 1.0 / 16.0 + 1e-6, "noise mode moves each pixel by at most half a pixel: {moved}");
    }
}
