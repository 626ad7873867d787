//! Depthwise convolution (groups = channels, one filter per channel: MobileNet, EfficientNet,
//! ConvNeXt's 7x7), forward and both gradients, computed directly.
//!
//! im2col + gemm, the path of every other convolution, does no good here: each channel is its
//! own 1-row matrix product, and burn's grouped fallback pays the setup per channel. Directly,
//! an output plane is a sum over the kernel taps of one scaled window of the input plane. Each
//! plane is first copied into a zero-padded buffer split into stride phases (see [`Layout`]),
//! where every tap's window is one contiguous run of memory, whatever the stride: the whole
//! plane's work for a tap is a single axpy (or dot product) the compiler vectorises. The output
//! is computed at the buffer's row width and cropped. (The previous version clipped every tap's
//! row to the valid outputs and gathered strided columns one by one; on MobileNetV2's small
//! planes half of its inference time went there.)
//! Planes (sample x channel) run in parallel; the weight gradient runs per channel.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::common::{ConvGeom, assume_init, uninit, wide_simd};
use super::kernels::lane_sums;

/// Where the pixels of one plane go in its padded, phase-split buffer: padded pixel (row,
/// column) is stored in phase (row % sy, column % sx) at (row / sy, column / sx); phases are
/// blocks of `rows x len`. Output (oy, ox) of the tap at offsets (ry, rx) reads padded pixel
/// (oy * sy + ry, ox * sx + rx): phase (ry % sy, rx % sx), at (oy + ry / sy, ox + rx / sx).
/// So at the buffer's row width `len`, a tap's window over the whole output is one run.
#[derive(Clone, Copy)]
struct Layout {
    /// Rows and columns of a phase.
    rows: usize,
    len: usize,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    /// Input plane width.
    width: usize,
}

impl Layout {
    fn of(g: &ConvGeom) -> Self {
        Layout {
            rows: (g.height + 2 * g.padding[0]).div_ceil(g.stride[0]),
            len: (g.width + 2 * g.padding[1]).div_ceil(g.stride[1]),
            stride: g.stride,
            padding: g.padding,
            dilation: g.dilation,
            width: g.width,
        }
    }

    /// Floats of a plane's buffer.
    fn size(&self) -> usize {
        self.stride[0] * self.stride[1] * self.rows * self.len
    }

    /// Where padded row `r`'s column phase `cp` starts (its first stored column).
    fn row_start(&self, r: usize, cp: usize) -> usize {
        (((r % self.stride[0]) * self.stride[1] + cp) * self.rows + r / self.stride[0]) * self.len
    }

    /// For each column phase of input row `iy`: where it starts in the buffer, and the first
    /// input column that lands in it (the following ones are `sx` apart).
    fn phases_of_row(self, iy: usize) -> impl Iterator<Item = (usize, usize)> {
        let (s, pad) = (self.stride[1], self.padding[1]);
        (0..s.min(self.width)).map(move |ix0| {
            let c = ix0 + pad;
            (self.row_start(iy + self.padding[0], c % s) + c / s, ix0)
        })
    }

    /// Where the window of tap (`ky`, `kx`) starts.
    fn window(&self, ky: usize, kx: usize) -> usize {
        let (ry, rx) = (ky * self.dilation[0], kx * self.dilation[1]);
        self.row_start(ry, rx % self.stride[1]) + rx / self.stride[1]
    }

    /// Writes input plane `x` [H, W] into `buf` ([`Layout::size`] floats), leaving the
    /// padding as it is: a buffer zeroed once serves every plane of a layout.
    ///
    /// Rows are short (MobileNet's late planes: 8, 4, 2 pixels), so the per-row work is kept
    /// small: with stride 1 the row starts advance by `len`, with stride 2 a row's even and
    /// odd pixels are split in one pass. (The copy had cost MobileNetV2's inference 2.7 times
    /// the convolution's own arithmetic in instructions; now 1.3 times.)
    fn write_interior(self, x: &[f32], buf: &mut [f32]) {
        if self.stride == [1, 1] {
            // One phase: padded row r starts at r * len.
            let mut start = self.padding[0] * self.len + self.padding[1];
            for row in x.chunks_exact(self.width) {
                copy_short(&mut buf[start..start + self.width], row);
                start += self.len;
            }
            return;
        }
        for (iy, row) in x.chunks_exact(self.width).enumerate() {
            if self.stride[1] == 1 {
                let start = self.row_start(iy + self.padding[0], 0) + self.padding[1];
                copy_short(&mut buf[start..start + self.width], row);
                continue;
            }
            if self.stride[1] == 2 && self.width >= 2 {
                let mut phases = self.phases_of_row(iy);
                let (Some((even, 0)), Some((odd, 1))) = (phases.next(), phases.next()) else { unreachable!("two phases, from columns 0 and 1") };
                let pairs = self.width / 2;
                let (e, o) = disjoint_mut(buf, even, odd, pairs);
                for ((e, o), p) in e.iter_mut().zip(o.iter_mut()).zip(row.as_chunks::<2>().0) {
                    *e = p[0];
                    *o = p[1];
                }
                if self.width % 2 == 1 {
                    buf[even + pairs] = row[self.width - 1];
                }
                continue;
            }
            for (start, ix0) in self.phases_of_row(iy) {
                for (d, &v) in buf[start..].iter_mut().zip(row[ix0..].iter().step_by(self.stride[1])) {
                    *d = v;
                }
            }
        }
    }

