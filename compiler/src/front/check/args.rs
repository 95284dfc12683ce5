//! Arguments of built-in layers (and of `split` and `vgg`): their
//! definitions, matching a call's arguments to them, and reading typed
//! values with defaults.

use super::suggest::closest;
use super::values::{Env, Val, Value};
use super::Elab;
use crate::front::diag::Diagnostic;
use crate::front::source::Span;
use crate::front::syntax::Arg;

/// How an argument's value is read, and its default.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    /// An integer, at least `min`.
    Int {
        default: i64,
        min: i64,
    },
    /// A size (at least 1) without a default, absent unless written: one
    /// checked against the inferred size (`in_channels`), or `output_width`.
    Size,
    /// An integer (for both) or a pair `(h, w)`, each at least `min`.
    Pair {
        default: PairDefault,
        min: i64,
    },
    /// A convolution's padding: an integer, a pair, `same` or `valid`.
    Padding,
    Bool(bool),
    /// A number from `min` to `max`.
    Float {
        default: f64,
        min: f64,
        max: f64,
    },
    /// A keyword, one of `choices`.
    Choice {
        default: &'static str,
        choices: &'static [&'static str],
    },
}

/// The default of a pair argument.
#[derive(Clone, Copy, Debug)]
pub(super) enum PairDefault {
    Fixed(i64, i64),
    /// The value of the layer's `kernel_size` (a pooling stride).
    KernelSize,
}

/// A convolution's padding as written.
#[derive(Clone, Copy, Debug)]
pub(super) enum PadSpec {
    Explicit(i64, i64),
    Same,
}

/// One accepted argument of a built-in layer: its name, its short names,
/// and how it is read. Positional arguments fill these in order.
#[derive(Debug)]
pub(super) struct ArgDef {
    pub(super) name: &'static str,
    pub(super) aliases: &'static [&'static str],
    pub(super) required: bool,
    pub(super) kind: Kind,
}

impl ArgDef {
    pub(super) const fn req(
        name: &'static str,
        aliases: &'static [&'static str],
        kind: Kind,
    ) -> ArgDef {
        ArgDef {
            name,
            aliases,
            required: true,
            kind,
        }
    }
    pub(super) const fn opt(
        name: &'static str,
        aliases: &'static [&'static str],
        kind: Kind,
    ) -> ArgDef {
        ArgDef {
            name,
            aliases,
            required: false,
            kind,
        }
    }
}

/// An argument's value as read, by its [`Kind`].
#[derive(Clone, Copy, Debug)]
enum Read {
    Int(i64),
    Size(Option<i64>),
    Pair(i64, i64),
    Padding(PadSpec),
    Bool(bool),
    Float(f64),
    Choice(&'static str),
}

/// A call's arguments, read by their definitions (defaults filled in), by name.
pub(super) struct Args {
    defs: &'static [ArgDef],
    values: Vec<Read>,
    /// Where each argument was written, if it was.
    spans: Vec<Option<Span>>,
}

impl Args {
    fn index(&self, name: &str) -> usize {
        self.defs
            .iter()
            .position(|d| d.name == name)
            .unwrap_or_else(|| panic!("the layer has no argument `{name}` in its definition"))
    }

    fn read(&self, name: &str) -> Read {
        self.values[self.index(name)]
    }

    pub(super) fn int(&self, name: &str) -> i64 {
        match self.read(name) {
            Read::Int(v) => v,
            other => panic!("`{name}` is read as {other:?}, not an integer"),
        }
    }

    /// A [`Kind::Size`] argument with where it was written, if it was.
    pub(super) fn size(&self, name: &str) -> Option<(i64, Span)> {
        match self.read(name) {
            Read::Size(v) => v.zip(self.span(name)),
            other => panic!("`{name}` is read as {other:?}, not a size"),
        }
    }

    pub(super) fn pair(&self, name: &str) -> (i64, i64) {
        match self.read(name) {
            Read::Pair(h, w) => (h, w),
            other => panic!("`{name}` is read as {other:?}, not a pair"),
        }
    }

    pub(super) fn padding(&self, name: &str) -> PadSpec {
        match self.read(name) {
            Read::Padding(p) => p,
            other => panic!("`{name}` is read as {other:?}, not a padding"),
        }
    }

    pub(super) fn bool(&self, name: &str) -> bool {
        match self.read(name) {
            Read::Bool(v) => v,
            other => panic!("`{name}` is read as {other:?}, not a boolean"),
        }
    }

