//! f32 forward and backward kernels for training, on NCHW batches.
//!
//! Convolutions are im2col + GEMM (the `gemm` crate) over chunks of images,
//! chunks in parallel with rayon; the backward pass rebuilds the columns
//! rather than keeping them. Everything else is plain loops, parallel over
//! (image, channel) planes. Reductions over the batch (weight gradients,
//! batch-norm statistics) accumulate per chunk and then in a fixed order, so
//! results do not depend on the thread count more than float addition order
//! within a chunk does.

use crate::ir::{Activation, PaddingMode};
use cnnc_kernels::{copy_short, direct, winograd};
use rayon::prelude::*;

/// Evaluates `$call` inside a function compiled with AVX2 when the CPU has
/// it, so that the `#[inline(always)]` loops it reaches are vectorised for
/// 256-bit registers; as is otherwise. Used for the copies and adds over
/// short rows (im2col, col2im, the 2×2 max pool), twice as fast in AVX2
/// as in the baseline's SSE2.
macro_rules! with_avx2 {
    ($call:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (just checked).
                unsafe {
                    avx2(
                        #[inline(always)]
                        || $call,
                    )
                }
            } else {
                $call
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $call
        }
    }};
}

/// `C = A·B` (or `C += A·B`) with arbitrary strides, one thread unless
/// `parallel`: `a` is m×k with element (i, p) at `a[i*a_rs + p*a_cs]`, `b`
/// is k×n likewise, `c` is m×n with element (i, j) at `c[i*c_rs + j*c_cs]`.
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    c_rs: usize,
    c_cs: usize,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[i * c_rs + j * c_cs] = 0.0;
                }
            }
        }
        return;
    }
    // Bounds: the last element each operand touches must be inside its slice.
    assert!((m - 1) * c_rs + (n - 1) * c_cs < c.len());
    assert!((m - 1) * a_rs + (k - 1) * a_cs < a.len());
    assert!((k - 1) * b_rs + (n - 1) * b_cs < b.len());
    let par = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every access of the three strided
    // matrices inside their slices; `c` does not alias `a` or `b` (&mut).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs as isize,
            c_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Where padded coordinate `i` reads from (PyTorch's padding modes): the
/// reference evaluator's rule, shared.
pub use crate::tools::eval::source_index;

/// A convolution's geometry.
#[derive(Clone, Copy, Debug)]
pub struct ConvGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub oc: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    /// top, bottom, left, right
    pub pads: [usize; 4],
    pub groups: usize,
    pub mode: PaddingMode,
}

