//! Depthwise convolution (groups = input channels = output channels, zero
//! padding, any kernel, stride and dilation), one (image, channel) plane at
//! a time: no im2col matrix and no GEMM, whose K would be the 9 or 25 taps.
//!
//! The output row runs along the vector lanes. For each row the kernel
//! keeps a chunk of up to 64 output pixels in registers (chunks of 64, then
//! one each of 32, 16, … 1 for the rest, so nothing is computed twice and
//! nothing is read past the row) and adds every tap's weight times a
//! contiguous run of input values. Contiguous because the input plane is
//! first laid out by [`split_phases`]: each input row padded left and right
//! with zeros and split into `SW` phases (columns ≡ r mod SW), so that the
//! inputs of output pixels ox, ox + 1, … for one tap are adjacent whatever
//! the stride and dilation. Rows above and below the map are not stored:
//! the taps that would read them are skipped ([`super::taps`]).
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

    /// Floats in one phase of a padded input row.
    fn phase_len(&self) -> usize {
        (self.w + 2 * self.pad.1).div_ceil(self.stride.1)
    }

    /// Whether the plane runs flat: stride 1, where output pixels (oy, ox)
    /// and (oy, ox + 1) read adjacent inputs across rows too if rows are
    /// padded (see [`plane`]).
    fn flat(&self) -> bool {
        self.stride == (1, 1)
    }

    /// Floats of the padded input of the flat layout: every row padded,
    /// PH zero rows above and below, and the zeros the last row's padding
    /// columns read past the end.
    fn flat_input_len(&self) -> usize {
        let len = self.phase_len();
        (self.h + 2 * self.pad.0) * len + (self.kernel.1 - 1) * self.dilation.1
    }

    /// Floats of scratch [`split_phases`] and [`plane`] use: the laid-out
    /// input plane and, for a flat plane, its output with padded rows.
    pub fn scratch_len(&self) -> usize {
        if self.flat() {
            self.flat_input_len() + self.oh * self.phase_len()
        } else {
            self.h * self.stride.1 * self.phase_len()
        }
    }
}

/// Lays out input plane `x` (H×W) in `s` as H rows of `SW` phases: phase r
/// of row y holds columns r, r + SW, … of the row padded with PW zeros on
/// each side (zeros past its end too). A flat plane (stride 1) gets PH zero
/// rows above and below as well, and zeros after them.
pub fn split_phases(g: &Geometry, x: &[f32], s: &mut [f32]) {
    let (sw, pw, len) = (g.stride.1, g.pad.1, g.phase_len());
    if g.flat() {
        let s = &mut s[..g.flat_input_len()];
        let (top, rest) = s.split_at_mut(g.pad.0 * len);
        top.fill(0.0);
        let (rows, bottom) = rest.split_at_mut(g.h * len);
        for (row, src) in rows.chunks_exact_mut(len).zip(x.chunks_exact(g.w)) {
            row[..pw].fill(0.0);
            row[pw..pw + g.w].copy_from_slice(src);
            row[pw + g.w..].fill(0.0);
        }
        bottom.fill(0.0);
        return;
    }
    let s = &mut s[..g.scratch_len()];
    for (y, rows) in s.chunks_exact_mut(sw * len).enumerate() {
        let src = &x[y * g.w..(y + 1) * g.w];
        if sw == 1 {
            rows[..pw].fill(0.0);
            rows[pw..pw + g.w].copy_from_slice(src);
            rows[pw + g.w..].fill(0.0);
        } else {
            // Phase r, entry i: padded column i·SW + r, input column i·SW + r − PW.
            for (r, phase) in rows.chunks_exact_mut(len).enumerate() {
                for (i, d) in phase.iter_mut().enumerate() {
                    *d = (i * sw + r)
                        .checked_sub(pw)
                        .and_then(|j| src.get(j))
                        .map_or(0.0, |&v| v);
                }
            }
        }
    }
}

/// `out[oy·OW + ox] = bias + Σ_taps w · x` for the whole output plane, from
/// the input laid out by [`split_phases`] and the channel's KH·KW weights.
/// Panics when the geometry is not [`Geometry::valid`] or a slice is short.
///
/// A flat plane (stride 1) is computed as one row: with the input rows
/// padded (PH zero rows too), output pixel t = oy·L + ox of a plane whose
/// rows are L = W + 2·PW long reads input t + ky·DH·L + kx·DW for every
/// tap, so the whole plane (OH·L outputs, the last 2·PW of each row
/// discarded) goes through the chunks of 64 at once. A 7×7 map with a 5×5
/// kernel is then 77 outputs in chunks of 64, 8, 4 and 1 instead of seven
/// rows of 4, 2 and 1: the small maps of EfficientNet's last stages were
/// a few per cent of the CPU's peak. The output rows are copied out of the
/// scratch after it.
pub fn plane(g: &Geometry, s: &mut [f32], w: &[f32], bias: f32, out: &mut [f32]) {
    assert!(g.valid(), "depthwise geometry {g:?} does not fit");
    let (s, w, out) = (
        &mut s[..g.scratch_len()],
        &w[..g.kernel.0 * g.kernel.1],
        &mut out[..g.oh * g.ow],
    );
    if g.flat() {
        let len = g.phase_len();
        let (input, flat) = s.split_at_mut(g.flat_input_len());
        let one_row = Geometry {
            h: 1,
            w: flat.len(),
            oh: 1,
            ow: flat.len(),
            ..*g
        };
        plane_isa(&one_row, input, w, bias, flat, Some(len));
        for (row, from) in out.chunks_exact_mut(g.ow).zip(flat.chunks_exact(len)) {
            row.copy_from_slice(&from[..g.ow]);
        }
        return;
    }
    plane_isa(g, s, w, bias, out, None)
}

