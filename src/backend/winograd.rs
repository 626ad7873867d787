//! 3x3 convolutions (stride 1) by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016): each 2x2 block of outputs comes
//! from a 4x4 input tile with 16 multiplies per (input, output) channel pair instead of 36, as
//! 16 matrix multiplies [O, C] x [C, tiles] over transformed weights and tiles. The transforms
//! are additions (and halvings of the weights), so the results differ from im2col's by
//! rounding only; the tests compare both against burn's convolution.
//!
//! ResNet-style networks spend most of their time in such convolutions, forward and in the
//! input gradient (a 3x3 stride-1 convolution of the output gradient with the flipped,
//! transposed weights); the weight gradient stays on im2col.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::common::{ConvGeom, assume_init, matmul, sample_groups, split_groups, uninit, with_scratch};

/// Whether a convolution goes through Winograd: 3x3, stride 1, no dilation, padding at most 2
/// (so the input gradient is one too), at least 32 channels in and out on 32x32 images or
/// larger, 64 on 16x16, 128 on 8x8 to 15x15. Below that the transforms cost more than the
/// multiplies saved. Timed per layer on this machine (batch 64, one thread, best of 7, fuzzers
/// running beside it), Winograd against im2col: 0.79x at 64 channels 32x32, 0.88x at 64
/// 16x16, 0.52x for 64 -> 128 at 16x16, 0.77x at 128 16x16, 0.81x at 128 8x8, 0.74x at 256
/// 8x8; but 1.36x for 64 -> 128 at 8x8 and 1.1x at 512 4x4. With groups of 64 tiles (see
/// [`groups`]), at 32 channels 32x32 (batch 64, two threads): forward 7.5-8.3 ms against
/// im2col's 8.4-9.7, input gradient 7.2-8.0 against 8.9-9.4.
pub fn applies(g: &ConvGeom) -> bool {
    let (channels, pixels) = (g.in_channels.min(g.out_channels), g.height * g.width);
    supported(g) && ((channels >= 32 && pixels >= 1024) || (channels >= 64 && pixels >= 256) || (channels >= 128 && pixels >= 64))
}

/// The geometries the kernels compute correctly: 3x3, stride 1, no dilation, padding at most
/// 2, an output at least one pixel wide.
fn supported(g: &ConvGeom) -> bool {
    g.kernel == [3, 3] && g.stride == [1, 1] && g.dilation == [1, 1] && g.padding[0] <= 2 && g.padding[1] <= 2 && g.height + 2 * g.padding[0] >= 3 && g.width + 2 * g.padding[1] >= 3
}

/// U = G g G^T for every (o, c): `weight` [O, C, 3, 3] -> [16, O, C].
fn transform_weights(o: usize, c: usize, weight: &[f32]) -> Vec<f32> {
    let oc = o * c;
    let mut u = vec![0.0f32; 16 * oc];
    for (k, g) in weight.chunks_exact(9).enumerate() {
        // G g: rows g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2 of the 3x3 kernel's rows.
        let mut t = [[0.0f32; 3]; 4];
        for j in 0..3 {
            let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
            t[0][j] = g0;
            t[1][j] = 0.5 * (g0 + g1 + g2);
            t[2][j] = 0.5 * (g0 - g1 + g2);
            t[3][j] = g2;
        }
        for (i, r) in t.iter().enumerate() {
            let row = [r[0], 0.5 * (r[0] + r[1] + r[2]), 0.5 * (r[0] - r[1] + r[2]), r[2]];
            for (j, v) in row.into_iter().enumerate() {
                u[(4 * i + j) * oc + k] = v;
            }
        }
    }
    u
}

/// Tiles of 2x2 outputs per sample, as (rows, columns).
fn tiles(g: &ConvGeom) -> (usize, usize) {
    let [ho, wo] = g.out_size();
    (ho.div_ceil(2), wo.div_ceil(2))
}

