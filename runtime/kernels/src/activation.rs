//! The one table of activations: each one's names, its formula and derivative written once over any float type, and its CUDA text; every backend takes its form from here.
//!
//! The reference evaluator runs [`Kind::forward`] in f64, the trainer
//! [`Kind::forward`] and [`Kind::derivative`] in f32, the CPU executor
//! [`Kind::forward`] in f32 ([`crate::act::Act::apply`]) or over
//! [`Fast`] (the same formula with a polynomial `exp` that vectorises, in
//! `act`), and the CUDA printer the [`Entry::cuda_call`] of each entry,
//! whose device function ([`Entry::cuda`]) is in the device library
//! `compiler/src/back/cuda_prelude.cuh` verbatim (a test checks it). One test
//! (`tests/activations.rs`) holds every one of these forms to the f64
//! formula, NaN and ±∞ included.

use std::ops::{Add, Div, Mul, Neg, Sub};

/// An activation without its parameter (leaky ReLU's slope, ELU's alpha).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Relu,
    Relu6,
    LeakyRelu,
    Elu,
    Tanh,
    Sigmoid,
    Silu,
    Gelu,
    GeluTanh,
    Hardsigmoid,
    Hardswish,
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub kind: Kind,
    /// The layer's name in `.cnn` text (both GELUs are `gelu`; `approximate = "tanh"` picks the second).
    pub name: &'static str,
    /// PyTorch's module (`torch.nn.*`), with the argument that selects this form.
    pub torch: &'static str,
    /// The parameter's name, for the two activations that take one.
    pub param: Option<&'static str>,
    /// The callee the CUDA printer writes: `cnnc::relu(v)`, `cnnc::elu(v, alpha)`.
    pub cuda_call: &'static str,
    /// Its definition in the device library (empty for CUDA's own `tanhf`).
    pub cuda: &'static str,
}

/// Every activation, in the order the language documents them.
pub const TABLE: [Entry; 11] = [
    Entry {
        kind: Kind::Relu,
        name: "relu",
        torch: "ReLU",
        param: None,
        cuda_call: "cnnc::relu",
        cuda: "__device__ __forceinline__ float relu(float v) { return v < 0.0f ? 0.0f : v; }",
    },
    Entry {
        kind: Kind::Relu6,
        name: "relu6",
        torch: "ReLU6",
        param: None,
        cuda_call: "cnnc::relu6",
        cuda: "__device__ __forceinline__ float relu6(float v) { return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v); }",
    },
    Entry {
        kind: Kind::LeakyRelu,
        name: "leaky_relu",
        torch: "LeakyReLU",
        param: Some("negative_slope"),
        cuda_call: "cnnc::leaky_relu",
        cuda: "__device__ __forceinline__ float leaky_relu(float v, float slope) { return v >= 0.0f ? v : v * slope; }",
    },
    Entry {
        kind: Kind::Elu,
        name: "elu",
        torch: "ELU",
        param: Some("alpha"),
        cuda_call: "cnnc::elu",
        cuda: "__device__ __forceinline__ float elu(float v, float alpha) { return v > 0.0f ? v : alpha * expm1f(v); }",
    },
    Entry {
        kind: Kind::Tanh,
        name: "tanh",
        torch: "Tanh",
        param: None,
        cuda_call: "tanhf",
        cuda: "",
    },
    Entry {
        kind: Kind::Sigmoid,
        name: "sigmoid",
        torch: "Sigmoid",
        param: None,
        cuda_call: "cnnc::sigmoid",
        cuda: "__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }",
    },
    Entry {
        kind: Kind::Silu,
        name: "silu",
        torch: "SiLU",
        param: None,
        cuda_call: "cnnc::silu",
        cuda: "__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }",
    },
    Entry {
        kind: Kind::Gelu,
        name: "gelu",
        torch: "GELU",
        param: None,
        cuda_call: "cnnc::gelu",
        cuda: "__device__ __forceinline__ float gelu(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }",
    },
    Entry {
        kind: Kind::GeluTanh,
        name: "gelu",
        torch: "GELU(approximate='tanh')",
        param: None,
        cuda_call: "cnnc::gelu_tanh",
        cuda: "__device__ __forceinline__ float gelu_tanh(float v) {\n  return 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));\n}",
    },
    Entry {
        kind: Kind::Hardsigmoid,
        name: "hardsigmoid",
        torch: "Hardsigmoid",
        param: None,
        cuda_call: "cnnc::hardsigmoid",
        cuda: "__device__ __forceinline__ float hardsigmoid(float v) {\n  const float r = (v + 3.0f) / 6.0f;\n  return r < 0.0f ? 0.0f : (r > 1.0f ? 1.0f : r);\n}",
    },
    Entry {
        kind: Kind::Hardswish,
        name: "hardswish",
        torch: "Hardswish",
        param: None,
        cuda_call: "cnnc::hardswish",
        cuda: "__device__ __forceinline__ float hardswish(float v) {\n  const float r = v + 3.0f;\n  return v * ((r < 0.0f ? 0.0f : (r > 6.0f ? 6.0f : r)) / 6.0f);\n}",
    },
];