    /// Writes the unpadded part of `buf` into every element of plane `dx` [H, W] (the input
    /// gradient, not zeroed first).
    fn unpad(self, buf: &[f32], dx: &mut [MaybeUninit<f32>]) {
        for (iy, row) in dx.chunks_exact_mut(self.width).enumerate() {
            if self.stride[1] == 1 {
                let start = self.row_start(iy + self.padding[0], 0) + self.padding[1];
                row.write_copy_of_slice(&buf[start..start + self.width]);
                continue;
            }
            for (start, ix0) in self.phases_of_row(iy) {
                for (d, &v) in row[ix0..].iter_mut().step_by(self.stride[1]).zip(&buf[start..]) {
                    d.write(v);
                }
            }
        }
    }
}

/// `dst = src` for a short slice: eight floats at a time in registers, then one by one.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let (d8, d) = dst.as_chunks_mut::<8>();
    let (s8, s) = src.as_chunks::<8>();
    for (d, s) in d8.iter_mut().zip(s8) {
        *d = *s;
    }
    for (d, s) in d.iter_mut().zip(s) {
        *d = *s;
    }
}

/// Two disjoint runs of `n` floats of `buf`, at `a` and at `b`.
fn disjoint_mut(buf: &mut [f32], a: usize, b: usize, n: usize) -> (&mut [f32], &mut [f32]) {
    if a < b {
        let (lo, hi) = buf.split_at_mut(b);
        (&mut lo[a..a + n], &mut hi[..n])
    } else {
        let (lo, hi) = buf.split_at_mut(a);
        (&mut hi[..n], &mut lo[b..b + n])
    }
}

/// Elements of a tap's run: `ho` rows at the buffer's width, the last one cut to `wo`.
fn run_len(g: &ConvGeom, len: usize) -> usize {
    let [ho, wo] = g.out_size();
    (ho - 1) * len + wo
}

/// Copies `src` [ho, wo] into `dst` at row width `len`, zero in the extra columns.
fn widen(src: &[f32], wo: usize, len: usize, dst: &mut [f32]) {
    for (d, s) in dst.chunks_mut(len).zip(src.chunks_exact(wo)) {
        d[..wo].copy_from_slice(s);
        d[wo..].fill(0.0);
    }
}

/// `dst[i] += sum over taps t of w[t] * src[at[t] + i]`, four taps per pass over `dst` (a 3x3
/// kernel: three passes instead of nine).
fn accumulate(dst: &mut [f32], src: &[f32], w: &[f32], at: &[usize]) {
    wide_simd(
        #[inline(always)]
        || accumulate_loops(dst, src, w, at),
    )
}

#[inline(always)]
fn accumulate_loops(dst: &mut [f32], src: &[f32], w: &[f32], at: &[usize]) {
    let n = dst.len();
    for (w, at) in w.chunks(4).zip(at.chunks(4)) {
        match (w, at) {
            (&[a, b, c, d], &[i, j, k, l]) => {
                let (x0, x1, x2, x3) = (&src[i..i + n], &src[j..j + n], &src[k..k + n], &src[l..l + n]);
                for t in 0..n {
                    dst[t] += a * x0[t] + b * x1[t] + c * x2[t] + d * x3[t];
                }
            }
            (&[a, b, c], &[i, j, k]) => {
                let (x0, x1, x2) = (&src[i..i + n], &src[j..j + n], &src[k..k + n]);
                for t in 0..n {
                    dst[t] += a * x0[t] + b * x1[t] + c * x2[t];
                }
            }
            _ => {
                for (&a, &i) in w.iter().zip(at) {
                    for (d, &v) in dst.iter_mut().zip(&src[i..i + n]) {
                        *d += a * v;
                    }
                }
            }
        }
    }
}