impl ConvGeom {
    fn hp(&self) -> usize {
        self.h + self.pads[0] + self.pads[1]
    }
    fn wp(&self) -> usize {
        self.w + self.pads[2] + self.pads[3]
    }
    fn padded(&self) -> bool {
        self.pads.iter().any(|&p| p > 0)
    }
    fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }
    fn ohw(&self) -> usize {
        self.oh * self.ow
    }
    /// How a batch of `n` images is cut: (images per parallel task, images
    /// per column tile, output rows per column tile). About four tasks per
    /// thread, so a thread slowed by other work does not hold up the rest.
    /// A column tile holds about 128 KB of columns (so it stays in L2 next
    /// to the GEMM's packed operands) but at least 64 output pixels (so the
    /// GEMM stays efficient): several whole images when one image's columns
    /// are small, else bands of output rows of one image.
    fn split(&self, n: usize) -> (usize, usize, usize) {
        const TILE_VALUES: usize = 32 << 10;
        const MIN_PIXELS: usize = 64;
        let threads = rayon::current_num_threads().max(1);
        let task = n.div_ceil(4 * threads).max(1);
        let (ckk, ohw) = (self.ckk().max(1), self.ohw().max(1));
        if ckk * ohw <= TILE_VALUES || ohw <= MIN_PIXELS {
            let images = (TILE_VALUES / (ckk * ohw)).max(MIN_PIXELS.div_ceil(ohw));
            (task, task.min(images).max(1), self.oh)
        } else {
            let ow = self.ow.max(1);
            let rows = (TILE_VALUES / (ckk * ow)).max(MIN_PIXELS.div_ceil(ow));
            (task, 1, rows.clamp(1, self.oh.max(1)))
        }
    }

    /// The images per parallel task of the backward pass: [`Self::split`]'s,
    /// but where a task's images hold fewer than 64 output pixels, enough
    /// images (up to one task per thread) for 64. Each task sums its own
    /// [OC, CKK] weight gradient, which costs as much as writing and adding
    /// the matrix once; its product costs task·OHW multiply-adds per weight,
    /// so on tiny maps (resnet18's layer4 at 32×32 input: 1×1) small tasks
    /// spent their time on the partial matrices, not on arithmetic.
    fn split_backward(&self, n: usize) -> (usize, usize, usize) {
        const MIN_PIXELS: usize = 64;
        let (task, sub, rows) = self.split(n);
        let ohw = self.ohw().max(1);
        if task * ohw >= MIN_PIXELS {
            return (task, sub, rows);
        }
        let threads = rayon::current_num_threads().max(1);
        let bigger = MIN_PIXELS.div_ceil(ohw).min(n.div_ceil(threads)).max(task);
        // ohw < 64: split's tiles are whole images, as many as fit.
        let images = ((32 << 10) / (self.ckk().max(1) * ohw)).max(MIN_PIXELS.div_ceil(ohw));
        (bigger, bigger.min(images).max(1), rows)
    }

    /// The same convolution without the kernel taps that read only zero
    /// padding at every output position (the first and last rows and
    /// columns of taps that do; a dead tap between live ones stays), where
    /// there are any: (the smaller geometry, the taps kept as
    /// [ky0, ky1, kx0, kx1]). Those taps add nothing to the output, nothing
    /// to the input gradient, and their weight gradient is exactly zero, so
    /// the smaller convolution gives the same results up to summation
    /// order. A 3×3 convolution with padding 1 on a 1×1 map is its centre
    /// tap: a 1×1 convolution, a GEMM. Only zero padding (the other modes
    /// read the image), and only where the smaller geometry's padding is
    /// still non-negative.
    fn trimmed(&self) -> Option<(ConvGeom, [usize; 4])> {
        #[cfg(test)]
        if !tests::TRIM.with(|c| c.get()) {
            return None;
        }
        if self.mode != PaddingMode::Zeros || !self.padded() {
            return None;
        }
        // One axis: (size, outputs, kernel, stride, dilation, pad before,
        // pad after) → (first live tap, last + 1, new pads).
        let axis = |size: usize, out: usize, k: usize, s: usize, d: usize, lo: usize| {
            let live = |t: usize| {
                (0..out).any(|o| {
                    let i = (o * s + t * d) as i64 - lo as i64;
                    i >= 0 && i < size as i64
                })
            };
            let t0 = (0..k).find(|&t| live(t))?;
            let t1 = (0..k).rfind(|&t| live(t))? + 1;
            let lo2 = lo.checked_sub(t0 * d)?;
            let extent = (out.checked_sub(1)?) * s + (t1 - t0 - 1) * d + 1;
            let hi2 = extent.checked_sub(size + lo2)?;
            Some((t0, t1, lo2, hi2))
        };
        let (ky0, ky1, top, bottom) =
            axis(self.h, self.oh, self.kh, self.sh, self.dh, self.pads[0])?;
        let (kx0, kx1, left, right) =
            axis(self.w, self.ow, self.kw, self.sw, self.dw, self.pads[2])?;
        if (ky1 - ky0, kx1 - kx0) == (self.kh, self.kw) {
            return None;
        }
        let t = ConvGeom {
            kh: ky1 - ky0,
            kw: kx1 - kx0,
            pads: [top, bottom, left, right],
            ..*self
        };
        Some((t, [ky0, ky1, kx0, kx1]))
    }

    /// The weights of the taps [`Self::trimmed`] kept ([OC, C/groups, KH', KW']).
    fn trim_weights(&self, w: &[f32], [ky0, ky1, kx0, kx1]: [usize; 4]) -> Vec<f32> {
        let mut out = Vec::with_capacity(w.len() / (self.kh * self.kw) * (ky1 - ky0) * (kx1 - kx0));
        for filter in w.chunks(self.kh * self.kw) {
            for ky in ky0..ky1 {
                out.extend_from_slice(&filter[ky * self.kw + kx0..ky * self.kw + kx1]);
            }
        }
        out
    }

    /// The adjoint of [`Self::trim_weights`]: the kept taps' gradient in
    /// the full kernel, zeros at the others.
    fn untrim_weights(&self, dw: &[f32], [ky0, ky1, kx0, kx1]: [usize; 4]) -> Vec<f32> {
        let (kh2, kw2) = (ky1 - ky0, kx1 - kx0);
        let mut out = vec![0f32; dw.len() / (kh2 * kw2) * self.kh * self.kw];
        for (filter, src) in out.chunks_mut(self.kh * self.kw).zip(dw.chunks(kh2 * kw2)) {
            for ky in ky0..ky1 {
                filter[ky * self.kw + kx0..ky * self.kw + kx1]
                    .copy_from_slice(&src[(ky - ky0) * kw2..(ky - ky0 + 1) * kw2]);
            }
        }
        out
    }

    /// Pads one image's planes into `out` ([C, Hp, Wp]).
    fn pad_image(&self, x: &[f32], out: &mut [f32]) {
        let (hp, wp) = (self.hp(), self.wp());
        let (h, w) = (self.h, self.w);
        for ci in 0..self.c {
            let src = &x[ci * h * w..(ci + 1) * h * w];
            let dst = &mut out[ci * hp * wp..(ci + 1) * hp * wp];
            for y in 0..hp {
                let sy = source_index(y as i64 - self.pads[0] as i64, h as i64, self.mode);
                for xo in 0..wp {
                    let sx = source_index(xo as i64 - self.pads[2] as i64, w as i64, self.mode);
                    dst[y * wp + xo] = match (sy, sx) {
                        (Some(sy), Some(sx)) => src[sy * w + sx],
                        _ => 0.0,
                    };
                }
            }
        }
    }

    /// Adds the gradient of a padded image back onto the unpadded one.
    fn unpad_grad(&self, dpad: &[f32], dx: &mut [f32]) {
        let (hp, wp) = (self.hp(), self.wp());
        let (h, w) = (self.h, self.w);
        for ci in 0..self.c {
            let src = &dpad[ci * hp * wp..(ci + 1) * hp * wp];
            let dst = &mut dx[ci * h * w..(ci + 1) * h * w];
            for y in 0..hp {
                let Some(sy) = source_index(y as i64 - self.pads[0] as i64, h as i64, self.mode)
                else {
                    continue;
                };
                for xo in 0..wp {
                    if let Some(sx) =
                        source_index(xo as i64 - self.pads[2] as i64, w as i64, self.mode)
                    {
                        dst[sy * w + sx] += src[y * wp + xo];
                    }
                }
            }
        }
    }

    /// Writes one (padded) image's columns at column offset `off` of `col` ([CKK, stride]).
    fn im2col(&self, src: &[f32], col: &mut [f32], stride: usize, off: usize) {
        self.im2col_rows(src, col, stride, off, 0, self.oh)
    }

    /// The columns of output rows `y0..y1` only, at column offset `off`
    /// (compiled for AVX2 too, see [`with_avx2`]).
    fn im2col_rows(
        &self,
        src: &[f32],
        col: &mut [f32],
        stride: usize,
        off: usize,
        y0: usize,
        y1: usize,
    ) {
        with_avx2!(self.im2col_rows_any(src, col, stride, off, y0, y1))
    }

    #[inline(always)]
    fn im2col_rows_any(
        &self,
        src: &[f32],
        col: &mut [f32],
        stride: usize,
        off: usize,
        y0: usize,
        y1: usize,
    ) {
        let (hp, wp) = if self.padded() {
            (self.hp(), self.wp())
        } else {
            (self.h, self.w)
        };
        let (oh, ow) = (y1 - y0, self.ow);
        if self.sw == 1 && ow >= 4 && wp >= 8 && oh >= 2 {
            // Rows are short (6 to 30 values in the zoo): a memcpy call per
            // row cost more than the copy, and so did the bounds checks.
            // Every row but a window's last is copied in blocks of 8 that
            // may spill up to 7 values past it: into the next row of the
            // same window (written after it: 8·blocks ≤ ow + 7 ≤ 2·ow), read
            // from the input past the row's end, inside the next input row
            // (kx·dw + 8·blocks ≤ wp + 7 ≤ 2·wp); asserted once per window.
            let blocks = ow.div_ceil(8);
            let step = self.sh * wp;
            for ci in 0..self.c {
                let plane = &src[ci * hp * wp..(ci + 1) * hp * wp];
                for ky in 0..self.kh {
                    for kx in 0..self.kw {
                        let row = (ci * self.kh + ky) * self.kw + kx;
                        let dst = &mut col[row * stride + off..row * stride + off + oh * ow];
                        let first = (y0 * self.sh + ky * self.dh) * wp + kx * self.dw;
                        assert!(first + (oh - 2) * step + 8 * blocks <= plane.len());
                        assert!((oh - 2) * ow + 8 * blocks <= dst.len());
                        let (s, d) = (plane.as_ptr(), dst.as_mut_ptr());
                        for y in 0..oh - 1 {
                            for b in 0..blocks {
                                // SAFETY: the two asserts bound the last
                                // block of the last spilled row (y = oh − 2).
                                unsafe {
                                    let v = s
                                        .add(first + y * step + 8 * b)
                                        .cast::<[f32; 8]>()
                                        .read_unaligned();
                                    d.add(y * ow + 8 * b).cast::<[f32; 8]>().write_unaligned(v);
                                }
                            }
                        }
                        let last = first + (oh - 1) * step;
                        copy_short(&mut dst[(oh - 1) * ow..], &plane[last..last + ow]);
                    }
                }
            }
            return;
        }
        for ci in 0..self.c {
            let plane = &src[ci * hp * wp..(ci + 1) * hp * wp];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (ci * self.kh + ky) * self.kw + kx;
                    let dst = &mut col[row * stride + off..row * stride + off + oh * ow];
                    for y in 0..oh {
                        let at = ((y0 + y) * self.sh + ky * self.dh) * wp + kx * self.dw;
                        if self.sw == 1 {
                            copy_short(&mut dst[y * ow..(y + 1) * ow], &plane[at..at + ow]);
                        } else {
                            let d = &mut dst[y * ow..(y + 1) * ow];
                            for (xo, v) in d.iter_mut().enumerate() {
                                *v = plane[at + xo * self.sw];
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds columns back into a (padded) image: the adjoint of `im2col`.
    fn col2im(&self, col: &[f32], stride: usize, off: usize, dst: &mut [f32]) {
        self.col2im_rows(col, stride, off, 0, self.oh, dst)
    }

    /// The adjoint of [`Self::im2col_rows`] (compiled for AVX2 too). A
    /// gather form (each input vector loaded once, its K·K column values
    /// added with masked loads, stored once) was slower on mnist_cnn's
    /// conv2: 37.6 against 34.5 ms per backward pass of 256 images.
    fn col2im_rows(
        &self,
        col: &[f32],
        stride: usize,
        off: usize,
        y0: usize,
        y1: usize,
        dst: &mut [f32],
    ) {
        with_avx2!(self.col2im_rows_any(col, stride, off, y0, y1, dst))
    }

    #[inline(always)]
    fn col2im_rows_any(
        &self,
        col: &[f32],
        stride: usize,
        off: usize,
        y0: usize,
        y1: usize,
        dst: &mut [f32],
    ) {
        let (hp, wp) = if self.padded() {
            (self.hp(), self.wp())
        } else {
            (self.h, self.w)
        };
        let (oh, ow) = (y1 - y0, self.ow);
        for ci in 0..self.c {
            let plane = &mut dst[ci * hp * wp..(ci + 1) * hp * wp];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (ci * self.kh + ky) * self.kw + kx;
                    let src = &col[row * stride + off..row * stride + off + oh * ow];
                    for y in 0..oh {
                        let base = ((y0 + y) * self.sh + ky * self.dh) * wp + kx * self.dw;
                        let s = &src[y * ow..(y + 1) * ow];
                        if self.sw == 1 {
                            for (d, v) in plane[base..base + ow].iter_mut().zip(s) {
                                *d += v;
                            }
                        } else {
                            for (xo, v) in s.iter().enumerate() {
                                plane[base + xo * self.sw] += v;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The direct kernel's geometry, where it applies: stride 1, no
    /// dilation, one group, output channels in multiples of 16, at least 4
    /// output pixels, a CPU with AVX2 and FMA. Below 4 pixels its per-image
    /// passes (the weight gradient a rank-OHW update of the whole gradient
    /// matrix per image, the forward a matrix-vector product per pixel)
    /// re-read the weights for almost no arithmetic; im2col + GEMM over
    /// many images at once does the same work in a few larger products.
    fn direct(&self) -> Option<direct::Geometry> {
        #[cfg(test)]
        if tests::KERNELS.with(|c| c.get()) == tests::Kernels::Im2col {
            return None;
        }
        let fits = (self.sh, self.sw, self.dh, self.dw) == (1, 1, 1, 1)
            && self.ohw() >= 4
            && self.groups == 1
            && self.oc.is_multiple_of(16)
            && direct::available();
        fits.then(|| direct::Geometry {
            c: self.c,
            hp: self.hp(),
            wp: self.wp(),
            oc: self.oc,
            oh: self.oh,
            ow: self.ow,
            kh: self.kh,
            kw: self.kw,
        })
    }

    /// The Winograd kernels' geometry, where they apply: 5×5, stride 1, no
    /// dilation, one group, 16k input and output channels, AVX-512.
    fn winograd(&self) -> Option<winograd::Geometry> {
        #[cfg(test)]
        if tests::KERNELS.with(|c| c.get()) != tests::Kernels::All {
            return None;
        }
        // The direct kernels' conditions (stride 1, no dilation, one group)
        // and a 5×5 kernel.
        let d = self.direct()?;
        let g = winograd::Geometry::from(&d);
        ((d.kh, d.kw) == (5, 5) && winograd::available() && g.fits()).then_some(g)
    }

    /// The forward pass's kernel and its weights, chosen once on the
    /// calling thread (the tasks then only follow it).
    fn prepare(&self, w: &[f32]) -> Prepared {
        if let Some(wg) = self.winograd() {
            Prepared::Winograd(wg, winograd::transform_weights(w, self.oc, self.c))
        } else if let Some(dg) = self.direct() {
            Prepared::Direct(dg, direct::tap_major(w, self.oc, self.ckk()))
        } else {
            Prepared::Gemm
        }
    }

    /// What im2col reads for image `x`: the image itself, or its padded copy in `scratch`.
    fn source<'a>(&self, x: &'a [f32], scratch: &'a mut Vec<f32>) -> &'a [f32] {
        if self.padded() {
            scratch.resize(self.c * self.hp() * self.wp(), 0.0);
            self.pad_image(x, scratch);
            scratch
        } else {
            x
        }
    }

    /// Columns of `nb` images of `x` ([nb, C, H, W]) into `col` ([CKK, nb·OHW]).
    fn columns(&self, x: &[f32], nb: usize, col: &mut [f32], scratch: &mut Vec<f32>) {
        let per = self.c * self.h * self.w;
        let stride = nb * self.ohw();
        for b in 0..nb {
            let img = &x[b * per..(b + 1) * per];
            if self.padded() {
                scratch.resize(self.c * self.hp() * self.wp(), 0.0);
                self.pad_image(img, scratch);
                self.im2col(scratch, col, stride, b * self.ohw());
            } else {
                self.im2col(img, col, stride, b * self.ohw());
            }
        }
    }
}

/// Convolution forward: `y = conv(x, w) + b` for `n` images, then
/// `max(y, 0)` when `relu` (a following relu fused into the pass over the
/// output while it is in cache; NaN kept as [`relu_in_place`] does).
pub fn conv_forward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    if let Some((t, taps)) = g.trimmed() {
        return conv_forward(&t, n, x, &g.trim_weights(w, taps), b, relu);
    }
    let (in_per, out_per) = (g.c * g.h * g.w, g.oc * g.ohw());
    let mut y = vec![0f32; n * out_per];
    let (task, sub, rows) = g.split(n);
    let prep = g.prepare(w);
    y.par_chunks_mut(task * out_per)
        .zip(x.par_chunks(task * in_per))
        .for_each(|(yt, xt)| {
            let mut scratch = ConvScratch::default();
            conv_images(g, (sub, rows), xt, w, &prep, b, relu, yt, &mut scratch);
        });
    y
}

/// Convolution, relu and a 2×2 max pool with stride 2 in one pass over
/// each image: the convolution's output (the relu's, in place) only ever
/// exists one image at a time in a buffer that stays in cache, and only
/// the pooled values and their indices (in the convolution's planes, as
/// [`maxpool_forward`] records them) are written out. For a relu whose
/// only reader is such a pool: nothing else needs its full output (the
/// pool's backward pass applies the relu's gradient from the pooled
/// values, see [`argmax_backward`]).
pub fn conv_relu_maxpool_forward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    (oh, ow): (usize, usize),
) -> (Vec<f32>, Vec<u32>) {
    if let Some((t, taps)) = g.trimmed() {
        return conv_relu_maxpool_forward(&t, n, x, &g.trim_weights(w, taps), b, (oh, ow));
    }
    assert!(2 * oh <= g.oh && 2 * ow <= g.ow);
    let (in_per, out_per) = (g.c * g.h * g.w, g.oc * g.ohw());
    let pooled = g.oc * oh * ow;
    let mut y = vec![0f32; n * pooled];
    let mut arg = vec![0u32; n * pooled];
    let (task, _, rows) = g.split(n);
    let prep = g.prepare(w);
    y.par_chunks_mut(task * pooled)
        .zip(arg.par_chunks_mut(task * pooled))
        .zip(x.par_chunks(task * in_per))
        .for_each(|((yt, at), xt)| {
            let mut scratch = ConvScratch::default();
            let mut out = vec![0f32; out_per];
            for ((yi, ai), xi) in yt
                .chunks_mut(pooled)
                .zip(at.chunks_mut(pooled))
                .zip(xt.chunks(in_per))
            {
                conv_images(g, (1, rows), xi, w, &prep, b, true, &mut out, &mut scratch);
                for ((src, yp), ap) in out
                    .chunks(g.ohw())
                    .zip(yi.chunks_mut(oh * ow))
                    .zip(ai.chunks_mut(oh * ow))
                {
                    maxpool2x2(src, g.ow, oh, ow, yp, ap);
                }
            }
        });
    (y, arg)
}

/// Buffers one thread reuses across the images of its task.
#[derive(Default)]
struct ConvScratch {
    col: Vec<f32>,
    out: Vec<f32>,
    pad: Vec<f32>,
    pm: Vec<f32>,
    wino: winograd::Scratch,
}

/// The forward kernel of a pass and its weights, rearranged once.
enum Prepared {
    /// Transformed for [`winograd::forward`].
    Winograd(winograd::Geometry, Vec<f32>),
    /// Tap-major for [`direct::forward`].
    Direct(direct::Geometry, Vec<f32>),
    /// As they are, for im2col + GEMM.
    Gemm,
}

/// The forward pass of the images of `xt` into `yt`, on one thread: the
/// kernel `prep` was made for (Winograd, direct), or im2col and GEMM in
/// tiles of `sub` images or, at 1, bands of `rows` output rows.
#[allow(clippy::too_many_arguments)]
fn conv_images(
    g: &ConvGeom,
    (sub, rows): (usize, usize),
    xt: &[f32],
    w: &[f32],
    prep: &Prepared,
    b: Option<&[f32]>,
    relu: bool,
    yt: &mut [f32],
    s: &mut ConvScratch,
) {
    let (ohw, ckk) = (g.ohw(), g.ckk());
    let in_per = g.c * g.h * g.w;
    let out_per = g.oc * ohw;
    let (cpg, opg) = (g.c / g.groups, g.oc / g.groups);
    let kk = g.kh * g.kw;
    if let Prepared::Winograd(..) | Prepared::Direct(..) = prep {
        // No columns: the kernel writes pixel-major outputs, moved to the
        // planes with the bias and the relu.
        s.pm.resize(ohw * g.oc, 0.0);
        for (yi, xi) in yt.chunks_mut(out_per).zip(xt.chunks(in_per)) {
            let src = g.source(xi, &mut s.pad);
            match prep {
                Prepared::Winograd(wg, u) => winograd::forward(wg, src, u, &mut s.pm, &mut s.wino),
                Prepared::Direct(dg, wt) => direct::forward(dg, src, wt, &mut s.pm),
                Prepared::Gemm => unreachable!("matched above"),
            }
            direct::to_planes(&s.pm, g.oc, ohw, yi, b, relu);
        }
        return;
    }
    if sub == 1 {
        // Bands of output rows of one image, the GEMM writing straight
        // into the image's output planes (row stride OHW).
        for (yi, xi) in yt.chunks_mut(out_per).zip(xt.chunks(in_per)) {
            let src = g.source(xi, &mut s.pad);
            for y0 in (0..g.oh).step_by(rows) {
                let y1 = (y0 + rows).min(g.oh);
                let p = (y1 - y0) * g.ow;
                s.col.resize(ckk * p, 0.0);
                g.im2col_rows(src, &mut s.col, p, 0, y0, y1);
                for gi in 0..g.groups {
                    mm(
                        opg,
                        p,
                        cpg * kk,
                        &mut yi[gi * opg * ohw + y0 * g.ow..],
                        ohw,
                        1,
                        false,
                        &w[gi * opg * cpg * kk..],
                        cpg * kk,
                        1,
                        &s.col[gi * cpg * kk * p..],
                        p,
                        1,
                        false,
                    );
                }
            }
            for (o, plane) in yi.chunks_mut(ohw).enumerate() {
                let bias = b.map_or(0.0, |b| b[o]);
                if relu {
                    plane.iter_mut().for_each(|v| {
                        let t = *v + bias;
                        *v = if t < 0.0 { 0.0 } else { t };
                    });
                } else if b.is_some() {
                    plane.iter_mut().for_each(|v| *v += bias);
                }
            }
        }
        return;
    }
    for (yc, xc) in yt.chunks_mut(sub * out_per).zip(xt.chunks(sub * in_per)) {
        let nb = xc.len() / in_per;
        let p = nb * ohw;
        s.col.resize(ckk * p, 0.0);
        s.out.resize(g.oc * p, 0.0);
        g.columns(xc, nb, &mut s.col, &mut s.pad);
        for gi in 0..g.groups {
            mm(
                opg,
                p,
                cpg * kk,
                &mut s.out[gi * opg * p..],
                p,
                1,
                false,
                &w[gi * opg * cpg * kk..],
                cpg * kk,
                1,
                &s.col[gi * cpg * kk * p..],
                p,
                1,
                false,
            );
        }
        for bi in 0..nb {
            for o in 0..g.oc {
                let bias = b.map_or(0.0, |b| b[o]);
                let src = &s.out[o * p + bi * ohw..o * p + (bi + 1) * ohw];
                let dst = &mut yc[bi * out_per + o * ohw..bi * out_per + (o + 1) * ohw];
                for (d, s) in dst.iter_mut().zip(src) {
                    let t = s + bias;
                    *d = if relu && t < 0.0 { 0.0 } else { t };
                }
            }
        }
    }
}

/// How the backward pass computes the input gradient beside the direct
/// weight gradient.
enum DxKernel {
    /// The forward Winograd kernel over dY padded by 4, with the flipped
    /// kernel ([`winograd::transform_weights_flipped`]).
    Winograd(winograd::Geometry, Vec<f32>),
    /// [`direct::input_grad`], weights [`direct::channel_minor`].
    Scatter(Vec<f32>),
}

/// Σ plane in eight f32 lanes (vectorised; one f64 chain of adds was 3% of
/// a training step), the lanes and the tail added in f64.
fn plane_sum(plane: &[f32]) -> f64 {
    let mut lanes = [0f32; 8];
    let blocks = plane.chunks_exact(8);
    let tail: f64 = blocks.remainder().iter().map(|&v| v as f64).sum();
    for b in blocks {
        for (l, v) in lanes.iter_mut().zip(b) {
            *l += v;
        }
    }
    tail + lanes.iter().map(|&v| v as f64).sum::<f64>()
}

/// Convolution backward: returns (dx if wanted, dw, db). With
/// `relu_input` (the input is a relu's output read by nothing else) dx is
/// the gradient of the relu's input: [`relu_mask`] applied to each image
/// while it is in cache, instead of a pass of the relu's own.
///
/// The weight gradient is accumulated transposed ([CKK, OC] per group,
/// column-major for the GEMM: both of its operands are then read along
/// their unit stride, 1.5× faster than the row-major product) and
/// transposed once at the end.
pub fn conv_backward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    relu_input: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    if let Some((t, taps)) = g.trimmed() {
        let wt = g.trim_weights(w, taps);
        let (dx, dw, db) = conv_backward(&t, n, x, &wt, dy, need_dx, relu_input);
        return (dx, g.untrim_weights(&dw, taps), db);
    }
    let (ohw, ckk) = (g.ohw(), g.ckk());
    let in_per = g.c * g.h * g.w;
    let out_per = g.oc * ohw;
    let (task, sub, rows) = g.split_backward(n);
    let (cpg, opg) = (g.c / g.groups, g.oc / g.groups);
    let kk = g.kh * g.kw;
    let gk = cpg * kk;
    let wlen = g.oc * gk;
    let mut dx = vec![0f32; if need_dx { n * in_per } else { 0 }];
    let direct = g.direct();
    // The weight gradient summed in Winograd's transformed domain where its
    // kernels apply (2.8× fewer multiplies; the direct path's dY moves
    // serve both), mapped back to 5×5 once for the batch.
    let wino_dw = direct.and(g.winograd());
    // The input gradient's kernel where the direct path runs and the input
    // channels fill the lanes: Winograd over the padded output gradient
    // (5×5 kernels, AVX-512), else the direct scatter.
    let dx_kernel = (need_dx && direct.is_some() && g.c.is_multiple_of(16)).then(|| {
        let wg = winograd::Geometry {
            c: g.oc,
            hp: g.oh + 8,
            wp: g.ow + 8,
            oc: g.c,
            oh: g.hp(),
            ow: g.wp(),
        };
        // Its padded tiles multiply zeros: worth it where they still take
        // a fifth fewer multiplications than the scatter's 25 a pixel
        // (mnist's conv2: 144 tiles of 36 against 400 pixels of 25; conv3:
        // equal).
        let (th, tw) = (g.hp().div_ceil(2), g.wp().div_ceil(2));
        let fewer = 36 * th * tw * 5 < 4 * 25 * ohw;
        match wino_dw {
            Some(_) if wg.fits() && fewer => {
                DxKernel::Winograd(wg, winograd::transform_weights_flipped(w, g.oc, g.c))
            }
            _ => DxKernel::Scatter(direct::channel_minor(w, g.oc, g.c, kk)),
        }
    });
    // dWᵀ_g (+)= colᵀ-product: [opg, P] · [P, gk], stored with element
    // (o, q) at gi·opg·gk + q·opg + o.
    let dw_gemm =
        |dwt: &mut [f32], first: bool, dyb: &[f32], dy_rs: usize, col: &[f32], p: usize| {
            for gi in 0..g.groups {
                mm(
                    opg,
                    gk,
                    p,
                    &mut dwt[gi * opg * gk..],
                    1,
                    opg,
                    !first,
                    &dyb[gi * opg * dy_rs..],
                    dy_rs,
                    1,
                    &col[gi * gk * p..],
                    1,
                    p,
                    false,
                );
            }
        };
    // dcol_g [gk, P] = W_gᵀ [gk, opg] · dY_g [opg, P]
    let dcol_gemm = |col: &mut [f32], dyb: &[f32], dy_rs: usize, p: usize| {
        for gi in 0..g.groups {
            mm(
                gk,
                p,
                opg,
                &mut col[gi * gk * p..],
                p,
                1,
                false,
                &w[gi * opg * gk..],
                1,
                gk,
                &dyb[gi * opg * dy_rs..],
                dy_rs,
                1,
                false,
            );
        }
    };
    // One task: images of `xt`, the weight gradient accumulated over all of them.
    let work = |xt: &[f32], dyt: &[f32], mut dxt: Option<&mut [f32]>| -> (Vec<f32>, Vec<f64>) {
        // The weight gradient tap-major, or in Winograd's domain.
        let mut dwt = vec![
            0f32;
            if wino_dw.is_some() {
                36 * g.c * g.oc
            } else {
                wlen
            }
        ];
        let mut db = vec![0f64; g.oc];
        for dyi in dyt.chunks(out_per) {
            for (o, plane) in dyi.chunks(ohw).enumerate() {
                db[o] += plane_sum(plane);
            }
        }
        let (mut col, mut dyp, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
        let mut dpad = vec![0f32; if g.padded() { g.c * g.hp() * g.wp() } else { 0 }];
        let mut first = true;
        if let Some(dg) = &direct {
            // The weight gradient straight from each image and its dY
            // (pixel-major); no columns. The input gradient too where the
            // input channels fill the lanes: pixel-major on the padded
            // image, then moved to its planes.
            let mut dy_pm = vec![0f32; ohw * g.oc];
            let pixels = g.hp() * g.wp();
            let mut dx_pm = vec![0f32; if dx_kernel.is_some() { pixels * g.c } else { 0 }];
            // Winograd's padded dY: zeros around, each image's rows inside.
            let mut dy_padded = Vec::new();
            let mut wino = winograd::Scratch::default();
            if let Some(DxKernel::Winograd(wg, _)) = &dx_kernel {
                let (he, we) = wg.extent();
                dy_padded.resize(he * we * g.oc, 0.0);
            }
            let mut grad = winograd::GradScratch::default();
            for (i, (xi, dyi)) in xt.chunks(in_per).zip(dyt.chunks(out_per)).enumerate() {
                direct::to_pixel_major(dyi, g.oc, ohw, &mut dy_pm);
                let src = g.source(xi, &mut scratch);
                match &wino_dw {
                    Some(wg) => winograd::weight_grad(wg, src, &dy_pm, &mut dwt, &mut grad),
                    None => direct::weight_grad(dg, src, &dy_pm, &mut dwt),
                }
                if let (Some(kernel), Some(dxt)) = (&dx_kernel, dxt.as_deref_mut()) {
                    match kernel {
                        DxKernel::Winograd(wg, u) => {
                            let row = g.ow * g.oc;
                            let we = wg.extent().1;
                            for (r, src) in dy_pm.chunks(row).enumerate() {
                                let at = ((r + 4) * we + 4) * g.oc;
                                dy_padded[at..at + row].copy_from_slice(src);
                            }
                            winograd::forward_pixel_major(wg, &dy_padded, u, &mut dx_pm, &mut wino);
                        }
                        DxKernel::Scatter(wc) => {
                            dx_pm.fill(0.0);
                            direct::input_grad(dg, &dy_pm, wc, &mut dx_pm);
                        }
                    }
                    let dxi = &mut dxt[i * in_per..(i + 1) * in_per];
                    if g.padded() {
                        direct::to_planes(&dx_pm, g.c, pixels, &mut dpad, None, false);
                        g.unpad_grad(&dpad, dxi);
                    } else {
                        direct::to_planes(&dx_pm, g.c, pixels, dxi, None, false);
                    }
                    if relu_input {
                        relu_mask(dxi, xi);
                    }
                }
            }
            if let Some(wg) = &wino_dw {
                winograd::weight_grad_flush(wg, &mut dwt, &mut grad);
            }
            if dxt.is_none() || dx_kernel.is_some() {
                return (dwt, db);
            }
        }
        if sub == 1 {
            for (i, (xi, dyi)) in xt.chunks(in_per).zip(dyt.chunks(out_per)).enumerate() {
                if g.padded() {
                    dpad.fill(0.0);
                }
                let src = if direct.is_none() {
                    g.source(xi, &mut scratch)
                } else {
                    &[]
                };
                for y0 in (0..g.oh).step_by(rows) {
                    let y1 = (y0 + rows).min(g.oh);
                    let p = (y1 - y0) * g.ow;
                    col.resize(ckk * p, 0.0);
                    let dyb = &dyi[y0 * g.ow..];
                    if direct.is_none() {
                        g.im2col_rows(src, &mut col, p, 0, y0, y1);
                        dw_gemm(&mut dwt, first, dyb, ohw, &col, p);
                        first = false;
                    }
                    if let Some(dxt) = dxt.as_deref_mut() {
                        dcol_gemm(&mut col, dyb, ohw, p);
                        if g.padded() {
                            g.col2im_rows(&col, p, 0, y0, y1, &mut dpad);
                        } else {
                            g.col2im_rows(
                                &col,
                                p,
                                0,
                                y0,
                                y1,
                                &mut dxt[i * in_per..(i + 1) * in_per],
                            );
                        }
                    }
                }
                if let (true, Some(dxt)) = (g.padded(), dxt.as_deref_mut()) {
                    g.unpad_grad(&dpad, &mut dxt[i * in_per..(i + 1) * in_per]);
                }
                if let (true, Some(dxt)) = (relu_input, dxt.as_deref_mut()) {
                    relu_mask(&mut dxt[i * in_per..(i + 1) * in_per], xi);
                }
            }
            return (dwt, db);
        }
        for (k, (xc, dyc)) in xt
            .chunks(sub * in_per)
            .zip(dyt.chunks(sub * out_per))
            .enumerate()
        {
            let nb = xc.len() / in_per;
            let p = nb * ohw;
            col.resize(ckk * p, 0.0);
            dyp.resize(g.oc * p, 0.0);
            if direct.is_none() {
                g.columns(xc, nb, &mut col, &mut scratch);
            }
            // dY packed as [OC, nb·OHW].
            for bi in 0..nb {
                for o in 0..g.oc {
                    let src = &dyc[bi * out_per + o * ohw..bi * out_per + (o + 1) * ohw];
                    dyp[o * p + bi * ohw..o * p + (bi + 1) * ohw].copy_from_slice(src);
                }
            }
            if direct.is_none() {
                dw_gemm(&mut dwt, first, &dyp, p, &col, p);
                first = false;
            }
            if let Some(dxt) = dxt.as_deref_mut() {
                dcol_gemm(&mut col, &dyp, p, p);
                let base = k * sub;
                for bi in 0..nb {
                    let dximg = &mut dxt[(base + bi) * in_per..(base + bi + 1) * in_per];
                    if g.padded() {
                        dpad.fill(0.0);
                        g.col2im(&col, p, bi * ohw, &mut dpad);
                        g.unpad_grad(&dpad, dximg);
                    } else {
                        g.col2im(&col, p, bi * ohw, dximg);
                    }
                    if relu_input {
                        relu_mask(dximg, &xc[bi * in_per..(bi + 1) * in_per]);
                    }
                }
            }
        }
        (dwt, db)
    };
    let parts: Vec<(Vec<f32>, Vec<f64>)> = if need_dx {
        dx.par_chunks_mut(task * in_per)
            .zip(x.par_chunks(task * in_per))
            .zip(dy.par_chunks(task * out_per))
            .map(|((dxt, xt), dyt)| work(xt, dyt, Some(dxt)))
            .collect()
    } else {
        x.par_chunks(task * in_per)
            .zip(dy.par_chunks(task * out_per))
            .map(|(xt, dyt)| work(xt, dyt, None))
            .collect()
    };
    let mut dwt = vec![0f32; parts.first().map_or(wlen, |p| p.0.len())];
    let mut db = vec![0f64; g.oc];
    for (pw, pb) in parts {
        dwt.iter_mut().zip(&pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
    }
    if let Some(wg) = &wino_dw {
        // Back from the transformed domain once, for the whole batch.
        let du = std::mem::replace(&mut dwt, vec![0f32; wlen]);
        winograd::weight_grad_finish(wg, &du, &mut dwt);
    }
    let mut dw = vec![0f32; wlen];
    for gi in 0..g.groups {
        for o in 0..opg {
            for q in 0..gk {
                dw[gi * opg * gk + o * gk + q] = dwt[gi * opg * gk + q * opg + o];
            }
        }
    }
    (
        need_dx.then_some(dx),
        dw,
        db.iter().map(|&v| v as f32).collect(),
    )
}

/// Linear forward: `y[n, fo] = x[n, fi] · wᵀ + b`.
pub fn linear_forward(
    n: usize,
    fi: usize,
    fo: usize,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = vec![0f32; n * fo];
    if let Some(b) = b {
        for row in y.chunks_mut(fo) {
            row.copy_from_slice(b);
        }
    }
    mm(
        n,
        fo,
        fi,
        &mut y,
        fo,
        1,
        b.is_some(),
        x,
        fi,
        1,
        w,
        1,
        fi,
        true,
    );
    y
}

/// Linear backward: (dx if wanted, dw, db).
pub fn linear_backward(
    n: usize,
    fi: usize,
    fo: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let dx = need_dx.then(|| {
        let mut dx = vec![0f32; n * fi];
        mm(n, fi, fo, &mut dx, fi, 1, false, dy, fo, 1, w, fi, 1, true);
        dx
    });
    let mut dw = vec![0f32; fo * fi];
    // dW [fo, fi] = dYᵀ [fo, n] · X [n, fi]
    mm(fo, fi, n, &mut dw, fi, 1, false, dy, 1, fo, x, fi, 1, true);
    let mut db = vec![0f64; fo];
    for row in dy.chunks(fo) {
        db.iter_mut().zip(row).for_each(|(a, &b)| *a += b as f64);
    }
    (dx, dw, db.iter().map(|&v| v as f32).collect())
}

/// Pool window geometry (per plane).
#[derive(Clone, Copy, Debug)]
pub struct PoolGeom {
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kernel: (i64, i64),
    pub stride: (i64, i64),
    pub padding: (i64, i64),
    pub dilation: (i64, i64),
}

/// Max pool forward: values and the in-plane index of each maximum (u32::MAX if the window is empty).
pub fn maxpool_forward(g: &PoolGeom, planes: usize, x: &[f32]) -> (Vec<f32>, Vec<u32>) {
    let (h, w, oh, ow) = (g.h, g.w, g.oh, g.ow);
    let mut y = vec![0f32; planes * oh * ow];
    let mut arg = vec![u32::MAX; planes * oh * ow];
    // Every window inside the plane (no padding, no dilation, no ceil-mode
    // overhang): no bounds tests, the first element starts the search.
    let (kh, kw) = (g.kernel.0 as usize, g.kernel.1 as usize);
    let (sh, sw) = (g.stride.0 as usize, g.stride.1 as usize);
    let inside = g.padding == (0, 0)
        && g.dilation == (1, 1)
        && oh > 0
        && ow > 0
        && (oh - 1) * sh + kh <= h
        && (ow - 1) * sw + kw <= w;
    if inside {
        // Planes per task: about 64K input values.
        let per_task = ((1 << 16) / (h * w).max(1)).max(1);
        y.par_chunks_mut(per_task * oh * ow)
            .zip(arg.par_chunks_mut(per_task * oh * ow))
            .zip(x.par_chunks(per_task * h * w))
            .for_each(|((yt, at), xt)| {
                for ((yp, ap), src) in yt
                    .chunks_mut(oh * ow)
                    .zip(at.chunks_mut(oh * ow))
                    .zip(xt.chunks(h * w))
                {
                    if (kh, kw, sh, sw) == (2, 2, 2, 2) {
                        maxpool2x2(src, w, oh, ow, yp, ap);
                        continue;
                    }
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let first = oy * sh * w + ox * sw;
                            let (mut best, mut at) = (src[first], first);
                            // PyTorch's rule: a larger value or any NaN
                            // takes over (so the last NaN wins).
                            for ky in 0..kh {
                                let row = first + ky * w;
                                for (kx, &v) in src[row..row + kw].iter().enumerate() {
                                    if v > best || v.is_nan() {
                                        (best, at) = (v, row + kx);
                                    }
                                }
                            }
                            yp[oy * ow + ox] = best;
                            ap[oy * ow + ox] = at as u32;
                        }
                    }
                }
            });
        return (y, arg);
    }
    y.par_chunks_mut(oh * ow)
        .zip(arg.par_chunks_mut(oh * ow))
        .zip(x.par_chunks(h * w))
        .for_each(|((yp, ap), src)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best = f32::NEG_INFINITY;
                    let mut at = u32::MAX;
                    for ky in 0..g.kernel.0 {
                        let iy = oy as i64 * g.stride.0 - g.padding.0 + ky * g.dilation.0;
                        if iy < 0 || iy >= h as i64 {
                            continue;
                        }
                        for kx in 0..g.kernel.1 {
                            let ix = ox as i64 * g.stride.1 - g.padding.1 + kx * g.dilation.1;
                            if ix < 0 || ix >= w as i64 {
                                continue;
                            }
                            let i = iy as usize * w + ix as usize;
                            let v = src[i];
                            if v > best || v.is_nan() || at == u32::MAX {
                                best = v;
                                at = i as u32;
                            }
                        }
                    }
                    yp[oy * ow + ox] = best;
                    ap[oy * ow + ox] = at;
                }
            }
        });
    (y, arg)
}

/// 2×2 max pool with stride 2 over one plane (every window inside it):
/// branch-free selects in PyTorch's order, so the compiler vectorises it
/// (for AVX2 too, see [`with_avx2`]).
fn maxpool2x2(src: &[f32], w: usize, oh: usize, ow: usize, y: &mut [f32], arg: &mut [u32]) {
    #[inline(always)]
    fn body(src: &[f32], w: usize, oh: usize, ow: usize, y: &mut [f32], arg: &mut [u32]) {
        for oy in 0..oh {
            let top = &src[2 * oy * w..2 * oy * w + 2 * ow];
            let bot = &src[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * ow];
            let base = (2 * oy * w) as u32;
            let yr = &mut y[oy * ow..(oy + 1) * ow];
            let ar = &mut arg[oy * ow..(oy + 1) * ow];
            for ox in 0..ow {
                let i = base + 2 * ox as u32;
                let (mut best, mut at) = (top[2 * ox], i);
                for (v, j) in [
                    (top[2 * ox + 1], i + 1),
                    (bot[2 * ox], i + w as u32),
                    (bot[2 * ox + 1], i + w as u32 + 1),
                ] {
                    // PyTorch's rule: a larger value or any NaN takes over.
                    let take = v > best || v.is_nan();
                    best = if take { v } else { best };
                    at = if take { j } else { at };
                }
                yr[ox] = best;
                ar[ox] = at;
            }
        }
    }
    with_avx2!(body(src, w, oh, ow, y, arg))
}

/// Scatters gradients to the recorded maxima (max pools, adaptive max
/// pools). With `relu_of` (the pool's outputs, when its input is a relu's
/// output read by nothing else) the relu's gradient is applied on the way:
/// a maximum that is ≤ 0 passes nothing back, so the relu needs no pass of
/// its own over the (four times larger) input.
pub fn argmax_backward(
    planes: usize,
    in_size: usize,
    arg: &[u32],
    dy: &[f32],
    relu_of: Option<&[f32]>,
) -> Vec<f32> {
    let out_size = arg.len() / planes.max(1);
    let mut dx = vec![0f32; planes * in_size];
    dx.par_chunks_mut(in_size)
        .zip(arg.par_chunks(out_size))
        .zip(dy.par_chunks(out_size))
        .enumerate()
        .for_each(|(p, ((d, a), g))| {
            let y = relu_of.map(|y| &y[p * out_size..(p + 1) * out_size]);
            for (o, (&i, &v)) in a.iter().zip(g).enumerate() {
                if i != u32::MAX && !y.is_some_and(|y| y[o] <= 0.0) {
                    d[i as usize] += v;
                }
            }
        });
    dx
}

/// Average pool windows: (y0, y1, x0, x1, divisor) of each output, as PyTorch clips them.
fn avg_windows(g: &PoolGeom, count_include_pad: bool) -> Vec<(usize, usize, usize, usize, f32)> {
    let (h, w) = (g.h as i64, g.w as i64);
    let mut out = Vec::with_capacity(g.oh * g.ow);
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let mut y0 = oy as i64 * g.stride.0 - g.padding.0;
            let mut x0 = ox as i64 * g.stride.1 - g.padding.1;
            let mut y1 = (y0 + g.kernel.0).min(h + g.padding.0);
            let mut x1 = (x0 + g.kernel.1).min(w + g.padding.1);
            let padded_area = (y1 - y0) * (x1 - x0);
            y0 = y0.max(0);
            x0 = x0.max(0);
            y1 = y1.min(h);
            x1 = x1.min(w);
            let div = if count_include_pad {
                padded_area
            } else {
                (y1 - y0) * (x1 - x0)
            };
            out.push((
                y0 as usize,
                y1.max(y0) as usize,
                x0 as usize,
                x1.max(x0) as usize,
                div as f32,
            ));
        }
    }
    out
}

pub fn avgpool_forward(
    g: &PoolGeom,
    count_include_pad: bool,
    planes: usize,
    x: &[f32],
) -> Vec<f32> {
    let win = avg_windows(g, count_include_pad);
    let (h, w) = (g.h, g.w);
    let mut y = vec![0f32; planes * g.oh * g.ow];
    y.par_chunks_mut(g.oh * g.ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(yp, src)| {
            for (o, &(y0, y1, x0, x1, div)) in win.iter().enumerate() {
                let mut s = 0f32;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        s += src[iy * w + ix];
                    }
                }
                yp[o] = s / div;
            }
        });
    y
}

