//! Activations over slices, written so the compiler vectorises them.
//!
//! The formulas are the table's (`crate::activation`). `Act::apply` runs
//! them in f32 with libm's `tanhf`/`expf`, one element at a time. Here tanh,
//! sigmoid, SiLU and tanh-GELU run over [`Fast`], the same formulas with a
//! branch-free exp (Cephes' `expf` polynomial, 2ⁿ built from the exponent
//! bits) that LLVM turns into SIMD loops; the x86-64 build compiles the loop
//! a second time for AVX2 and picks it at run time. Relative error: a few
//! units in the last place (tested against f64 below and in
//! tests/activations.rs). Exact GELU runs over [`erf`], a branch-free
//! polynomial fit (libm's `erff` per element was a quarter of ConvNeXt's
//! CPU time). Everything else (ReLU, clamps) is plain arithmetic and goes
//! through `Act::apply`, which vectorises as it is; ELU keeps libm's
//! `expm1f`.

use crate::activation::{Fast, Kind};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Act {
    Relu,
    Relu6,
    LeakyRelu(f32),
    Elu(f32),
    Tanh,
    Sigmoid,
    Silu,
    Gelu,
    GeluTanh,
    Hardsigmoid,
    Hardswish,
}

impl Act {
    /// This activation's row in the table (`crate::activation`) and its parameter.
    #[inline(always)]
    pub fn kind(self) -> (Kind, f32) {
        match self {
            Act::Relu => (Kind::Relu, 0.0),
            Act::Relu6 => (Kind::Relu6, 0.0),
            Act::LeakyRelu(s) => (Kind::LeakyRelu, s),
            Act::Elu(a) => (Kind::Elu, a),
            Act::Tanh => (Kind::Tanh, 0.0),
            Act::Sigmoid => (Kind::Sigmoid, 0.0),
            Act::Silu => (Kind::Silu, 0.0),
            Act::Gelu => (Kind::Gelu, 0.0),
            Act::GeluTanh => (Kind::GeluTanh, 0.0),
            Act::Hardsigmoid => (Kind::Hardsigmoid, 0.0),
            Act::Hardswish => (Kind::Hardswish, 0.0),
        }
    }

    /// The table's formula in f32, with libm's functions.
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        let (kind, p) = self.kind();
        kind.forward(p, v)
    }
}

/// Applies `act` to every element of `v`: one loop per activation, in a
/// function compiled for AVX-512F or AVX2 where the CPU has it, so that the
/// formula vectorises (the transcendental ones through [`Fast`]'s
/// polynomials; ELU's `exp_m1` stays libm's, as in [`Act::apply`], so the
/// piecewise kinds and ELU give exactly what `apply` gives).
pub fn apply_slice(act: Act, v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (just checked).
        unsafe { every_avx512(act, v) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (just checked).
        unsafe { every_avx2(act, v) };
        return;
    }
    every(act, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn every_avx2(act: Act, v: &mut [f32]) {
    every(act, v)
}

/// The same loops 16 lanes wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn every_avx512(act: Act, v: &mut [f32]) {
    every(act, v)
}

/// One loop per activation, each with its kind a constant, so that the
/// formula inlines into a loop without a branch on the kind.
#[inline(always)]
fn every(act: Act, v: &mut [f32]) {
    // A `for` loop, not `for_each`, and `forward` inlined: the loop body
    // must be compiled inside the target-feature function above. With
    // `for_each` (or an out-of-line `apply` per element) it stayed in
    // baseline (SSE2) code that LLVM left scalar: SiLU was 59% of
    // efficientnet_b0's CPU time at batch 1 and ReLU6 44% of mobilenet_v2's.
    #[inline(always)]
    fn each(kind: Kind, p: f32, v: &mut [f32]) {
        for x in v.iter_mut() {
            *x = kind.forward(Fast(p), Fast(*x)).0;
        }
    }
    let (kind, p) = act.kind();
    match kind {
        Kind::Relu => each(Kind::Relu, p, v),
        Kind::Relu6 => each(Kind::Relu6, p, v),
        Kind::LeakyRelu => each(Kind::LeakyRelu, p, v),
        Kind::Elu => each(Kind::Elu, p, v),
        Kind::Tanh => each(Kind::Tanh, p, v),
        Kind::Sigmoid => each(Kind::Sigmoid, p, v),
        Kind::Silu => each(Kind::Silu, p, v),
        Kind::Gelu => each(Kind::Gelu, p, v),
        Kind::GeluTanh => each(Kind::GeluTanh, p, v),
        Kind::Hardsigmoid => each(Kind::Hardsigmoid, p, v),
        Kind::Hardswish => each(Kind::Hardswish, p, v),
    }
}

/// eˣ for x in [−87, 88] (clamped outside it, +∞ past f32's range, so
/// that a formula meets ∞ where f64 does; NaN stays NaN). Cephes `expf`:
/// x = n·ln 2 + r, |r| ≤ ln 2 / 2, eʳ by a degree-7 polynomial, 2ⁿ from bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let overflow = x > 88.722_84;
    let x = x.clamp(-87.0, 88.0);
    // Round x·log2(e) to an integer n: adding 1.5·2²³ leaves n in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    // r = x − n·ln 2, with ln 2 split so n·C1 is exact.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5e-1;
    let er = p * r * r + r + 1.0;
    // 2ⁿ: n + 127 in the exponent field (n is in −126..=127 after the clamp).
    let n_bits = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let e = er * f32::from_bits((n_bits.wrapping_add(127) << 23) as u32);
    if overflow {
        f32::INFINITY
    } else {
        e
    }
}