/// Output [N, C, Ho, Wo] of input [N, C, H, W] and weight [C, 1, kh, kw], plus `bias` [C] if
/// not empty.
///
/// A channel's planes in several samples share the filter, so they are stacked (each in its
/// padded layout) and every tap is one run over the whole stack: on MobileNet's small late
/// planes (4x4, 2x2) a single plane's run is too short to vectorise well.
pub fn forward(g: &ConvGeom, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    let [ho, wo] = g.out_size();
    let (c, plane, taps) = (g.in_channels, g.height * g.width, g.kernel[0] * g.kernel[1]);
    let mut out = uninit(g.batch * c * ho * wo);
    if out.is_empty() {
        // SAFETY: empty.
        return unsafe { assume_init(out) };
    }
    let l = Layout::of(g);
    let (len, size) = (l.len, l.size());
    let windows: Vec<usize> = (0..taps).map(|t| l.window(t / g.kernel[1], t % g.kernel[1])).collect();
    // At least two jobs per thread.
    let stack = stack_size(size, g.batch.div_ceil(2 * rayon::current_num_threads()));
    let run = (stack - 1) * size + run_len(g, len);
    // Buffers per rayon job, not per stack: the padding, zeroed once, stays zero.
    let buffers = || (vec![0f32; stack * size], vec![0f32; run]);
    out.par_chunks_mut(stack * c * ho * wo).enumerate().for_each_init(buffers, |(xp, wide), (job, out)| {
        let samples = out.len() / (c * ho * wo);
        let first = job * stack;
        let run = (samples - 1) * size + run_len(g, len);
        for ch in 0..c {
            for i in 0..samples {
                let p = (first + i) * c + ch;
                l.write_interior(&x[p * plane..(p + 1) * plane], &mut xp[i * size..(i + 1) * size]);
            }
            let wide = &mut wide[..run];
            wide.fill(bias.get(ch).copied().unwrap_or(0.0));
            accumulate(wide, xp, &w[ch * taps..(ch + 1) * taps], &windows);
            // Output row oy of stacked sample i is at i * size + oy * len.
            for i in 0..samples {
                let o = &mut out[(i * c + ch) * ho * wo..(i * c + ch + 1) * ho * wo];
                for (o, row) in o.chunks_exact_mut(wo).zip(wide[i * size..].chunks(len)) {
                    o.write_copy_of_slice(&row[..wo]);
                }
            }
        }
    });
    // SAFETY: every job wrote every row of each of its samples' planes.
    unsafe { assume_init(out) }
}

/// Samples of one channel stacked per run: a stack of about 32 KB.
fn stack_size(size: usize, batch: usize) -> usize {
    (8192 / size).clamp(1, batch.max(1))
}

/// The input gradient [N, C, H, W] from the output gradient.
///
/// Each tap scatters the gradient back over its window; written as a gather instead,
/// `dp[j] += w[t] * G[j - window[t]]` over a copy `G` of the gradient shifted by the largest
/// window offset, the taps combine in one pass like the forward's, on stacked samples.
pub fn input_grad(g: &ConvGeom, w: &[f32], grad: &[f32]) -> Vec<f32> {
    let [ho, wo] = g.out_size();
    let (c, plane, taps) = (g.in_channels, g.height * g.width, g.kernel[0] * g.kernel[1]);
    if plane == 0 || ho * wo == 0 {
        return vec![0f32; g.batch * c * plane];
    }
    let mut dx = uninit(g.batch * c * plane);
    let l = Layout::of(g);
    let (len, size, n) = (l.len, l.size(), run_len(g, l.len));
    let windows: Vec<usize> = (0..taps).map(|t| l.window(t / g.kernel[1], t % g.kernel[1])).collect();
    let shift = windows.iter().copied().max().unwrap_or(0);
    let offsets: Vec<usize> = windows.iter().map(|&at| shift - at).collect();
    let stack = stack_size(size, g.batch.div_ceil(2 * rayon::current_num_threads()));
    // Stacked sample i's widened gradient sits at shift + i * size; everything else stays zero
    // (a window never reaches past its own sample's part).
    let buffers = || (vec![0f32; shift + stack * size], vec![0f32; stack * size]);
    dx.par_chunks_mut(stack * c * plane).enumerate().for_each_init(buffers, |(gs, dp), (job, dx)| {
        let samples = dx.len() / (c * plane);
        for ch in 0..c {
            for i in 0..samples {
                let p = (job * stack + i) * c + ch;
                widen(&grad[p * ho * wo..(p + 1) * ho * wo], wo, len, &mut gs[shift + i * size..shift + i * size + n]);
            }
            let dp = &mut dp[..samples * size];
            dp.fill(0.0);
            accumulate(dp, gs, &w[ch * taps..(ch + 1) * taps], &offsets);
            for i in 0..samples {
                l.unpad(&dp[i * size..(i + 1) * size], &mut dx[(i * c + ch) * plane..(i * c + ch + 1) * plane]);
            }
        }
    });
    // SAFETY: every job wrote every pixel of each of its samples' planes (unpad).
    unsafe { assume_init(dx) }
}

