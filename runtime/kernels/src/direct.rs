//! Direct convolution for stride 1, no dilation, one group and output
//! channels in multiples of 16: no im2col matrix at all.
//!
//! Output channels run along the vector lanes (two 8-lane AVX2 registers, 16
//! channels) and a block of up to six output pixels of one row is kept in
//! registers (12 accumulators); each kernel tap loads two weight vectors and
//! broadcasts one input value per pixel. The input is read where it lies
//! (padded beforehand by the caller when the convolution pads), so nothing
//! is expanded: im2col wrote each input value K·K times and was, with its
//! adjoint, a sixth of a training step of mnist_cnn.
//!
//! Layouts: the input image `[C][HP][WP]` (already padded), weights
//! tap-major `[C·KH·KW][OC]` ([`tap_major`]), outputs and output gradients
//! pixel-major `[OH·OW][OC]`. Only x86-64 with AVX2 and FMA; [`available`]
//! says whether the CPU has them, and callers keep their im2col path for
//! the rest. Where the CPU has AVX-512F ([`avx512`]) the forward and
//! weight-gradient kernels run 16-lane variants with up to 24 accumulators.

/// A convolution's geometry on its padded input.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// Input channels.
    pub c: usize,
    /// Padded input height and width.
    pub hp: usize,
    pub wp: usize,
    /// Output channels (a multiple of 16).
    pub oc: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
}

impl Geometry {
    fn check(&self, x: &[f32], w_or_dw: &[f32], pm: &[f32]) {
        assert!(self.oc.is_multiple_of(16) && self.oc > 0);
        assert!(self.oh + self.kh - 1 <= self.hp && self.ow + self.kw - 1 <= self.wp);
        assert!(x.len() >= self.c * self.hp * self.wp);
        assert!(w_or_dw.len() >= self.c * self.kh * self.kw * self.oc);
        assert!(pm.is_empty() || pm.len() >= self.oh * self.ow * self.oc);
    }
}

/// Whether this CPU runs the direct kernels.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX-512 variants (and the Winograd kernels) run: the CPU has
/// AVX-512F, the environment does not say `CNNC_AVX512=0` (for A/B
/// benchmarks of one binary), and [`set_avx512`] did not switch them off
/// on this thread.
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ENV_OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let env_off =
            *ENV_OFF.get_or_init(|| std::env::var_os("CNNC_AVX512").is_some_and(|v| v == "0"));
        !env_off
            && AVX512_ON.with(|on| on.get())
            && std::arch::is_x86_feature_detected!("avx512f")
            && available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

thread_local! {
    static AVX512_ON: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Switches the AVX-512 variants on or off for the calls this thread makes
/// (tests run both; the AVX2 ones are what a CPU without AVX-512 gets).
/// Per thread, so that tests running beside each other in one process do
/// not switch each other's kernels mid-call; work the call hands to other
/// threads (rayon) sees their setting.
pub fn set_avx512(on: bool) {
    AVX512_ON.with(|c| c.set(on))
}

/// PyTorch's `[OC][C][KH][KW]` weights as `[C·KH·KW][OC]`.
pub fn tap_major(w: &[f32], oc: usize, taps: usize) -> Vec<f32> {
    let mut t = vec![0f32; oc * taps];
    for o in 0..oc {
        for q in 0..taps {
            t[q * oc + o] = w[o * taps + q];
        }
    }
    t
}

/// `y[p][o] = Σ_taps x · w` for every output pixel of one image (no bias).
/// Panics when the CPU lacks AVX2/FMA ([`available`]) or a slice is short.
pub fn forward(g: &Geometry, x: &[f32], w_taps: &[f32], y: &mut [f32]) {
    forward_rows(g, x, w_taps, y, 0, g.oh)
}

/// [`forward`] for output rows `oy0..oy1` only, written from the start of
/// `y` (`(oy1 − oy0)·OW` pixels).
pub fn forward_rows(
    g: &Geometry,
    x: &[f32],
    w_taps: &[f32],
    y: &mut [f32],
    oy0: usize,
    oy1: usize,
) {
    assert!(oy0 <= oy1 && oy1 <= g.oh);
    g.check(x, w_taps, &[]);
    assert!(y.len() >= (oy1 - oy0) * g.ow * g.oc);
    assert!(available(), "direct convolution needs AVX2 and FMA");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX2 and FMA (asserted), and the asserts bound
    // every access: pixels (oy, ox + p) with oy < OH, ox + p < OW read input
    // rows oy + ky < HP at columns ox + p + kx < WP, weight rows < C·KH·KW,
    // and write output rows < oy1 − oy0, 16 channels from a multiple of 16
    // below OC.
    unsafe {
        if avx512() {
            avx512::forward(g, x.as_ptr(), w_taps.as_ptr(), y.as_mut_ptr(), oy0, oy1)
        } else {
            avx2::forward(g, x.as_ptr(), w_taps.as_ptr(), y.as_mut_ptr(), oy0, oy1)
        }
    }
}

/// `dw[tap][o] += Σ_p x · dy[p][o]` over one image: the weight gradient,
/// tap-major. Panics as [`forward`].
pub fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32], dw_taps: &mut [f32]) {
    g.check(x, dw_taps, dy);
    assert!(available(), "direct convolution needs AVX2 and FMA");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `forward`, with the roles of the weights and the output
    // taken by the weight gradient and the output gradient.
    unsafe {
        if avx512() {
            avx512::weight_grad(g, x.as_ptr(), dy.as_ptr(), dw_taps.as_mut_ptr())
        } else {
            avx2::weight_grad(g, x.as_ptr(), dy.as_ptr(), dw_taps.as_mut_ptr())
        }
    }
}