    pub(super) fn float(&self, name: &str) -> f64 {
        match self.read(name) {
            Read::Float(v) => v,
            other => panic!("`{name}` is read as {other:?}, not a number"),
        }
    }

    pub(super) fn choice(&self, name: &str) -> &'static str {
        match self.read(name) {
            Read::Choice(v) => v,
            other => panic!("`{name}` is read as {other:?}, not a choice"),
        }
    }

    /// Where the argument was written, if it was.
    pub(super) fn span(&self, name: &str) -> Option<Span> {
        self.spans[self.index(name)]
    }
}

/// Arguments matched to a layer's definitions, by position in the list.
struct Bound {
    values: Vec<Option<(Value, Span)>>,
    /// The argument names, for messages.
    names: Vec<&'static str>,
    /// Parameters in scope, for "did you mean" on an unknown name.
    scope: Vec<String>,
}

impl Elab<'_> {
    /// Matches a call's arguments to `defs` and reads each in order (so
    /// errors come in the order of the definitions); `None` when they do not
    /// match (reported).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn args(
        &mut self,
        op: &str,
        defs: &'static [ArgDef],
        args: &[Arg],
        env: &Env,
        input: &Val,
        span: Span,
    ) -> Option<Args> {
        let bound = self.bind(op, defs, args, env, input, span)?;
        let mut values = Vec::with_capacity(defs.len());
        let mut kernel = (1, 1);
        for (i, def) in defs.iter().enumerate() {
            let read = match def.kind {
                Kind::Int { default, min } => Read::Int(self.get_int(&bound, i, default, min)),
                Kind::Size => Read::Size(
                    bound.values[i]
                        .is_some()
                        .then(|| self.get_int(&bound, i, 1, 1)),
                ),
                Kind::Pair { default, min } => {
                    let default = match default {
                        PairDefault::Fixed(h, w) => (h, w),
                        PairDefault::KernelSize => kernel,
                    };
                    let what = def.name.replace('_', " ");
                    let (h, w) = self.get_pair(&bound, i, default, min, &what);
                    if def.name == "kernel_size" {
                        kernel = (h, w);
                    }
                    Read::Pair(h, w)
                }
                Kind::Padding => Read::Padding(match &bound.values[i] {
                    Some((Value::Sym(s), _)) if s == "same" => PadSpec::Same,
                    Some((Value::Sym(s), _)) if s == "valid" => PadSpec::Explicit(0, 0),
                    _ => {
                        let (h, w) = self.get_pair(&bound, i, (0, 0), 0, "padding");
                        PadSpec::Explicit(h, w)
                    }
                }),
                Kind::Bool(default) => Read::Bool(self.get_bool(&bound, i, default)),
                Kind::Float { default, min, max } => {
                    Read::Float(self.get_float(&bound, i, default, (min, max)))
                }
                Kind::Choice { default, choices } => {
                    Read::Choice(self.get_choice(&bound, i, default, choices))
                }
            };
            values.push(read);
        }
        let spans = bound
            .values
            .iter()
            .map(|v| v.as_ref().map(|(_, s)| *s))
            .collect();
        Some(Args {
            defs,
            values,
            spans,
        })
    }

    fn bind(
        &mut self,
        op: &str,
        specs: &[ArgDef],
        args: &[Arg],
        env: &Env,
        input: &Val,
        span: Span,
    ) -> Option<Bound> {
        let mut values: Vec<Option<(Value, Span)>> = (0..specs.len()).map(|_| None).collect();
        let mut ok = true;
        let mut unknown_argument = false;
        let mut positional = 0;
        let positional_args: Vec<&Arg> = args.iter().filter(|a| a.name.is_none()).collect();
        let takes = || {
            specs
                .iter()
                .map(|s| match s.aliases.first() {
                    Some(a) => format!("`{}` (`{a}`)", s.name),
                    None => format!("`{}`", s.name),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        for arg in args {
            let index = match &arg.name {
                None => {
                    // Positional arguments fill the specs in order, as in PyTorch.
                    if positional >= specs.len() {
                        if positional == specs.len() {
                            // Reported once, covering every extra argument.
                            let extra = positional_args[specs.len()..]
                                .iter()
                                .fold(arg.span, |s, a| s.join(a.span));
                            let mut d = Diagnostic::error(
                                format!(
                                    "`{op}` takes at most {} arguments, found {}",
                                    specs.len(),
                                    positional_args.len()
                                ),
                                extra,
                                if positional_args.len() - specs.len() == 1 {
                                    "extra argument".to_string()
                                } else {
                                    "extra arguments".to_string()
                                },
                            );
                            d = if specs.is_empty() {
                                d.with_help(format!("write `{op}` without arguments"))
                            } else {
                                d.with_note(format!("`{op}` takes, in order: {}", takes()))
                            };
                            self.error(d);
                        }
                        positional += 1;
                        ok = false;
                        continue;
                    }
                    positional += 1;
                    positional - 1
                }
                Some(n) => match specs
                    .iter()
                    .position(|s| s.name == n.text || s.aliases.contains(&n.text.as_str()))
                {
                    Some(i) => i,
                    None => {
                        let names: Vec<&str> = specs
                            .iter()
                            .flat_map(|s| std::iter::once(s.name).chain(s.aliases.iter().copied()))
                            .collect();
                        let mut d = Diagnostic::error(
                            format!("`{op}` has no argument `{}`", n.text),
                            n.span,
                            "unknown argument",
                        );
                        d = match closest(&n.text, names.iter().copied()) {
                            Some(s) => d.with_help(format!("did you mean `{s}`?")),
                            None if specs.is_empty() => {
                                d.with_note(format!("`{op}` takes no arguments"))
                            }
                            None => d.with_note(format!("`{op}` takes {}", takes())),
                        };
                        self.error(d);
                        ok = false;
                        unknown_argument = true;
                        continue;
                    }
                },
            };
            if let Some((_, first)) = &values[index] {
                let first = *first;
                self.error(
                    Diagnostic::error(
                        format!("argument `{}` of `{op}` is given twice", specs[index].name),
                        arg.span,
                        "second value",
                    )
                    .with_secondary(first, "first value"),
                );
                ok = false;
                continue;
            }
            let value = self.eval(&arg.value, env, Some(input));
            if value == Value::Poison {
                ok = false;
            }
            values[index] = Some((value, arg.value.span));
        }
        // A misspelt argument name is already reported; do not also call it missing.
        if !unknown_argument {
            for (spec, value) in specs.iter().zip(&values) {
                if spec.required && value.is_none() {
                    let short = spec.aliases.first().unwrap_or(&spec.name);
                    self.error(
                        Diagnostic::error(
                            format!("`{op}` needs `{}`", spec.name),
                            span,
                            format!("`{}` is missing", spec.name),
                        )
                        .with_help(format!("add `{short} = ...`")),
                    );
                    ok = false;
                }
            }
        }
        let names = specs.iter().map(|s| s.name).collect();
        let scope = env.vars.keys().cloned().collect();
        ok.then_some(Bound {
            values,
            names,
            scope,
        })
    }

    /// Reports an argument of the wrong kind. A bare name is an unknown name:
    /// suggest a parameter in `scope` (or one of `keywords`) it may be a typo of.
    pub(super) fn symbol_or_error(
        &mut self,
        value: &Value,
        span: Span,
        what: &str,
        scope: &[String],
        keywords: &[&str],
    ) {
        if let Value::Sym(name) = value {
            let mut d = Diagnostic::error(
                format!("unknown name `{name}`"),
                span,
                format!("expected {what}"),
            );
            let candidates = scope
                .iter()
                .map(String::as_str)
                .chain(keywords.iter().copied())
                .chain(["in_channels", "in_height", "in_width", "in_features"]);
            let lower = name.to_ascii_lowercase();
            if let Some(s) = closest(name, candidates) {
                d = d.with_help(format!("did you mean `{s}`?"));
            } else if what.contains("`true`") && (lower == "true" || lower == "false") {
                d = d.with_help(format!("write `{lower}`"));
            } else if !scope.is_empty() {
                d = d.with_note(format!(
                    "parameters in scope: {}",
                    scope
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            self.error(d);
        } else {
            let mut d = Diagnostic::error(
                format!("expected {what}, found {}", value.describe()),
                span,
                format!("expected {what}"),
            );
            match value {
                Value::Int(v @ (0 | 1)) if what.contains("`true`") => {
                    d = d.with_help(format!("write `{}`", *v == 1));
                }
                Value::Float(f) if what.contains("integer") && f.fract() == 0.0 => {
                    d = d.with_help(format!("write `{f:.0}`, without the decimal point"));
                }
                _ => {}
            }
            self.error(d);
        }
    }

    fn get_int(&mut self, bound: &Bound, i: usize, default: i64, min: i64) -> i64 {
        match &bound.values[i] {
            None => default,
            Some((Value::Int(v), span)) => {
                if *v < min {
                    self.error(Diagnostic::error(
                        format!("`{}` must be at least {min}, found {v}", bound.names[i]),
                        *span,
                        format!("must be ≥ {min}"),
                    ));
                    self.poisoned = true;
                    default.max(min)
                } else {
                    *v
                }
            }
            Some((value, span)) => {
                let (value, span) = (value.clone(), *span);
                self.symbol_or_error(&value, span, "an integer", &bound.scope, &[]);
                self.poisoned = true;
                default.max(min)
            }
        }
    }

    fn get_pair(
        &mut self,
        bound: &Bound,
        i: usize,
        default: (i64, i64),
        min: i64,
        what: &str,
    ) -> (i64, i64) {
        let Some((value, span)) = bound.values[i].clone() else {
            return default;
        };
        let pair = match &value {
            Value::Int(v) => Some((*v, *v)),
            Value::Tuple(items) if items.len() == 2 => match (&items[0], &items[1]) {
                (Value::Int(a), Value::Int(b)) => Some((*a, *b)),
                _ => None,
            },
            _ => None,
        };
        match pair {
            Some((a, b)) if a >= min && b >= min => (a, b),
            Some((a, b)) => {
                let bad = if a < min { a } else { b };
                let mut d = Diagnostic::error(
                    format!("`{}` must be at least {min}, found {bad}", bound.names[i]),
                    span,
                    format!("must be ≥ {min}"),
                );
                if what == "stride" && bad == 0 {
                    d = d.with_help("a stride of 1 visits every position; larger strides skip");
                }
                self.error(d);
                self.poisoned = true;
                (a.max(min), b.max(min))
            }
            None => {
                let keywords: &[&str] = if what == "padding" {
                    &["same", "valid"]
                } else {
                    &[]
                };
                self.symbol_or_error(
                    &value,
                    span,
                    &format!("{what} as an integer or a pair `(h, w)`"),
                    &bound.scope,
                    keywords,
                );
                self.poisoned = true;
                (default.0.max(min), default.1.max(min))
            }
        }
    }

    fn get_bool(&mut self, bound: &Bound, i: usize, default: bool) -> bool {
        match &bound.values[i] {
            None => default,
            Some((Value::Bool(b), _)) => *b,
            Some((value, span)) => {
                let (value, span) = (value.clone(), *span);
                self.symbol_or_error(&value, span, "`true` or `false`", &bound.scope, &[]);
                self.poisoned = true;
                default
            }
        }
    }

    fn get_float(&mut self, bound: &Bound, i: usize, default: f64, range: (f64, f64)) -> f64 {
        let (v, span) = match &bound.values[i] {
            None => return default,
            Some((Value::Int(v), span)) => (*v as f64, *span),
            Some((Value::Float(v), span)) => (*v, *span),
            Some((value, span)) => {
                let (value, span) = (value.clone(), *span);
                self.symbol_or_error(&value, span, "a number", &bound.scope, &[]);
                self.poisoned = true;
                return default;
            }
        };
        if v < range.0 || v > range.1 {
            let name = bound.names[i];
            let mut d = Diagnostic::error(
                if range.1 == f64::MAX {
                    format!("`{name}` must be at least {}, found {v}", range.0)
                } else {
                    format!(
                        "`{name}` must be between {} and {}, found {v}",
                        range.0, range.1
                    )
                },
                span,
                "out of range",
            );
            if name == "p" && v > 1.0 && v <= 100.0 {
                d = d.with_help(format!("`p` is a probability: {v}% is `p = {}`", v / 100.0));
            }
            self.error(d);
            self.poisoned = true;
            return default;
        }
        v
    }

    /// A keyword argument (`padding_mode = reflect`), one of `choices`.
    fn get_choice(
        &mut self,
        bound: &Bound,
        i: usize,
        default: &'static str,
        choices: &[&'static str],
    ) -> &'static str {
        match &bound.values[i] {
            None => default,
            Some((Value::Sym(s), span)) => match choices.iter().find(|c| **c == s) {
                Some(c) => c,
                None => {
                    let span = *span;
                    let mut d = Diagnostic::error(
                        format!(
                            "`{s}` is not one of {}",
                            choices
                                .iter()
                                .map(|c| format!("`{c}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        span,
                        "unknown choice",
                    );
                    if let Some(c) = closest(s, choices.iter().copied()) {
                        d = d.with_help(format!("did you mean `{c}`?"));
                    }
                    self.error(d);
                    self.poisoned = true;
                    default
                }
            },
            Some((value, span)) => {
                let (value, span) = (value.clone(), *span);
                let what = format!(
                    "one of {}",
                    choices
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                self.symbol_or_error(&value, span, &what, &bound.scope, &[]);
                self.poisoned = true;
                default
            }
        }
    }
}