/// The weight gradient [C, 1, kh, kw] from the input and the output gradient: per channel, a
/// dot product per tap over the stacked samples (in the lanes of BatchNorm's sums: one running
/// sum cannot be reordered, so it would stay scalar).
pub fn weight_grad(g: &ConvGeom, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let [ho, wo] = g.out_size();
    let (c, plane, taps) = (g.in_channels, g.height * g.width, g.kernel[0] * g.kernel[1]);
    let mut dw = vec![0f32; c * taps];
    if ho * wo == 0 {
        return dw;
    }
    let l = Layout::of(g);
    let (len, size, n) = (l.len, l.size(), run_len(g, l.len));
    let windows: Vec<usize> = (0..taps).map(|t| l.window(t / g.kernel[1], t % g.kernel[1])).collect();
    // Not tied to the thread count, which would change the order of the sums.
    let stack = stack_size(size, g.batch);
    // Padding and the gaps between stacked gradients: zeroed once, never written.
    let buffers = || (vec![0f32; stack * size], vec![0f32; (stack - 1) * size + n]);
    dw.par_chunks_mut(taps).enumerate().for_each_init(buffers, |(xs, gs), (ch, dwc)| {
        for first in (0..g.batch).step_by(stack) {
            let samples = stack.min(g.batch - first);
            for i in 0..samples {
                let p = (first + i) * c + ch;
                l.write_interior(&x[p * plane..(p + 1) * plane], &mut xs[i * size..(i + 1) * size]);
                // Zero in the extra columns, so the windows' wrapped-around pixels add nothing.
                widen(&grad[p * ho * wo..(p + 1) * ho * wo], wo, len, &mut gs[i * size..i * size + n]);
            }
            let run = (samples - 1) * size + n;
            for (d, &at) in dwc.iter_mut().zip(&windows) {
                *d += lane_sums(std::iter::once((&gs[..run], &xs[at..at + run])), |g, x| [g * x])[0] as f32;
            }
        }
    });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every padded pixel lands where a tap's window reads it: stride 2, padding 1, a 3x5
    /// plane holding 1..=15 (padded: 5x7, a zero border around it).
    #[test]
    fn phased_plane_puts_each_window_in_one_run() {
        let g = ConvGeom { batch: 1, in_channels: 1, height: 3, width: 5, out_channels: 1, kernel: [3, 3], stride: [2, 2], padding: [1, 1], dilation: [1, 1] };
        let x: Vec<f32> = (1..=15).map(|v| v as f32).collect();
        let l = Layout::of(&g);
        assert_eq!(g.out_size(), [2, 3]);
        let mut buf = vec![0.0; l.size()];
        l.write_interior(&x, &mut buf);
        // Output (oy, ox) of tap (ky, kx) reads padded (2oy + ky, 2ox + kx), i.e. input
        // (2oy + ky - 1, 2ox + kx - 1); at row width len = 4, the last row cut to 3 columns.
        let window = |ky: usize, kx: usize| buf[l.window(ky, kx)..][..run_len(&g, l.len)].to_vec();
        let at = |iy: usize, ix: usize| if (1..=3).contains(&iy) && (1..=5).contains(&ix) { x[(iy - 1) * 5 + ix - 1] } else { 0.0 };
        for (ky, kx) in [(0, 0), (1, 1), (1, 2), (2, 1), (2, 2)] {
            let w = window(ky, kx);
            for oy in 0..2 {
                for ox in 0..3 {
                    assert_eq!(w[oy * l.len + ox], at(2 * oy + ky, 2 * ox + kx), "tap ({ky}, {kx}) output ({oy}, {ox})");
                }
            }
        }
        let mut back = vec![MaybeUninit::new(0.0); 15];
        l.unpad(&buf, &mut back);
        // SAFETY: initialised above (and every element rewritten by unpad).
        assert_eq!(back.iter().map(|v| unsafe { v.assume_init() }).collect::<Vec<_>>(), x);
    }
}
