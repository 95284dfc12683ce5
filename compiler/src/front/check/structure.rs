//! Structures that combine branches: `concat`, `split`, `residual`, `gate`,
//! and `vgg` lists.

use super::args::{ArgDef, Kind, PadSpec};
use super::items::{join, Place, Scope, ScopeKind};
use super::layers::ConvArgs;
use super::suggest::closest;
use super::values::{Env, PShape, Val, Value};
use super::Elab;
use crate::front::diag::Diagnostic;
use crate::front::source::Span;
use crate::front::syntax::{Arg, Expr, Item, Term};
use crate::ir::{Activation, Op, PaddingMode, Shape};

/// `split(chunks)`.
const SPLIT_ARGS: &[ArgDef] = &[ArgDef::req("chunks", &[], Kind::Int { default: 1, min: 1 })];

/// `vgg(batch_norm, kernel_size) [...]`.
const VGG_ARGS: &[ArgDef] = &[
    ArgDef::opt("batch_norm", &["bn"], Kind::Bool(false)),
    ArgDef::opt("kernel_size", &["k"], Kind::Int { default: 3, min: 1 }),
];

impl Elab<'_> {
    /// The outputs of a `concat`'s or `split`'s branches, each fed `input`,
    /// or for a `split` (`chunks` = the chunks, their count already checked)
    /// its own chunk of the input's channels.
    pub(super) fn branches(
        &mut self,
        branches: &[Item],
        place: &Place,
        env: &Env,
        input: Val,
        chunks: Option<(i64, Span)>,
    ) -> Vec<Val> {
        let mut index = 0i64;
        let mut outputs = Vec::new();
        // Branches are numbered by position, as the children of an
        // `nn.ModuleList` of branches would be; a named branch uses
        // its name but still takes its position. An unnamed group
        // `{ ... }` is the exception: its layers are attributes of the
        // module around the concat (Inception v3's `branch5x5_1`,
        // `branch5x5_2`), so it takes no position and adds no name.
        let mut position = 0usize;
        for branch in branches {
            let Some(copies) = self.copies(branch, env, &input) else {
                outputs.push(self.unknown(branch.span));
                continue;
            };
            for copy in 0..copies {
                let input = match chunks {
                    Some((size, span)) => self.chunk(input, index * size, size, span),
                    None => input,
                };
                index += 1;
                let Some(name) = self.copy_name(branch, env, &input, copy) else {
                    outputs.push(self.unknown(branch.span));
                    continue;
                };
                let branch_place = match (&name, &branch.term) {
                    (Some(name), _) => Place {
                        path: join(&place.path, name),
                        own: true,
                    },
                    (None, Term::Group(_)) => Place {
                        path: place.path.clone(),
                        own: false,
                    },
                    (None, _) => Place {
                        path: join(&place.path, &position.to_string()),
                        own: true,
                    },
                };
                if branch.name.is_some() || !matches!(branch.term, Term::Group(_)) {
                    position += 1;
                }
                let mut out = self.term(branch, branch_place, env, input, false);
                out.span = branch.span;
                self.check_expect(branch, env, &input, &out);
                outputs.push(out);
            }
        }
        outputs
    }

    /// Checks `split(n)`: `n` branches, channels that `n` divides. Returns
    /// the chunk size and the span to blame for each chunk.
    pub(super) fn split_chunks(
        &mut self,
        keyword: Span,
        args: &[Arg],
        args_span: Span,
        branches: &[Item],
        env: &Env,
        input: Val,
    ) -> Option<(i64, Span)> {
        let n = self
            .args("split", SPLIT_ARGS, args, env, &input, args_span)?
            .int("chunks");
        let mut count = 0usize;
        for branch in branches {
            count += self.copies(branch, env, &input)?;
        }
        if count as i64 != n {
            let mut d = Diagnostic::error(
                format!(
                    "`split({n})` has {count} branch{}, but it cuts its input into {n} chunks",
                    if count == 1 { "" } else { "es" }
                ),
                keyword,
                format!("{n} chunks"),
            );
            for branch in branches {
                d = d.with_secondary(branch.span, "a branch");
            }
            d = d.with_help(
                "give one branch per chunk, in channel order; a chunk that passes through unchanged is `identity`",
            );
            self.error(d);
            return None;
        }
        let c = match input.shape {
            PShape::Chw(Some(c), _, _) => c,
            PShape::Flat(_) => {
                self.needs_maps("split", &input, keyword);
                return None;
            }
            _ => return None,
        };
        if c % n != 0 {
            self.error(
                Diagnostic::error(
                    format!("`split({n})` cannot cut {c} channels into {n} equal chunks"),
                    keyword,
                    format!("{c} is not a multiple of {n}"),
                )
                .with_secondary(
                    input.span,
                    format!("the input becomes {} here", input.shape.show()),
                )
                .with_help(format!(
                    "the chunks must be equal (ShuffleNet's `x.chunk({n}, dim=1)` of a multiple of {n}); change the channels before, or the chunk count"
                )),
            );
            return None;
        }
        Some((c / n, keyword))
    }

    /// Channels `offset .. offset + size` of `input` (one chunk of a `split`).
    pub(super) fn chunk(&mut self, input: Val, offset: i64, size: i64, span: Span) -> Val {
        let PShape::Chw(_, h, w) = input.shape else {
            return self.unknown(span);
        };
        self.push(
            Op::ChannelSlice {
                offset,
                channels: size,
            },
            &[input],
            PShape::Chw(Some(size), h, w),
            "",
            span,
        )
    }

    pub(super) fn residual_add(
        &mut self,
        keyword: Span,
        main: Val,
        short: Val,
        input: Val,
        projected: bool,
        name: &str,
    ) -> Val {
        if let (Some(a), Some(b)) = (main.shape.known(), short.shape.known()) {
            if a != b {
                let what = if projected {
                    "the shortcut gives"
                } else {
                    "the identity shortcut passes"
                };
                let mut d = Diagnostic::error(
                    format!("residual shapes differ: the body gives {a}, {what} {b}"),
                    keyword,
                    "cannot add these",
                )
                .with_secondary(main.span, format!("the body ends here with {a}"));
                if projected {
                    d = d.with_secondary(short.span, format!("the shortcut gives {b}"));
                }
                if let (Shape::Chw(c, h, _), Shape::Chw(_, hi, _)) =
                    (a, input.shape.known().unwrap_or(b))
                {
                    let stride = if h > 0 && hi % h == 0 { hi / h } else { 1 };
                    d = d.with_help(if projected {
                        format!("make the shortcut give {a}: `conv({c}, k=1, s={stride}, bias=false) batchnorm`")
                    } else {
                        format!("project the input with a shortcut: `shortcut downsample {{ conv({c}, k=1, s={stride}, bias=false) batchnorm }}`")
                    });
                }
                self.error(d);
                return self.unknown(keyword);
            }
        }
        let shape = match (main.shape.known(), short.shape.known()) {
            (Some(_), Some(_)) => main.shape,
            _ => PShape::Unknown,
        };
        // Display name only: an add has no state_dict entries.
        self.push(Op::Add, &[main, short], shape, name, keyword)
    }

    /// `input * factor`, the factor [C, 1, 1] (broadcast over the map) or the input's shape.
    pub(super) fn gate(&mut self, keyword: Span, factor: Val, input: Val, name: &str) -> Val {
        let (Some(x), Some(f)) = (input.shape.known(), factor.shape.known()) else {
            return self.unknown(keyword);
        };
        match (x, f) {
            (Shape::Chw(c, h, w), Shape::Chw(fc, fh, fw))
                if fc == c && ((fh, fw) == (1, 1) || (fh, fw) == (h, w)) => {}
            (Shape::Chw(c, h, w), _) => {
                let d = Diagnostic::error(
                    format!("`gate` cannot multiply its input {x} by a factor of {f}"),
                    keyword,
                    "cannot multiply these",
                )
                .with_secondary(factor.span, format!("the body ends here with {f}"))
                .with_help(format!(
                    "the body must give {c} channels on a 1×1 map (one factor per channel) or on the input's {h}×{w} map, e.g. `adaptive_avgpool(1) fc1 = conv(squeeze, k=1) relu fc2 = conv({c}, k=1) sigmoid`"
                ));
                self.error(d);
                return self.unknown(keyword);
            }
            (Shape::Flat(_), _) => {
                self.error(
                    Diagnostic::error(
                        "`gate` multiplies feature maps, but its input is flat",
                        keyword,
                        format!("the input is {x}"),
                    )
                    .with_help("gate before `flatten`"),
                );
                return self.unknown(keyword);
            }
        }
        // Display name only: a gate's multiply has no state_dict entries.
        self.push(Op::Mul, &[input, factor], input.shape, name, keyword)
    }

    pub(super) fn concat(&mut self, keyword: Span, outputs: &[Val], input: Val, name: &str) -> Val {
        if outputs.is_empty() {
            self.error(Diagnostic::error(
                "`concat` needs at least one branch",
                keyword,
                "no branches",
            ));
            return self.unknown(keyword);
        }
        let mut channels = Some(0i64);
        let mut spatial: Option<(i64, i64)> = None;
        let mut bad = false;
        for out in outputs {
            match out.shape {
                PShape::Chw(c, Some(h), Some(w)) => {
                    channels = channels.zip(c).and_then(|(a, b)| a.checked_add(b));
                    match spatial {
                        None => spatial = Some((h, w)),
                        Some(s) if s != (h, w) => bad = true,
                        _ => {}
                    }
                }
                PShape::Flat(_) => {
                    self.error(
                        Diagnostic::error(
                            "`concat` joins feature maps along channels, but a branch is flat",
                            out.span,
                            format!("this branch gives {}", out.shape.show()),
                        )
                        .with_help("concatenate before `flatten`"),
                    );
                    return self.unknown(keyword);
                }
                _ => return self.unknown(keyword),
            }
        }
        if bad {
            let mut d = Diagnostic::error(
                "`concat` branches have different spatial sizes",
                keyword,
                "cannot concatenate along channels",
            );
            for out in outputs {
                d = d.with_secondary(out.span, format!("gives {}", out.shape.show()));
            }
            if let PShape::Chw(_, Some(h), Some(w)) = input.shape {
                d = d.with_help(format!(
                    "every branch must keep the same height and width; the input is {h}×{w}, so use stride 1 and padding (k − 1)/2 in each branch"
                ));
            }
            self.error(d);
            return self.unknown(keyword);
        }
        if channels.is_none() && outputs.iter().all(|o| o.shape.channels().is_some()) {
            self.error(Diagnostic::error(
                "`concat` output channels overflow",
                keyword,
                "the channel counts add up to more than 64 bits hold",
            ));
            return self.unknown(keyword);
        }
        let (h, w) = spatial.unwrap_or((0, 0));
        self.push(
            Op::Concat,
            outputs,
            PShape::Chw(channels, Some(h), Some(w)),
            name,
            keyword,
        )
    }

    pub(super) fn vgg(
        &mut self,
        args: &[Arg],
        cfg: &[Expr],
        path: String,
        env: &Env,
        input: Val,
        span: Span,
    ) -> Val {
        let Some(a) = self.args("vgg", VGG_ARGS, args, env, &input, span) else {
            return self.unknown(span);
        };
        let (bn, k) = (a.bool("batch_norm"), a.int("kernel_size"));
        let mut scope = Scope {
            path,
            kind: ScopeKind::Sequential { next: 0 },
        };
        let mut value = input;
        for entry in cfg {
            match self.eval(entry, env, Some(&value)) {
                Value::Sym(s) if s == "M" => {
                    let place = Place {
                        path: self.advance(&mut scope).unwrap_or_default(),
                        own: true,
                    };
                    value = self.pool_layer(
                        true,
                        (2, 2),
                        (2, 2),
                        (0, 0),
                        (1, 1),
                        false,
                        true,
                        &place,
                        entry.span,
                        value,
                        entry.span,
                    );
                }
                Value::Int(c) if c >= 1 => {
                    let conv = ConvArgs {
                        out: c,
                        kernel: (k, k),
                        stride: (1, 1),
                        padding: PadSpec::Explicit(k / 2, k / 2),
                        dilation: (1, 1),
                        groups: 1,
                        bias: true,
                        mode: PaddingMode::Zeros,
                        in_check: None,
                    };
                    let place = Place {
                        path: self.advance(&mut scope).unwrap_or_default(),
                        own: true,
                    };
                    value = self.conv_layer(&conv, &place, entry.span, value, entry.span, false);
                    if bn {
                        let place = Place {
                            path: self.advance(&mut scope).unwrap_or_default(),
                            own: true,
                        };
                        value =
                            self.batchnorm_layer(1e-5, 0.1, None, &place, entry.span, value, false);
                    }
                    let relu = self.advance(&mut scope).unwrap_or_default();
                    value = self.push(
                        Op::Activation(Activation::Relu),
                        &[value],
                        value.shape,
                        &relu,
                        entry.span,
                    );
                }
                Value::Poison => value = self.unknown(entry.span),
                other => {
                    let mut d = Diagnostic::error(
                        format!("a `vgg` list holds channel counts and `M`, found {}", other.describe()),
                        entry.span,
                        "expected a channel count or `M`",
                    )
                    .with_note("`M` is a 2×2 max pool with stride 2; a number n is conv(n, k=3, p=1) then relu");
                    match &other {
                        Value::Sym(s) => {
                            let candidates = env.vars.keys().map(String::as_str).chain(["M"]);
                            if let Some(c) = closest(s, candidates) {
                                d = d.with_help(format!("did you mean `{c}`?"));
                            }
                        }
                        Value::Int(_) => d = d.with_help("a channel count is at least 1"),
                        _ => {}
                    }
                    self.error(d);
                    value = self.unknown(entry.span);
                }
            }
        }
        value
    }
}