pub fn avgpool_backward(
    g: &PoolGeom,
    count_include_pad: bool,
    planes: usize,
    dy: &[f32],
) -> Vec<f32> {
    let win = avg_windows(g, count_include_pad);
    let (h, w) = (g.h, g.w);
    let mut dx = vec![0f32; planes * h * w];
    dx.par_chunks_mut(h * w)
        .zip(dy.par_chunks(g.oh * g.ow))
        .for_each(|(d, gy)| {
            for (o, &(y0, y1, x0, x1, div)) in win.iter().enumerate() {
                let v = gy[o] / div;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        d[iy * w + ix] += v;
                    }
                }
            }
        });
    dx
}

/// Adaptive pool windows: PyTorch's start = ⌊i·I/O⌋, end = ⌈(i+1)·I/O⌉.
fn adaptive_windows(h: usize, w: usize, oh: usize, ow: usize) -> Vec<(usize, usize, usize, usize)> {
    let mut out = Vec::with_capacity(oh * ow);
    for y in 0..oh {
        let (y0, y1) = (y * h / oh, ((y + 1) * h).div_ceil(oh));
        for x in 0..ow {
            let (x0, x1) = (x * w / ow, ((x + 1) * w).div_ceil(ow));
            out.push((y0, y1, x0, x1));
        }
    }
    out
}

