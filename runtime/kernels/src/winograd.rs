//! Winograd convolution F(2×2, 5×5) for stride 1, no dilation, one group,
//! 5×5 kernels, and input and output channels in multiples of 16.
//!
//! Each 2×2 block of outputs ("tile") is computed from the 6×6 input patch
//! under it: the patch is transformed (`V = Bᵀ d B`), multiplied point by
//! point with the transformed kernel (`U = G g Gᵀ`) and summed over the
//! input channels, which for the 36 points is 36 small matrix products,
//! and transformed back (`Y = Aᵀ M A`). That is 36 multiply-adds per input
//! channel for 4 outputs instead of 100: 2.8× fewer, for some adds in the
//! transforms. The interpolation points are 0, ±1, ±2 and ∞ (the matrices
//! below, derived with exact fractions and checked against the identity
//! `Aᵀ[(G g) ⊙ (Bᵀ d)] = g ⋆ d`); the rounding error stays near that of a
//! direct sum for 5×5 kernels (see the test).
//!
//! Layouts: the input image as planes `[C][HP][WP]` (already padded; rows
//! and columns past the last whole tile are read as zeros), weights
//! transformed once ([`transform_weights`]: `[36][C][OC]`), outputs
//! pixel-major `[OH·OW][OC]` as [`super::direct`]'s. AVX-512 only
//! ([`available`]); callers keep their direct or GEMM path elsewhere.

/// A convolution's geometry on its padded input (5×5 kernel, stride 1).
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// Input channels (a multiple of 16).
    pub c: usize,
    pub hp: usize,
    pub wp: usize,
    /// Output channels (a multiple of 16).
    pub oc: usize,
    pub oh: usize,
    pub ow: usize,
}

impl From<&super::direct::Geometry> for Geometry {
    /// The direct kernels' geometry without its kernel size (5×5 here).
    fn from(d: &super::direct::Geometry) -> Geometry {
        Geometry {
            c: d.c,
            hp: d.hp,
            wp: d.wp,
            oc: d.oc,
            oh: d.oh,
            ow: d.ow,
        }
    }
}

/// Points of the transforms: 6×6 per tile.
const POINTS: usize = 36;
/// Tiles transformed and multiplied together (their 36 points of every
/// channel stay in L2 between the three steps).
const CHUNK: usize = 24;

impl Geometry {
    fn tiles(&self) -> (usize, usize) {
        (self.oh.div_ceil(2), self.ow.div_ceil(2))
    }

    /// The input [`forward_pixel_major`] reads: rows and columns of whole
    /// tiles, `(2·⌈OH/2⌉ + 4, 2·⌈OW/2⌉ + 4)`.
    pub fn extent(&self) -> (usize, usize) {
        let (ty, tx) = self.tiles();
        (2 * ty + 4, 2 * tx + 4)
    }

    /// Whether the kernels take this geometry.
    pub fn fits(&self) -> bool {
        self.c.is_multiple_of(16)
            && self.oc.is_multiple_of(16)
            && self.c > 0
            && self.oc > 0
            && self.oh > 0
            && self.ow > 0
            && self.oh + 4 <= self.hp
            && self.ow + 4 <= self.wp
    }
}

/// Whether this CPU runs the Winograd kernels (AVX-512F), unless switched
/// off with the direct kernels' AVX-512 ([`super::direct::avx512`]).
pub fn available() -> bool {
    super::direct::avx512()
}

/// G (6×5), from the points 0, 1, −1, 2, −2 and ∞.
const G: [[f64; 5]; 6] = [
    [1.0 / 4.0, 0.0, 0.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0, 1.0 / 3.0, 2.0 / 3.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0, -1.0 / 3.0, 2.0 / 3.0],
    [0.0, 0.0, 0.0, 0.0, 1.0],
];