/// PyTorch's `[OC][C][KH][KW]` weights as `[KH·KW][OC][C]`: the layout of
/// [`input_grad`], input channels along the lanes.
pub fn channel_minor(w: &[f32], oc: usize, c: usize, kk: usize) -> Vec<f32> {
    let mut t = vec![0f32; oc * c * kk];
    for o in 0..oc {
        for ci in 0..c {
            for q in 0..kk {
                t[(q * oc + o) * c + ci] = w[(o * c + ci) * kk + q];
            }
        }
    }
    t
}

/// `dx[(oy + ky)·WP + ox + kx][c] += Σ_o w[ky][kx][o][c] · dy[oy·OW + ox][o]`
/// over one image: the input gradient, pixel-major on the padded input
/// (`[HP·WP][C]`, accumulated: the caller zeroes it), from the output
/// gradient pixel-major (`[OH·OW][OC]`) and the weights as
/// [`channel_minor`]. Needs C a multiple of 16 (OC any); panics as
/// [`forward`].
///
/// Each output-gradient pixel is scattered to the K·K input pixels it came
/// from, so no multiply-add is spent on the zeros that a transposed
/// convolution over the padded gradient would read, and no column matrix
/// is written and added back (col2im).
pub fn input_grad(g: &Geometry, dy: &[f32], w_cm: &[f32], dx: &mut [f32]) {
    assert!(g.c.is_multiple_of(16) && g.c > 0 && g.oc > 0);
    assert!(g.oh + g.kh - 1 <= g.hp && g.ow + g.kw - 1 <= g.wp);
    assert!(dy.len() >= g.oh * g.ow * g.oc);
    assert!(w_cm.len() >= g.kh * g.kw * g.oc * g.c);
    assert!(dx.len() >= g.hp * g.wp * g.c);
    assert!(available(), "direct convolution needs AVX2 and FMA");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX2 and FMA (asserted), and the asserts bound
    // every access: output pixels (oy, ox + p) below OH·OW read channels
    // below OC, weights rows (ky·KW + kx)·OC + o below KH·KW·OC with 16
    // channels from a multiple of 16 below C, and input pixels
    // (oy + ky, ox + p + kx) inside HP×WP.
    unsafe {
        avx2::input_grad(g, dy.as_ptr(), w_cm.as_ptr(), dx.as_mut_ptr())
    }
}

