//! Sliding-window layers (convolution and pooling): their output sizes and
//! errors.

use super::args::PadSpec;
use super::items::{place_name, Place};
use super::layers::ConvArgs;
use super::values::{PShape, Val};
use super::Elab;
use crate::front::diag::Diagnostic;
use crate::front::shape::{SizeError, Window};
use crate::front::source::Span;
use crate::ir::{Op, PaddingMode, ParamKind};

impl Elab<'_> {
    pub(super) fn conv_layer(
        &mut self,
        a: &ConvArgs,
        place: &Place,
        span: Span,
        input: Val,
        args_span: Span,
        unused: bool,
    ) -> Val {
        let named = self.require_name("conv", place, span);
        // After an earlier error the input is unknown; still check the arguments.
        let maps = match input.shape {
            PShape::Unknown => PShape::Chw(None, None, None),
            _ => self.needs_maps("conv", &input, span),
        };
        let PShape::Chw(mut c, h, w) = maps else {
            return self.unknown(span);
        };
        let mut ok = named;
        // An `unused` layer is connected to nothing, so `in_channels` gives its
        // input size instead of checking it.
        if let (true, Some((n, _))) = (unused, a.in_check) {
            c = Some(n);
        }
        if let (false, Some((expected, s)), Some(c)) = (unused, a.in_check, c) {
            if expected != c {
                self.error(
                    Diagnostic::error(
                        format!("`conv` expects {expected} input channels, but its input has {c}"),
                        s,
                        format!("the input has {c} channels"),
                    )
                    .with_secondary(
                        input.span,
                        format!("the input becomes {} here", input.shape.show()),
                    )
                    .with_help(
                        "input channels are inferred; drop `in_channels`, or fix the layer before",
                    ),
                );
                ok = false;
            }
        }
        if let Some(c) = c {
            if c % a.groups != 0 || a.out % a.groups != 0 {
                let (what, n) = if c % a.groups != 0 {
                    ("input channels", c)
                } else {
                    ("output channels", a.out)
                };
                let mut d = Diagnostic::error(
                    format!("{what} {n} are not divisible by groups = {}", a.groups),
                    args_span,
                    format!("{n} % {} = {}", a.groups, n % a.groups),
                )
                .with_note(format!(
                    "a grouped convolution splits channels into {} equal groups",
                    a.groups
                ));
                let g = a.groups;
                let best = (1..=g.min(4096))
                    .rev()
                    .find(|d| c % d == 0 && a.out % d == 0)
                    .unwrap_or(1);
                let multiple = a.out.checked_add(g - 1).map(|v| v / g * g);
                d = match multiple {
                    _ if best > 1 => {
                        d.with_help(format!("groups = {best} divides both {c} and {}", a.out))
                    }
                    Some(m) if c % g == 0 => d.with_help(format!(
                        "make the output channels a multiple of {g} (e.g. {m}), or use fewer groups"
                    )),
                    _ => d.with_help(format!(
                        "groups must divide both {c} and {}; groups = 1 is an ordinary convolution",
                        a.out
                    )),
                };
                self.error(d);
                ok = false;
            }
        }
        let (pad_h, pad_w) = match a.padding {
            PadSpec::Explicit(ph, pw) => ((ph, ph), (pw, pw)),
            PadSpec::Same => {
                let total_h = a.dilation.0.saturating_mul(a.kernel.0 - 1);
                let total_w = a.dilation.1.saturating_mul(a.kernel.1 - 1);
                (
                    (total_h / 2, total_h - total_h / 2),
                    (total_w / 2, total_w - total_w / 2),
                )
            }
        };
        let mut dims = [None, None];
        // Both axes alike: report a problem once, for height and width together.
        let square = h.is_some()
            && h == w
            && a.kernel.0 == a.kernel.1
            && a.stride.0 == a.stride.1
            && pad_h == pad_w
            && a.dilation.0 == a.dilation.1;
        for (axis, (size, kernel, stride, pad, dilation)) in [
            (h, a.kernel.0, a.stride.0, pad_h, a.dilation.0),
            (w, a.kernel.1, a.stride.1, pad_w, a.dilation.1),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(size) = size else { continue };
            if square && axis == 1 {
                dims[1] = dims[0];
                continue;
            }
            let axis_name = if axis == 0 { "height" } else { "width" };
            let limit = if a.mode == PaddingMode::Circular {
                size
            } else {
                size - 1
            };
            if a.mode != PaddingMode::Zeros
                && a.mode != PaddingMode::Replicate
                && pad.0.max(pad.1) > limit
            {
                let input_text = if square {
                    format!("a {size}×{size} input")
                } else {
                    format!("an input {axis_name} of {size}")
                };
                self.error(
                    Diagnostic::error(
                        format!(
                            "{} padding of {} is too large for {input_text}",
                            a.mode.name(),
                            pad.0.max(pad.1)
                        ),
                        args_span,
                        format!("at most {limit} here"),
                    )
                    .with_note(if a.mode == PaddingMode::Reflect {
                        "reflect padding mirrors the input without its edge, so it must be smaller than the input"
                    } else {
                        "circular padding wraps the input around, so it cannot exceed the input"
                    })
                    .with_help(format!(
                        "use padding ≤ {limit}, or `padding_mode = replicate` or `zeros`"
                    )),
                );
                ok = false;
                continue;
            }
            let window = Window {
                input: size,
                kernel,
                stride,
                pad_before: pad.0,
                pad_after: pad.1,
                dilation,
                ceil_mode: false,
            };
            dims[axis] = self.window_size("conv", axis_name, square, &window, args_span, &input);
            ok &= dims[axis].is_some();
        }
        let in_c = c.unwrap_or(0);
        let op = Op::Conv2d {
            in_channels: in_c,
            out_channels: a.out,
            kernel: a.kernel,
            stride: a.stride,
            padding: crate::ir::Padding {
                top: pad_h.0,
                bottom: pad_h.1,
                left: pad_w.0,
                right: pad_w.1,
            },
            dilation: a.dilation,
            groups: a.groups,
            bias: a.bias,
            padding_mode: a.mode,
        };
        let shape = if ok {
            PShape::Chw(Some(a.out), dims[0], dims[1])
        } else {
            PShape::Chw(Some(a.out), None, None)
        };
        let out = if unused {
            Val {
                node: None,
                shape,
                span,
            }
        } else {
            self.push(op, &[input], shape, &place.path, span)
        };
        if named {
            let per_group = c.map(|c| c / a.groups);
            self.add_param(
                &place.path,
                ParamKind::Weight,
                vec![Some(a.out), per_group, Some(a.kernel.0), Some(a.kernel.1)],
                out.node,
                span,
            );
            if a.bias {
                self.add_param(
                    &place.path,
                    ParamKind::Bias,
                    vec![Some(a.out)],
                    out.node,
                    span,
                );
            }
        }
        out
    }

    /// Applies the size rule on one axis, reporting an empty output with its
    /// arithmetic. `square` says the other axis is the same, so one report covers both.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn window_size(
        &mut self,
        op: &str,
        axis: &str,
        square: bool,
        window: &Window,
        span: Span,
        input: &Val,
    ) -> Option<i64> {
        let sized = window.output();
        let (what, axes) = if square {
            ("size", "height and width")
        } else {
            (axis, axis)
        };
        match sized.result {
            Ok(v) => Some(v),
            Err(SizeError::Overflow) => {
                self.error(
                    Diagnostic::error(
                        format!("`{op}` output {what} overflows"),
                        span,
                        "arithmetic overflow",
                    )
                    .with_note(format!("{axes}: {}", sized.arithmetic)),
                );
                None
            }
            Err(SizeError::Empty(v)) => {
                let extent = window
                    .dilation
                    .saturating_mul(window.kernel - 1)
                    .saturating_add(1);
                let padded = window
                    .input
                    .saturating_add(window.pad_before)
                    .saturating_add(window.pad_after);
                let padded_text = if window.pad_before + window.pad_after > 0 {
                    "padded input"
                } else {
                    "input"
                };
                let label = match (extent > padded, square) {
                    (true, true) => format!(
                        "the {extent}×{extent} window is larger than the {padded}×{padded} {padded_text}"
                    ),
                    (true, false) => format!(
                        "the window's {axis} {extent} is more than the {padded_text} {axis} {padded}"
                    ),
                    (false, _) => format!("the output {what} would be {}", minus(v)),
                };
                let mut d = Diagnostic::error(
                    format!(
                        "`{op}` output {what} is {}, the input is too small",
                        minus(v)
                    ),
                    span,
                    label,
                )
                .with_note(format!("{axes}: {}", sized.arithmetic))
                .with_secondary(
                    input.span,
                    format!("the input is {} here", input.shape.show()),
                );
                let size = if square {
                    format!("{0}×{0}", window.input)
                } else {
                    format!("{axis} {}", window.input)
                };
                let keep = window.padding_keeping_size();
                let fix = window.padding_for_nonempty();
                d = match keep {
                    Some(p) if op == "conv" => d.with_help(format!("padding = {p} keeps {size}")),
                    _ if op == "conv" => d.with_help(format!(
                        "padding = {fix} gives a non-empty output, or use a smaller kernel"
                    )),
                    _ => d.with_help(format!(
                        "use a kernel of at most {} here, or remove this layer",
                        padded.max(1)
                    )),
                };
                self.error(d);
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn pool_layer(
        &mut self,
        max: bool,
        kernel: (i64, i64),
        stride: (i64, i64),
        padding: (i64, i64),
        dilation: (i64, i64),
        ceil_mode: bool,
        count_include_pad: bool,
        place: &Place,
        span: Span,
        input: Val,
        args_span: Span,
    ) -> Val {
        let op_name = if max { "maxpool" } else { "avgpool" };
        let maps = match input.shape {
            PShape::Unknown => PShape::Chw(None, None, None),
            _ => self.needs_maps(op_name, &input, span),
        };
        let PShape::Chw(c, h, w) = maps else {
            return self.unknown(span);
        };
        let mut dims = [None, None];
        let mut ok = true;
        let square = h.is_some()
            && h == w
            && kernel.0 == kernel.1
            && stride.0 == stride.1
            && padding.0 == padding.1
            && dilation.0 == dilation.1;
        for (axis, size, k, s, p, d) in [
            (0, h, kernel.0, stride.0, padding.0, dilation.0),
            (1, w, kernel.1, stride.1, padding.1, dilation.1),
        ] {
            if square && axis == 1 {
                dims[1] = dims[0];
                continue;
            }
            let axis_name = if axis == 0 { "height" } else { "width" };
            // PyTorch: padding at most half the kernel size (not the dilated extent).
            let limit = k / 2;
            if p > limit {
                self.error(
                    Diagnostic::error(
                        format!("`{op_name}` padding {p} is more than half the kernel {k}"),
                        args_span,
                        format!("padding must be at most {limit}"),
                    )
                    .with_note(
                        "PyTorch rejects this: a window could then lie entirely in the padding",
                    )
                    .with_help(format!("use padding ≤ {limit}, or a larger kernel")),
                );
                ok = false;
                continue;
            }
            let Some(size) = size else { continue };
            let window = Window {
                input: size,
                kernel: k,
                stride: s,
                pad_before: p,
                pad_after: p,
                dilation: d,
                ceil_mode,
            };
            dims[axis] = self.window_size(op_name, axis_name, square, &window, args_span, &input);
            ok &= dims[axis].is_some();
        }
        let op = if max {
            Op::MaxPool2d {
                kernel,
                stride,
                padding,
                dilation,
                ceil_mode,
            }
        } else {
            Op::AvgPool2d {
                kernel,
                stride,
                padding,
                ceil_mode,
                count_include_pad,
            }
        };
        let shape = if ok {
            PShape::Chw(c, dims[0], dims[1])
        } else {
            PShape::Chw(c, None, None)
        };
        self.push(op, &[input], shape, place_name(place), span)
    }
}

/// A number with a real minus sign, as the size formulas print it.
pub(super) fn minus(v: i64) -> String {
    if v < 0 {
        format!("−{}", v.unsigned_abs())
    } else {
        v.to_string()
    }
}