/// `G g Gᵀ` for every (output, input) channel pair of PyTorch's
/// `[OC][C][5][5]` weights, stored `[36][C][OC]`.
pub fn transform_weights(w: &[f32], oc: usize, c: usize) -> Vec<f32> {
    assert!(w.len() >= oc * c * 25);
    let mut u = vec![0f32; POINTS * c * oc];
    for o in 0..oc {
        for ci in 0..c {
            let g = &w[(o * c + ci) * 25..(o * c + ci + 1) * 25];
            // t = G g (6×5), then t Gᵀ (6×6), in f64.
            let mut t = [[0f64; 5]; 6];
            for (i, row) in t.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (0..5).map(|k| G[i][k] * g[k * 5 + j] as f64).sum();
                }
            }
            for i in 0..6 {
                for j in 0..6 {
                    let v: f64 = (0..5).map(|k| t[i][k] * G[j][k]).sum();
                    u[((i * 6 + j) * c + ci) * oc + o] = v as f32;
                }
            }
        }
    }
    u
}

/// The input gradient's kernel: `w'[c][o][ky][kx] = w[o][c][4 − ky][4 − kx]`,
/// transformed. The input gradient is then [`forward_pixel_major`] over
/// the output gradient padded by 4 on every side, with C and OC swapped.
pub fn transform_weights_flipped(w: &[f32], oc: usize, c: usize) -> Vec<f32> {
    assert!(w.len() >= oc * c * 25);
    let mut f = vec![0f32; oc * c * 25];
    for o in 0..oc {
        for ci in 0..c {
            for t in 0..25 {
                f[(ci * oc + o) * 25 + 24 - t] = w[(o * c + ci) * 25 + t];
            }
        }
    }
    transform_weights(&f, c, oc)
}

/// Scratch of one thread: the input pixel-major, transformed patches and
/// products of one chunk of tiles.
#[derive(Default)]
pub struct Scratch {
    x_pm: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
}

impl Scratch {
    /// Grows the buffers to what [`forward`] needs for `g`, so that a
    /// caller that allocates once up front does not allocate on its first run.
    pub fn reserve(&mut self, g: &Geometry) {
        let (he, we) = g.extent();
        let grow = |v: &mut Vec<f32>, len: usize| v.resize(v.len().max(len), 0.0);
        grow(&mut self.x_pm, he * we * g.c);
        grow(&mut self.v, POINTS * CHUNK * g.c);
        grow(&mut self.m, POINTS * CHUNK * g.oc);
    }
}

/// `y[p][o] = Σ x ⋆ w` for every output pixel of one image (no bias), with
/// `u` from [`transform_weights`]. Panics when [`available`] is false, the
/// geometry does not [`Geometry::fits`], or a slice is short.
pub fn forward(g: &Geometry, x: &[f32], u: &[f32], y: &mut [f32], s: &mut Scratch) {
    let x_pm = pixel_major(g, x, std::mem::take(&mut s.x_pm));
    forward_pixel_major(g, &x_pm, u, y, s);
    s.x_pm = x_pm;
}

/// The input planes pixel-major over whole tiles (the [`Geometry::extent`]):
/// rows and columns past the image (an odd output size) are zeros.
fn pixel_major(g: &Geometry, x: &[f32], mut x_pm: Vec<f32>) -> Vec<f32> {
    assert!(x.len() >= g.c * g.hp * g.wp);
    let (he, we) = g.extent();
    x_pm.clear();
    x_pm.resize(he * we * g.c, 0.0);
    if (he, we) == (g.hp, g.wp) {
        super::direct::to_pixel_major(x, g.c, g.hp * g.wp, &mut x_pm);
    } else {
        for ci in 0..g.c {
            for r in 0..g.hp.min(he) {
                for col in 0..g.wp.min(we) {
                    x_pm[(r * we + col) * g.c + ci] = x[(ci * g.hp + r) * g.wp + col];
                }
            }
        }
    }
    x_pm
}

/// Tiles a chunk of the weight gradient holds: the products read and
/// write each accumulator once per chunk, so the chunk gathers the tiles
/// of several images when one has few (mnist's conv3: 9 a image).
const GRAD_CHUNK: usize = 50;