/// V = B^T d B for every channel and tile of samples `first..first+count`, into `v` [16, C, T]
/// (T = count * tiles per sample); input outside the image (padding) is zero. A row of tiles
/// at a time: the four input rows are transformed as whole rows (vectorised), then each
/// tile's four columns go to four of the 16 outputs, each written sequentially.
fn transform_inputs(g: &ConvGeom, x: &[f32], first: usize, count: usize, v: &mut [f32]) {
    let (th, tw) = tiles(g);
    let per_sample = th * tw;
    let t_all = count * per_sample;
    let ct = g.in_channels * t_all;
    let (h, w) = (g.height, g.width);
    let (py, px) = (g.padding[0], g.padding[1]);
    // Padded rows cover input columns -px .. 2*tw + 2 - px, which include the whole image.
    let pw = 2 * tw + 2;
    let mut d = vec![0.0f32; 4 * pw];
    let mut r = vec![0.0f32; 4 * pw];
    let (mut even, mut odd) = (vec![0.0f32; tw + 1], vec![0.0f32; tw + 1]);
    for s in 0..count {
        let sample = &x[(first + s) * g.in_channels * h * w..][..g.in_channels * h * w];
        for c in 0..g.in_channels {
            let plane = &sample[c * h * w..][..h * w];
            for ty in 0..th {
                for (i, row) in d.chunks_exact_mut(pw).enumerate() {
                    match (2 * ty + i).checked_sub(py).filter(|&yy| yy < h) {
                        Some(yy) => {
                            row[..px].fill(0.0);
                            row[px..px + w].copy_from_slice(&plane[yy * w..(yy + 1) * w]);
                            row[px + w..].fill(0.0);
                        }
                        None => row.fill(0.0),
                    }
                }
                // B^T d on whole rows: d0-d2, d1+d2, d2-d1, d1-d3.
                let (d0, rest) = d.split_at(pw);
                let (d1, rest) = rest.split_at(pw);
                let (d2, d3) = rest.split_at(pw);
                let (r0, rest) = r.split_at_mut(pw);
                let (r1, rest) = rest.split_at_mut(pw);
                let (r2, r3) = rest.split_at_mut(pw);
                for k in 0..pw {
                    r0[k] = d0[k] - d2[k];
                    r1[k] = d1[k] + d2[k];
                    r2[k] = d2[k] - d1[k];
                    r3[k] = d1[k] - d3[k];
                }
                // ... B on each tile's columns: a0-a2, a1+a2, a2-a1, a1-a3, where tile tx's
                // columns a0..a3 are 2tx..2tx+3: the even and odd columns apart, each output
                // is a contiguous loop over the tiles (one element at a time, the scattered
                // writes took most of this transform).
                let base = c * t_all + s * per_sample + ty * tw;
                for (i, ri) in r.chunks_exact(pw).enumerate() {
                    for k in 0..=tw {
                        even[k] = ri[2 * k];
                        odd[k] = ri[2 * k + 1];
                    }
                    let (e0, e1, o0, o1) = (&even[..tw], &even[1..=tw], &odd[..tw], &odd[1..=tw]);
                    let at = |j: usize| (4 * i + j) * ct + base;
                    v[at(0)..at(0) + tw].iter_mut().zip(e0.iter().zip(e1)).for_each(|(d, (a0, a2))| *d = a0 - a2);
                    v[at(1)..at(1) + tw].iter_mut().zip(o0.iter().zip(e1)).for_each(|(d, (a1, a2))| *d = a1 + a2);
                    v[at(2)..at(2) + tw].iter_mut().zip(o0.iter().zip(e1)).for_each(|(d, (a1, a2))| *d = a2 - a1);
                    v[at(3)..at(3) + tw].iter_mut().zip(o0.iter().zip(o1)).for_each(|(d, (a1, a3))| *d = a1 - a3);
                }
            }
        }
    }
}