pub fn adaptive_avg_forward(
    planes: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    x: &[f32],
) -> Vec<f32> {
    let win = adaptive_windows(h, w, oh, ow);
    let mut y = vec![0f32; planes * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(yp, src)| {
            for (o, &(y0, y1, x0, x1)) in win.iter().enumerate() {
                let mut s = 0f32;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        s += src[iy * w + ix];
                    }
                }
                yp[o] = s / ((y1 - y0) * (x1 - x0)) as f32;
            }
        });
    y
}

pub fn adaptive_avg_backward(
    planes: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    dy: &[f32],
) -> Vec<f32> {
    let win = adaptive_windows(h, w, oh, ow);
    let mut dx = vec![0f32; planes * h * w];
    dx.par_chunks_mut(h * w)
        .zip(dy.par_chunks(oh * ow))
        .for_each(|(d, gy)| {
            for (o, &(y0, y1, x0, x1)) in win.iter().enumerate() {
                let v = gy[o] / ((y1 - y0) * (x1 - x0)) as f32;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        d[iy * w + ix] += v;
                    }
                }
            }
        });
    dx
}

pub fn adaptive_max_forward(
    planes: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    x: &[f32],
) -> (Vec<f32>, Vec<u32>) {
    let win = adaptive_windows(h, w, oh, ow);
    let mut y = vec![0f32; planes * oh * ow];
    let mut arg = vec![u32::MAX; planes * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(arg.par_chunks_mut(oh * ow))
        .zip(x.par_chunks(h * w))
        .for_each(|((yp, ap), src)| {
            for (o, &(y0, y1, x0, x1)) in win.iter().enumerate() {
                let mut best = f32::NEG_INFINITY;
                let mut at = u32::MAX;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        let i = iy * w + ix;
                        // PyTorch's rule: the last NaN of the window wins.
                        if src[i] > best || src[i].is_nan() || at == u32::MAX {
                            best = src[i];
                            at = i as u32;
                        }
                    }
                }
                yp[o] = best;
                ap[o] = at;
            }
        });
    (y, arg)
}