/// The weight gradient's state between images: the pixel-major input and
/// the transformed tiles not yet multiplied.
#[derive(Default)]
pub struct GradScratch {
    x_pm: Vec<f32>,
    v: Vec<f32>,
    z: Vec<f32>,
    /// Tiles in `v` and `z`.
    filled: usize,
}

/// The weight gradient of one image in the transformed domain, added to
/// `du` (`[36][C][OC]`): `du[ξ][c][o] += Σ_tiles V[ξ][t][c] · Z[ξ][t][o]`,
/// with V = Bᵀ d B of the image's patches and Z = A dY Aᵀ of its 2×2
/// output-gradient tiles (`dy` pixel-major `[OH·OW][OC]`, zeros past the
/// map for odd sizes): the adjoint of [`forward`] with respect to the
/// transformed kernel. Tiles are multiplied a chunk at a time, so the last
/// ones may wait in `s`: [`weight_grad_flush`] adds them, then
/// [`weight_grad_finish`] maps the sum back to 5×5.
pub fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32], du: &mut [f32], s: &mut GradScratch) {
    assert!(g.fits(), "no Winograd kernel for {g:?}");
    assert!(available(), "the Winograd kernels need AVX-512");
    assert!(dy.len() >= g.oh * g.ow * g.oc);
    assert!(du.len() >= POINTS * g.c * g.oc);
    let x_pm = pixel_major(g, x, std::mem::take(&mut s.x_pm));
    let (ty, tx) = g.tiles();
    let we = g.extent().1;
    s.v.resize(POINTS * GRAD_CHUNK * g.c, 0.0);
    s.z.resize(POINTS * GRAD_CHUNK * g.oc, 0.0);
    let n = ty * tx;
    let mut t0 = 0;
    while t0 < n {
        let t1 = (t0 + GRAD_CHUNK - s.filled).min(n);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F (asserted); as in `forward_pixel_major`, tiles
        // land at chunk positions filled..filled + (t1 − t0) ≤ GRAD_CHUNK,
        // the output-gradient tiles are read only at pixels inside OH×OW,
        // and `du` holds 36·C·OC values.
        unsafe {
            let at = (t0, t1, GRAD_CHUNK, s.filled);
            avx512::input_transform(g, we, tx, &x_pm, at, &mut s.v);
            avx512::gradient_transform(g, tx, dy, at, &mut s.z);
        }
        s.filled += t1 - t0;
        if s.filled == GRAD_CHUNK {
            weight_grad_flush(g, du, s);
        }
        t0 = t1;
    }
    s.x_pm = x_pm;
}

/// Multiplies the tiles [`weight_grad`] left in `s` into `du` (nothing
/// when it left none). `s` must have seen only this geometry since its
/// last flush.
pub fn weight_grad_flush(g: &Geometry, du: &mut [f32], s: &mut GradScratch) {
    if s.filled > 0 {
        assert!(available() && g.fits());
        assert!(du.len() >= POINTS * g.c * g.oc);
        assert!(s.v.len() >= POINTS * GRAD_CHUNK * g.c);
        assert!(s.z.len() >= POINTS * GRAD_CHUNK * g.oc);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F (asserted); `v`, `z` hold GRAD_CHUNK tiles, of
        // which the first `filled` are read.
        unsafe {
            avx512::gradient_products(g, s.filled, &s.v, &s.z, du)
        };
    }
    s.filled = 0;
}

/// `dw[c·25 + ky·5 + kx][o] += (Gᵀ du[·][c][o] G)[ky][kx]` (in f64): the
/// 5×5 kernels' gradient, tap-major as [`super::direct::weight_grad`]
/// accumulates it, from [`weight_grad`]'s sum.
pub fn weight_grad_finish(g: &Geometry, du: &[f32], dw_taps: &mut [f32]) {
    assert!(du.len() >= POINTS * g.c * g.oc && dw_taps.len() >= 25 * g.c * g.oc);
    for ci in 0..g.c {
        for o in 0..g.oc {
            let d = |xi: usize| du[(xi * g.c + ci) * g.oc + o] as f64;
            // t = Gᵀ du (5×6), then t G (5×5).
            let mut t = [[0f64; 6]; 5];
            for (a, row) in t.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (0..6).map(|i| G[i][a] * d(i * 6 + j)).sum();
                }
            }
            for a in 0..5 {
                for b in 0..5 {
                    let v: f64 = (0..6).map(|j| t[a][j] * G[j][b]).sum();
                    dw_taps[(ci * 25 + a * 5 + b) * g.oc + o] += v as f32;
                }
            }
        }
    }
}