/// Y = A^T m A (+ bias) for every output channel and tile: `m` [16, O, T] -> `out`, samples
/// `first..first+count` as [count, O, Ho, Wo] (tiles past the edge are cut), every element
/// written. A row of tiles at a time, reading each of the 16 inputs sequentially.
fn transform_outputs(g: &ConvGeom, m: &[f32], count: usize, bias: &[f32], out: &mut [MaybeUninit<f32>]) {
    let (th, tw) = tiles(g);
    let [ho, wo] = g.out_size();
    let per_sample = th * tw;
    let t_all = count * per_sample;
    let o = g.out_channels;
    let ot = o * t_all;
    // A^T m by rows: q[i][j] for output row i in 0..2 and column j in 0..4, over the tiles.
    let mut q = vec![0.0f32; 8 * tw];
    for s in 0..count {
        for oc in 0..o {
            let bias_c = bias.get(oc).copied().unwrap_or(0.0);
            let plane = &mut out[(s * o + oc) * ho * wo..][..ho * wo];
            for ty in 0..th {
                let idx = oc * t_all + s * per_sample + ty * tw;
                let row = |xi: usize| &m[xi * ot + idx..xi * ot + idx + tw];
                for j in 0..4 {
                    let (a, b, c, d) = (row(j), row(4 + j), row(8 + j), row(12 + j));
                    let (q0, q1) = q.split_at_mut(4 * tw);
                    let (q0, q1) = (&mut q0[j * tw..(j + 1) * tw], &mut q1[j * tw..(j + 1) * tw]);
                    for t in 0..tw {
                        q0[t] = a[t] + b[t] + c[t];
                        q1[t] = b[t] - c[t] - d[t];
                    }
                }
                for i in 0..2 {
                    let y = 2 * ty + i;
                    if y >= ho {
                        break;
                    }
                    let qi = &q[i * 4 * tw..(i + 1) * 4 * tw];
                    let dst = &mut plane[y * wo..(y + 1) * wo];
                    for t in 0..tw {
                        let (c0, c1, c2, c3) = (qi[t], qi[tw + t], qi[2 * tw + t], qi[3 * tw + t]);
                        dst[2 * t].write(c0 + c1 + c2 + bias_c);
                        if 2 * t + 1 < wo {
                            dst[2 * t + 1].write(c1 - c2 - c3 + bias_c);
                        }
                    }
                }
            }
        }
    }
}

/// Sample groups `(first, count)` of about 64 tiles each (see [`sample_groups`]).
/// A group's transformed tiles and products (16 * channels * tiles floats each) then stay in
/// the core's cache between the transforms and the multiplies; groups of 512 tiles (as wide as
/// im2col's) wrote megabytes that the next step read back from memory. Per layer, batch 64,
/// two threads, 512 -> 64 tiles: 128 channels 8x8 forward 7.0-7.6 -> 5.5-6.0 ms, input
/// gradient 7.0 -> 5.4-5.5; 64 channels 16x16 6.5-6.9 -> 6.0, 7.4-7.7 -> 6.0-6.2.
fn groups(g: &ConvGeom) -> Vec<(usize, usize)> {
    let (th, tw) = tiles(g);
    sample_groups(g.batch, th * tw, 64)
}

/// Forward convolution for a geometry where [`applies`] holds: `x` [N, C, H, W], `weight`
/// [O, C, 3, 3], `bias` [O] or empty; returns [N, O, Ho, Wo].
pub fn conv3x3(g: &ConvGeom, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    assert!(supported(g), "not a Winograd geometry: {g:?}");
    let (o, c) = (g.out_channels, g.in_channels);
    let [ho, wo] = g.out_size();
    let u = transform_weights(o, c, weight);
    let mut out = uninit(g.batch * o * ho * wo);
    let groups = groups(g);
    let pieces = split_groups(&mut out, &groups, o * ho * wo);
    let (th, tw) = tiles(g);
    groups.par_iter().zip(pieces).for_each(|(&(first, count), out)| {
        let t = count * th * tw;
        with_scratch(16 * c * t, 16 * o * t, |v, m| {
            transform_inputs(g, x, first, count, v);
            for xi in 0..16 {
                // M_xi [O, T] = U_xi [O, C] * V_xi [C, T]
                matmul(o, t, c, &mut m[xi * o * t..(xi + 1) * o * t], false, &u[xi * o * c..], c as isize, 1, &v[xi * c * t..], t as isize, 1);
            }
            transform_outputs(g, m, count, bias, out);
        });
    });
    // SAFETY: the groups cover every sample, and `transform_outputs` writes all of a group's.
    unsafe { assume_init(out) }
}