/// Pixel-major `[P][OC]` to planes `[OC][P]`, adding `bias[o]` and then,
/// with `relu`, `max(·, 0)` (NaN kept): the outputs of [`forward`] as NCHW.
/// 8×8 register transposes on AVX2 (where [`available`]), plain loops
/// elsewhere and for the last `P mod 8` pixels.
pub fn to_planes(
    pm: &[f32],
    oc: usize,
    pixels: usize,
    planes: &mut [f32],
    bias: Option<&[f32]>,
    relu: bool,
) {
    assert!(pm.len() >= pixels * oc && planes.len() >= pixels * oc);
    assert!(bias.is_none_or(|b| b.len() >= oc));
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if oc.is_multiple_of(8) && available() {
        done = pixels - pixels % 8;
        // SAFETY: AVX2 (checked); the asserts bound every access of the
        // 8×8 blocks: pixels < `done` ≤ P, channels < OC.
        unsafe {
            avx2::to_planes(
                pm.as_ptr(),
                oc,
                pixels,
                done,
                planes.as_mut_ptr(),
                bias,
                relu,
            )
        };
    }
    for o in 0..oc {
        let b = bias.map_or(0.0, |b| b[o]);
        for p in done..pixels {
            let t = pm[p * oc + o] + b;
            planes[o * pixels + p] = if relu && t < 0.0 { 0.0 } else { t };
        }
    }
}

