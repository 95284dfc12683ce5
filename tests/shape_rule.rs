//! The output-size rule of convolution and pooling windows
//! ([`cnnc::front::shape::Window::output`]) against three independent references:
//!
//! 1. [`cnnc::front::shape::brute_force_output`], which counts window positions one by one;
//! 2. PyTorch's formula (`pooling_output_shape_pad_lr` in ATen), written out
//!    again here in 128-bit arithmetic;
//! 3. a table of sizes produced by real PyTorch modules.

use cnnc::front::shape::{brute_force_output, SizeError, Window};
use proptest::prelude::*;

/// PyTorch's rule, independently of `shape.rs`: floor mode is
/// `(I + 2P − D(K − 1) − 1) / S + 1` with floor division; ceil mode rounds the
/// division up and then drops a last window that would start in the right
/// padding: `if (O − 1)·S ≥ I + P_before { O −= 1 }`.
fn pytorch_formula(w: &Window) -> i128 {
    let (i, k, s, pb, pa, d) = (
        i128::from(w.input),
        i128::from(w.kernel),
        i128::from(w.stride),
        i128::from(w.pad_before),
        i128::from(w.pad_after),
        i128::from(w.dilation),
    );
    let numerator = i + pb + pa - d * (k - 1) - 1;
    let mut out = if w.ceil_mode {
        (numerator + s - 1).div_euclid(s) + 1
    } else {
        numerator.div_euclid(s) + 1
    };
    if w.ceil_mode && (out - 1) * s >= i + pb {
        out -= 1;
    }
    out
}

fn window(input: i64, kernel: i64, stride: i64, padding: i64, dilation: i64, ceil: bool) -> Window {
    Window {
        input,
        kernel,
        stride,
        pad_before: padding,
        pad_after: padding,
        dilation,
        ceil_mode: ceil,
    }
}

/// Output sizes from PyTorch 2.15.0 (CPU), one spatial axis of a square input:
/// `nn.MaxPool2d(k, stride=s, padding=p, dilation=d, ceil_mode=c)(torch.zeros(1, 1, i, i)).shape[-1]`
/// and `nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)(torch.zeros(1, 1, i, i)).shape[-1]`.
/// An output of 0 means PyTorch raised "Given input size ... Calculated output size ... is too small".
///
/// Columns: (input, kernel, stride, padding, dilation, ceil_mode, output).
const PYTORCH: &[(i64, i64, i64, i64, i64, bool, i64)] = &[
    (112, 3, 2, 1, 1, false, 56),  // MaxPool2d
    (112, 3, 2, 1, 1, true, 57),   // MaxPool2d
    (55, 3, 2, 0, 1, false, 27),   // MaxPool2d
    (55, 3, 2, 0, 1, true, 27),    // MaxPool2d
    (13, 3, 2, 0, 1, true, 6),     // MaxPool2d
    (14, 3, 2, 0, 1, true, 7),     // MaxPool2d
    (5, 2, 2, 0, 1, true, 3),      // MaxPool2d
    (6, 3, 3, 1, 1, true, 3),      // MaxPool2d
    (7, 3, 2, 1, 1, true, 4),      // MaxPool2d
    (1, 1, 1, 0, 1, true, 1),      // MaxPool2d
    (8, 4, 3, 2, 1, true, 4),      // MaxPool2d
    (8, 4, 3, 2, 1, false, 3),     // MaxPool2d
    (10, 3, 4, 1, 1, true, 3),     // MaxPool2d
    (9, 2, 2, 1, 1, true, 5),      // MaxPool2d
    (9, 2, 2, 1, 1, false, 5),     // MaxPool2d
    (30, 5, 3, 2, 2, true, 10),    // MaxPool2d
    (30, 5, 3, 2, 2, false, 9),    // MaxPool2d
    (17, 3, 2, 1, 3, true, 7),     // MaxPool2d
    (4, 2, 3, 1, 1, true, 2),      // MaxPool2d
    (5, 3, 5, 1, 1, true, 2),      // MaxPool2d
    (11, 4, 4, 2, 1, true, 4),     // MaxPool2d
    (3, 3, 1, 1, 1, true, 3),      // MaxPool2d
    (20, 2, 5, 1, 4, true, 5),     // MaxPool2d
    (2, 2, 2, 1, 1, true, 2),      // MaxPool2d
    (7, 7, 6, 3, 1, true, 2),      // MaxPool2d
    (6, 2, 4, 1, 1, true, 2),      // MaxPool2d
    (10, 4, 5, 2, 1, true, 3),     // MaxPool2d
    (3, 2, 2, 1, 1, true, 2),      // MaxPool2d
    (4, 3, 3, 1, 2, true, 2),      // MaxPool2d
    (224, 11, 4, 2, 1, false, 55), // Conv2d
    (224, 7, 2, 3, 1, false, 112), // Conv2d
    (56, 3, 1, 1, 1, false, 56),   // Conv2d
    (56, 3, 2, 1, 1, false, 28),   // Conv2d
    (28, 1, 2, 0, 1, false, 14),   // Conv2d
    (32, 5, 1, 0, 1, false, 28),   // Conv2d
    (17, 3, 3, 2, 2, false, 6),    // Conv2d
    (9, 3, 1, 0, 4, false, 1),     // Conv2d
    (10, 3, 2, 3, 3, false, 5),    // Conv2d
    (5, 5, 1, 0, 1, false, 1),     // Conv2d
    (64, 3, 5, 1, 2, false, 13),   // Conv2d
    (13, 4, 3, 0, 2, false, 3),    // Conv2d
    (7, 2, 6, 1, 3, false, 1),     // Conv2d
    (100, 9, 7, 4, 1, false, 15),  // Conv2d
    (6, 6, 6, 0, 1, false, 1),     // Conv2d
    (4, 5, 1, 0, 1, false, 0),     // MaxPool2d raises: output size is too small
    (4, 5, 1, 0, 1, true, 0),      // MaxPool2d raises: output size is too small
    (3, 2, 1, 0, 3, false, 0),     // MaxPool2d raises: output size is too small
    (5, 3, 2, 0, 3, true, 0),      // MaxPool2d raises: output size is too small
    (1, 3, 2, 1, 2, true, 0),      // MaxPool2d raises: output size is too small
];