/// What a formula needs of a float type: arithmetic, comparisons and four functions.
pub trait Real:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    /// A constant of the formula, rounded to this type.
    fn of(c: f64) -> Self;
    fn exp(self) -> Self;
    fn exp_m1(self) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
}

impl Real for f64 {
    #[inline(always)]
    fn of(c: f64) -> f64 {
        c
    }
    #[inline(always)]
    fn exp(self) -> f64 {
        f64::exp(self)
    }
    #[inline(always)]
    fn exp_m1(self) -> f64 {
        f64::exp_m1(self)
    }
    #[inline(always)]
    fn tanh(self) -> f64 {
        f64::tanh(self)
    }
    #[inline(always)]
    fn erf(self) -> f64 {
        libm::erf(self)
    }
}

impl Real for f32 {
    #[inline(always)]
    fn of(c: f64) -> f32 {
        c as f32
    }
    #[inline(always)]
    fn exp(self) -> f32 {
        f32::exp(self)
    }
    #[inline(always)]
    fn exp_m1(self) -> f32 {
        f32::exp_m1(self)
    }
    #[inline(always)]
    fn tanh(self) -> f32 {
        f32::tanh(self)
    }
    #[inline(always)]
    fn erf(self) -> f32 {
        libm::erff(self)
    }
}

/// An f32 whose `exp`, `tanh` and `erf` are the branch-free polynomials
/// of `act`, so that a formula over it vectorises; `exp_m1` stays libm's.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Fast(pub f32);

macro_rules! fast_op {
    ($tr:ident, $f:ident, $op:tt) => {
        impl $tr for Fast {
            type Output = Fast;
            #[inline(always)]
            fn $f(self, o: Fast) -> Fast {
                Fast(self.0 $op o.0)
            }
        }
    };
}
fast_op!(Add, add, +);
fast_op!(Sub, sub, -);
fast_op!(Mul, mul, *);
fast_op!(Div, div, /);

impl Neg for Fast {
    type Output = Fast;
    #[inline(always)]
    fn neg(self) -> Fast {
        Fast(-self.0)
    }
}

impl Real for Fast {
    #[inline(always)]
    fn of(c: f64) -> Fast {
        Fast(c as f32)
    }
    #[inline(always)]
    fn exp(self) -> Fast {
        Fast(crate::act::exp(self.0))
    }
    #[inline(always)]
    fn exp_m1(self) -> Fast {
        Fast(self.0.exp_m1())
    }
    #[inline(always)]
    fn tanh(self) -> Fast {
        Fast(crate::act::tanh(self.0))
    }
    #[inline(always)]
    fn erf(self) -> Fast {
        Fast(crate::act::erf(self.0))
    }
}

/// `v` limited to [lo, hi] by comparisons, so NaN stays NaN (as in PyTorch).
#[inline(always)]
fn clamp<T: Real>(v: T, lo: f64, hi: f64) -> T {
    if v < T::of(lo) {
        T::of(lo)
    } else if v > T::of(hi) {
        T::of(hi)
    } else {
        v
    }
}

/// √(2/π), of the tanh approximation of GELU.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