/// Planes `[OC][P]` to pixel-major `[P][OC]` (the output gradient for
/// [`weight_grad`]); as [`to_planes`] without bias.
pub fn to_pixel_major(planes: &[f32], oc: usize, pixels: usize, pm: &mut [f32]) {
    assert!(pm.len() >= pixels * oc && planes.len() >= pixels * oc);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if oc.is_multiple_of(8) && available() {
        done = pixels - pixels % 8;
        // SAFETY: as in `to_planes`.
        unsafe { avx2::to_pixel_major(planes.as_ptr(), oc, pixels, done, pm.as_mut_ptr()) };
    }
    for p in done..pixels {
        for o in 0..oc {
            pm[p * oc + o] = planes[o * pixels + p];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Geometry;
    use std::arch::x86_64::*;

    /// Calls `$f::<n>($args)` for a block size n of 1 to 6 (larger: 6).
    macro_rules! up_to_6 {
        ($n:expr, $f:ident, ($($arg:expr),*)) => {
            match $n {
                6 => $f::<6>($($arg),*),
                5 => $f::<5>($($arg),*),
                4 => $f::<4>($($arg),*),
                3 => $f::<3>($($arg),*),
                2 => $f::<2>($($arg),*),
                _ => $f::<1>($($arg),*),
            }
        };
    }

    /// Transposes 8 rows of 8 floats.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn to_planes(
        pm: *const f32,
        oc: usize,
        pixels: usize,
        done: usize,
        planes: *mut f32,
        bias: Option<&[f32]>,
        relu: bool,
    ) {
        let zero = _mm256_setzero_ps();
        for p0 in (0..done).step_by(8) {
            for o0 in (0..oc).step_by(8) {
                let mut r = [zero; 8];
                for (i, v) in r.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(pm.add((p0 + i) * oc + o0));
                }
                for (j, v) in transpose8(r).into_iter().enumerate() {
                    let b = bias.map_or(0.0, |b| b[o0 + j]);
                    let mut v = _mm256_add_ps(v, _mm256_set1_ps(b));
                    if relu {
                        // max(0, v) returns v when v is NaN: NaN kept.
                        v = _mm256_max_ps(zero, v);
                    }
                    _mm256_storeu_ps(planes.add((o0 + j) * pixels + p0), v);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn to_pixel_major(
        planes: *const f32,
        oc: usize,
        pixels: usize,
        done: usize,
        pm: *mut f32,
    ) {
        for p0 in (0..done).step_by(8) {
            for o0 in (0..oc).step_by(8) {
                let mut r = [_mm256_setzero_ps(); 8];
                for (i, v) in r.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(planes.add((o0 + i) * pixels + p0));
                }
                for (j, v) in transpose8(r).into_iter().enumerate() {
                    _mm256_storeu_ps(pm.add((p0 + j) * oc + o0), v);
                }
            }
        }
    }

    /// Output pixels per register block.
    const PIXELS: usize = 6;
    /// Kernel taps (along x) per register block of the weight gradient.
    const TAPS: usize = 6;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward(
        g: &Geometry,
        x: *const f32,
        w: *const f32,
        y: *mut f32,
        oy0: usize,
        oy1: usize,
    ) {
        // Output rows from oy0 land at the start of `y`.
        let y = y.wrapping_sub(oy0 * g.ow * g.oc);
        // Blocks of equal size (20 pixels: 5+5+5+5, not 6+6+6+2).
        let per = g.ow.div_ceil(g.ow.div_ceil(PIXELS));
        // Row by row, every channel block of a row before the next row: the
        // KH input rows a row reads stay in cache across the blocks (on a
        // 224×224 map the whole input does not).
        for oy in oy0..oy1 {
            for ob in (0..g.oc).step_by(16) {
                let mut ox = 0;
                while ox < g.ow {
                    let n = (g.ow - ox).min(per);
                    up_to_6!(n, block, (g, x, w, y, ob, oy, ox));
                    ox += n;
                }
            }
        }
    }

    /// Output channels ob..ob + 16 of pixels (oy, ox..ox + P).
    #[inline(always)]
    unsafe fn block<const P: usize>(
        g: &Geometry,
        x: *const f32,
        w: *const f32,
        y: *mut f32,
        ob: usize,
        oy: usize,
        ox: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; P];
        let plane = g.hp * g.wp;
        for c in 0..g.c {
            for ky in 0..g.kh {
                let row = x.add(c * plane + (oy + ky) * g.wp + ox);
                let wrow = w.add((c * g.kh + ky) * g.kw * g.oc + ob);
                for kx in 0..g.kw {
                    let w0 = _mm256_loadu_ps(wrow.add(kx * g.oc));
                    let w1 = _mm256_loadu_ps(wrow.add(kx * g.oc + 8));
                    for (p, a) in acc.iter_mut().enumerate() {
                        let v = _mm256_broadcast_ss(&*row.add(p + kx));
                        a[0] = _mm256_fmadd_ps(w0, v, a[0]);
                        a[1] = _mm256_fmadd_ps(w1, v, a[1]);
                    }
                }
            }
        }
        for (p, a) in acc.iter().enumerate() {
            // `y` is offset back by oy0 rows: this lands inside the caller's rows.
            let out = y.wrapping_add((oy * g.ow + ox + p) * g.oc + ob);
            _mm256_storeu_ps(out, a[0]);
            _mm256_storeu_ps(out.add(8), a[1]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weight_grad(g: &Geometry, x: *const f32, dy: *const f32, dw: *mut f32) {
        for ob in (0..g.oc).step_by(16) {
            for c in 0..g.c {
                for ky in 0..g.kh {
                    let mut kx = 0;
                    while kx < g.kw {
                        let n = (g.kw - kx).min(TAPS);
                        up_to_6!(n, grad_block, (g, x, dy, dw, ob, c, ky, kx));
                        kx += n;
                    }
                }
            }
        }
    }

    /// Taps (c, ky, kx0..kx0 + T), output channels ob..ob + 16, summed over
    /// every output pixel.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn grad_block<const T: usize>(
        g: &Geometry,
        x: *const f32,
        dy: *const f32,
        dw: *mut f32,
        ob: usize,
        c: usize,
        ky: usize,
        kx0: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; T];
        let base = x.add(c * g.hp * g.wp + ky * g.wp + kx0);
        for oy in 0..g.oh {
            let row = base.add(oy * g.wp);
            let grow = dy.add(oy * g.ow * g.oc + ob);
            for ox in 0..g.ow {
                let d0 = _mm256_loadu_ps(grow.add(ox * g.oc));
                let d1 = _mm256_loadu_ps(grow.add(ox * g.oc + 8));
                for (t, a) in acc.iter_mut().enumerate() {
                    let v = _mm256_broadcast_ss(&*row.add(ox + t));
                    a[0] = _mm256_fmadd_ps(d0, v, a[0]);
                    a[1] = _mm256_fmadd_ps(d1, v, a[1]);
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            let out = dw.add(((c * g.kh + ky) * g.kw + kx0 + t) * g.oc + ob);
            _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), a[0]));
            _mm256_storeu_ps(out.add(8), _mm256_add_ps(_mm256_loadu_ps(out.add(8)), a[1]));
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn input_grad(g: &Geometry, dy: *const f32, w: *const f32, dx: *mut f32) {
        let per = g.ow.div_ceil(g.ow.div_ceil(PIXELS));
        // kx outside ky: consecutive blocks write different input rows, so
        // a block never waits for the stores of the one before it (on a
        // 6-pixel row, neighbouring kx would overlap in 5 of 6 pixels).
        for cb in (0..g.c).step_by(16) {
            for oy in 0..g.oh {
                for kx in 0..g.kw {
                    for ky in 0..g.kh {
                        let mut ox = 0;
                        while ox < g.ow {
                            let n = (g.ow - ox).min(per);
                            up_to_6!(n, scatter_block, (g, dy, w, dx, cb, oy, ox, ky, kx));
                            ox += n;
                        }
                    }
                }
            }
        }
    }

    /// Input channels cb..cb + 16 of the input pixels that tap (ky, kx)
    /// of output pixels (oy, ox..ox + P) read, summed over the output
    /// channels.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn scatter_block<const P: usize>(
        g: &Geometry,
        dy: *const f32,
        w: *const f32,
        dx: *mut f32,
        cb: usize,
        oy: usize,
        ox: usize,
        ky: usize,
        kx: usize,
    ) {
        let out = dx.add(((oy + ky) * g.wp + ox + kx) * g.c + cb);
        let mut acc = [[_mm256_setzero_ps(); 2]; P];
        for (p, a) in acc.iter_mut().enumerate() {
            a[0] = _mm256_loadu_ps(out.add(p * g.c));
            a[1] = _mm256_loadu_ps(out.add(p * g.c + 8));
        }
        let wrow = w.add((ky * g.kw + kx) * g.oc * g.c + cb);
        let grow = dy.add((oy * g.ow + ox) * g.oc);
        for o in 0..g.oc {
            let w0 = _mm256_loadu_ps(wrow.add(o * g.c));
            let w1 = _mm256_loadu_ps(wrow.add(o * g.c + 8));
            for (p, a) in acc.iter_mut().enumerate() {
                let v = _mm256_broadcast_ss(&*grow.add(p * g.oc + o));
                a[0] = _mm256_fmadd_ps(w0, v, a[0]);
                a[1] = _mm256_fmadd_ps(w1, v, a[1]);
            }
        }
        for (p, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(p * g.c), a[0]);
            _mm256_storeu_ps(out.add(p * g.c + 8), a[1]);
        }
    }
}

/// The forward and weight-gradient kernels on AVX-512 (16 lanes, 32
/// registers): up to 24 accumulators a block instead of 12, each broadcast
/// shared by up to four vectors, and the weight gradient's taps blocked
/// across rows (12 of a 5×5 kernel, not 5). One Zen 4 core (512-bit
/// instructions on 256-bit units; FMA peak 116 GFLOP/s), 64 images, best
/// of 5: mnist's conv2 forward 98 → 111 GFLOP/s, its weight gradient 106 →
/// 114, conv3's 107 → 117 and 104 → 106. The input gradient stays on AVX2:
/// its AVX-512 form (two input rows a block) measured 2% slower.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Geometry;
    use std::arch::x86_64::*;

    /// The most pixels (or taps) a block of `vb` vectors holds: 24 accumulators.
    fn most(vb: usize) -> usize {
        if vb == 4 {
            6
        } else {
            12
        }
    }

    /// Vectors per block for `q` 16-lane channel blocks: 4, 2 or 1 dividing
    /// q; 4 only on narrow rows (fewer pixels, more channels per block).
    fn vectors(q: usize, narrow: bool) -> usize {
        if q.is_multiple_of(4) && narrow {
            4
        } else if q.is_multiple_of(2) {
            2
        } else {
            1
        }
    }

    /// Cuts `len` into runs of at most `most` of near-equal size.
    fn run(len: usize, most: usize) -> usize {
        len.div_ceil(len.div_ceil(most))
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn forward(
        g: &Geometry,
        x: *const f32,
        w: *const f32,
        y: *mut f32,
        oy0: usize,
        oy1: usize,
    ) {
        let y = y.wrapping_sub(oy0 * g.ow * g.oc);
        let vb = vectors(g.oc / 16, g.ow < 10);
        let per = run(g.ow, most(vb));
        for oy in oy0..oy1 {
            for ob in (0..g.oc).step_by(16 * vb) {
                let mut ox = 0;
                while ox < g.ow {
                    let n = (g.ow - ox).min(per);
                    blocks!(vb, n, block, (g, x, w, y, ob, oy, ox));
                    ox += n;
                }
            }
        }
    }

    /// Output channels ob..ob + 16·V of pixels (oy, ox..ox + P).
    #[inline(always)]
    unsafe fn block<const V: usize, const P: usize>(
        g: &Geometry,
        x: *const f32,
        w: *const f32,
        y: *mut f32,
        ob: usize,
        oy: usize,
        ox: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; P];
        let plane = g.hp * g.wp;
        for c in 0..g.c {
            for ky in 0..g.kh {
                let row = x.add(c * plane + (oy + ky) * g.wp + ox);
                let wrow = w.add((c * g.kh + ky) * g.kw * g.oc + ob);
                for kx in 0..g.kw {
                    let mut wv = [_mm512_setzero_ps(); V];
                    for (j, v) in wv.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(wrow.add(kx * g.oc + 16 * j));
                    }
                    for (p, a) in acc.iter_mut().enumerate() {
                        let v = _mm512_set1_ps(*row.add(p + kx));
                        for j in 0..V {
                            a[j] = _mm512_fmadd_ps(wv[j], v, a[j]);
                        }
                    }
                }
            }
        }
        for (p, a) in acc.iter().enumerate() {
            let out = y.wrapping_add((oy * g.ow + ox + p) * g.oc + ob);
            for (j, v) in a.iter().enumerate() {
                _mm512_storeu_ps(out.add(16 * j), *v);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn weight_grad(g: &Geometry, x: *const f32, dy: *const f32, dw: *mut f32) {
        // Blocks of taps in (c, ky, kx) order, across rows and channels, so
        // a 5×5 kernel fills its registers (12 taps, not the 5 of a row).
        let vb = vectors(g.oc / 16, true);
        let taps = g.c * g.kh * g.kw;
        let per = run(taps, most(vb));
        for ob in (0..g.oc).step_by(16 * vb) {
            let mut t0 = 0;
            while t0 < taps {
                let n = (taps - t0).min(per);
                blocks!(vb, n, grad_block, (g, x, dy, dw, ob, t0));
                t0 += n;
            }
        }
    }

    /// Taps t0..t0 + T, output channels ob..ob + 16·V, summed over every
    /// output pixel.
    #[inline(always)]
    unsafe fn grad_block<const V: usize, const T: usize>(
        g: &Geometry,
        x: *const f32,
        dy: *const f32,
        dw: *mut f32,
        ob: usize,
        t0: usize,
    ) {
        let kk = g.kh * g.kw;
        let mut off = [0usize; T];
        for (t, o) in off.iter_mut().enumerate() {
            let q = t0 + t;
            *o = (q / kk) * g.hp * g.wp + (q % kk / g.kw) * g.wp + q % g.kw;
        }
        let mut acc = [[_mm512_setzero_ps(); V]; T];
        for oy in 0..g.oh {
            let row = x.add(oy * g.wp);
            let grow = dy.add(oy * g.ow * g.oc + ob);
            for ox in 0..g.ow {
                let mut d = [_mm512_setzero_ps(); V];
                for (j, v) in d.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(grow.add(ox * g.oc + 16 * j));
                }
                for (t, a) in acc.iter_mut().enumerate() {
                    let v = _mm512_set1_ps(*row.add(ox + off[t]));
                    for j in 0..V {
                        a[j] = _mm512_fmadd_ps(d[j], v, a[j]);
                    }
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            let out = dw.add((t0 + t) * g.oc + ob);
            for (j, v) in a.iter().enumerate() {
                let o = out.add(16 * j);
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), *v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_data as data;
    use super::*;

    /// The kernels against element-by-element f64 sums, over shapes with
    /// ragged pixel and tap blocks.
    #[test]
    fn direct_kernels_match_plain_sums() {
        if !available() {
            return;
        }
        // Both variants where the CPU has AVX-512 (the switch is this
        // thread's: tests beside this one keep theirs).
        let wide = avx512();
        for on in [false, true] {
            set_avx512(on);
            check_kernels();
        }
        set_avx512(true);
        assert_eq!(avx512(), wide);
    }

    fn check_kernels() {
        for (c, hp, wp, oc, kh, kw) in [
            (16, 24, 24, 32, 5, 5),
            (3, 9, 13, 16, 3, 7),
            (2, 5, 6, 48, 1, 1),
            (32, 10, 10, 64, 5, 5),
            (16, 6, 13, 48, 3, 2),
            (48, 7, 16, 64, 3, 3),
            (64, 6, 9, 32, 2, 3),
            (16, 30, 30, 16, 3, 3),
        ] {
            let g = Geometry {
                c,
                hp,
                wp,
                oc,
                oh: hp - kh + 1,
                ow: wp - kw + 1,
                kh,
                kw,
            };
            let taps = c * kh * kw;
            let (x, w, dy) = (
                data(c * hp * wp, 1),
                data(oc * taps, 2),
                data(g.oh * g.ow * oc, 3),
            );
            let wt = tap_major(&w, oc, taps);
            let mut y = vec![0f32; g.oh * g.ow * oc];
            forward(&g, &x, &wt, &mut y);
            // Bands of rows give the same pixels.
            for (oy0, oy1) in [(0, 1), (1, g.oh), (g.oh / 2, g.oh)] {
                let mut band = vec![0f32; (oy1 - oy0) * g.ow * oc];
                forward_rows(&g, &x, &wt, &mut band, oy0, oy1);
                assert_eq!(band[..], y[oy0 * g.ow * oc..oy1 * g.ow * oc]);
            }
            // The layout moves: planes with bias and relu, and back.
            let bias = data(oc, 4);
            let mut planes = vec![0f32; g.oh * g.ow * oc];
            to_planes(&y, oc, g.oh * g.ow, &mut planes, Some(&bias), true);
            let mut back = vec![0f32; g.oh * g.ow * oc];
            to_pixel_major(&planes, oc, g.oh * g.ow, &mut back);
            for p in 0..g.oh * g.ow {
                for o in 0..oc {
                    let want = (y[p * oc + o] + bias[o]).max(0.0);
                    assert_eq!(planes[o * g.oh * g.ow + p], want, "planes {o} {p}");
                    assert_eq!(back[p * oc + o], want, "back {o} {p}");
                }
            }
            if c % 16 == 0 {
                let mut dx = data(hp * wp * c, 5);
                let start = dx.clone();
                input_grad(&g, &dy, &channel_minor(&w, oc, c, kh * kw), &mut dx);
                for iy in 0..hp {
                    for ix in 0..wp {
                        for ci in 0..c {
                            let mut want = start[(iy * wp + ix) * c + ci] as f64;
                            for ky in 0..kh.min(iy + 1) {
                                for kx in 0..kw.min(ix + 1) {
                                    let (oy, ox) = (iy - ky, ix - kx);
                                    if oy >= g.oh || ox >= g.ow {
                                        continue;
                                    }
                                    for o in 0..oc {
                                        want += w[((o * c + ci) * kh + ky) * kw + kx] as f64
                                            * dy[(oy * g.ow + ox) * oc + o] as f64;
                                    }
                                }
                            }
                            let got = dx[(iy * wp + ix) * c + ci] as f64;
                            assert!(
                                (got - want).abs() < 1e-4,
                                "dx {iy} {ix} {ci}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
            let mut dw = vec![0.25f32; taps * oc];
            weight_grad(&g, &x, &dy, &mut dw);
            for o in 0..oc {
                for q in 0..taps {
                    let (ci, ky, kx) = (q / (kh * kw), q / kw % kh, q % kw);
                    let mut want = 0.25f64;
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            want += x[(ci * hp + oy + ky) * wp + ox + kx] as f64
                                * dy[(oy * g.ow + ox) * oc + o] as f64;
                        }
                    }
                    let got = dw[q * oc + o] as f64;
                    assert!((got - want).abs() < 1e-4, "dw {o} {q}: {got} vs {want}");
                }
                for p in 0..g.oh * g.ow {
                    let (oy, ox) = (p / g.ow, p % g.ow);
                    let mut want = 0f64;
                    for q in 0..taps {
                        let (ci, ky, kx) = (q / (kh * kw), q / kw % kh, q % kw);
                        want +=
                            x[(ci * hp + oy + ky) * wp + ox + kx] as f64 * w[o * taps + q] as f64;
                    }
                    let got = y[p * oc + o] as f64;
                    assert!((got - want).abs() < 1e-4, "y {o} {p}: {got} vs {want}");
                }
            }
        }
    }
}
