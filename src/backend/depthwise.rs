//! Depthwise convolution (groups = channels, one filter per channel: MobileNet, EfficientNet,
//! ConvNeXt's 7x7), forward and both gradients, computed directly.
//!
//! im2col + gemm, the path of every other convolution, does no good here: each channel is its
//! own 1-row matrix product, and burn's grouped fallback pays the setup per channel. Directly,
//! each output plane is a sum over the kernel taps of one shifted, scaled input plane; for stride
//! 1 the shift is a contiguous row slice, so the inner loop is an axpy the compiler vectorises.
//! Planes (sample x channel) run in parallel; the weight gradient runs per channel.

use rayon::prelude::*;

use super::common::ConvGeom;

/// The outputs `o` along one axis whose input index `o * stride + offset - pad` lies in
/// `0..len`, for a tap at `offset` (kernel index times dilation): `lo..hi` within `0..out`.
fn valid(offset: usize, pad: usize, stride: usize, len: usize, out: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(offset).div_ceil(stride);
    let Some(last) = (len + pad).checked_sub(offset + 1) else { return (0, 0) };
    let hi = (last / stride + 1).min(out);
    (lo.min(hi), hi)
}

/// Calls `f(oy, iy, ox_lo, ox_hi, ix_lo)` for every output row a tap reaches: the input row
/// and the first input column of the valid output columns `ox_lo..ox_hi`.
fn for_each_row(g: &ConvGeom, ky: usize, kx: usize, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let [ho, wo] = g.out_size();
    let (oy0, oy1) = valid(ky * g.dilation[0], g.padding[0], g.stride[0], g.height, ho);
    let (ox0, ox1) = valid(kx * g.dilation[1], g.padding[1], g.stride[1], g.width, wo);
    if ox0 >= ox1 {
        return;
    }
    let ix0 = ox0 * g.stride[1] + kx * g.dilation[1] - g.padding[1];
    for oy in oy0..oy1 {
        f(oy, oy * g.stride[0] + ky * g.dilation[0] - g.padding[0], ox0, ox1, ix0);
    }
}

/// Output [N, C, Ho, Wo] of input [N, C, H, W] and weight [C, 1, kh, kw], plus `bias` [C] if
/// not empty.
pub fn forward(g: &ConvGeom, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    let [ho, wo] = g.out_size();
    let (c, plane, taps) = (g.in_channels, g.height * g.width, g.kernel[0] * g.kernel[1]);
    let mut out = vec![0f32; g.batch * c * ho * wo];
    if ho * wo == 0 {
        return out;
    }
    out.par_chunks_mut(ho * wo).enumerate().for_each(|(p, o)| {
        let ch = p % c;
        if !bias.is_empty() {
            o.fill(bias[ch]);
        }
        let xp = &x[p * plane..(p + 1) * plane];
        for ky in 0..g.kernel[0] {
            for kx in 0..g.kernel[1] {
                let wv = w[ch * taps + ky * g.kernel[1] + kx];
                for_each_row(g, ky, kx, |oy, iy, ox0, ox1, ix0| {
                    let orow = &mut o[oy * wo + ox0..oy * wo + ox1];
                    let xrow = &xp[iy * g.width..(iy + 1) * g.width];
                    if g.stride[1] == 1 {
                        let n = orow.len();
                        for (o, &v) in orow.iter_mut().zip(&xrow[ix0..ix0 + n]) {
                            *o += wv * v;
                        }
                    } else {
                        for (k, o) in orow.iter_mut().enumerate() {
                            *o += wv * xrow[ix0 + k * g.stride[1]];
                        }
                    }
                });
            }
        }
    });
    out
}

/// The input gradient [N, C, H, W] from the output gradient.
pub fn input_grad(g: &ConvGeom, w: &[f32], grad: &[f32]) -> Vec<f32> {
    let [ho, wo] = g.out_size();
    let (c, plane, taps) = (g.in_channels, g.height * g.width, g.kernel[0] * g.kernel[1]);
    let mut dx = vec![0f32; g.batch * c * plane];
    if plane == 0 {
        return dx;
    }
    dx.par_chunks_mut(plane).enumerate().for_each(|(p, d)| {
        let ch = p % c;
        let gp = &grad[p * ho * wo..(p + 1) * ho * wo];
        for ky in 0..g.kernel[0] {
            for kx in 0..g.kernel[1] {
                let wv = w[ch * taps + ky * g.kernel[1] + kx];
                for_each_row(g, ky, kx, |oy, iy, ox0, ox1, ix0| {
                    let grow = &gp[oy * wo + ox0..oy * wo + ox1];
                    let drow = &mut d[iy * g.width..(iy + 1) * g.width];
                    if g.stride[1] == 1 {
                        for (d, &v) in drow[ix0..ix0 + grow.len()].iter_mut().zip(grow) {
                            *d += wv * v;
                        }
                    } else {
                        for (k, &v) in grow.iter().enumerate() {
                            drow[ix0 + k * g.stride[1]] += wv * v;
                        }
                    }
                });
            }
        }
    });
    dx
}

/// The weight gradient [C, 1, kh, kw] from the input and the output gradient.
pub fn weight_grad(g: &ConvGeom, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let [ho, wo] = g.out_size();
    let (c, plane, taps) = (g.in_channels, g.height * g.width, g.kernel[0] * g.kernel[1]);
    let mut dw = vec![0f32; c * taps];
    dw.par_chunks_mut(taps).enumerate().for_each(|(ch, dwc)| {
        for n in 0..g.batch {
            let p = n * c + ch;
            let (xp, gp) = (&x[p * plane..(p + 1) * plane], &grad[p * ho * wo..(p + 1) * ho * wo]);
            for ky in 0..g.kernel[0] {
                for kx in 0..g.kernel[1] {
                    let mut sum = 0f32;
                    for_each_row(g, ky, kx, |oy, iy, ox0, ox1, ix0| {
                        let grow = &gp[oy * wo + ox0..oy * wo + ox1];
                        let xrow = &xp[iy * g.width..(iy + 1) * g.width];
                        if g.stride[1] == 1 {
                            sum += grow.iter().zip(&xrow[ix0..ix0 + grow.len()]).map(|(a, b)| a * b).sum::<f32>();
                        } else {
                            sum += grow.iter().enumerate().map(|(k, a)| a * xrow[ix0 + k * g.stride[1]]).sum::<f32>();
                        }
                    });
                    dwc[ky * g.kernel[1] + kx] += sum;
                }
            }
        }
    });
    dw
}

#[cfg(test)]
mod tests {
    use super::valid;

    #[test]
    fn valid_outputs_along_an_axis() {
        // 3-tap kernel, padding 1, stride 1, length 5: tap 0 reaches outputs 1..5, tap 2 0..4.
        assert_eq!(valid(0, 1, 1, 5, 5), (1, 5));
        assert_eq!(valid(2, 1, 1, 5, 5), (0, 4));
        // Stride 2: outputs 0..3 of length 5; tap 0 (input 2o - 1) reaches 1..3.
        assert_eq!(valid(0, 1, 2, 5, 3), (1, 3));
        // A tap beyond the padded input reaches nothing.
        assert_eq!(valid(9, 1, 1, 3, 3), (0, 0));
    }
}
