//! CPU kernels for the operations that dominate training and inference time: 2-D convolution
//! (forward, input gradient, weight gradient), max pooling (forward, input gradient) and
//! BatchNorm with batch statistics (forward, gradients), on contiguous f32 NCHW slices.
//!
//! Why our own: burn's CPU backend runs a 2-D convolution through its 3-D implementation, and
//! its backward through a transposed 3-D convolution and layout copies; the profile
//! (../shared/PROFILE.md) showed half the time moving data. Here a group of samples is one
//! im2col matrix and one wide matrix multiply (the `gemm` crate the backend itself uses), groups
//! in parallel, for the forward pass and both gradients; 3x3 stride-1 convolutions with enough
//! channels go through [`super::winograd`] instead (forward and input gradient).

use rayon::prelude::*;

/// A convolution's geometry (groups = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub batch: usize,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl ConvGeom {
    pub fn out_size(&self) -> [usize; 2] {
        let o = |i: usize, k: usize, s: usize, p: usize, d: usize| (i + 2 * p).checked_sub(d * (k - 1) + 1).map_or(0, |v| v / s + 1);
        [
            o(self.height, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0]),
            o(self.width, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1]),
        ]
    }
    /// Rows of the im2col matrix: in_channels * kh * kw.
    fn patch(&self) -> usize {
        self.in_channels * self.kernel[0] * self.kernel[1]
    }
    fn plane_in(&self) -> usize {
        self.in_channels * self.height * self.width
    }
    fn positions(&self) -> usize {
        let [ho, wo] = self.out_size();
        ho * wo
    }
}

/// The output columns `lo..hi` whose input column `x0 + ox * stride` lies inside `0..w`.
fn inside(x0: isize, stride: usize, wo: usize, w: isize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if x0 >= 0 { 0 } else { (-x0 + s - 1) / s };
    let hi = if x0 >= w { 0 } else { (w - x0 + s - 1) / s };
    let (lo, hi) = ((lo as usize).min(wo), (hi as usize).min(wo));
    (lo, hi.max(lo))
}