/// What batch norm's backward pass needs: x̂ and 1/σ per channel.
pub struct BnSaved {
    pub xhat: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// (y, saved, batch mean, unbiased batch variance) per channel.
pub type BnTrainOut = (Vec<f32>, BnSaved, Vec<f64>, Vec<f64>);

/// Batch norm in training mode over `n` images of `c` channels of `hw` values.
pub fn batchnorm_train_forward(
    n: usize,
    c: usize,
    hw: usize,
    eps: f64,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
) -> Result<BnTrainOut, String> {
    let m = n * hw;
    if m <= 1 {
        return Err(format!(
            "batch norm in training mode needs more than 1 value per channel (got a batch of {n} with {hw} values per channel); use a larger batch"
        ));
    }
    let stats: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut s = 0f64;
            for i in 0..n {
                s += x[(i * c + ch) * hw..(i * c + ch + 1) * hw]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
            let mean = s / m as f64;
            let mut q = 0f64;
            for i in 0..n {
                q += x[(i * c + ch) * hw..(i * c + ch + 1) * hw]
                    .iter()
                    .map(|&v| (v as f64 - mean).powi(2))
                    .sum::<f64>();
            }
            (mean, q / m as f64)
        })
        .collect();
    let inv_std: Vec<f32> = stats
        .iter()
        .map(|&(_, var)| (1.0 / (var + eps).sqrt()) as f32)
        .collect();
    let mut xhat = vec![0f32; x.len()];
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(hw)
        .zip(xhat.par_chunks_mut(hw))
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(plane, ((yp, hp), xp))| {
            let ch = plane % c;
            let mean = stats[ch].0 as f32;
            for ((yv, hv), &xv) in yp.iter_mut().zip(hp.iter_mut()).zip(xp) {
                *hv = (xv - mean) * inv_std[ch];
                *yv = *hv * gamma[ch] + beta[ch];
            }
        });
    let means = stats.iter().map(|s| s.0).collect();
    let unbiased = stats
        .iter()
        .map(|s| s.1 * m as f64 / (m - 1) as f64)
        .collect();
    Ok((y, BnSaved { xhat, inv_std }, means, unbiased))
}

