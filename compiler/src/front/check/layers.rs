//! Built-in layers: the dispatch on a layer's rule (from its entry in
//! `table`) and the elaboration of each layer that is not a sliding window.

use super::args::PadSpec;
use super::items::{place_name, Place};
use super::table::{find_layer, Rule};
use super::values::{Env, PShape, Val};
use super::Elab;
use crate::front::diag::Diagnostic;
use crate::front::source::Span;
use crate::front::syntax::{Arg, Ident};
use crate::ir::{Activation, Op, Padding, PaddingMode, ParamKind, F64};

pub(super) struct Call<'c> {
    pub(super) name: &'c Ident,
    pub(super) args: &'c [Arg],
    pub(super) args_span: Span,
    pub(super) item_span: Span,
}

pub(super) struct ConvArgs {
    pub(super) out: i64,
    pub(super) kernel: (i64, i64),
    pub(super) stride: (i64, i64),
    pub(super) padding: PadSpec,
    pub(super) dilation: (i64, i64),
    pub(super) groups: i64,
    pub(super) bias: bool,
    pub(super) mode: PaddingMode,
    pub(super) in_check: Option<(i64, Span)>,
}

impl Elab<'_> {
    /// A built-in layer: looked up in the table by its name or an alias, its
    /// arguments read by the table's definitions, then its rule applied.
    pub(super) fn layer(
        &mut self,
        call: &Call,
        place: Place,
        env: &Env,
        input: Val,
        unused: bool,
    ) -> Val {
        let op = call.name.text.as_str();
        let span = call.item_span;
        let Some(def) = find_layer(op) else {
            return self.unknown_layer(call);
        };
        let Some(a) = self.args(op, def.args, call.args, env, &input, call.args_span) else {
            return self.unknown(span);
        };
        match def.rule {
            Rule::Activation(act) => self.simple(Op::Activation(act), input, span, &place),
            Rule::Conv => {
                let kernel = a.pair("kernel_size");
                let stride = a.pair("stride");
                let padding = a.padding("padding");
                let dilation = a.pair("dilation");
                if matches!(padding, PadSpec::Same) && stride != (1, 1) {
                    let s = a.span("padding").unwrap_or(span);
                    self.error(
                        Diagnostic::error("`padding = same` needs stride 1", s, "with a stride above 1")
                            .with_note(format!("the stride here is {}", pair_text(stride)))
                            .with_help(format!(
                                "PyTorch rejects this too; give the padding as a number: `padding = {}`",
                                pair_text((
                                    dilation.0.saturating_mul(kernel.0 - 1) / 2,
                                    dilation.1.saturating_mul(kernel.1 - 1) / 2
                                ))
                            )),
                    );
                    return self.unknown(span);
                }
                let mode = match a.choice("padding_mode") {
                    "reflect" => PaddingMode::Reflect,
                    "replicate" => PaddingMode::Replicate,
                    "circular" => PaddingMode::Circular,
                    _ => PaddingMode::Zeros,
                };
                let conv = ConvArgs {
                    out: a.int("out_channels"),
                    kernel,
                    stride,
                    padding,
                    dilation,
                    groups: a.int("groups"),
                    bias: a.bool("bias"),
                    mode,
                    in_check: a.size("in_channels"),
                };
                self.conv_layer(&conv, &place, span, input, call.args_span, unused)
            }
            Rule::MaxPool | Rule::AvgPool => {
                let max = matches!(def.rule, Rule::MaxPool);
                let (dilation, include_pad) = if max {
                    (a.pair("dilation"), true)
                } else {
                    ((1, 1), a.bool("count_include_pad"))
                };
                self.pool_layer(
                    max,
                    a.pair("kernel_size"),
                    a.pair("stride"),
                    a.pair("padding"),
                    dilation,
                    a.bool("ceil_mode"),
                    include_pad,
                    &place,
                    span,
                    input,
                    call.args_span,
                )
            }
            Rule::AdaptivePool { max } | Rule::GlobalPool { max } => {
                let output = match def.rule {
                    Rule::AdaptivePool { .. } => {
                        let (h, w) = a.pair("output_size");
                        match a.size("output_width") {
                            Some((width, _)) => (h, width),
                            None => (h, w),
                        }
                    }
                    _ => (1, 1),
                };
                let PShape::Chw(c, _, _) = self.needs_maps(op, &input, span) else {
                    return self.unknown(span);
                };
                let node_op = if max {
                    Op::AdaptiveMaxPool2d { output }
                } else {
                    Op::AdaptiveAvgPool2d { output }
                };
                self.push(
                    node_op,
                    &[input],
                    PShape::Chw(c, Some(output.0), Some(output.1)),
                    place_name(&place),
                    span,
                )
            }
            Rule::BatchNorm => self.batchnorm_layer(
                a.float("eps"),
                a.float("momentum"),
                a.size("num_features"),
                &place,
                span,
                input,
                unused,
            ),
            Rule::Lrn => {
                let op = Op::LocalResponseNorm {
                    size: a.int("size"),
                    alpha: F64(a.float("alpha")),
                    beta: F64(a.float("beta")),
                    k: F64(a.float("k")),
                };
                self.needs_maps("lrn", &input, span);
                self.simple(op, input, span, &place)
            }
            Rule::Dropout => {
                let p = F64(a.float("p"));
                self.simple(Op::Dropout { p }, input, span, &place)
            }
            Rule::Dropout2d => {
                let p = F64(a.float("p"));
                self.needs_maps(op, &input, span);
                self.simple(Op::Dropout2d { p }, input, span, &place)
            }
            Rule::StochasticDepth => {
                let p = F64(a.float("p"));
                let row = a.choice("mode") == "row";
                self.simple(Op::StochasticDepth { p, row }, input, span, &place)
            }
            Rule::Flatten => {
                let shape = match input.shape {
                    PShape::Chw(c, h, w) => match (c, h, w) {
                        (Some(c), Some(h), Some(w)) => {
                            match crate::front::shape::checked_product(&[c, h, w]) {
                                Some(n) => PShape::Flat(Some(n)),
                                None => {
                                    self.error(
                                        Diagnostic::error(
                                            "`flatten` size overflows",
                                            span,
                                            "too many features",
                                        )
                                        .with_note(
                                            match (c as i128)
                                                .checked_mul(h as i128)
                                                .and_then(|v| v.checked_mul(w as i128))
                                            {
                                                Some(n) => format!(
                                                    "{c}·{h}·{w} = {n}, more than {}",
                                                    i64::MAX
                                                ),
                                                None => {
                                                    format!("{c}·{h}·{w} is more than {}", i64::MAX)
                                                }
                                            },
                                        )
                                        .with_secondary(
                                            input.span,
                                            format!("the input is {} here", input.shape.show()),
                                        ),
                                    );
                                    PShape::Flat(None)
                                }
                            }
                        }
                        _ => PShape::Flat(None),
                    },
                    PShape::Flat(n) => PShape::Flat(n),
                    PShape::Unknown => PShape::Flat(None),
                };
                self.push(Op::Flatten, &[input], shape, place_name(&place), span)
            }
            Rule::Linear => {
                let (out, bias) = (a.int("out_features"), a.bool("bias"));
                let in_check = a.size("in_features");
                if a.bool("per_pixel") {
                    return self
                        .pixel_linear_layer(out, bias, in_check, &place, span, input, unused);
                }
                self.linear_layer(out, bias, in_check, &place, span, input, unused)
            }
            Rule::Softmax { log } => {
                let dim = a.int("dim");
                if dim != 1 && dim != -1 {
                    let s = a.span("dim").unwrap_or(span);
                    self.error(
                        Diagnostic::error(format!("`{op}` over dimension {dim} is not supported"), s, "only dim = 1")
                            .with_note("cnnc normalises over the class (channel) dimension, dim = 1, as classifiers do")
                            .with_help(if dim == 0 {
                                "dimension 0 is the batch; use `dim = 1`"
                            } else {
                                "use `dim = 1`"
                            }),
                    );
                    return self.unknown(span);
                }
                if dim == -1 && matches!(input.shape, PShape::Chw(..)) {
                    let s = a.span("dim").unwrap_or(span);
                    self.error(
                        Diagnostic::error(
                            format!(
                                "`{op}` over the last dimension of feature maps is not supported"
                            ),
                            s,
                            "the last dimension is the width here",
                        )
                        .with_secondary(
                            input.span,
                            format!("the input is feature maps {} here", input.shape.show()),
                        )
                        .with_help(format!(
                            "use `{op}(dim = 1)` to normalise over channels, or `flatten` first"
                        )),
                    );
                    return self.unknown(span);
                }
                let node_op = if log { Op::LogSoftmax } else { Op::Softmax };
                self.simple(node_op, input, span, &place)
            }
            Rule::LeakyRelu => {
                let slope = F64(a.float("negative_slope"));
                self.simple(
                    Op::Activation(Activation::LeakyRelu(slope)),
                    input,
                    span,
                    &place,
                )
            }
            Rule::Elu => {
                let alpha = F64(a.float("alpha"));
                self.simple(Op::Activation(Activation::Elu(alpha)), input, span, &place)
            }
            Rule::Gelu => {
                let tanh = a.choice("approximate") == "tanh";
                self.simple(
                    Op::Activation(Activation::Gelu {
                        tanh_approximation: tanh,
                    }),
                    input,
                    span,
                    &place,
                )
            }
            Rule::Identity => self.simple(Op::Identity, input, span, &place),
            Rule::LayerNorm => self.layer_norm_layer(a.float("eps"), &place, span, input, unused),
            Rule::Scale => self.scale_layer(a.float("init"), &place, span, input, unused),
            Rule::ChannelShuffle => {
                let groups = a.int("groups");
                if let PShape::Chw(Some(c), _, _) = self.needs_maps(op, &input, span) {
                    if c % groups != 0 {
                        let s = a.span("groups").unwrap_or(span);
                        self.error(
                            Diagnostic::error(
                                format!("`channel_shuffle` cannot interleave {c} channels in {groups} groups"),
                                s,
                                format!("{c} is not a multiple of {groups}"),
                            )
                            .with_secondary(
                                input.span,
                                format!("the input becomes {} here", input.shape.show()),
                            )
                            .with_help("the groups must divide the channels, as `x.view(n, groups, c / groups, h, w)` needs"),
                        );
                        return self.unknown(span);
                    }
                }
                self.simple(Op::ChannelShuffle { groups }, input, span, &place)
            }
        }
    }

    /// Layers without weights: the shape passes through.
    pub(super) fn simple(&mut self, op: Op, input: Val, span: Span, place: &Place) -> Val {
        self.push(op, &[input], input.shape, place_name(place), span)
    }

    /// Reports a flat input where feature maps are needed; returns the shape.
    pub(super) fn needs_maps(&mut self, op: &str, input: &Val, span: Span) -> PShape {
        if let PShape::Flat(n) = input.shape {
            let shown = PShape::Flat(n).show();
            self.error(
                Diagnostic::error(
                    format!("`{op}` needs feature maps [C, H, W], but its input is flat {shown}"),
                    span,
                    "flat input",
                )
                .with_secondary(input.span, format!("the input becomes {shown} here"))
                .with_help(format!("move `{op}` before `flatten`")),
            );
            return PShape::Unknown;
        }
        input.shape
    }

    /// Requires a name for a layer with weights, which an unnamed item in a module scope lacks.
    pub(super) fn require_name(&mut self, op: &str, place: &Place, span: Span) -> bool {
        if place.own {
            return true;
        }
        self.error(
            Diagnostic::error(format!("`{op}` has weights, so it needs a name here"), span, "unnamed layer with weights")
                .with_help(format!(
                    "name it as the PyTorch attribute (`{op}1 = {op}(...)`), or put it in `seq {{ }}` to number it as `nn.Sequential` does"
                )),
        );
        false
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn batchnorm_layer(
        &mut self,
        eps: f64,
        momentum: f64,
        check: Option<(i64, Span)>,
        place: &Place,
        span: Span,
        input: Val,
        unused: bool,
    ) -> Val {
        let named = self.require_name("batchnorm", place, span);
        let features = input.shape.channels();
        if let (Some((expected, s)), Some(f)) = (check, features) {
            if expected != f {
                self.error(
                    Diagnostic::error(
                        format!("`batchnorm` expects {expected} features, but its input has {f}"),
                        s,
                        format!("the input has {f}"),
                    )
                    .with_secondary(
                        input.span,
                        format!("the input becomes {} here", input.shape.show()),
                    )
                    .with_help("the feature count is inferred; write `batchnorm` without it"),
                );
                return self.unknown(span);
            }
        }
        let op = Op::BatchNorm {
            features: features.unwrap_or(0),
            eps: F64(eps),
            momentum: F64(momentum),
        };
        let out = if unused {
            Val {
                node: None,
                shape: input.shape,
                span,
            }
        } else {
            self.push(op, &[input], input.shape, &place.path, span)
        };
        if named {
            for kind in [
                ParamKind::Weight,
                ParamKind::Bias,
                ParamKind::RunningMean,
                ParamKind::RunningVar,
            ] {
                self.add_param(&place.path, kind, vec![features], out.node, span);
            }
            self.add_param(
                &place.path,
                ParamKind::NumBatchesTracked,
                vec![],
                out.node,
                span,
            );
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_layer(
        &mut self,
        out_features: i64,
        bias: bool,
        in_check: Option<(i64, Span)>,
        place: &Place,
        span: Span,
        input: Val,
        unused: bool,
    ) -> Val {
        let named = self.require_name("linear", place, span);
        let in_features = match input.shape {
            // An `unused` layer is connected to nothing: `in_features` gives its size.
            _ if unused && in_check.is_some() => in_check.map(|(n, _)| n),
            PShape::Flat(n) => n,
            PShape::Chw(c, h, w) => {
                let product = match (c, h, w) {
                    (Some(c), Some(h), Some(w)) => crate::front::shape::checked_product(&[c, h, w]),
                    _ => None,
                };
                let mut d = Diagnostic::error(
                    format!(
                        "`linear` needs a flat input, but its input is feature maps {}",
                        input.shape.show()
                    ),
                    span,
                    "feature-map input",
                )
                .with_secondary(
                    input.span,
                    format!("the input becomes {} here", input.shape.show()),
                );
                d = match (c, h, w, product) {
                    (Some(c), Some(h), Some(w), Some(n)) => d.with_help(format!(
                        "insert `flatten` before it: {c}·{h}·{w} = {n} features"
                    )),
                    _ => d.with_help("insert `flatten` before it"),
                };
                d = d.with_note(format!(
                    "to apply it at each pixel instead (nn.Linear after a permute to channels-last), write `linear({out_features}, per_pixel = true)`"
                ));
                self.error(d);
                return self.unknown(span);
            }
            // After an earlier error: the output size is still known.
            PShape::Unknown => None,
        };
        if let (false, Some((expected, s)), Some(n)) = (unused, in_check, in_features) {
            if expected != n {
                return self.in_features_mismatch(expected, s, n, "", &input, span);
            }
        }
        let op = Op::Linear {
            in_features: in_features.unwrap_or(0),
            out_features,
            bias,
        };
        let shape = PShape::Flat(Some(out_features));
        let weight = vec![Some(out_features), in_features];
        self.push_linear(op, input, shape, place, span, (unused, named), weight, bias)
    }

    /// `layer_norm`: over the channels at each pixel (torchvision's
    /// `LayerNorm2d`), over the features of a flat input; `weight`, `bias` [C].
    pub(super) fn layer_norm_layer(
        &mut self,
        eps: f64,
        place: &Place,
        span: Span,
        input: Val,
        unused: bool,
    ) -> Val {
        let named = self.require_name("layer_norm", place, span);
        let features = input.shape.channels();
        let op = Op::LayerNorm {
            features: features.unwrap_or(0),
            eps: F64(eps),
        };
        let out = if unused {
            Val {
                node: None,
                shape: input.shape,
                span,
            }
        } else {
            self.push(op, &[input], input.shape, &place.path, span)
        };
        if named {
            for kind in [ParamKind::Weight, ParamKind::Bias] {
                self.add_param(&place.path, kind, vec![features], out.node, span);
            }
        }
        out
    }

    /// `scale`: y = x · s[c], `s` a bare parameter [C, 1, 1] keyed by the layer's own path.
    pub(super) fn scale_layer(
        &mut self,
        init: f64,
        place: &Place,
        span: Span,
        input: Val,
        unused: bool,
    ) -> Val {
        let named = self.require_name("scale", place, span);
        let shape = self.needs_maps("scale", &input, span);
        let channels = shape.channels();
        let op = Op::Scale {
            channels: channels.unwrap_or(0),
            init: F64(init),
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
            self.add_param(
                &place.path,
                ParamKind::Bare,
                vec![channels, Some(1), Some(1)],
                out.node,
                span,
            );
        }
        out
    }

    /// `linear(out, per_pixel = true)`: `nn.Linear` applied at each pixel of
    /// feature maps (ConvNeXt's after a permute to channels-last): a 1×1
    /// convolution whose `weight` is kept as `nn.Linear`'s [out, in].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pixel_linear_layer(
        &mut self,
        out_features: i64,
        bias: bool,
        in_check: Option<(i64, Span)>,
        place: &Place,
        span: Span,
        input: Val,
        unused: bool,
    ) -> Val {
        let named = self.require_name("linear", place, span);
        let (in_features, h, w) = match input.shape {
            _ if unused && in_check.is_some() => (in_check.map(|(n, _)| n), None, None),
            PShape::Chw(c, h, w) => (c, h, w),
            PShape::Flat(n) => {
                let shown = PShape::Flat(n).show();
                self.error(
                    Diagnostic::error(
                        format!("`linear(per_pixel = true)` needs feature maps [C, H, W], but its input is flat {shown}"),
                        span,
                        "flat input",
                    )
                    .with_secondary(input.span, format!("the input becomes {shown} here"))
                    .with_help("drop `per_pixel = true`: on a flat input `linear` is the ordinary layer"),
                );
                return self.unknown(span);
            }
            PShape::Unknown => (None, None, None),
        };
        if let (false, Some((expected, s)), Some(n)) = (unused, in_check, in_features) {
            if expected != n {
                return self.in_features_mismatch(expected, s, n, " channels", &input, span);
            }
        }
        let op = Op::Conv2d {
            in_channels: in_features.unwrap_or(0),
            out_channels: out_features,
            kernel: (1, 1),
            stride: (1, 1),
            padding: Padding::symmetric(0, 0),
            dilation: (1, 1),
            groups: 1,
            bias,
            padding_mode: PaddingMode::Zeros,
        };
        let shape = PShape::Chw(Some(out_features), h, w);
        let weight = vec![Some(out_features), in_features];
        self.push_linear(op, input, shape, place, span, (unused, named), weight, bias)
    }
}

pub(super) fn pair_text(p: (i64, i64)) -> String {
    if p.0 == p.1 {
        p.0.to_string()
    } else {
        format!("({}, {})", p.0, p.1)
    }
}

impl Elab<'_> {
    /// A linear layer's node (flat, or a 1×1 convolution on maps) and its
    /// `weight` (and `bias`) entries; an `unused` layer gets its entries
    /// and no node, an unnamed one (`named` false) a node and no entries.
    #[allow(clippy::too_many_arguments)]
    fn push_linear(
        &mut self,
        op: Op,
        input: Val,
        shape: PShape,
        place: &Place,
        span: Span,
        (unused, named): (bool, bool),
        weight: Vec<Option<i64>>,
        bias: bool,
    ) -> Val {
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
            let out_features = weight[0];
            self.add_param(&place.path, ParamKind::Weight, weight, out.node, span);
            if bias {
                self.add_param(
                    &place.path,
                    ParamKind::Bias,
                    vec![out_features],
                    out.node,
                    span,
                );
            }
        }
        out
    }

    /// `linear(in_features = expected)` on an input with `n` features (or,
    /// on maps, `n` channels: `unit` is " channels").
    fn in_features_mismatch(
        &mut self,
        expected: i64,
        at: Span,
        n: i64,
        unit: &str,
        input: &Val,
        span: Span,
    ) -> Val {
        let label_unit = if unit.is_empty() { " features" } else { unit };
        self.error(
            Diagnostic::error(
                format!("`linear` expects {expected} input features, but its input has {n}{unit}"),
                at,
                format!("the input has {n}{label_unit}"),
            )
            .with_secondary(
                input.span,
                format!("the input becomes {} here", input.shape.show()),
            )
            .with_help("input features are inferred; drop `in_features`, or fix the layers before"),
        );
        self.unknown(span)
    }
}