/// [`plane_any`] for the widest instruction set this CPU has.
fn plane_isa(g: &Geometry, s: &[f32], w: &[f32], bias: f32, out: &mut [f32], flat: Option<usize>) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::direct::avx512() {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (`avx512` checks).
            unsafe { plane_avx512(g, s, w, bias, out, flat) };
            return;
        }
        if super::direct::available() {
            // SAFETY: the CPU has AVX2 and FMA (just checked).
            unsafe { plane_avx2(g, s, w, bias, out, flat) };
            return;
        }
    }
    plane_any::<false>(g, s, w, bias, out, flat)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn plane_avx512(
    g: &Geometry,
    s: &[f32],
    w: &[f32],
    bias: f32,
    out: &mut [f32],
    flat: Option<usize>,
) {
    plane_any::<true>(g, s, w, bias, out, flat)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2(
    g: &Geometry,
    s: &[f32],
    w: &[f32],
    bias: f32,
    out: &mut [f32],
    flat: Option<usize>,
) {
    plane_any::<true>(g, s, w, bias, out, flat)
}

/// The kernel, compiled once per instruction set. `FMA`: fused multiply-add
/// (only where the CPU has it: elsewhere `mul_add` is a libm call).
/// `flat: Some(L)`: `g` is the one row of a flat plane whose padded input
/// rows are L long ([`plane`]); every tap row lies inside it.
#[inline(always)]
fn plane_any<const FMA: bool>(
    g: &Geometry,
    s: &[f32],
    w: &[f32],
    bias: f32,
    out: &mut [f32],
    flat: Option<usize>,
) {
    let (kh, kw) = g.kernel;
    let (sh, sw) = g.stride;
    let (dh, dw) = g.dilation;
    let len = g.phase_len();
    for (oy, row) in out.chunks_exact_mut(g.ow).enumerate() {
        let rows = match flat {
            // Tap row ky starts ky·DH padded rows further on: a "row" of
            // DH·L entries, all of them stored.
            Some(l) => Rows {
                s,
                w,
                row0: 0,
                taps: (0, kh),
                kw,
                dh: dh * l,
                dw_phase: 0,
                dw_entry: dw,
                sw: 1,
                len: 1,
            },
            None => {
                // The taps whose input row lies inside the map.
                let (k0, k1) =
                    super::taps((oy * sh) as isize - g.pad.0 as isize, kh, dh, g.h as isize);
                Rows {
                    s,
                    w,
                    row0: oy * sh + k0 * dh - g.pad.0,
                    taps: (k0, k1),
                    kw,
                    dh,
                    dw_phase: dw % sw,
                    dw_entry: dw / sw,
                    sw,
                    len,
                }
            }
        };
        let mut x0 = 0;
        while g.ow - x0 >= 64 {
            rows.chunk::<64, FMA>(x0, bias, &mut row[x0..x0 + 64]);
            x0 += 64;
        }
        macro_rules! tail {
            ($($v:literal)*) => {$(
                if g.ow - x0 >= $v {
                    rows.chunk::<$v, FMA>(x0, bias, &mut row[x0..x0 + $v]);
                    x0 += $v;
                }
            )*};
        }
        tail!(32 16 8 4 2 1);
        debug_assert_eq!(x0, g.ow);
    }
}

/// What the chunks of one output row read.
struct Rows<'a> {
    s: &'a [f32],
    w: &'a [f32],
    /// The input row of tap `taps.0`.
    row0: usize,
    /// The kernel rows that land inside the map, `k0..k1`.
    taps: (usize, usize),
    kw: usize,
    /// The row dilation.
    dh: usize,
    /// The column dilation as phases and entries: DW mod SW, DW / SW.
    dw_phase: usize,
    dw_entry: usize,
    sw: usize,
    len: usize,
}

impl Rows<'_> {
    /// Output pixels `x0..x0 + V` of the row into `out`.
    #[inline(always)]
    fn chunk<const V: usize, const FMA: bool>(&self, x0: usize, bias: f32, out: &mut [f32]) {
        let mut acc = [bias; V];
        let dh = self.dh;
        for ky in self.taps.0..self.taps.1 {
            let y = self.row0 + (ky - self.taps.0) * dh;
            let base = y * self.sw * self.len + x0;
            // Tap kx reads column x·SW + kx·DW of the padded row: phase
            // (kx·DW) mod SW, entry x + (kx·DW) / SW; kept as (phase, entry
            // offset) and stepped by DW without a division.
            let (mut phase, mut entry) = (0, 0);
            for kx in 0..self.kw {
                let wv = self.w[ky * self.kw + kx];
                let at = base + phase * self.len + entry;
                (phase, entry) = (phase + self.dw_phase, entry + self.dw_entry);
                if phase >= self.sw {
                    (phase, entry) = (phase - self.sw, entry + 1);
                }
                let x = &self.s[at..at + V];
                for j in 0..V {
                    acc[j] = if FMA {
                        x[j].mul_add(wv, acc[j])
                    } else {
                        acc[j] + x[j] * wv
                    };
                }
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