#[test]
fn matches_pytorch_table() {
    for &(i, k, s, p, d, c, expected) in PYTORCH {
        let w = window(i, k, s, p, d, c);
        let case =
            format!("input {i}, kernel {k}, stride {s}, padding {p}, dilation {d}, ceil {c}");
        let sized = w.output();
        if expected == 0 {
            assert!(
                matches!(sized.result, Err(SizeError::Empty(v)) if v <= 0),
                "{case}: PyTorch rejects it, cnnc gives {:?}",
                sized.result
            );
        } else {
            assert_eq!(sized.result, Ok(expected), "{case}");
        }
        assert_eq!(brute_force_output(&w), expected, "brute force, {case}");
        assert_eq!(
            pytorch_formula(&w).max(0),
            i128::from(expected),
            "formula, {case}"
        );
    }
}

/// A window in the range real layers use; padding at most half the kernel
/// extent, as PyTorch's pools allow.
fn small_window() -> impl Strategy<Value = Window> {
    (1i64..64, 1i64..12, 1i64..6, 1i64..4, any::<bool>()).prop_flat_map(|(i, k, s, d, c)| {
        let extent = d * (k - 1) + 1;
        (0..=extent / 2).prop_map(move |p| window(i, k, s, p, d, c))
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4096,
        // Failures print their minimal case; nothing is written next to the tests.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn agrees_with_brute_force_and_formula(w in small_window()) {
        let brute = brute_force_output(&w);
        let formula = pytorch_formula(&w);
        let sized = w.output();
        if brute == 0 {
            prop_assert!(
                matches!(sized.result, Err(SizeError::Empty(_))),
                "{w:?}: brute force gives 0, output() gives {:?}",
                sized.result
            );
        } else {
            prop_assert_eq!(&sized.result, &Ok(brute), "{:?}", w);
        }
        // The formula agrees too, including the (non-positive) value an empty output reports.
        match sized.result {
            Ok(v) | Err(SizeError::Empty(v)) => prop_assert_eq!(i128::from(v), formula, "{:?}", w),
            Err(SizeError::Overflow) => prop_assert!(false, "{w:?}: overflow on small values"),
        }
        prop_assert_eq!(i128::from(brute), formula.max(0), "{:?}", w);
    }

    #[test]
    fn asymmetric_padding_agrees_with_brute_force(
        (i, k, s, d, c) in (1i64..40, 1i64..8, 1i64..5, 1i64..3, any::<bool>()),
        (pb, pa) in (0i64..6, 0i64..6),
    ) {
        let w = Window { input: i, kernel: k, stride: s, pad_before: pb, pad_after: pa, dilation: d, ceil_mode: c };
        let formula = pytorch_formula(&w);
        match w.output().result {
            Ok(v) | Err(SizeError::Empty(v)) => prop_assert_eq!(i128::from(v), formula, "{:?}", w),
            Err(SizeError::Overflow) => prop_assert!(false, "{w:?}: overflow on small values"),
        }
        // PyTorch drops at most one window that starts in the right padding,
        // which is all of them when that padding is narrower than the window.
        if !c || pa < d * (k - 1) + 1 {
            prop_assert_eq!(i128::from(brute_force_output(&w)), formula.max(0), "{:?}", w);
        }
    }

    #[test]
    fn arithmetic_shows_the_numbers(w in small_window()) {
        let sized = w.output();
        let round = if w.ceil_mode { "ceil((" } else { "floor((" };
        prop_assert!(sized.arithmetic.starts_with(round), "{}", sized.arithmetic);
        prop_assert!(sized.arithmetic.contains(&format!("{} + 2·{}", w.input, w.pad_before)), "{}", sized.arithmetic);
        prop_assert!(sized.arithmetic.contains(&format!("/{} + 1)", w.stride)), "{}", sized.arithmetic);
        match sized.result {
            Ok(v) => {
                let tail = format!(" = {v}");
                prop_assert!(sized.arithmetic.ends_with(&tail), "{}", sized.arithmetic);
            }
            Err(SizeError::Empty(v)) if v < 0 => {
                prop_assert!(sized.arithmetic.ends_with(&format!(" = −{}", -v)), "{}", sized.arithmetic);
            }
            Err(SizeError::Empty(_)) => {
                prop_assert!(sized.arithmetic.ends_with(" = 0"), "{}", sized.arithmetic);
            }
            Err(SizeError::Overflow) => prop_assert!(false, "overflow on small values"),
        }
    }

    /// Any positive values, up to `i64::MAX`: never a panic (the test profile
    /// checks overflow), and whatever is computed matches exact 128-bit arithmetic.
    #[test]
    fn huge_values_never_panic(
        input in 1i64..=i64::MAX,
        kernel in 1i64..=i64::MAX,
        stride in 1i64..=i64::MAX,
        dilation in 1i64..=i64::MAX,
        (pb, pa) in (0i64..=i64::MAX, 0i64..=i64::MAX),
        ceil_mode in any::<bool>(),
    ) {
        let w = Window { input, kernel, stride, pad_before: pb, pad_after: pa, dilation, ceil_mode };
        let sized = w.output();
        let exact = pytorch_formula(&w);
        let padded = i128::from(input) + i128::from(pb) + i128::from(pa);
        let span = i128::from(dilation) * (i128::from(kernel) - 1);
        match sized.result {
            Ok(v) => prop_assert!(v >= 1 && i128::from(v) == exact, "{w:?}: {v} vs {exact}"),
            Err(SizeError::Empty(v)) => prop_assert!(v <= 0 && i128::from(v) == exact, "{w:?}: {v} vs {exact}"),
            Err(SizeError::Overflow) => {
                prop_assert!(padded > i128::from(i64::MAX) || span > i128::from(i64::MAX) || padded - span - 1 < i128::from(i64::MIN),
                    "{w:?}: reported overflow, but nothing overflows");
                prop_assert!(sized.arithmetic.ends_with("overflows"), "{}", sized.arithmetic);
            }
        }
        let _ = w.padding_for_nonempty();
        let _ = w.padding_keeping_size();
    }
}

#[test]
fn edge_cases() {
    let max = i64::MAX;
    // The largest input with a 1×1 window keeps its size.
    assert_eq!(window(max, 1, 1, 0, 1, false).output().result, Ok(max));
    assert_eq!(window(max, 1, 1, 0, 1, true).output().result, Ok(max));
    // Padding that overflows the padded size.
    assert_eq!(
        window(max, 1, 1, 1, 1, false).output().result,
        Err(SizeError::Overflow)
    );
    // A kernel extent that overflows.
    assert_eq!(
        window(8, max, 1, 0, 2, false).output().result,
        Err(SizeError::Overflow)
    );
    // A kernel larger than the input: empty, with the arithmetic and a real minus sign.
    let sized = window(4, 7, 1, 0, 1, false).output();
    assert_eq!(sized.result, Err(SizeError::Empty(-2)));
    assert_eq!(
        sized.arithmetic,
        "floor((4 + 2·0 − 1·(7 − 1) − 1)/1 + 1) = −2"
    );
    // A huge stride gives one window.
    assert_eq!(window(100, 3, max, 1, 1, true).output().result, Ok(1));
    assert_eq!(window(100, 3, max, 1, 1, false).output().result, Ok(1));
}
