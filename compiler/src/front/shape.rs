//! The output-size rule of convolution and pooling windows, with the arithmetic spelled out for diagnostics.
//!
//! O = floor((I + P_before + P_after − D·(K − 1) − 1)/S + 1), with ceil in
//! ceil mode, where PyTorch also drops a last window that would start in the
//! right padding. All arithmetic is checked: overflow is an error, not a wrap.

/// One spatial axis of a sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub input: i64,
    pub kernel: i64,
    pub stride: i64,
    pub pad_before: i64,
    pub pad_after: i64,
    pub dilation: i64,
    pub ceil_mode: bool,
}

/// Why a window does not fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// The output would be empty; carries the computed value.
    Empty(i64),
    Overflow,
}

/// The computed size and the formula with the numbers filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sized {
    pub result: Result<i64, SizeError>,
    pub arithmetic: String,
}

impl Window {
    /// Applies the output-size rule. Expects kernel, stride, dilation ≥ 1 and
    /// paddings ≥ 0 (the checker reports those separately).
    pub fn output(&self) -> Sized {
        let arithmetic = self.arithmetic();
        let result = self.compute();
        let arithmetic = match &result {
            Ok(v) => format!("{arithmetic} = {v}"),
            Err(SizeError::Empty(v)) => format!("{arithmetic} = {}", minus(*v)),
            Err(SizeError::Overflow) => format!("{arithmetic} overflows"),
        };
        Sized { result, arithmetic }
    }

    fn compute(&self) -> Result<i64, SizeError> {
        let span = self
            .kernel
            .checked_sub(1)
            .and_then(|k| k.checked_mul(self.dilation))
            .ok_or(SizeError::Overflow)?;
        let padded = self
            .input
            .checked_add(self.pad_before)
            .and_then(|v| v.checked_add(self.pad_after))
            .ok_or(SizeError::Overflow)?;
        let numerator = padded
            .checked_sub(span)
            .and_then(|v| v.checked_sub(1))
            .ok_or(SizeError::Overflow)?;
        let mut out = if self.ceil_mode {
            // Ceil division without `numerator + stride − 1`, which can overflow.
            let round_up = i64::from(numerator.rem_euclid(self.stride) != 0);
            numerator.div_euclid(self.stride) + round_up + 1
        } else {
            numerator.div_euclid(self.stride) + 1
        };
        if self.ceil_mode && out >= 1 {
            // PyTorch: the last window must start inside the input or the left padding.
            let last_start = (out - 1)
                .checked_mul(self.stride)
                .ok_or(SizeError::Overflow)?;
            if last_start >= self.input + self.pad_before {
                out -= 1;
            }
        }
        if out < 1 {
            Err(SizeError::Empty(out))
        } else {
            Ok(out)
        }
    }

    fn arithmetic(&self) -> String {
        let round = if self.ceil_mode { "ceil" } else { "floor" };
        let padding = if self.pad_before == self.pad_after {
            format!("2·{}", self.pad_before)
        } else {
            format!("{} + {}", self.pad_before, self.pad_after)
        };
        format!(
            "{round}(({} + {padding} − {}·({} − 1) − 1)/{} + 1)",
            self.input, self.dilation, self.kernel, self.stride
        )
    }

    /// The smallest symmetric padding that gives at least one output.
    pub fn padding_for_nonempty(&self) -> i64 {
        let span = self.dilation.saturating_mul(self.kernel.saturating_sub(1));
        let missing = span.saturating_add(1).saturating_sub(self.input);
        (missing + 1) / 2
    }

    /// The symmetric padding that keeps the size at stride 1, if there is one.
    pub fn padding_keeping_size(&self) -> Option<i64> {
        let span = self.dilation.saturating_mul(self.kernel.saturating_sub(1));
        (self.stride == 1 && span % 2 == 0).then_some(span / 2)
    }
}

/// Formats a number with a real minus sign, as the formulas use.
fn minus(v: i64) -> String {
    if v < 0 {
        format!("−{}", v.unsigned_abs())
    } else {
        v.to_string()
    }
}

/// Counts window positions one by one; the independent reference the tests compare [`Window::output`] with.
pub fn brute_force_output(w: &Window) -> i64 {
    let padded = w.input + w.pad_before + w.pad_after;
    let extent = w.dilation * (w.kernel - 1) + 1;
    let mut count = 0;
    let mut start = 0;
    loop {
        let end = start + extent; // exclusive, in padded coordinates
        let take = if w.ceil_mode {
            // A partial last window is taken while the one before it (or the
            // virtual one at −stride) left part of the input uncovered, and it
            // does not start in the right padding.
            start - w.stride + extent < padded && start < w.input + w.pad_before
        } else {
            end <= padded
        };
        if !take || count > 1_000_000 {
            break;
        }
        count += 1;
        start += w.stride;
    }
    count
}

/// The product of sizes, or `None` on overflow.
pub fn checked_product(values: &[i64]) -> Option<i64> {
    values.iter().try_fold(1i64, |acc, &v| acc.checked_mul(v))
}
