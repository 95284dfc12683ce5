//! Depthwise convolution (groups = input channels = output channels, zero
//! padding, any kernel, stride and dilation), one (image, channel) plane at
//! a time: no im2col matrix and no GEMM, whose K would be the 9 or 25 taps.
//!
//! The input plane is first laid out by [`split_phases`] as SH·SW phase
//! planes: phase (a, b) holds the zero-padded input's rows ≡ a (mod SH) and
//! columns ≡ b (mod SW), each row L entries long. Output pixel (oy, ox) reads
//! for tap (ky, kx) the entry (oy + ⌊ky·DH/SH⌋, ox + ⌊kx·DW/SW⌋) of phase
//! ((ky·DH) mod SH, (kx·DW) mod SW). Numbered t = oy·L + ox, the output
//! pixels of the whole plane then read, for each tap, the contiguous run
//! starting t + ⌊ky·DH/SH⌋·L + ⌊kx·DW/SW⌋ of one phase: the plane is one
//! long row (OH·L outputs, the last L − OW of each row computed and
//! dropped) whatever the stride and dilation. The kernel keeps a chunk of
//! up to 64 outputs in registers (chunks of 64, then one each of 32, 16, …
//! 1, so nothing is computed twice and nothing is read past the layout) and
//! adds every tap's weight times a run of inputs; the output rows are then
//! copied out. A 7×7 map with a 5×5 kernel is 77 outputs in chunks of 64,
//! 8, 4 and 1: computed row by row (4, 2 and 1 seven times, as before
//! 2026-12-03) EfficientNet's small maps ran at a few per cent of the
//! CPU's peak.
//!
//! The chunk loop is plain Rust over fixed-size arrays; the x86-64 build
//! compiles it again for AVX2+FMA and for AVX-512 and picks one at run time
//! ([`super::direct::available`], [`super::direct::avx512`]), as `im2col`
//! and the activations do.

/// One plane's geometry: input H×W, output OH×OW, kernel, stride, zero
/// padding and dilation (each (rows, columns)).
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub dilation: (usize, usize),
}

impl Geometry {
    /// Whether the output fits the padded input (every output pixel's
    /// window lies inside it), with nothing zero-sized: what the kernel
    /// needs to stay in bounds. A plan from the compiler always passes.
    pub fn valid(&self) -> bool {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (dh, dw) = self.dilation;
        let fits = |o: usize, s: usize, k: usize, d: usize, i: usize, p: usize| {
            (o - 1) * s + (k - 1) * d < i + 2 * p
        };
        [self.h, self.w, self.oh, self.ow, kh, kw, sh, sw, dh, dw]
            .iter()
            .all(|&v| v > 0)
            && fits(self.oh, sh, kh, dh, self.h, self.pad.0)
            && fits(self.ow, sw, kw, dw, self.w, self.pad.1)
    }

    /// Entries in a row of a phase plane: the output row and the furthest
    /// column offset a tap adds.
    fn row_len(&self) -> usize {
        self.ow + (self.kernel.1 - 1) * self.dilation.1 / self.stride.1
    }

    /// Rows of a phase plane: the output rows, the furthest row offset a
    /// tap adds, and one row of zeros that the last row's dropped columns
    /// read into.
    fn phase_rows(&self) -> usize {
        self.oh + (self.kernel.0 - 1) * self.dilation.0 / self.stride.0 + 1
    }

    /// Floats of the phase planes.
    fn input_len(&self) -> usize {
        self.stride.0 * self.stride.1 * self.phase_rows() * self.row_len()
    }

    /// Floats of scratch that [`split_phases`] and [`plane`] use: the
    /// phase planes and the output with its rows L long.
    pub fn scratch_len(&self) -> usize {
        self.input_len() + self.oh * self.row_len()
    }
}

/// Lays out input plane `x` (H×W) in `s` as the SH·SW phase planes of the
/// zero-padded input (see the module's documentation): entry (r, e) of
/// phase (a, b) is padded row r·SH + a, column e·SW + b, zero outside the map.
pub fn split_phases(g: &Geometry, x: &[f32], s: &mut [f32]) {
    let (sh, sw) = g.stride;
    let (ph, pw) = g.pad;
    let (rows, len) = (g.phase_rows(), g.row_len());
    let s = &mut s[..g.input_len()];
    for (phase, plane) in s.chunks_exact_mut(rows * len).enumerate() {
        let (a, b) = (phase / sw, phase % sw);
        for (r, row) in plane.chunks_exact_mut(len).enumerate() {
            let Some(src) = (r * sh + a)
                .checked_sub(ph)
                .filter(|&y| y < g.h)
                .map(|y| &x[y * g.w..(y + 1) * g.w])
            else {
                row.fill(0.0);
                continue;
            };
            // Entry e is input column e·SW + b − PW: the entries e0..e1
            // inside the row, zeros on either side.
            let e0 = (pw.saturating_sub(b)).div_ceil(sw).min(len);
            let e1 = ((g.w + pw).saturating_sub(b)).div_ceil(sw).clamp(e0, len);
            row[..e0].fill(0.0);
            row[e1..].fill(0.0);
            let first = e0 * sw + b - pw;
            if e1 == e0 {
                continue;
            }
            if sw == 1 {
                row[e0..e1].copy_from_slice(&src[first..first + (e1 - e0)]);
            } else {
                for (d, &v) in row[e0..e1].iter_mut().zip(src[first..].iter().step_by(sw)) {
                    *d = v;
                }
            }
        }
    }
}