/// tanh: Cephes' odd polynomial below |x| = 0.625, 1 − 2/(e²ˣ + 1) above.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
            * z
            * x
            + x;
    let large = (1.0 - 2.0 / (exp(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        large
    }
}

/// erf, branch-free so that GELU vectorises: x·P(x²) below |x| = 1, and
/// 1 − e^(−x²)·h(1/x)/x from there to 4 (past 4, erf rounds to ±1 in f32),
/// sign restored; NaN stays NaN. P (degree 6 in x²) and h (degree 9 in
/// 1/x) are least-squares fits of erf(x)/x on [0, 1] and of
/// erfc(x)·x·e^(x²) on [1, 4] (relative errors 1.6e-9 and 7.4e-9 before
/// f32 rounding; the tests measure the result against f64).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    // A comparison, not `min`, so that NaN passes through.
    let a = x.abs();
    let a = if a > 4.0 { 4.0 } else { a };
    let z = x * x;
    let small = x
        * ((((((7.933_422_4e-5 * z - 8.034_828e-4) * z + 5.191_216_6e-3) * z - 2.685_54e-2) * z
            + 1.128_362_6e-1)
            * z
            - 3.761_263e-1)
            * z
            + std::f32::consts::FRAC_2_SQRT_PI);
    let u = 1.0 / a;
    let h = ((((((((-4.865_409_4e-2 * u + 3.285_452_3e-1) * u - 9.828_657_5e-1) * u
        + 1.693_146)
        * u
        - 1.793_545_3)
        * u
        + 1.079_978_4)
        * u
        - 1.510_716_2e-1)
        * u
        - 2.604_342e-1)
        * u
        - 1.766_901_8e-3)
        * u
        + 5.642_518_3e-1;
    let large = (1.0 - exp(-(a * a)) * u * h).copysign(x);
    if a < 1.0 {
        small
    } else {
        large
    }
}