/// Writes one sample's im2col block into `col`: row r = (c, i, j) of the block starts at
/// `col[r * ld]` and holds the P = Ho * Wo output positions.
///
/// # Safety
/// `col` must be valid for writes at `r * ld + p` for every row r < C*kh*kw and p < P, and no
/// other thread may write those elements.
unsafe fn im2col(g: &ConvGeom, x: &[f32], col: *mut f32, ld: usize) {
    let [ho, wo] = g.out_size();
    let [kh, kw] = g.kernel;
    let (h, w) = (g.height as isize, g.width as isize);
    let mut row = 0;
    for c in 0..g.in_channels {
        let plane = &x[c * g.height * g.width..(c + 1) * g.height * g.width];
        for i in 0..kh {
            for j in 0..kw {
                // SAFETY: the caller guarantees this row's P elements are ours to write.
                let dst = unsafe { std::slice::from_raw_parts_mut(col.add(row * ld), ho * wo) };
                for oy in 0..ho {
                    let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize - g.padding[0] as isize;
                    let out = &mut dst[oy * wo..(oy + 1) * wo];
                    if iy < 0 || iy >= h {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.width..(iy as usize + 1) * g.width];
                    let x0 = (j * g.dilation[1]) as isize - g.padding[1] as isize;
                    let (lo, hi) = inside(x0, g.stride[1], wo, w);
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    let start = (x0 + (lo * g.stride[1]) as isize) as usize;
                    if g.stride[1] == 1 {
                        out[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                    } else {
                        for (v, s) in out[lo..hi].iter_mut().zip(src[start..].iter().step_by(g.stride[1])) {
                            *v = *s;
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each entry of one sample's block (row stride `ld`) back to
/// the input pixel it came from.
fn col2im(g: &ConvGeom, col: &[f32], ld: usize, dx: &mut [f32]) {
    let [ho, wo] = g.out_size();
    let [kh, kw] = g.kernel;
    let (h, w) = (g.height as isize, g.width as isize);
    dx.fill(0.0);
    let mut row = 0;
    for c in 0..g.in_channels {
        let plane = &mut dx[c * g.height * g.width..(c + 1) * g.height * g.width];
        for i in 0..kh {
            for j in 0..kw {
                let src = &col[row * ld..row * ld + ho * wo];
                for oy in 0..ho {
                    let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize - g.padding[0] as isize;
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.width..(iy as usize + 1) * g.width];
                    let vals = &src[oy * wo..(oy + 1) * wo];
                    let x0 = (j * g.dilation[1]) as isize - g.padding[1] as isize;
                    let (lo, hi) = inside(x0, g.stride[1], wo, w);
                    let start = (x0 + (lo * g.stride[1]) as isize) as usize;
                    if g.stride[1] == 1 {
                        for (d, v) in dst[start..start + (hi - lo)].iter_mut().zip(&vals[lo..hi]) {
                            *d += v;
                        }
                    } else {
                        for (d, v) in dst[start..].iter_mut().step_by(g.stride[1]).zip(&vals[lo..hi]) {
                            *d += v;
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// Sample groups `(first, count)`: the im2col matrix of a group, [C*kh*kw, count*P], is what one
/// matrix multiply works on. Deep layers have few positions per sample, so single-sample
/// multiplies would be thin and re-pack the weights every time; grouping makes them about 512
/// columns wide. Groups run in parallel, one single-threaded multiply each (measured faster than
/// one multiply split across threads), so there are at least as many as threads.
fn groups(g: &ConvGeom) -> Vec<(usize, usize)> {
    const COLUMNS: usize = 512;
    let threads = rayon::current_num_threads().max(1);
    let wide = COLUMNS.div_ceil(g.positions().max(1));
    let size = wide.min(g.batch.div_ceil(threads)).max(1);
    (0..g.batch).step_by(size).map(|first| (first, size.min(g.batch - first))).collect()
}

/// The im2col matrix of samples `first..first + count`, [K, count * P], in `col`.
fn group_im2col(g: &ConvGeom, x: &[f32], first: usize, count: usize, col: &mut [f32]) {
    let (p, ld) = (g.positions(), count * g.positions());
    assert!(col.len() >= g.patch() * ld);
    for i in 0..count {
        let xs = &x[(first + i) * g.plane_in()..(first + i + 1) * g.plane_in()];
        // SAFETY: sample i writes columns i*P .. (i+1)*P of each of the K rows of a buffer
        // checked above to hold K * ld elements.
        unsafe { im2col(g, xs, col.as_mut_ptr().add(i * p), ld) };
    }
}

thread_local! {
    /// Scratch matrices reused across calls: fresh multi-megabyte buffers would come from the
    /// kernel as new zeroed pages every time (a tenth of ResNet-18's training time).
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 2]> = const { std::cell::RefCell::new([Vec::new(), Vec::new()]) };
}

/// Runs `f` with two scratch buffers of at least `a` and `b` floats (contents unspecified).
pub(super) fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut bufs = cell.borrow_mut();
        let [x, y] = &mut *bufs;
        for (buf, n) in [(&mut *x, a), (&mut *y, b)] {
            if buf.len() < n {
                buf.resize(n, 0.0);
            }
        }
        f(&mut x[..a], &mut y[..b])
    })
}

/// `dst[m x n] (+)= lhs[m x k] * rhs[k x n]`, each operand given by its (row, column) strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, lhs: &[f32], lhs_rs: isize, lhs_cs: isize, rhs: &[f32], rhs_rs: isize, rhs_cs: isize) {
    assert!(dst.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let extent = |rows: usize, cols: usize, rs: isize, cs: isize| (rows - 1) as isize * rs + (cols - 1) as isize * cs + 1;
    assert!(extent(m, k, lhs_rs, lhs_cs) as usize <= lhs.len() && extent(k, n, rhs_rs, rhs_cs) as usize <= rhs.len());
    // SAFETY: the asserts above check that every index the strides address lies inside the
    // operand slices (all strides here are non-negative).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Forward convolution: `x` [N, C, H, W], `weight` [O, C, kh, kw]; returns [N, O, Ho, Wo].
pub fn conv2d(g: &ConvGeom, x: &[f32], weight: &[f32]) -> Vec<f32> {
    if super::winograd::applies(g) {
        return super::winograd::conv3x3(g, x, weight);
    }
    let (p, k, o) = (g.positions(), g.patch(), g.out_channels);
    let mut out = vec![0.0f32; g.batch * o * p];
    let groups = groups(g);
    let mut chunks: Vec<&mut [f32]> = Vec::with_capacity(groups.len());
    let mut rest = &mut out[..];
    for &(_, count) in &groups {
        let (head, tail) = rest.split_at_mut(count * o * p);
        chunks.push(head);
        rest = tail;
    }
    groups.par_iter().zip(chunks).for_each(|(&(first, count), out)| {
        let ld = count * p;
        with_scratch(k * ld, if count == 1 { 0 } else { o * ld }, |col, y| {
            group_im2col(g, x, first, count, col);
            // y [O, count*P] = W [O, K] * col [K, count*P]; one sample's y is its output.
            if count == 1 {
                return matmul(o, ld, k, out, false, weight, k as isize, 1, col, ld as isize, 1);
            }
            matmul(o, ld, k, y, false, weight, k as isize, 1, col, ld as isize, 1);
            // Column block i of y is sample first+i's output.
            for (i, dst) in out.chunks_mut(o * p).enumerate() {
                for (c, row) in dst.chunks_mut(p).enumerate() {
                    row.copy_from_slice(&y[c * ld + i * p..c * ld + (i + 1) * p]);
                }
            }
        });
    });
    out
}

/// Samples `first..first+count` of `grad` [N, O, P] as one [O, count*P] matrix: one sample's
/// slice is that already; several are gathered into `dst`.
fn group_grad<'a>(grad: &'a [f32], o: usize, p: usize, first: usize, count: usize, dst: &'a mut [f32]) -> &'a [f32] {
    if count == 1 {
        return &grad[first * o * p..(first + 1) * o * p];
    }
    let ld = count * p;
    for (c, row) in dst[..o * ld].chunks_mut(ld).enumerate() {
        for i in 0..count {
            let n = first + i;
            row[i * p..(i + 1) * p].copy_from_slice(&grad[(n * o + c) * p..(n * o + c + 1) * p]);
        }
    }
    dst
}

/// Gradient of the input: `grad` [N, O, Ho, Wo] -> [N, C, H, W].
pub fn conv2d_input_grad(g: &ConvGeom, weight: &[f32], grad: &[f32]) -> Vec<f32> {
    if super::winograd::applies(g) {
        return super::winograd::conv3x3_input_grad(g, weight, grad);
    }
    let (p, k, o) = (g.positions(), g.patch(), g.out_channels);
    let mut dx = vec![0.0f32; g.batch * g.plane_in()];
    let groups = groups(g);
    let mut chunks: Vec<&mut [f32]> = Vec::with_capacity(groups.len());
    let mut rest = &mut dx[..];
    for &(_, count) in &groups {
        let (head, tail) = rest.split_at_mut(count * g.plane_in());
        chunks.push(head);
        rest = tail;
    }
    groups.par_iter().zip(chunks).for_each(|(&(first, count), dxs)| {
        let ld = count * p;
        with_scratch(k * ld, if count == 1 { 0 } else { o * ld }, |dcol, dy| {
            let dy = group_grad(grad, o, p, first, count, dy);
            // dcol [K, count*P] = W^T [K, O] * dy [O, count*P]
            matmul(k, ld, o, dcol, false, weight, 1, k as isize, dy, ld as isize, 1);
            for (i, d) in dxs.chunks_mut(g.plane_in()).enumerate() {
                col2im(g, &dcol[i * p..], ld, d);
            }
        });
    });
    dx
}

/// Gradient of the weight: sum over samples of `grad[n] (O x P) * im2col(x[n])^T (P x K)`;
/// returns [O, C, kh, kw].
pub fn conv2d_weight_grad(g: &ConvGeom, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let (p, k, o) = (g.positions(), g.patch(), g.out_channels);
    let partials: Vec<Vec<f32>> = groups(g)
        .par_iter()
        .map(|&(first, count)| {
            let ld = count * p;
            let mut dw = vec![0.0f32; o * k];
            with_scratch(k * ld, if count == 1 { 0 } else { o * ld }, |col, dy| {
                group_im2col(g, x, first, count, col);
                let dy = group_grad(grad, o, p, first, count, dy);
                // dW [O, K] = dy [O, count*P] * col^T [count*P, K]
                matmul(o, k, ld, &mut dw, false, dy, ld as isize, 1, col, 1, ld as isize);
            });
            dw
        })
        .collect();
    let mut iter = partials.into_iter();
    let mut total = iter.next().unwrap_or_else(|| vec![0.0; o * k]);
    for part in iter {
        total.iter_mut().zip(part).for_each(|(t, v)| *t += v);
    }
    total
}

/// A max pooling's geometry (no padding, no dilation, floor mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    /// Batch times channels: pooling is per plane.
    pub planes: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
}

impl PoolGeom {
    pub fn out_size(&self) -> [usize; 2] {
        [(self.height - self.kernel[0]) / self.stride[0] + 1, (self.width - self.kernel[1]) / self.stride[1] + 1]
    }
}

/// Position (within the plane) of the window's maximum: the first maximum, NaN wins (as
/// PyTorch: a NaN propagates).
#[inline]
fn window_argmax(g: &PoolGeom, plane: &[f32], oy: usize, ox: usize) -> usize {
    let (y0, x0) = (oy * g.stride[0], ox * g.stride[1]);
    let mut best = y0 * g.width + x0;
    let mut best_v = plane[best];
    for i in 0..g.kernel[0] {
        let row = (y0 + i) * g.width;
        for j in 0..g.kernel[1] {
            let idx = row + x0 + j;
            let v = plane[idx];
            if best_v.is_nan() {
                return best;
            }
            if v > best_v || v.is_nan() {
                best = idx;
                best_v = v;
            }
        }
    }
    best
}

/// Max pooling forward: [planes, H, W] -> [planes, Ho, Wo].
pub fn max_pool2d(g: &PoolGeom, x: &[f32]) -> Vec<f32> {
    let [ho, wo] = g.out_size();
    let hw = g.height * g.width;
    let mut out = vec![0.0f32; g.planes * ho * wo];
    out.par_chunks_mut(ho * wo).enumerate().for_each(|(pl, y)| {
        let plane = &x[pl * hw..(pl + 1) * hw];
        if g.kernel == [2, 2] && g.stride == [2, 2] {
            for oy in 0..ho {
                let (r0, r1) = (&plane[2 * oy * g.width..], &plane[(2 * oy + 1) * g.width..]);
                for ox in 0..wo {
                    let (a, b, c, d) = (r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]);
                    // f32::max ignores NaN; a NaN anywhere in the window propagates instead.
                    let nan = a.is_nan() || b.is_nan() || c.is_nan() || d.is_nan();
                    y[oy * wo + ox] = if nan { f32::NAN } else { a.max(b).max(c.max(d)) };
                }
            }
        } else {
            for oy in 0..ho {
                for ox in 0..wo {
                    y[oy * wo + ox] = plane[window_argmax(g, plane, oy, ox)];
                }
            }
        }
    });
    out
}

/// Max pooling backward: each output gradient goes to its window's maximum.
pub fn max_pool2d_grad(g: &PoolGeom, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let [ho, wo] = g.out_size();
    let hw = g.height * g.width;
    let mut dx = vec![0.0f32; g.planes * hw];
    dx.par_chunks_mut(hw).enumerate().for_each(|(pl, d)| {
        let plane = &x[pl * hw..(pl + 1) * hw];
        let dy = &grad[pl * ho * wo..(pl + 1) * ho * wo];
        if g.kernel == [2, 2] && g.stride == [2, 2] {
            for oy in 0..ho {
                let (r0, r1) = (2 * oy * g.width, (2 * oy + 1) * g.width);
                for ox in 0..wo {
                    let (a, b, c, e) = (r0 + 2 * ox, r0 + 2 * ox + 1, r1 + 2 * ox, r1 + 2 * ox + 1);
                    // The same choice as `window_argmax`: first maximum in row order, NaN wins.
                    let mut best = a;
                    for k in [b, c, e] {
                        if plane[best].is_nan() {
                            break;
                        }
                        if plane[k] > plane[best] || plane[k].is_nan() {
                            best = k;
                        }
                    }
                    d[best] += dy[oy * wo + ox];
                }
            }
            return;
        }
        for oy in 0..ho {
            for ox in 0..wo {
                d[window_argmax(g, plane, oy, ox)] += dy[oy * wo + ox];
            }
        }
    });
    dx
}

/// Per-channel batch statistics of `x` [N, C, HW]: (mean, biased variance), in f64 sums so
/// large batches do not lose precision.
pub fn channel_stats(n: usize, c: usize, hw: usize, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let m = (n * hw).max(1) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut sum = 0.0f64;
            for s in 0..n {
                sum += x[(s * c + ch) * hw..(s * c + ch + 1) * hw].iter().map(|&v| v as f64).sum::<f64>();
            }
            let mean = sum / m;
            let mut sq = 0.0f64;
            for s in 0..n {
                sq += x[(s * c + ch) * hw..(s * c + ch + 1) * hw].iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>();
            }
            (mean as f32, (sq / m) as f32)
        })
        .unzip()
}

/// BatchNorm with batch statistics, forward: returns (output, mean, biased variance).
pub fn batch_norm_train(n: usize, c: usize, hw: usize, x: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mean, var) = channel_stats(n, c, hw, x);
    let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] / ((var[ch] as f64 + eps).sqrt() as f32)).collect();
    let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - mean[ch] * scale[ch]).collect();
    let mut out = vec![0.0f32; n * c * hw];
    out.par_chunks_mut(c * hw).zip(x.par_chunks(c * hw)).for_each(|(y, xs)| {
        for ch in 0..c {
            let (a, b) = (scale[ch], shift[ch]);
            for (o, &v) in y[ch * hw..(ch + 1) * hw].iter_mut().zip(&xs[ch * hw..(ch + 1) * hw]) {
                *o = v * a + b;
            }
        }
    });
    (out, mean, var)
}

/// BatchNorm with batch statistics, backward: returns (input, gamma, beta) gradients.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_grad(n: usize, c: usize, hw: usize, x: &[f32], gamma: &[f32], mean: &[f32], var: &[f32], eps: f64, dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let inv_std: Vec<f32> = var.iter().map(|&v| 1.0 / ((v as f64 + eps).sqrt() as f32)).collect();
    // Per channel: sum of dy (beta's gradient) and of dy * x_hat (gamma's).
    let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sd, mut sdx) = (0.0f64, 0.0f64);
            for s in 0..n {
                let r = (s * c + ch) * hw..(s * c + ch + 1) * hw;
                for (&g, &v) in dy[r.clone()].iter().zip(&x[r]) {
                    sd += g as f64;
                    sdx += g as f64 * (v - mean[ch]) as f64;
                }
            }
            (sd as f32, (sdx * inv_std[ch] as f64) as f32)
        })
        .unzip();
    let m = (n * hw) as f32;
    let mut dx = vec![0.0f32; n * c * hw];
    dx.par_chunks_mut(c * hw).zip(x.par_chunks(c * hw).zip(dy.par_chunks(c * hw))).for_each(|(d, (xs, gs))| {
        for ch in 0..c {
            let k = gamma[ch] * inv_std[ch] / m;
            let (db, dg, mu, is) = (dbeta[ch], dgamma[ch], mean[ch], inv_std[ch]);
            let r = ch * hw..(ch + 1) * hw;
            for ((o, &v), &g) in d[r.clone()].iter_mut().zip(&xs[r.clone()]).zip(&gs[r]) {
                *o = k * (m * g - db - (v - mu) * is * dg);
            }
        }
    });
    (dx, dgamma, dbeta)
}