/// `out[oy·OW + ox] = bias + Σ_taps w · x` for the whole output plane, from
/// the input laid out by [`split_phases`] and the channel's KH·KW weights
/// (the output is computed into the end of the scratch, then copied).
/// Panics when the geometry is not [`Geometry::valid`] or a slice is short.
pub fn plane(g: &Geometry, s: &mut [f32], w: &[f32], bias: f32, out: &mut [f32]) {
    assert!(g.valid(), "depthwise geometry {g:?} does not fit");
    let (s, w, out) = (
        &mut s[..g.scratch_len()],
        &w[..g.kernel.0 * g.kernel.1],
        &mut out[..g.oh * g.ow],
    );
    let (input, flat) = s.split_at_mut(g.input_len());
    plane_isa(g, input, w, bias, flat);
    let len = g.row_len();
    for (row, from) in out.chunks_exact_mut(g.ow).zip(flat.chunks_exact(len)) {
        row.copy_from_slice(&from[..g.ow]);
    }
}

/// [`plane_any`] for the widest instruction set this CPU has.
fn plane_isa(g: &Geometry, s: &[f32], w: &[f32], bias: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::direct::avx512() {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (`avx512` checks).
            unsafe { plane_avx512(g, s, w, bias, out) };
            return;
        }
        if super::direct::available() {
            // SAFETY: the CPU has AVX2 and FMA (just checked).
            unsafe { plane_avx2(g, s, w, bias, out) };
            return;
        }
    }
    plane_any::<false>(g, s, w, bias, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn plane_avx512(g: &Geometry, s: &[f32], w: &[f32], bias: f32, out: &mut [f32]) {
    plane_any::<true>(g, s, w, bias, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2(g: &Geometry, s: &[f32], w: &[f32], bias: f32, out: &mut [f32]) {
    plane_any::<true>(g, s, w, bias, out)
}

/// The kernel, compiled once per instruction set, over the OH·L outputs of
/// the plane as one row. `FMA`: fused multiply-add (only where the CPU has
/// it: elsewhere `mul_add` is a libm call).
#[inline(always)]
fn plane_any<const FMA: bool>(g: &Geometry, s: &[f32], w: &[f32], bias: f32, out: &mut [f32]) {
    // Where each tap's run starts, relative to the chunk: tap (ky, kx) reads
    // phase ((ky·DH) mod SH, (kx·DW) mod SW) from ⌊ky·DH/SH⌋ rows and
    // ⌊kx·DW/SW⌋ entries further on. Worked out once per plane (in the
    // chunk, a division per tap made a plane a third slower).
    let (sh, sw) = g.stride;
    let (dh, dw) = g.dilation;
    let (len, phase) = (g.row_len(), g.phase_rows() * g.row_len());
    let start = |ky: usize, kx: usize| {
        let (a, rows) = ((ky * dh) % sh, (ky * dh) / sh);
        let (b, cols) = ((kx * dw) % sw, (kx * dw) / sw);
        (a * sw + b) * phase + rows * len + cols
    };
    let n = g.kernel.0 * g.kernel.1;
    let mut fixed = [0usize; 128];
    let heap: Vec<usize>;
    let offsets: &[usize] = if n <= fixed.len() {
        for (i, o) in fixed[..n].iter_mut().enumerate() {
            *o = start(i / g.kernel.1, i % g.kernel.1);
        }
        &fixed[..n]
    } else {
        heap = (0..n)
            .map(|i| start(i / g.kernel.1, i % g.kernel.1))
            .collect();
        &heap
    };
    let taps = Taps { s, w, offsets };
    let total = g.oh * g.row_len();
    let out = &mut out[..total];
    let mut x0 = 0;
    while total - x0 >= 64 {
        taps.chunk::<64, FMA>(x0, bias, &mut out[x0..x0 + 64]);
        x0 += 64;
    }
    macro_rules! tail {
        ($($v:literal)*) => {$(
            if total - x0 >= $v {
                taps.chunk::<$v, FMA>(x0, bias, &mut out[x0..x0 + $v]);
                x0 += $v;
            }
        )*};
    }
    tail!(32 16 8 4 2 1);
    debug_assert_eq!(x0, total);
}

/// What the chunks of a plane read: the phase planes, and each tap's
/// weight and the start of its run relative to the chunk's first output.
struct Taps<'a> {
    s: &'a [f32],
    w: &'a [f32],
    offsets: &'a [usize],
}

impl Taps<'_> {
    /// Outputs `t0..t0 + V` of the plane (rows L long) into `out`.
    #[inline(always)]
    fn chunk<const V: usize, const FMA: bool>(&self, t0: usize, bias: f32, out: &mut [f32]) {
        let mut acc = [bias; V];
        for (&wv, &offset) in self.w.iter().zip(self.offsets) {
            let at = offset + t0;
            let x = &self.s[at..at + V];
            for j in 0..V {
                acc[j] = if FMA {
                    x[j].mul_add(wv, acc[j])
                } else {
                    acc[j] + x[j] * wv
                };
            }
        }
        out[..V].copy_from_slice(&acc);
    }
}

#[cfg(test)]
mod tests {
    use super::super::direct::{avx512, set_avx512};
    use super::super::test_data as data;
    use super::*;

    /// The kernel against element-by-element f64 sums over the unpadded
    /// input, on every instruction set this CPU has.
    #[test]
    fn depthwise_planes_match_plain_sums() {
        let wide = avx512();
        for on in [false, true] {
            set_avx512(on);
            check_planes();
        }
        set_avx512(true);
        assert_eq!(avx512(), wide);
    }

    fn check_planes() {
        // (h, w, kernel, stride, pad, dilation): rows of 64 + 32 + … pixels,
        // strides 1–3, padding wider than the map, dilation, 1×1 maps.
        for (h, w, k, s, p, d) in [
            (9, 131, (3, 3), (1, 1), (1, 1), (1, 1)),
            (112, 112, (3, 3), (2, 2), (1, 1), (1, 1)),
            (15, 17, (5, 5), (2, 2), (2, 2), (1, 1)),
            (14, 14, (5, 5), (1, 1), (2, 2), (1, 1)),
            (10, 23, (3, 3), (1, 3), (2, 1), (2, 3)),
            (7, 7, (3, 5), (3, 1), (0, 2), (1, 1)),
            (1, 1, (5, 5), (1, 1), (2, 2), (1, 1)),
            (1, 2, (3, 3), (3, 3), (1, 1), (1, 1)),
            (14, 14, (5, 5), (2, 2), (2, 2), (1, 1)),
            (7, 7, (3, 3), (2, 2), (1, 1), (2, 2)),
            (2, 2, (3, 3), (2, 2), (1, 1), (1, 1)),
            (2, 2, (3, 3), (1, 1), (3, 3), (2, 2)),
            (1, 1, (1, 1), (1, 1), (0, 0), (1, 1)),
        ] {
            let out = |i: usize, k: usize, s: usize, p: usize, d: usize| {
                (i + 2 * p - d * (k - 1) - 1) / s + 1
            };
            let g = Geometry {
                h,
                w,
                oh: out(h, k.0, s.0, p.0, d.0),
                ow: out(w, k.1, s.1, p.1, d.1),
                kernel: k,
                stride: s,
                pad: p,
                dilation: d,
            };
            assert!(g.valid(), "{g:?}");
            let (x, wt) = (data(h * w, 1), data(k.0 * k.1, 2));
            let mut scratch = vec![f32::NAN; g.scratch_len()];
            split_phases(&g, &x, &mut scratch);
            let mut y = vec![f32::NAN; g.oh * g.ow];
            plane(&g, &mut scratch, &wt, 0.25, &mut y);
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut want = 0.25f64;
                    for ky in 0..k.0 {
                        for kx in 0..k.1 {
                            let iy = (oy * s.0 + ky * d.0) as isize - p.0 as isize;
                            let ix = (ox * s.1 + kx * d.1) as isize - p.1 as isize;
                            if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                want += x[iy as usize * w + ix as usize] as f64
                                    * wt[ky * k.1 + kx] as f64;
                            }
                        }
                    }
                    let got = y[oy * g.ow + ox] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5,
                        "{g:?}: ({oy}, {ox}) is {got}, expected {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn geometries_that_overrun_the_input_are_refused() {
        let g = Geometry {
            h: 4,
            w: 4,
            oh: 4,
            ow: 5,
            kernel: (3, 3),
            stride: (1, 1),
            pad: (1, 1),
            dilation: (1, 1),
        };
        assert!(!g.valid());
        assert!(Geometry { ow: 4, ..g }.valid());
        assert!(!Geometry { oh: 0, ow: 4, ..g }.valid());
    }
}