/// [`forward`] from an input already pixel-major (`[HE][WE][C]` over the
/// [`Geometry::extent`], zeros past the image).
pub fn forward_pixel_major(g: &Geometry, x_pm: &[f32], u: &[f32], y: &mut [f32], s: &mut Scratch) {
    assert!(g.fits(), "no Winograd kernel for {g:?}");
    assert!(available(), "the Winograd kernels need AVX-512");
    let (ty, tx) = g.tiles();
    let (he, we) = g.extent();
    assert!(x_pm.len() >= he * we * g.c);
    assert!(u.len() >= POINTS * g.c * g.oc);
    assert!(y.len() >= g.oh * g.ow * g.oc);
    s.v.resize(POINTS * CHUNK * g.c, 0.0);
    s.m.resize(POINTS * CHUNK * g.oc, 0.0);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F (asserted). Tiles t < ty·tx read patch rows below
    // 2·ty + 4 = he and columns below we of x_pm (he·we·C values); the
    // chunk buffers hold CHUNK tiles of 36 points of C (v) and OC (m)
    // values; outputs are written only at pixels inside OH×OW.
    unsafe {
        let n = ty * tx;
        for t0 in (0..n).step_by(CHUNK) {
            let t1 = (t0 + CHUNK).min(n);
            avx512::input_transform(g, we, tx, x_pm, (t0, t1, CHUNK, 0), &mut s.v);
            avx512::products(g, t1 - t0, &s.v, u, &mut s.m);
            avx512::output_transform(g, tx, t0, t1, &s.m, y);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("available() is false off x86-64");
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Geometry, CHUNK, POINTS};
    use std::arch::x86_64::*;

    type V = __m512;

    #[inline(always)]
    unsafe fn add(a: V, b: V) -> V {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: V, b: V) -> V {
        _mm512_sub_ps(a, b)
    }
    /// a·k + b
    #[inline(always)]
    unsafe fn fma(a: V, k: f32, b: V) -> V {
        _mm512_fmadd_ps(a, _mm512_set1_ps(k), b)
    }

    /// Bᵀ d for one column of six values:
    /// ```text
    /// Bᵀ = [ 4  0 −5  0  1  0 ]
    ///      [ 0 −4 −4  1  1  0 ]
    ///      [ 0  4 −4 −1  1  0 ]
    ///      [ 0 −2 −1  2  1  0 ]
    ///      [ 0  2 −1 −2  1  0 ]
    ///      [ 0  4  0 −5  0  1 ]
    /// ```
    #[inline(always)]
    unsafe fn bt(d: [V; 6]) -> [V; 6] {
        let a = fma(d[2], -4.0, d[4]); // d4 − 4 d2
        let b = fma(d[1], -4.0, d[3]); // d3 − 4 d1
        let c = sub(d[4], d[2]); // d4 − d2
        let e = _mm512_mul_ps(sub(d[3], d[1]), _mm512_set1_ps(2.0)); // 2 (d3 − d1)
        [
            fma(d[0], 4.0, fma(d[2], -5.0, d[4])),
            add(a, b),
            sub(a, b),
            add(c, e),
            sub(c, e),
            fma(d[1], 4.0, fma(d[3], -5.0, d[5])),
        ]
    }

    /// Aᵀ m for six values: `[1 1 1 1 1 0; 0 1 −1 2 −2 1]`.
    #[inline(always)]
    unsafe fn at(m: [V; 6]) -> [V; 2] {
        let (p1, n1) = (add(m[1], m[2]), sub(m[1], m[2]));
        let (p2, n2) = (add(m[3], m[4]), sub(m[3], m[4]));
        [add(add(m[0], p1), p2), add(fma(n2, 2.0, n1), m[5])]
    }

    /// V = Bᵀ d B for tiles t0..t1 (tile t at row t / tx, column t % tx),
    /// every 16-channel block; `v` as `[36][cap][C]`, tile t at position
    /// first + t − t0.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // a transpose: j (b) indexes the other side
    pub(super) unsafe fn input_transform(
        g: &Geometry,
        we: usize,
        tx: usize,
        x: &[f32],
        (t0, t1, cap, first): (usize, usize, usize, usize),
        v: &mut [f32],
    ) {
        let (x, v) = (x.as_ptr(), v.as_mut_ptr());
        for t in t0..t1 {
            let (r0, c0) = (2 * (t / tx), 2 * (t % tx));
            for cb in (0..g.c).step_by(16) {
                // Columns first: w[i][j] = (Bᵀ d)[i][j].
                let mut w = [[_mm512_setzero_ps(); 6]; 6];
                for j in 0..6 {
                    let mut col = [_mm512_setzero_ps(); 6];
                    for (i, d) in col.iter_mut().enumerate() {
                        *d = _mm512_loadu_ps(x.add(((r0 + i) * we + c0 + j) * g.c + cb));
                    }
                    for (i, r) in bt(col).into_iter().enumerate() {
                        w[i][j] = r;
                    }
                }
                for (i, row) in w.into_iter().enumerate() {
                    for (j, r) in bt(row).into_iter().enumerate() {
                        let at = ((i * 6 + j) * cap + first + t - t0) * g.c + cb;
                        _mm512_storeu_ps(v.add(at), r);
                    }
                }
            }
        }
    }

    /// Z = A dY Aᵀ (6×6 from each 2×2 output-gradient tile, zeros past
    /// the map) for tiles t0..t1, every 16-channel block; `z` as
    /// `[36][cap][OC]`, placed as in [`input_transform`]. A = Aᵀᵀ expands (y0, y1) to
    /// (y0, y0 + y1, y0 − y1, y0 + 2y1, y0 − 2y1, y1).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gradient_transform(
        g: &Geometry,
        tx: usize,
        dy: &[f32],
        (t0, t1, cap, first): (usize, usize, usize, usize),
        z: &mut [f32],
    ) {
        #[inline(always)]
        unsafe fn a6(y0: V, y1: V) -> [V; 6] {
            [
                y0,
                add(y0, y1),
                sub(y0, y1),
                fma(y1, 2.0, y0),
                fma(y1, -2.0, y0),
                y1,
            ]
        }
        let (dy, z) = (dy.as_ptr(), z.as_mut_ptr());
        for t in t0..t1 {
            let (r0, c0) = (2 * (t / tx), 2 * (t % tx));
            for ob in (0..g.oc).step_by(16) {
                let load = |r: usize, c: usize| {
                    if r < g.oh && c < g.ow {
                        _mm512_loadu_ps(dy.add((r * g.ow + c) * g.oc + ob))
                    } else {
                        _mm512_setzero_ps()
                    }
                };
                // Columns first: w[i][b] = (A dY)[i][b].
                let c0v = a6(load(r0, c0), load(r0 + 1, c0));
                let c1v = a6(load(r0, c0 + 1), load(r0 + 1, c0 + 1));
                for i in 0..6 {
                    for (j, r) in a6(c0v[i], c1v[i]).into_iter().enumerate() {
                        let at = ((i * 6 + j) * cap + first + t - t0) * g.oc + ob;
                        _mm512_storeu_ps(z.add(at), r);
                    }
                }
            }
        }
    }

    /// `du[ξ][c][o] += Σ_t v[ξ][t][c] · z[ξ][t][o]` over the `n` tiles of
    /// a chunk (`v`, `z` laid out for GRAD_CHUNK tiles): blocks of input
    /// channels by output-channel vectors, summed over the tiles.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gradient_products(
        g: &Geometry,
        n: usize,
        v: &[f32],
        z: &[f32],
        du: &mut [f32],
    ) {
        let cap = super::GRAD_CHUNK;
        let out = du.as_mut_ptr();
        points_by_blocks(g, g.c, |xi, ob, c| Operands {
            a: v.as_ptr().add(xi * cap * g.c + c),
            a_p: 1,
            a_k: g.c,
            b: z.as_ptr().add(xi * cap * g.oc + ob),
            c: out.add((xi * g.c + c) * g.oc + ob),
            k: n,
            add: true,
        });
    }

    /// `m[ξ][t][o] = Σ_c v[ξ][t][c] · u[ξ][c][o]` for the `n` tiles of a
    /// chunk: blocks of tiles by output-channel vectors, summed over the
    /// input channels.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn products(g: &Geometry, n: usize, v: &[f32], u: &[f32], m: &mut [f32]) {
        let out = m.as_mut_ptr();
        points_by_blocks(g, n, |xi, ob, t| Operands {
            a: v.as_ptr().add((xi * CHUNK + t) * g.c),
            a_p: g.c,
            a_k: 1,
            b: u.as_ptr().add(xi * g.c * g.oc + ob),
            c: out.add((xi * CHUNK + t) * g.oc + ob),
            k: g.c,
            add: false,
        });
    }

    /// One block product: `c[p·OC + 16j..] (+)= Σ_k a[p·a_p + k·a_k] ·
    /// b[k·OC + 16j..]` for P rows (broadcast from `a`) by VB vectors of
    /// output channels (`b` and `c` rows OC apart).
    #[derive(Clone, Copy)]
    struct Operands {
        a: *const f32,
        a_p: usize,
        a_k: usize,
        b: *const f32,
        c: *mut f32,
        k: usize,
        /// Add to `c` (else overwrite it).
        add: bool,
    }

    /// For each of the 36 points and each block of up to two output-channel
    /// vectors, cuts `len` rows into blocks of up to 12 (24 accumulators)
    /// and runs the block product `at(ξ, first output channel, first row)`
    /// describes.
    #[inline(always)]
    unsafe fn points_by_blocks(
        g: &Geometry,
        len: usize,
        at: impl Fn(usize, usize, usize) -> Operands,
    ) {
        let vb = if g.oc.is_multiple_of(32) { 2 } else { 1 };
        let per = len.div_ceil(len.div_ceil(12).max(1)).max(1);
        for xi in 0..POINTS {
            for ob in (0..g.oc).step_by(16 * vb) {
                let mut r = 0;
                while r < len {
                    let p = (len - r).min(per);
                    let ops = at(xi, ob, r);
                    blocks!(vb, p, block_product, (g.oc, ops));
                    r += p;
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn block_product<const VB: usize, const P: usize>(oc: usize, o: Operands) {
        let mut acc = [[_mm512_setzero_ps(); VB]; P];
        for k in 0..o.k {
            let mut bv = [_mm512_setzero_ps(); VB];
            for (j, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(o.b.add(k * oc + 16 * j));
            }
            let a = o.a.add(k * o.a_k);
            for (p, acc) in acc.iter_mut().enumerate() {
                let s = _mm512_set1_ps(*a.add(p * o.a_p));
                for j in 0..VB {
                    acc[j] = _mm512_fmadd_ps(bv[j], s, acc[j]);
                }
            }
        }
        for (p, acc) in acc.iter().enumerate() {
            for (j, x) in acc.iter().enumerate() {
                let c = o.c.add(p * oc + 16 * j);
                let v = if o.add {
                    _mm512_add_ps(_mm512_loadu_ps(c), *x)
                } else {
                    *x
                };
                _mm512_storeu_ps(c, v);
            }
        }
    }

    /// Y = Aᵀ M A for tiles t0..t1, written pixel-major where inside OH×OW.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // a transpose: j (b) indexes the other side
    pub(super) unsafe fn output_transform(
        g: &Geometry,
        tx: usize,
        t0: usize,
        t1: usize,
        m: &[f32],
        y: &mut [f32],
    ) {
        let (m, y) = (m.as_ptr(), y.as_mut_ptr());
        for t in t0..t1 {
            let (r0, c0) = (2 * (t / tx), 2 * (t % tx));
            for ob in (0..g.oc).step_by(16) {
                // Rows first: w[i][b] = (M A)[i][b].
                let mut w = [[_mm512_setzero_ps(); 2]; 6];
                for (i, wi) in w.iter_mut().enumerate() {
                    let mut row = [_mm512_setzero_ps(); 6];
                    for (j, r) in row.iter_mut().enumerate() {
                        *r = _mm512_loadu_ps(m.add(((i * 6 + j) * CHUNK + t - t0) * g.oc + ob));
                    }
                    *wi = at(row);
                }
                for b in 0..2 {
                    let col = [w[0][b], w[1][b], w[2][b], w[3][b], w[4][b], w[5][b]];
                    for (a, r) in at(col).into_iter().enumerate() {
                        let (oy, ox) = (r0 + a, c0 + b);
                        if oy < g.oh && ox < g.ow {
                            _mm512_storeu_ps(y.add((oy * g.ow + ox) * g.oc + ob), r);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_data as data;
    use super::*;

    /// The weight gradient over several images (accumulated in the
    /// transformed domain, then mapped back), against f64 sums: odd maps,
    /// chunks split inside an image (196 tiles) and spanning images (12
    /// tiles an image), one and two output-vector blocks.
    #[test]
    fn weight_gradient_matches_plain_sums() {
        if !available() {
            eprintln!("no AVX-512 here: the Winograd kernels are not tested");
            return;
        }
        for (c, hp, wp, oc) in [(16, 24, 24, 32), (32, 9, 11, 16), (16, 32, 32, 64)] {
            let g = Geometry {
                c,
                hp,
                wp,
                oc,
                oh: hp - 4,
                ow: wp - 4,
            };
            let images = 5;
            let x = data(images * c * hp * wp, 7);
            let dy = data(images * g.oh * g.ow * oc, 8);
            let mut du = vec![0f32; POINTS * c * oc];
            let mut s = GradScratch::default();
            for i in 0..images {
                let xi = &x[i * c * hp * wp..(i + 1) * c * hp * wp];
                let dyi = &dy[i * g.oh * g.ow * oc..(i + 1) * g.oh * g.ow * oc];
                weight_grad(&g, xi, dyi, &mut du, &mut s);
            }
            weight_grad_flush(&g, &mut du, &mut s);
            let mut dw = vec![0.5f32; 25 * c * oc];
            weight_grad_finish(&g, &du, &mut dw);
            let (mut worst, mut scale) = (0f64, 0f64);
            for ci in 0..c {
                for t in 0..25 {
                    for o in 0..oc {
                        let mut want = 0.5f64;
                        for i in 0..images {
                            for oy in 0..g.oh {
                                for ox in 0..g.ow {
                                    want += x[((i * c + ci) * hp + oy + t / 5) * wp + ox + t % 5]
                                        as f64
                                        * dy[((i * g.oh + oy) * g.ow + ox) * oc + o] as f64;
                                }
                            }
                        }
                        let got = dw[(ci * 25 + t) * oc + o] as f64;
                        worst = worst.max((got - want).abs());
                        scale = scale.max(want.abs());
                    }
                }
            }
            eprintln!("{g:?}: dw worst {worst:.2e}, largest {scale:.2}");
            assert!(
                worst < 1e-5 * scale.max(1.0),
                "{g:?}: dw worst {worst}, scale {scale}"
            );
        }
    }

    /// The input gradient through the flipped kernel, against f64 sums
    /// (an odd map: the padded gradient is extended past its last tile).
    #[test]
    fn flipped_kernel_gives_the_input_gradient() {
        if !available() {
            eprintln!("no AVX-512 here: the Winograd kernels are not tested");
            return;
        }
        for (c, h, w, oc) in [(16, 24, 24, 32), (32, 11, 9, 16)] {
            let (oh, ow) = (h - 4, w - 4);
            let (wt, dy) = (data(oc * c * 25, 3), data(oh * ow * oc, 4));
            let g = Geometry {
                c: oc,
                hp: oh + 8,
                wp: ow + 8,
                oc: c,
                oh: h,
                ow: w,
            };
            let (he, we) = g.extent();
            let mut dyp = vec![0f32; he * we * oc];
            for y in 0..oh {
                for x in 0..ow {
                    let at = ((y + 4) * we + x + 4) * oc;
                    dyp[at..at + oc].copy_from_slice(&dy[(y * ow + x) * oc..(y * ow + x + 1) * oc]);
                }
            }
            let u = transform_weights_flipped(&wt, oc, c);
            let mut dx = vec![f32::NAN; h * w * c];
            forward_pixel_major(&g, &dyp, &u, &mut dx, &mut Scratch::default());
            let (mut worst, mut scale) = (0f64, 0f64);
            for iy in 0..h {
                for ix in 0..w {
                    for ci in 0..c {
                        let mut want = 0f64;
                        for ky in 0..5 {
                            for kx in 0..5 {
                                let (Some(oy), Some(ox)) = (iy.checked_sub(ky), ix.checked_sub(kx))
                                else {
                                    continue;
                                };
                                if oy >= oh || ox >= ow {
                                    continue;
                                }
                                for o in 0..oc {
                                    want += wt[((o * c + ci) * 5 + ky) * 5 + kx] as f64
                                        * dy[(oy * ow + ox) * oc + o] as f64;
                                }
                            }
                        }
                        let got = dx[(iy * w + ix) * c + ci] as f64;
                        worst = worst.max((got - want).abs());
                        scale = scale.max(want.abs());
                    }
                }
            }
            assert!(
                worst < 1e-5 * scale.max(1.0),
                "dx {c} {h}x{w}: worst {worst}, scale {scale}"
            );
        }
    }

    /// Against f64 sums, on whole and partial tiles (odd sizes), one and
    /// two output-vector blocks, a chunk boundary; the error stays within
    /// a few times a direct f32 sum's.
    #[test]
    fn winograd_matches_plain_sums() {
        if !available() {
            eprintln!("no AVX-512 here: the Winograd kernels are not tested");
            return;
        }
        for (c, hp, wp, oc) in [
            (16, 24, 24, 32),
            (32, 10, 10, 64),
            (16, 13, 18, 16),
            (32, 28, 28, 16),
        ] {
            let g = Geometry {
                c,
                hp,
                wp,
                oc,
                oh: hp - 4,
                ow: wp - 4,
            };
            let (x, w) = (data(c * hp * wp, 1), data(oc * c * 25, 2));
            let u = transform_weights(&w, oc, c);
            let mut y = vec![f32::NAN; g.oh * g.ow * oc];
            forward(&g, &x, &u, &mut y, &mut Scratch::default());
            // The worst error, and that of a plain f32 sum in tap order.
            let (mut worst, mut plain, mut scale) = (0f64, 0f64, 0f64);
            for o in 0..oc {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let (mut want, mut sum32) = (0f64, 0f32);
                        for ci in 0..c {
                            for ky in 0..5 {
                                for kx in 0..5 {
                                    let (a, b) = (
                                        x[(ci * hp + oy + ky) * wp + ox + kx],
                                        w[((o * c + ci) * 5 + ky) * 5 + kx],
                                    );
                                    want += a as f64 * b as f64;
                                    sum32 += a * b;
                                }
                            }
                        }
                        let got = y[(oy * g.ow + ox) * oc + o] as f64;
                        worst = worst.max((got - want).abs());
                        plain = plain.max((sum32 as f64 - want).abs());
                        scale = scale.max(want.abs());
                    }
                }
            }
            eprintln!("{g:?}: worst {worst:.2e}, plain f32 {plain:.2e}, largest output {scale:.2}");
            assert!(worst < 1e-5 * scale.max(1.0), "{g:?}: worst error {worst}");
            assert!(
                worst < 5.0 * plain,
                "{g:?}: {worst} against a plain sum's {plain}"
            );
        }
    }
}