/// Batch norm backward (training mode): (dx, dγ, dβ).
pub fn batchnorm_train_backward(
    n: usize,
    c: usize,
    hw: usize,
    saved: &BnSaved,
    gamma: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let m = (n * hw) as f64;
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sd, mut sdx) = (0f64, 0f64);
            for i in 0..n {
                let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                for (&g, &h) in dy[r.clone()].iter().zip(&saved.xhat[r]) {
                    sd += g as f64;
                    sdx += g as f64 * h as f64;
                }
            }
            (sd, sdx)
        })
        .collect();
    let mut dx = vec![0f32; dy.len()];
    dx.par_chunks_mut(hw)
        .zip(dy.par_chunks(hw))
        .zip(saved.xhat.par_chunks(hw))
        .enumerate()
        .for_each(|(plane, ((d, g), h))| {
            let ch = plane % c;
            let k = gamma[ch] * saved.inv_std[ch];
            let mean_d = (sums[ch].0 / m) as f32;
            let mean_dx = (sums[ch].1 / m) as f32;
            for ((dv, &gv), &hv) in d.iter_mut().zip(g).zip(h) {
                *dv = k * (gv - mean_d - hv * mean_dx);
            }
        });
    let dgamma = sums.iter().map(|s| s.1 as f32).collect();
    let dbeta = sums.iter().map(|s| s.0 as f32).collect();
    (dx, dgamma, dbeta)
}

/// Batch norm with fixed statistics (evaluation mode).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_eval(
    c: usize,
    hw: usize,
    eps: f64,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
) -> Vec<f32> {
    let scale: Vec<f32> = (0..c)
        .map(|ch| (gamma[ch] as f64 / (var[ch] as f64 + eps).sqrt()) as f32)
        .collect();
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(plane, (yp, xp))| {
            let ch = plane % c;
            for (yv, &xv) in yp.iter_mut().zip(xp) {
                *yv = (xv - mean[ch]) * scale[ch] + beta[ch];
            }
        });
    y
}

/// Local response norm forward: (y, D) with D_c = k + α/n·Σ a_j².
pub fn lrn_forward(
    n: usize,
    c: usize,
    hw: usize,
    (size, alpha, beta, k): (usize, f64, f64, f64),
    x: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let mut y = vec![0f32; x.len()];
    let mut den = vec![0f32; x.len()];
    let _ = n;
    y.par_chunks_mut(c * hw)
        .zip(den.par_chunks_mut(c * hw))
        .zip(x.par_chunks(c * hw))
        .for_each(|((yi, di), xi)| {
            for ch in 0..c {
                let lo = ch.saturating_sub(size / 2);
                let hi = (ch + (size - 1) / 2).min(c - 1);
                for p in 0..hw {
                    let mut s = 0f64;
                    for j in lo..=hi {
                        let v = xi[j * hw + p] as f64;
                        s += v * v;
                    }
                    let d = k + alpha * s / size as f64;
                    di[ch * hw + p] = d as f32;
                    yi[ch * hw + p] = (xi[ch * hw + p] as f64 * d.powf(-beta)) as f32;
                }
            }
        });
    (y, den)
}

pub fn lrn_backward(
    c: usize,
    hw: usize,
    (size, alpha, beta, _k): (usize, f64, f64, f64),
    x: &[f32],
    den: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(c * hw)
        .zip(x.par_chunks(c * hw))
        .zip(den.par_chunks(c * hw).zip(dy.par_chunks(c * hw)))
        .for_each(|((dxi, xi), (di, gi))| {
            for j in 0..c {
                // Outputs c whose window holds j: c ∈ [j − (size−1)/2, j + size/2].
                let lo = j.saturating_sub((size - 1) / 2);
                let hi = (j + size / 2).min(c - 1);
                for p in 0..hw {
                    let dj = di[j * hw + p] as f64;
                    let mut s = 0f64;
                    for ch in lo..=hi {
                        let d = di[ch * hw + p] as f64;
                        s += gi[ch * hw + p] as f64 * xi[ch * hw + p] as f64 * d.powf(-beta - 1.0);
                    }
                    let a = xi[j * hw + p] as f64;
                    dxi[j * hw + p] = (gi[j * hw + p] as f64 * dj.powf(-beta)
                        - 2.0 * alpha * beta / size as f64 * a * s)
                        as f32;
                }
            }
        });
    dx
}

/// Elements per parallel task of the elementwise passes (256 KB of f32).
const ELEMENTWISE_CHUNK: usize = 1 << 16;

/// `y = max(x, 0)` in place, NaN kept (as `activate`).
pub fn relu_in_place(y: &mut [f32]) {
    y.par_chunks_mut(ELEMENTWISE_CHUNK).for_each(|c| {
        for v in c {
            // `v < 0` is false for NaN, which stays.
            if *v < 0.0 {
                *v = 0.0;
            }
        }
    });
}

/// `activate` over a tensor.
pub fn activate_all(a: Activation, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(x.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(yc, xc)| {
            for (o, &v) in yc.iter_mut().zip(xc) {
                *o = activate(a, v);
            }
        });
    y
}

/// `dy *= (y > 0)`: relu's gradient from its output.
pub fn relu_grad_in_place(dy: &mut [f32], y: &[f32]) {
    dy.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(y.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(dc, yc)| relu_mask(dc, yc));
}

/// `dy = 0 where y ≤ 0`: relu's gradient from its output, PyTorch's rule
/// (`threshold_backward`: a NaN passes the gradient on).
#[inline]
pub fn relu_mask(dy: &mut [f32], y: &[f32]) {
    for (d, &v) in dy.iter_mut().zip(y) {
        *d = if v <= 0.0 { 0.0 } else { *d };
    }
}

/// `dy *= activation_grad(a, x)`.
pub fn activation_grad_in_place(a: Activation, dy: &mut [f32], x: &[f32]) {
    dy.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(x.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(dc, xc)| {
            for (d, &v) in dc.iter_mut().zip(xc) {
                *d *= activation_grad(a, v);
            }
        });
}

/// One activation in f32: the table's formula (`cnnc_kernels::activation`).
pub fn activate(a: Activation, v: f32) -> f32 {
    let (kind, p) = a.kind();
    kind.forward(p as f32, v)
}

/// d activation / d input at input `x`: the table's derivative, which
/// follows PyTorch's backward formulas, including at kinks and NaN.
pub fn activation_grad(a: Activation, x: f32) -> f32 {
    let (kind, p) = a.kind();
    kind.derivative(p as f32, x)
}

/// Softmax or log-softmax over channels at each position.
pub fn softmax_forward(n: usize, c: usize, hw: usize, log: bool, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for i in 0..n {
        for p in 0..hw {
            let at = |ch: usize| (i * c + ch) * hw + p;
            let max = (0..c).map(|ch| x[at(ch)]).fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = (0..c).map(|ch| ((x[at(ch)] - max) as f64).exp()).sum();
            for ch in 0..c {
                let s = (x[at(ch)] - max) as f64;
                y[at(ch)] = if log {
                    (s - sum.ln()) as f32
                } else {
                    (s.exp() / sum) as f32
                };
            }
        }
    }
    y
}

