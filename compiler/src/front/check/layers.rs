//! Built-in layers: the dispatch on a layer's name and the layers' elaboration.

use super::args::Spec;
use super::items::{place_name, Place};
use super::suggest::{closest, LAYERS, PYTORCH_NAMES};
use super::values::{Env, PShape, Val, Value};
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

pub(super) enum PadSpec {
    Explicit(i64, i64),
    Same,
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
        macro_rules! bind {
            ($specs:expr) => {
                match self.bind(op, &$specs, call.args, env, &input, call.args_span) {
                    Some(b) => b,
                    None => return self.unknown(span),
                }
            };
        }
        let activation = |a: Activation| Some(a);
        let act = match op {
            "relu" => activation(Activation::Relu),
            "relu6" => activation(Activation::Relu6),
            "tanh" => activation(Activation::Tanh),
            "sigmoid" => activation(Activation::Sigmoid),
            "silu" => activation(Activation::Silu),
            "hardsigmoid" => activation(Activation::Hardsigmoid),
            "hardswish" => activation(Activation::Hardswish),
            _ => None,
        };
        if let Some(a) = act {
            let b = bind!([Spec::opt("inplace", &[])]);
            // Accepted for PyTorch familiarity; it changes nothing here.
            self.get_bool(&b, 0, false);
            return self.simple(Op::Activation(a), input, span, &place);
        }
        match op {
            "conv" | "conv2d" => {
                let b = bind!([
                    Spec::req("out_channels", &["out"]),
                    Spec::req("kernel_size", &["k", "kernel"]),
                    Spec::opt("stride", &["s"]),
                    Spec::opt("padding", &["p"]),
                    Spec::opt("dilation", &["d"]),
                    Spec::opt("groups", &["g"]),
                    Spec::opt("bias", &[]),
                    Spec::opt("padding_mode", &["mode"]),
                    Spec::opt("in_channels", &["in"]),
                ]);
                let out = self.get_int(&b, 0, 1, 1);
                let kernel = self.get_pair(&b, 1, (1, 1), 1, "kernel size");
                let stride = self.get_pair(&b, 2, (1, 1), 1, "stride");
                let padding = match &b.values[3] {
                    Some((Value::Sym(s), _)) if s == "same" => PadSpec::Same,
                    Some((Value::Sym(s), _)) if s == "valid" => PadSpec::Explicit(0, 0),
                    _ => {
                        let (h, w) = self.get_pair(&b, 3, (0, 0), 0, "padding");
                        PadSpec::Explicit(h, w)
                    }
                };
                let dilation = self.get_pair(&b, 4, (1, 1), 1, "dilation");
                let groups = self.get_int(&b, 5, 1, 1);
                let bias = self.get_bool(&b, 6, true);
                let mode = match self.get_choice(
                    &b,
                    7,
                    "zeros",
                    &["zeros", "reflect", "replicate", "circular"],
                ) {
                    "reflect" => PaddingMode::Reflect,
                    "replicate" => PaddingMode::Replicate,
                    "circular" => PaddingMode::Circular,
                    _ => PaddingMode::Zeros,
                };
                let in_check = b.values[8]
                    .as_ref()
                    .map(|(_, s)| (self.get_int(&b, 8, 1, 1), *s));
                if matches!(padding, PadSpec::Same) && stride != (1, 1) {
                    let s = b.values[3].as_ref().map(|(_, s)| *s).unwrap_or(span);
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
                let conv = ConvArgs {
                    out,
                    kernel,
                    stride,
                    padding,
                    dilation,
                    groups,
                    bias,
                    mode,
                    in_check,
                };
                self.conv_layer(&conv, &place, span, input, call.args_span, unused)
            }
            "maxpool" | "avgpool" => {
                let max = op == "maxpool";
                let b = if max {
                    bind!([
                        Spec::req("kernel_size", &["k", "kernel"]),
                        Spec::opt("stride", &["s"]),
                        Spec::opt("padding", &["p"]),
                        Spec::opt("dilation", &["d"]),
                        Spec::opt("ceil_mode", &["ceil"]),
                    ])
                } else {
                    bind!([
                        Spec::req("kernel_size", &["k", "kernel"]),
                        Spec::opt("stride", &["s"]),
                        Spec::opt("padding", &["p"]),
                        Spec::opt("ceil_mode", &["ceil"]),
                        Spec::opt("count_include_pad", &[]),
                    ])
                };
                let kernel = self.get_pair(&b, 0, (1, 1), 1, "kernel size");
                let stride = self.get_pair(&b, 1, kernel, 1, "stride");
                let padding = self.get_pair(&b, 2, (0, 0), 0, "padding");
                let (dilation, ceil, include_pad) = if max {
                    (
                        self.get_pair(&b, 3, (1, 1), 1, "dilation"),
                        self.get_bool(&b, 4, false),
                        true,
                    )
                } else {
                    (
                        (1, 1),
                        self.get_bool(&b, 3, false),
                        self.get_bool(&b, 4, true),
                    )
                };
                self.pool_layer(
                    max,
                    kernel,
                    stride,
                    padding,
                    dilation,
                    ceil,
                    include_pad,
                    &place,
                    span,
                    input,
                    call.args_span,
                )
            }
            "adaptive_avgpool" | "adaptive_maxpool" | "global_avgpool" | "global_maxpool" => {
                let output = if op.starts_with("global") {
                    let _ = bind!([]);
                    (1, 1)
                } else {
                    let b = bind!([
                        Spec::req("output_size", &["size"]),
                        Spec::opt("output_width", &[])
                    ]);
                    let (h, w) = self.get_pair(&b, 0, (1, 1), 1, "output size");
                    match &b.values[1] {
                        Some(_) => (h, self.get_int(&b, 1, 1, 1)),
                        None => (h, w),
                    }
                };
                let PShape::Chw(c, _, _) = self.needs_maps(op, &input, span) else {
                    return self.unknown(span);
                };
                let node_op = if op.contains("avg") {
                    Op::AdaptiveAvgPool2d { output }
                } else {
                    Op::AdaptiveMaxPool2d { output }
                };
                self.push(
                    node_op,
                    &[input],
                    PShape::Chw(c, Some(output.0), Some(output.1)),
                    place_name(&place),
                    span,
                )
            }
            "batchnorm" => {
                let b = bind!([
                    Spec::opt("num_features", &["features"]),
                    Spec::opt("eps", &[]),
                    Spec::opt("momentum", &[]),
                ]);
                let check = b.values[0]
                    .as_ref()
                    .map(|(_, s)| (self.get_int(&b, 0, 1, 1), *s));
                let eps = self.get_float(&b, 1, 1e-5, (0.0, 1.0));
                let momentum = self.get_float(&b, 2, 0.1, (0.0, 1.0));
                self.batchnorm_layer(eps, momentum, check, &place, span, input, unused)
            }
            "lrn" | "local_response_norm" => {
                let b = bind!([
                    Spec::req("size", &[]),
                    Spec::opt("alpha", &[]),
                    Spec::opt("beta", &[]),
                    Spec::opt("k", &[]),
                ]);
                let size = self.get_int(&b, 0, 1, 1);
                let alpha = self.get_float(&b, 1, 1e-4, (0.0, f64::MAX));
                let beta = self.get_float(&b, 2, 0.75, (0.0, f64::MAX));
                let k = self.get_float(&b, 3, 1.0, (0.0, f64::MAX));
                let op = Op::LocalResponseNorm {
                    size,
                    alpha: F64(alpha),
                    beta: F64(beta),
                    k: F64(k),
                };
                self.needs_maps("lrn", &input, span);
                self.simple(op, input, span, &place)
            }
            "dropout" | "dropout2d" => {
                let b = bind!([Spec::opt("p", &[]), Spec::opt("inplace", &[])]);
                let p = F64(self.get_float(&b, 0, 0.5, (0.0, 1.0)));
                self.get_bool(&b, 1, false);
                if op == "dropout2d" {
                    self.needs_maps(op, &input, span);
                    self.simple(Op::Dropout2d { p }, input, span, &place)
                } else {
                    self.simple(Op::Dropout { p }, input, span, &place)
                }
            }
            "stochastic_depth" => {
                let b = bind!([Spec::req("p", &[]), Spec::opt("mode", &[])]);
                let p = F64(self.get_float(&b, 0, 0.0, (0.0, 1.0)));
                let row = self.get_choice(&b, 1, "row", &["row", "batch"]) == "row";
                self.simple(Op::StochasticDepth { p, row }, input, span, &place)
            }
            "flatten" => {
                let _ = bind!([]);
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
            "linear" => {
                let b = bind!([
                    Spec::req("out_features", &["out"]),
                    Spec::opt("bias", &[]),
                    Spec::opt("in_features", &["in"]),
                    Spec::opt("per_pixel", &[]),
                ]);
                let out = self.get_int(&b, 0, 1, 1);
                let bias = self.get_bool(&b, 1, true);
                let in_check = b.values[2]
                    .as_ref()
                    .map(|(_, s)| (self.get_int(&b, 2, 1, 1), *s));
                if self.get_bool(&b, 3, false) {
                    return self
                        .pixel_linear_layer(out, bias, in_check, &place, span, input, unused);
                }
                self.linear_layer(out, bias, in_check, &place, span, input, unused)
            }
            "softmax" | "log_softmax" => {
                let b = bind!([Spec::opt("dim", &[])]);
                let dim = self.get_int(&b, 0, 1, i64::MIN);
                if dim != 1 && dim != -1 {
                    let s = b.values[0].as_ref().map(|(_, s)| *s).unwrap_or(span);
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
                    let s = b.values[0].as_ref().map(|(_, s)| *s).unwrap_or(span);
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
                let node_op = if op == "softmax" {
                    Op::Softmax
                } else {
                    Op::LogSoftmax
                };
                self.simple(node_op, input, span, &place)
            }
            "leaky_relu" => {
                let b = bind!([
                    Spec::opt("negative_slope", &["slope"]),
                    Spec::opt("inplace", &[])
                ]);
                let slope = self.get_float(&b, 0, 0.01, (f64::MIN, f64::MAX));
                self.get_bool(&b, 1, false);
                self.simple(
                    Op::Activation(Activation::LeakyRelu(F64(slope))),
                    input,
                    span,
                    &place,
                )
            }
            "elu" => {
                let b = bind!([Spec::opt("alpha", &[]), Spec::opt("inplace", &[])]);
                let alpha = self.get_float(&b, 0, 1.0, (f64::MIN, f64::MAX));
                self.get_bool(&b, 1, false);
                self.simple(
                    Op::Activation(Activation::Elu(F64(alpha))),
                    input,
                    span,
                    &place,
                )
            }
            "gelu" => {
                let b = bind!([Spec::opt("approximate", &[])]);
                let tanh = self.get_choice(&b, 0, "none", &["none", "tanh"]) == "tanh";
                self.simple(
                    Op::Activation(Activation::Gelu {
                        tanh_approximation: tanh,
                    }),
                    input,
                    span,
                    &place,
                )
            }
            "identity" => {
                let _ = bind!([]);
                self.simple(Op::Identity, input, span, &place)
            }
            "layer_norm" => {
                let b = bind!([Spec::opt("eps", &[])]);
                let eps = self.get_float(&b, 0, 1e-5, (0.0, 1.0));
                self.layer_norm_layer(eps, &place, span, input, unused)
            }
            "scale" => {
                let b = bind!([Spec::opt("init", &[])]);
                let init = self.get_float(&b, 0, 1.0, (f64::MIN, f64::MAX));
                self.scale_layer(init, &place, span, input, unused)
            }
            "channel_shuffle" => {
                let b = bind!([Spec::req("groups", &["g"])]);
                let groups = self.get_int(&b, 0, 1, 1);
                if let PShape::Chw(Some(c), _, _) = self.needs_maps(op, &input, span) {
                    if c % groups != 0 {
                        let s = b.values[0].as_ref().map(|(_, s)| *s).unwrap_or(span);
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
            _ => {
                let mut candidates: Vec<&str> = LAYERS.to_vec();
                candidates.extend(self.decls.blocks.keys().map(|k| k.as_str()));
                if self.decls.lost_blocks.contains(op)
                    || (self.decls.missing_includes
                        && closest(op, candidates.iter().copied()).is_none())
                {
                    return self.unknown(span);
                }
                let mut d = Diagnostic::error(
                    format!("unknown layer or block `{op}`"),
                    call.name.span,
                    "not defined",
                );
                if let Some((_, layer, usage)) =
                    PYTORCH_NAMES.iter().find(|(torch, _, _)| *torch == op)
                {
                    d = d.with_help(if usage.is_empty() {
                        format!("`{op}` is PyTorch's name; here it is `{layer}`")
                    } else {
                        format!("`{op}` is PyTorch's name; here it is {usage}")
                    });
                } else if let Some(s) = closest(op, candidates.into_iter()) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                } else {
                    d = d.with_note("docs/language.md lists the layers; blocks are declared with `block name(...) { ... }`");
                }
                self.error(d);
                self.unknown(span)
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
                self.error(
                    Diagnostic::error(
                        format!(
                            "`linear` expects {expected} input features, but its input has {n}"
                        ),
                        s,
                        format!("the input has {n} features"),
                    )
                    .with_secondary(
                        input.span,
                        format!("the input becomes {} here", input.shape.show()),
                    )
                    .with_help(
                        "input features are inferred; drop `in_features`, or fix the layers before",
                    ),
                );
                return self.unknown(span);
            }
        }
        let op = Op::Linear {
            in_features: in_features.unwrap_or(0),
            out_features,
            bias,
        };
        let shape = PShape::Flat(Some(out_features));
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
                ParamKind::Weight,
                vec![Some(out_features), in_features],
                out.node,
                span,
            );
            if bias {
                self.add_param(
                    &place.path,
                    ParamKind::Bias,
                    vec![Some(out_features)],
                    out.node,
                    span,
                );
            }
        }
        out
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
                self.error(
                    Diagnostic::error(
                        format!(
                            "`linear` expects {expected} input features, but its input has {n} channels"
                        ),
                        s,
                        format!("the input has {n} channels"),
                    )
                    .with_secondary(
                        input.span,
                        format!("the input becomes {} here", input.shape.show()),
                    )
                    .with_help(
                        "input features are inferred; drop `in_features`, or fix the layers before",
                    ),
                );
                return self.unknown(span);
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
                ParamKind::Weight,
                vec![Some(out_features), in_features],
                out.node,
                span,
            );
            if bias {
                self.add_param(
                    &place.path,
                    ParamKind::Bias,
                    vec![Some(out_features)],
                    out.node,
                    span,
                );
            }
        }
        out
    }
}

pub(super) fn pair_text(p: (i64, i64)) -> String {
    if p.0 == p.1 {
        p.0.to_string()
    } else {
        format!("({}, {})", p.0, p.1)
    }
}