/// The input gradient of a convolution where [`applies`] holds, as the Winograd convolution of
/// `grad` [N, O, Ho, Wo] with the weights flipped and transposed ([C, O, 3, 3]) and padding
/// 2 - p; returns [N, C, H, W].
pub fn conv3x3_input_grad(g: &ConvGeom, weight: &[f32], grad: &[f32]) -> Vec<f32> {
    let (o, c) = (g.out_channels, g.in_channels);
    let mut flipped = vec![0.0f32; c * o * 9];
    for oc in 0..o {
        for ic in 0..c {
            for k in 0..9 {
                flipped[(ic * o + oc) * 9 + 8 - k] = weight[(oc * c + ic) * 9 + k];
            }
        }
    }
    let [ho, wo] = g.out_size();
    let back = ConvGeom { batch: g.batch, in_channels: o, height: ho, width: wo, out_channels: c, kernel: [3, 3], stride: [1, 1], padding: [2 - g.padding[0], 2 - g.padding[1]], dilation: [1, 1] };
    debug_assert_eq!(back.out_size(), [g.height, g.width]);
    conv3x3(&back, grad, &flipped, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// The textbook loops.
    fn direct(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
        let [ho, wo] = g.out_size();
        let mut out = vec![0.0f32; g.batch * g.out_channels * ho * wo];
        for n in 0..g.batch {
            for o in 0..g.out_channels {
                for y in 0..ho {
                    for xx in 0..wo {
                        let mut acc = 0.0f64;
                        for c in 0..g.in_channels {
                            for i in 0..3 {
                                for j in 0..3 {
                                    let (iy, ix) = ((y + i) as isize - g.padding[0] as isize, (xx + j) as isize - g.padding[1] as isize);
                                    if iy >= 0 && ix >= 0 && (iy as usize) < g.height && (ix as usize) < g.width {
                                        acc += (x[((n * g.in_channels + c) * g.height + iy as usize) * g.width + ix as usize] * w[((o * g.in_channels + c) * 3 + i) * 3 + j]) as f64;
                                    }
                                }
                            }
                        }
                        out[((n * g.out_channels + o) * ho + y) * wo + xx] = acc as f32;
                    }
                }
            }
        }
        out
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * scale, "{what}: element {i}: {x} vs {y}");
        }
    }

    #[test]
    fn forward_matches_direct_convolution_on_odd_and_even_sizes_and_paddings() {
        let mut rng = Rng::new(7);
        for (n, c, o, h, w, p) in [(3, 64, 65, 8, 8, 1), (2, 65, 64, 9, 8, 1), (1, 64, 64, 8, 9, 0), (2, 64, 66, 16, 4, 2), (3, 70, 64, 11, 13, 1)] {
            let g = ConvGeom { batch: n, in_channels: c, height: h, width: w, out_channels: o, kernel: [3, 3], stride: [1, 1], padding: [p, p], dilation: [1, 1] };
            assert!(supported(&g));
            let (x, wt) = (random(n * c * h * w, &mut rng), random(o * c * 9, &mut rng));
            close(&conv3x3(&g, &x, &wt, &[]), &direct(&g, &x, &wt), &format!("{g:?}"));
        }
    }

    #[test]
    fn input_gradient_is_the_adjoint_of_the_forward_convolution() {
        // <conv(x), dy> = <x, conv^T(dy)> for random x and dy.
        let mut rng = Rng::new(8);
        for p in [0, 1, 2] {
            let g = ConvGeom { batch: 2, in_channels: 64, height: 8, width: 9, out_channels: 66, kernel: [3, 3], stride: [1, 1], padding: [p, p], dilation: [1, 1] };
            let [ho, wo] = g.out_size();
            let (x, wt) = (random(2 * 64 * 8 * 9, &mut rng), random(66 * 64 * 9, &mut rng));
            let dy = random(2 * 66 * ho * wo, &mut rng);
            let lhs: f64 = direct(&g, &x, &wt).iter().zip(&dy).map(|(a, b)| (a * b) as f64).sum();
            let dx = conv3x3_input_grad(&g, &wt, &dy);
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| (a * b) as f64).sum();
            assert!((lhs - rhs).abs() <= 1e-3 * lhs.abs().max(1.0), "padding {p}: {lhs} vs {rhs}");
        }
    }
}
