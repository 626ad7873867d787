//! What the convolution kernels and Winograd share: the convolution's geometry, the matrix
//! multiply (the `gemm` crate the Flex backend itself uses), reused scratch matrices and
//! outputs allocated uninitialised.

use std::mem::MaybeUninit;

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
    pub(crate) fn patch(&self) -> usize {
        self.in_channels * self.kernel[0] * self.kernel[1]
    }
    pub(crate) fn plane_in(&self) -> usize {
        self.in_channels * self.height * self.width
    }
    pub(crate) fn positions(&self) -> usize {
        let [ho, wo] = self.out_size();
        ho * wo
    }
}

thread_local! {
    /// Scratch matrices reused across calls: fresh multi-megabyte buffers would come from the
    /// kernel as new zeroed pages every time (a tenth of ResNet-18's training time).
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 2]> = const { std::cell::RefCell::new([Vec::new(), Vec::new()]) };
}

/// Runs `f` with two scratch buffers of at least `a` and `b` floats (contents unspecified).
pub(crate) fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
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

/// Consecutive sample groups `(first, count)` of about `columns` matrix columns each, given
/// `per_sample` columns per sample, and at least as many groups as threads: a convolution's
/// groups run in parallel, one single-threaded multiply each (measured faster than one
/// multiply split across threads).
pub(crate) fn sample_groups(batch: usize, per_sample: usize, columns: usize) -> Vec<(usize, usize)> {
    let threads = rayon::current_num_threads().max(1);
    let size = columns.div_ceil(per_sample.max(1)).min(batch.div_ceil(threads)).max(1);
    (0..batch).step_by(size).map(|first| (first, size.min(batch - first))).collect()
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
    // SAFETY: `dst` holds m * n elements (asserted) and is initialised, as `accumulate` reads.
    unsafe { gemm_unchecked(m, n, k, dst.as_mut_ptr(), accumulate, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, rhs_cs) }
}

/// [`matmul`] overwriting an uninitialised `dst`; returns its first m * n elements, written.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_into<'a>(m: usize, n: usize, k: usize, dst: &'a mut [MaybeUninit<f32>], lhs: &[f32], lhs_rs: isize, lhs_cs: isize, rhs: &[f32], rhs_rs: isize, rhs_cs: isize) -> &'a mut [f32] {
    let dst = &mut dst[..m * n];
    if m == 0 || n == 0 || k == 0 {
        return zeroed(dst);
    }
    // SAFETY: `dst` holds m * n elements; without `accumulate` gemm only writes them.
    unsafe { gemm_unchecked(m, n, k, dst.as_mut_ptr().cast(), false, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, rhs_cs) };
    // SAFETY: the multiply wrote every element.
    unsafe { assume_init_mut(dst) }
}

/// # Safety
/// `dst` must be valid for m * n writes (and reads, with `accumulate`); m, n, k > 0.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_unchecked(m: usize, n: usize, k: usize, dst: *mut f32, accumulate: bool, lhs: &[f32], lhs_rs: isize, lhs_cs: isize, rhs: &[f32], rhs_rs: isize, rhs_cs: isize) {
    let extent = |rows: usize, cols: usize, rs: isize, cs: isize| (rows - 1) as isize * rs + (cols - 1) as isize * cs + 1;
    assert!(extent(m, k, lhs_rs, lhs_cs) as usize <= lhs.len() && extent(k, n, rhs_rs, rhs_cs) as usize <= rhs.len());
    // SAFETY: the assert above checks that every index the strides address lies inside the
    // operand slices (all strides here are non-negative); the caller vouches for `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
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

/// An uninitialised output of `n` floats, which a kernel writes entirely (in parallel pieces)
/// before [`assume_init`]. `vec![0.0; n]` zeroed it first, on the calling thread while the
/// workers waited: a tenth of a signnet training step.
pub(crate) fn uninit(n: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: MaybeUninit elements need no initialisation.
    unsafe { v.set_len(n) };
    // Debug builds (and FINEPRUNE_POISON=1) poison the buffer: an element a kernel forgets to
    // write shows as NaN.
    static POISON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if cfg!(debug_assertions) || *POISON.get_or_init(|| std::env::var_os("FINEPRUNE_POISON").is_some()) {
        v.iter_mut().for_each(|x: &mut MaybeUninit<f32>| {
            x.write(f32::NAN);
        });
    }
    v
}

/// # Safety
/// Every element of `v` must have been written.
pub(crate) unsafe fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same allocation, length and capacity; MaybeUninit<f32> has f32's layout; the
    // caller vouches that every element is initialised.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// # Safety
/// Every element of `piece` must have been written.
pub(crate) unsafe fn assume_init_mut(piece: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout; the caller vouches for initialisation.
    unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Zeroes a piece of an output, for kernels that accumulate into it.
pub(crate) fn zeroed(piece: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for v in piece.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every element was just written.
    unsafe { assume_init_mut(piece) }
}

/// Splits `buf` into consecutive pieces of `count * per_sample` elements, one per group.
pub(crate) fn split_groups<'a, T>(mut buf: &'a mut [T], groups: &[(usize, usize)], per_sample: usize) -> Vec<&'a mut [T]> {
    let mut pieces = Vec::with_capacity(groups.len());
    for &(_, count) in groups {
        let (head, tail) = buf.split_at_mut(count * per_sample);
        pieces.push(head);
        buf = tail;
    }
    pieces
}

/// Runs `f` compiled for AVX2 when the CPU has it (checked once, then cached by std), else as
/// the baseline x86-64 build (SSE2): our own loops get 8-float vectors without a build for one
/// CPU. `f` must be a closure whose loops inline into it. No FMA: the same float operations in
/// the same order either way, so results do not depend on the CPU.
#[inline(always)]
pub(crate) fn wide_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2(f) };
    }
    f()
}