pub fn softmax_backward(
    n: usize,
    c: usize,
    hw: usize,
    log: bool,
    y: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    let mut dx = vec![0f32; y.len()];
    for i in 0..n {
        for p in 0..hw {
            let at = |ch: usize| (i * c + ch) * hw + p;
            if log {
                let s: f64 = (0..c).map(|ch| dy[at(ch)] as f64).sum();
                for ch in 0..c {
                    dx[at(ch)] = (dy[at(ch)] as f64 - (y[at(ch)] as f64).exp() * s) as f32;
                }
            } else {
                let s: f64 = (0..c).map(|ch| dy[at(ch)] as f64 * y[at(ch)] as f64).sum();
                for ch in 0..c {
                    dx[at(ch)] = (y[at(ch)] as f64 * (dy[at(ch)] as f64 - s)) as f32;
                }
            }
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels a test lets the convolutions use.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(super) enum Kernels {
        /// Each where it applies: Winograd, direct, im2col + GEMM.
        All,
        /// Direct where it applies, else im2col + GEMM.
        Direct,
        /// im2col + GEMM everywhere.
        Im2col,
    }

    thread_local! {
        /// Set by a test (read on the calling thread, before the parallel work).
        pub(super) static KERNELS: std::cell::Cell<Kernels> = const { std::cell::Cell::new(Kernels::All) };
        /// Whether the convolutions drop taps that read only padding
        /// ([`ConvGeom::trimmed`]); off to compare against the full kernel.
        pub(super) static TRIM: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
    }

    /// A window with two NaNs: PyTorch 2.15 routes the gradient to the last
    /// one (`max_pool2d(x, 2, return_indices=True)`, the same with stride 1
    /// and padding 1 at the centre, and `adaptive_max_pool2d(x, 1, ...)` on
    /// [[nan, nan], [1, 2]] all give index 1).
    #[test]
    fn max_pools_pick_the_last_nan_as_pytorch() {
        let x = [f32::NAN, f32::NAN, 1.0, 2.0];
        // Stride 2 without padding takes the fast path; stride 1 with
        // padding 1 the general one, whose centre window holds all four.
        for (pad, stride, out) in [(0, 2, 1), (1, 1, 3)] {
            let g = PoolGeom {
                h: 2,
                w: 2,
                oh: out,
                ow: out,
                kernel: (2, 2),
                stride: (stride, stride),
                padding: (pad, pad),
                dilation: (1, 1),
            };
            let (y, arg) = maxpool_forward(&g, 1, &x);
            let centre = out * out / 2;
            assert!(y[centre].is_nan());
            assert_eq!(arg[centre], 1);
        }
        let (y, arg) = adaptive_max_forward(1, (2, 2), (1, 1), &x);
        assert!(y[0].is_nan());
        assert_eq!(arg, [1]);
    }

    /// Gradients at a NaN input as PyTorch 2.15 gives them
    /// (`x = tensor([nan], requires_grad=True); f(x).backward(ones(1))`):
    /// relu, relu6, elu and hardswish pass it on, leaky relu scales it,
    /// hardsigmoid stops it; relu from its output too.
    #[test]
    fn activation_gradients_at_nan_follow_pytorch() {
        use crate::ir::F64;
        let nan = f32::NAN;
        for (a, want) in [
            (Activation::Relu, 1.0),
            (Activation::Relu6, 1.0),
            (Activation::LeakyRelu(F64(0.1)), 0.1),
            (Activation::Elu(F64(1.0)), 1.0),
            (Activation::Hardsigmoid, 0.0),
            (Activation::Hardswish, 1.0),
        ] {
            assert_eq!(activation_grad(a, nan), want, "{a:?}");
        }
        let mut dy = [1.0, 1.0, 1.0];
        relu_grad_in_place(&mut dy, &[nan, 0.0, 2.0]);
        assert_eq!(dy, [1.0, 0.0, 1.0]);
    }

    /// The 2×2 fast path (branch-free selects) against a plain loop with
    /// PyTorch's rule, on rows of 1 to 17 outputs with ties, NaNs (also two
    /// in one window) and -∞.
    #[test]
    fn maxpool_2x2_matches_a_plain_loop() {
        for (h, w) in [(20, 20), (6, 16), (9, 35), (4, 2)] {
            let (oh, ow) = (h / 2, w / 2);
            let g = PoolGeom {
                h,
                w,
                oh,
                ow,
                kernel: (2, 2),
                stride: (2, 2),
                padding: (0, 0),
                dilation: (1, 1),
            };
            let planes = 3;
            let mut x: Vec<f32> = (0..planes * h * w)
                .map(|i| ((i * 7919) % 13) as f32 - 6.0)
                .collect();
            for i in (0..x.len()).step_by(11) {
                x[i] = f32::NAN;
            }
            for i in (5..x.len()).step_by(23) {
                x[i] = f32::NEG_INFINITY;
            }
            // Two NaNs in one window: the last one in the window's order wins.
            (x[2], x[w + 3]) = (f32::NAN, f32::NAN);
            (x[2 * ow - 1], x[w + 2 * ow - 2]) = (f32::NAN, f32::NAN);
            let (y, arg) = maxpool_forward(&g, planes, &x);
            // The backward pass, with and without a relu folded in (a
            // maximum ≤ 0 passes nothing; a NaN one passes its gradient).
            let dy: Vec<f32> = (0..y.len()).map(|i| i as f32 + 1.0).collect();
            for relu in [false, true] {
                let dx = argmax_backward(planes, h * w, &arg, &dy, relu.then_some(&y[..]));
                let mut want = vec![0f32; x.len()];
                for (o, &i) in arg.iter().enumerate() {
                    if !(relu && y[o] <= 0.0) {
                        want[o / (oh * ow) * h * w + i as usize] += dy[o];
                    }
                }
                assert_eq!(dx, want, "{h}x{w} backward, relu {relu}");
            }
            for p in 0..planes {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let first = p * h * w + 2 * oy * w + 2 * ox;
                        let (mut best, mut at) = (x[first], first);
                        for i in [first + 1, first + w, first + w + 1] {
                            if x[i] > best || x[i].is_nan() {
                                (best, at) = (x[i], i);
                            }
                        }
                        let o = (p * oh + oy) * ow + ox;
                        assert_eq!(
                            arg[o] as usize,
                            at - p * h * w,
                            "{h}x{w} plane {p} ({oy}, {ox})"
                        );
                        assert_eq!(
                            y[o].to_bits(),
                            best.to_bits(),
                            "{h}x{w} plane {p} ({oy}, {ox})"
                        );
                    }
                }
            }
        }
    }

    /// Direct f64 convolution and its adjoints, element by element.
    /// `len` values in [−0.5, 0.5) from the xorshift generator in `seed`,
    /// which moves on, so successive calls draw successive values.
    fn xorshift(seed: &mut u64, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[allow(clippy::needless_range_loop)]
    fn naive(g: &ConvGeom, n: usize, x: &[f32], w: &[f32], dy: &[f32]) -> [Vec<f64>; 4] {
        let (cpg, opg) = (g.c / g.groups, g.oc / g.groups);
        let mut y = vec![0f64; n * g.oc * g.oh * g.ow];
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; w.len()];
        let mut db = vec![0f64; g.oc];
        for b in 0..n {
            for o in 0..g.oc {
                let gi = o / opg;
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let yi = ((b * g.oc + o) * g.oh + oy) * g.ow + ox;
                        db[o] += dy[yi] as f64;
                        for cl in 0..cpg {
                            let c = gi * cpg + cl;
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.sh + ky * g.dh) as i64 - g.pads[0] as i64;
                                    let ix = (ox * g.sw + kx * g.dw) as i64 - g.pads[2] as i64;
                                    let (Some(sy), Some(sx)) = (
                                        source_index(iy, g.h as i64, g.mode),
                                        source_index(ix, g.w as i64, g.mode),
                                    ) else {
                                        continue;
                                    };
                                    let xi = ((b * g.c + c) * g.h + sy) * g.w + sx;
                                    let wi = ((o * cpg + cl) * g.kh + ky) * g.kw + kx;
                                    y[yi] += x[xi] as f64 * w[wi] as f64;
                                    dx[xi] += dy[yi] as f64 * w[wi] as f64;
                                    dw[wi] += dy[yi] as f64 * x[xi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw, db]
    }

    fn close(what: &str, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a as f64 - b).abs() <= 1e-5 * scale,
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    /// The tiled im2col + GEMM kernels (bands of rows, several images per
    /// tile, the 8-wide spilling copies, the transposed weight gradient)
    /// against a direct convolution, over geometries that take each path.
    #[test]
    fn conv_kernels_match_a_direct_convolution() {
        use crate::ir::PaddingMode::*;
        // (c, h, w, oc, k, stride, dilation, pad, groups, mode, images)
        let cases = [
            (16, 24, 24, 32, (5, 5), (1, 1), (1, 1), 0, 1, Zeros, 3), // bands of rows
            (32, 10, 10, 64, (5, 5), (1, 1), (1, 1), 0, 1, Zeros, 5), // two images a tile
            (1, 28, 28, 16, (5, 5), (1, 1), (1, 1), 0, 1, Zeros, 9),  // many images a tile
            (8, 30, 30, 16, (3, 3), (1, 1), (1, 1), 1, 1, Reflect, 2), // padded bands
            (8, 23, 19, 12, (3, 5), (2, 1), (1, 2), 2, 4, Circular, 3),
            (6, 13, 40, 6, (3, 3), (1, 3), (2, 1), 1, 6, Replicate, 2),
            (3, 9, 7, 4, (2, 2), (1, 1), (1, 1), 0, 1, Zeros, 4), // short rows (ow < 8)
            (4, 12, 14, 16, (3, 3), (1, 1), (2, 2), 2, 1, Zeros, 2), // dilated, stride 1
            (5, 11, 37, 8, (3, 4), (1, 1), (1, 3), 1, 1, Replicate, 2), // rows over 4 vectors
            (16, 9, 11, 16, (3, 3), (1, 1), (1, 1), 1, 1, Reflect, 2), // direct dx, padded
            (32, 7, 6, 48, (3, 2), (1, 1), (1, 1), 2, 1, Zeros, 3), // direct dx, two lane blocks
            (16, 11, 9, 32, (5, 5), (1, 1), (1, 1), 2, 1, Zeros, 2), // Winograd, odd tiles
            (32, 8, 8, 16, (5, 5), (1, 1), (1, 1), 2, 1, Reflect, 3), // Winograd, reflect
        ];
        for (c, h, w, oc, (kh, kw), (sh, sw), (dh, dw), pad, groups, mode, n) in cases {
            let oh = (h + 2 * pad - dh * (kh - 1) - 1) / sh + 1;
            let ow = (w + 2 * pad - dw * (kw - 1) - 1) / sw + 1;
            let g = ConvGeom {
                c,
                h,
                w,
                oc,
                oh,
                ow,
                kh,
                kw,
                sh,
                sw,
                dh,
                dw,
                pads: [pad; 4],
                groups,
                mode,
            };
            let mut seed = 0x9e3779b97f4a7c15u64 ^ (c * 131 + h * 17 + oc) as u64;
            let mut rand = |len: usize| xorshift(&mut seed, len);
            let x = rand(n * c * h * w);
            let wt = rand(oc * (c / groups) * kh * kw);
            let dy = rand(n * oc * oh * ow);
            let [y, dx, dwt, db] = naive(&g, n, &x, &wt, &dy);
            // Every path where it applies: Winograd (5×5, 16k channels,
            // AVX-512), direct (stride 1, one group, 16k output channels,
            // AVX2) and im2col + GEMM.
            for kernels in [Kernels::All, Kernels::Direct, Kernels::Im2col] {
                KERNELS.with(|c| c.set(kernels));
                let what = format!(
                    "c{c} {h}x{w} oc{oc} k{kh}x{kw} s{sh}{sw} d{dh}{dw} p{pad} g{groups} {kernels:?}"
                );
                let y_got = conv_forward(&g, n, &x, &wt, None, false);
                close(&format!("{what} y"), &y_got, &y);
                let relu: Vec<f64> = y.iter().map(|&v| v.max(0.0)).collect();
                let relu_got = conv_forward(&g, n, &x, &wt, None, true);
                close(&format!("{what} relu"), &relu_got, &relu);
                // With the pool fused: the same values and indices as the
                // pool run on the relu's output.
                let bias: Vec<f32> = (0..oc).map(|o| o as f32 * 0.01 - 0.05).collect();
                let pg = PoolGeom {
                    h: oh,
                    w: ow,
                    oh: oh / 2,
                    ow: ow / 2,
                    kernel: (2, 2),
                    stride: (2, 2),
                    padding: (0, 0),
                    dilation: (1, 1),
                };
                let (want_y, want_arg) = maxpool_forward(
                    &pg,
                    n * oc,
                    &conv_forward(&g, n, &x, &wt, Some(&bias), true),
                );
                let (got_y, got_arg) =
                    conv_relu_maxpool_forward(&g, n, &x, &wt, Some(&bias), (oh / 2, ow / 2));
                assert_eq!(got_y, want_y, "{what} pooled");
                assert_eq!(got_arg, want_arg, "{what} pooled indices");
                let (gx, gw, gb) = conv_backward(&g, n, &x, &wt, &dy, true, false);
                close(&format!("{what} dx"), &gx.unwrap(), &dx);
                close(&format!("{what} dw"), &gw, &dwt);
                close(&format!("{what} db"), &gb, &db);
                // A relu's gradient folded in: dx where x > 0, else 0.
                let (gx, _, _) = conv_backward(&g, n, &x, &wt, &dy, true, true);
                let masked: Vec<f64> = dx
                    .iter()
                    .zip(&x)
                    .map(|(&d, &v)| if v <= 0.0 { 0.0 } else { d })
                    .collect();
                close(&format!("{what} dx through a relu"), &gx.unwrap(), &masked);
                // Without dx (a first layer) the weight gradient is the same.
                let (none, gw, _) = conv_backward(&g, n, &x, &wt, &dy, false, false);
                assert!(none.is_none());
                close(&format!("{what} dw without dx"), &gw, &dwt);
            }
            KERNELS.with(|c| c.set(Kernels::All));
        }
    }

    /// Convolutions on tiny maps, whose kernels have taps that read only
    /// padding ([`ConvGeom::trimmed`]): the trimmed kernel (and the larger
    /// backward tasks, [`ConvGeom::split_backward`]) against the f64 direct
    /// convolution and against the full kernel, on every path; the dropped
    /// taps' weight gradients exactly zero. Fails if a needed tap is dropped.
    #[test]
    fn convs_on_tiny_maps_drop_only_taps_that_read_padding() {
        use crate::ir::PaddingMode::*;
        // (c, h, w, oc, k, stride, dilation, pads, groups, mode, images, taps kept)
        #[allow(clippy::type_complexity)]
        #[rustfmt::skip]
        let cases: [(_, _, _, _, _, _, _, _, _, _, _, Option<[usize; 4]>); 10] = [
            // 1×1 map, 3×3 padding 1: the centre tap, a GEMM
            (32, 1, 1, 32, (3, 3), (1, 1), (1, 1), [1; 4], 1, Zeros, 5, Some([1, 2, 1, 2])),
            // more images than the backward's larger tasks, a partial one last
            (64, 1, 1, 48, (3, 3), (1, 1), (1, 1), [1; 4], 1, Zeros, 150, Some([1, 2, 1, 2])),
            // 2×2 map, stride 2: a 2×2 kernel without padding
            (16, 2, 2, 16, (3, 3), (2, 2), (1, 1), [1; 4], 1, Zeros, 3, Some([1, 3, 1, 3])),
            // the same, padding only before
            (8, 2, 2, 16, (3, 3), (2, 2), (1, 1), [1, 0, 1, 0], 1, Zeros, 2, Some([1, 3, 1, 3])),
            // 2×2 map, stride 1: every tap reads the image at some output
            (16, 2, 2, 32, (3, 3), (1, 1), (1, 1), [1; 4], 1, Zeros, 3, None),
            // 3×3 map, stride 2: likewise
            (8, 3, 3, 16, (3, 3), (2, 2), (1, 1), [1; 4], 1, Zeros, 2, None),
            // one row: only the middle row of taps
            (8, 1, 3, 16, (3, 3), (1, 1), (1, 1), [1; 4], 1, Zeros, 2, Some([1, 2, 0, 3])),
            // 5×5 padding 2 on 2×2: the inner 3×3, padding 1 (pooled too)
            (16, 2, 2, 16, (5, 5), (1, 1), (1, 1), [2; 4], 1, Zeros, 3, Some([1, 4, 1, 4])),
            // dilated, grouped, on 1×1
            (12, 1, 1, 12, (5, 5), (1, 1), (2, 2), [4; 4], 3, Zeros, 4, Some([2, 3, 2, 3])),
            // replicate padding reads the image: nothing dropped
            (4, 1, 1, 8, (3, 3), (1, 1), (1, 1), [1; 4], 1, Replicate, 2, None),
        ];
        for (c, h, w, oc, (kh, kw), (sh, sw), (dh, dw), pads, groups, mode, n, kept) in cases {
            let oh = (h + pads[0] + pads[1] - dh * (kh - 1) - 1) / sh + 1;
            let ow = (w + pads[2] + pads[3] - dw * (kw - 1) - 1) / sw + 1;
            let g = ConvGeom {
                c,
                h,
                w,
                oc,
                oh,
                ow,
                kh,
                kw,
                sh,
                sw,
                dh,
                dw,
                pads,
                groups,
                mode,
            };
            assert_eq!(g.trimmed().map(|(_, t)| t), kept, "{g:?}");
            if let Some((t, _)) = g.trimmed() {
                assert_eq!((t.oh, t.ow), (oh, ow));
                assert!(t.trimmed().is_none(), "trimming twice: {t:?}");
            }
            let mut seed = 0x2545f4914f6cdd1du64 ^ (c * 131 + h * 17 + oc + n) as u64;
            let mut rand = |len: usize| xorshift(&mut seed, len);
            let x = rand(n * c * h * w);
            let wt = rand(oc * (c / groups) * kh * kw);
            let dy = rand(n * oc * oh * ow);
            let bias: Vec<f32> = (0..oc).map(|o| o as f32 * 0.01 - 0.05).collect();
            let [y, dx, dwt, db] = naive(&g, n, &x, &wt, &dy);
            let yb: Vec<f64> = y
                .iter()
                .enumerate()
                .map(|(i, &v)| (v + bias[(i / (oh * ow)) % oc] as f64).max(0.0))
                .collect();
            for trim in [true, false] {
                TRIM.with(|c| c.set(trim));
                for kernels in [Kernels::All, Kernels::Direct, Kernels::Im2col] {
                    KERNELS.with(|c| c.set(kernels));
                    let what = format!("{g:?} trim {trim} {kernels:?}");
                    close(
                        &format!("{what} y"),
                        &conv_forward(&g, n, &x, &wt, None, false),
                        &y,
                    );
                    let got = conv_forward(&g, n, &x, &wt, Some(&bias), true);
                    close(&format!("{what} bias relu"), &got, &yb);
                    if oh >= 2 && ow >= 2 {
                        let pg = PoolGeom {
                            h: oh,
                            w: ow,
                            oh: oh / 2,
                            ow: ow / 2,
                            kernel: (2, 2),
                            stride: (2, 2),
                            padding: (0, 0),
                            dilation: (1, 1),
                        };
                        let want = maxpool_forward(&pg, n * oc, &got);
                        let pooled = conv_relu_maxpool_forward(
                            &g,
                            n,
                            &x,
                            &wt,
                            Some(&bias),
                            (oh / 2, ow / 2),
                        );
                        assert_eq!(pooled, want, "{what} pooled");
                    }
                    let (gx, gw, gb) = conv_backward(&g, n, &x, &wt, &dy, true, false);
                    close(&format!("{what} dx"), &gx.unwrap(), &dx);
                    close(&format!("{what} dw"), &gw, &dwt);
                    close(&format!("{what} db"), &gb, &db);
                    let (none, gw2, _) = conv_backward(&g, n, &x, &wt, &dy, false, false);
                    assert!(none.is_none());
                    close(&format!("{what} dw without dx"), &gw2, &dwt);
                    if let (true, Some([ky0, ky1, kx0, kx1])) = (trim, kept) {
                        for (i, &v) in gw.iter().enumerate() {
                            let (ky, kx) = ((i / kw) % kh, i % kw);
                            if !(ky0..ky1).contains(&ky) || !(kx0..kx1).contains(&kx) {
                                assert_eq!(v, 0.0, "{what} dw[{i}] of a dropped tap");
                            }
                        }
                    }
                }
            }
            KERNELS.with(|c| c.set(Kernels::All));
            TRIM.with(|c| c.set(true));
        }
    }
}