impl Kind {
    /// The row of this activation.
    pub fn entry(self) -> &'static Entry {
        // The table is in `Kind` order (a unit test checks it).
        &TABLE[self as usize]
    }

    /// The activation at `v`, as PyTorch defines it; `p` is the slope of
    /// leaky ReLU or the alpha of ELU (ignored by the others).
    #[inline(always)]
    pub fn forward<T: Real>(self, p: T, v: T) -> T {
        let zero = T::of(0.0);
        let one = T::of(1.0);
        match self {
            // `<` keeps NaN as PyTorch does (a `max` would turn it into 0).
            Kind::Relu => {
                if v < zero {
                    zero
                } else {
                    v
                }
            }
            Kind::Relu6 => clamp(v, 0.0, 6.0),
            Kind::LeakyRelu => {
                if v >= zero {
                    v
                } else {
                    v * p
                }
            }
            Kind::Elu => {
                if v > zero {
                    v
                } else {
                    p * v.exp_m1()
                }
            }
            Kind::Tanh => v.tanh(),
            Kind::Sigmoid => one / (one + (-v).exp()),
            Kind::Silu => v / (one + (-v).exp()),
            Kind::Gelu => {
                T::of(0.5) * v * (one + (v * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf())
            }
            Kind::GeluTanh => {
                let inner = T::of(SQRT_2_OVER_PI) * (v + T::of(0.044715) * v * v * v);
                T::of(0.5) * v * (one + inner.tanh())
            }
            Kind::Hardsigmoid => clamp((v + T::of(3.0)) / T::of(6.0), 0.0, 1.0),
            Kind::Hardswish => v * (clamp(v + T::of(3.0), 0.0, 6.0) / T::of(6.0)),
        }
    }

    /// d forward / d input at `x`: PyTorch's backward formulas, with its
    /// choices at the kinks and its comparisons, so that a NaN input passes
    /// the gradient on where PyTorch's does (threshold_backward,
    /// hardtanh_backward, elu_backward) and stops it where it stops it
    /// (hardsigmoid_backward).
    #[inline(always)]
    pub fn derivative<T: Real>(self, p: T, x: T) -> T {
        let zero = T::of(0.0);
        let one = T::of(1.0);
        match self {
            Kind::Relu => {
                if x <= zero {
                    zero
                } else {
                    one
                }
            }
            Kind::Relu6 => {
                if x <= zero || x >= T::of(6.0) {
                    zero
                } else {
                    one
                }
            }
            Kind::LeakyRelu => {
                if x > zero {
                    one
                } else {
                    p
                }
            }
            Kind::Elu => {
                if x <= zero {
                    p * x.exp()
                } else {
                    one
                }
            }
            Kind::Tanh => {
                let t = x.tanh();
                one - t * t
            }
            Kind::Sigmoid => {
                let s = one / (one + (-x).exp());
                s * (one - s)
            }
            Kind::Silu => {
                let s = one / (one + (-x).exp());
                s * (one + x * (one - s))
            }
            Kind::Gelu => {
                let cdf = T::of(0.5) * (one + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf());
                let pdf = (T::of(-0.5) * x * x).exp() * T::of(0.398_942_280_401_432_7);
                cdf + x * pdf
            }
            Kind::GeluTanh => {
                let c = T::of(SQRT_2_OVER_PI);
                let t = (c * (x + T::of(0.044715) * x * x * x)).tanh();
                let sech2 = one - t * t;
                // Where tanh has saturated the second term is 0, though x³
                // may have overflowed (0 · ∞ would make it NaN).
                let slope = if sech2 == zero {
                    zero
                } else {
                    T::of(0.5) * x * sech2 * c * (one + T::of(3.0 * 0.044715) * x * x)
                };
                T::of(0.5) * (one + t) + slope
            }
            Kind::Hardsigmoid => {
                if x > T::of(-3.0) && x < T::of(3.0) {
                    T::of(1.0 / 6.0)
                } else {
                    zero
                }
            }
            Kind::Hardswish => {
                if x < T::of(-3.0) {
                    zero
                } else if x <= T::of(3.0) {
                    x / T::of(3.0) + T::of(0.5)
                } else {
                    one
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_kind_order() {
        for (i, e) in TABLE.iter().enumerate() {
            assert_eq!(e.kind as usize, i, "{:?}", e.kind);
            assert_eq!(e.kind.entry().name, e.name);
        }
    }
}