/// 1 / (1 + e⁻ˣ) (what `Kind::Sigmoid` computes over `Fast`; for the tests).
#[cfg(test)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs: a dense grid over [−20, 20] plus tiny and huge values.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (-400_000..=400_000).map(|i| i as f32 * 5e-5).collect();
        for e in -30..=2 {
            let m = 10f32.powi(e);
            v.extend([m, -m, 1.7 * m, -3.1 * m]);
        }
        v.extend([
            -87.0, 88.0, -100.0, 100.0, 1e30, -1e30, 0.625, -0.625, 0.0, -0.0,
        ]);
        v
    }

    fn rel(a: f32, b: f64) -> f64 {
        if b == 0.0 {
            a.abs() as f64
        } else {
            ((a as f64 - b) / b).abs()
        }
    }

    #[test]
    fn exp_is_accurate_to_a_few_ulp() {
        let mut worst = 0f64;
        for x in inputs().into_iter().filter(|x| (-87.0..=88.0).contains(x)) {
            worst = worst.max(rel(exp(x), (x as f64).exp()));
        }
        assert!(worst < 3e-7, "exp: worst relative error {worst:e}");
        assert_eq!(exp(-1e30), exp(-87.0));
        assert!(exp(88.0).is_finite() && exp(88.0) > 1e38);
        assert_eq!(exp(1e30), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_and_sigmoid_match_f64() {
        let (mut t, mut s, mut si, mut g) = (0f64, 0f64, 0f64, 0f64);
        for x in inputs() {
            let xd = x as f64;
            t = t.max(rel(tanh(x), xd.tanh()));
            if x >= -80.0 {
                // Below −87, e⁻ˣ is clamped: the result is < 1e-37 either way.
                s = s.max(rel(sigmoid(x), 1.0 / (1.0 + (-xd).exp())));
            }
            let mut v = [x; 1];
            apply_slice(Act::Silu, &mut v);
            si = si.max((v[0] as f64 - xd / (1.0 + (-xd).exp())).abs() / xd.abs().max(1.0));
            let mut v = [x; 1];
            apply_slice(Act::GeluTanh, &mut v);
            let r = 0.5 * xd * (1.0 + (0.797_884_6 * (xd + 0.044715 * xd * xd * xd)).tanh());
            g = g.max((v[0] as f64 - r).abs() / r.abs().max(1.0));
        }
        assert!(t < 1e-6, "tanh: worst relative error {t:e}");
        assert!(s < 1e-6, "sigmoid: worst relative error {s:e}");
        assert!(si < 1e-6, "silu: worst scaled error {si:e}");
        assert!(g < 1e-6, "gelu_tanh: worst scaled error {g:e}");
        assert!(tanh(f32::NAN).is_nan() && sigmoid(f32::NAN).is_nan());
        assert!(erf(f32::NAN).is_nan());
        assert_eq!(tanh(1e30), 1.0);
        assert_eq!(tanh(-1e30), -1.0);
    }

    #[test]
    fn erf_and_gelu_match_f64() {
        let (mut e, mut g) = (0f64, 0f64);
        for x in inputs() {
            let xd = x as f64;
            // Absolute for erf (|erf| ≤ 1; near 0 relative, checked below).
            e = e.max((erf(x) as f64 - libm::erf(xd)).abs());
            let mut v = [x; 1];
            apply_slice(Act::Gelu, &mut v);
            let r = 0.5 * xd * (1.0 + libm::erf(xd * std::f64::consts::FRAC_1_SQRT_2));
            g = g.max((v[0] as f64 - r).abs() / r.abs().max(1.0));
        }
        // One unit in the last place of values near 1 is 1.2e-7.
        assert!(e < 2.5e-7, "erf: worst absolute error {e:e}");
        assert!(g < 4e-7, "gelu: worst scaled error {g:e}");
        for x in [1e-30f32, 1e-10, 1e-5, 1e-3, 0.1, 0.5, 0.999] {
            let rel = (erf(x) as f64 - libm::erf(x as f64)).abs() / libm::erf(x as f64);
            assert!(rel < 3e-7, "erf({x}): relative error {rel:e}");
            assert_eq!(erf(-x), -erf(x));
        }
        assert_eq!(erf(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(erf(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!((erf(4.0), erf(1e30), erf(f32::INFINITY)), (1.0, 1.0, 1.0));
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
    }

    #[test]
    fn piecewise_and_libm_activations_on_slices_equal_the_scalar_ones_bit_for_bit() {
        // Every length crosses the 16- and 8-lane loops and their remainders;
        // NaN, infinities, zeros of both signs and the kinks included.
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            3.0,
            -3.0,
            6.0,
        ];
        for len in [1usize, 7, 8, 9, 15, 16, 17, 33, 100] {
            let xs: Vec<f32> = (0..len)
                .map(|i| {
                    specials
                        .get(i % 11)
                        .copied()
                        .unwrap_or((i as f32 - 50.0) * 0.173)
                })
                .collect();
            for act in [
                Act::Relu,
                Act::Relu6,
                Act::LeakyRelu(0.1),
                Act::Elu(1.5),
                Act::Hardsigmoid,
                Act::Hardswish,
            ] {
                let mut v = xs.clone();
                apply_slice(act, &mut v);
                for (o, &x) in v.iter().zip(&xs) {
                    let want = act.apply(x);
                    assert!(
                        o.to_bits() == want.to_bits() || (o.is_nan() && want.is_nan()),
                        "{act:?}({x}) = {o} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn slices_of_every_length_use_the_same_formula() {
        // The vector loop and its scalar remainder must agree with the scalar function.
        for len in [1usize, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100] {
            let xs: Vec<f32> = (0..len).map(|i| (i as f32 - 40.0) * 0.37).collect();
            for act in [Act::Tanh, Act::Sigmoid] {
                let mut v = xs.clone();
                apply_slice(act, &mut v);
                for (o, &x) in v.iter().zip(&xs) {
                    let want = if act == Act::Tanh {
                        tanh(x)
                    } else {
                        sigmoid(x)
                    };
                    assert!(
                        (o - want).abs() <= 2.0 * f32::EPSILON * want.abs(),
                        "{act:?}({x}) = {o} vs {want}"
                    );
                }
            }
        }
    }
}
