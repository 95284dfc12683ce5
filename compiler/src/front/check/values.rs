//! Values of the expression language, partial shapes, and expression evaluation.

use super::suggest::closest;
use super::Elab;
use crate::front::diag::Diagnostic;
use crate::front::source::Span;
use crate::front::syntax::{BinOp, Expr, ExprKind};
use crate::ir::{NodeId, Shape};
use std::collections::BTreeMap;

/// A value of the `.cnn` expression language.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A bare name that is not a parameter: `same`, `reflect`, `M`, or a typo.
    Sym(String),
    Tuple(Vec<Value>),
    /// The result of an expression that already failed (reported once).
    Poison,
}

impl Value {
    pub(super) fn describe(&self) -> String {
        match self {
            Value::Int(v) => format!("`{v}`"),
            Value::Float(v) => format!("`{v:?}`"),
            Value::Bool(v) => format!("`{v}`"),
            Value::Sym(s) => format!("`{s}`"),
            Value::Tuple(items) => format!("a tuple of {}", items.len()),
            Value::Poison => "an invalid value".to_string(),
        }
    }

    /// Parses a `--set name=value` right-hand side.
    pub fn parse_setting(text: &str) -> Value {
        let t = text.trim();
        if let Ok(v) = t.parse::<i64>() {
            Value::Int(v)
        } else if let Ok(v) = t.parse::<f64>() {
            Value::Float(v)
        } else if t == "true" || t == "false" {
            Value::Bool(t == "true")
        } else {
            Value::Sym(t.to_string())
        }
    }
}

/// A shape where failed dimensions are unknown.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum PShape {
    Chw(Option<i64>, Option<i64>, Option<i64>),
    Flat(Option<i64>),
    Unknown,
}

impl PShape {
    pub(super) fn known(&self) -> Option<Shape> {
        match *self {
            PShape::Chw(Some(c), Some(h), Some(w)) => Some(Shape::Chw(c, h, w)),
            PShape::Flat(Some(n)) => Some(Shape::Flat(n)),
            _ => None,
        }
    }

    pub(super) fn channels(&self) -> Option<i64> {
        match *self {
            PShape::Chw(c, _, _) => c,
            PShape::Flat(n) => n,
            PShape::Unknown => None,
        }
    }

    pub(super) fn show(&self) -> String {
        fn d(v: Option<i64>) -> String {
            v.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
        }
        match *self {
            PShape::Chw(c, h, w) => format!("[{}, {}, {}]", d(c), d(h), d(w)),
            PShape::Flat(n) => format!("[{}]", d(n)),
            PShape::Unknown => "[?]".to_string(),
        }
    }
}

/// A value flowing between layers: its node (when everything before it checked) and its shape.
#[derive(Clone, Copy, Debug)]
pub(super) struct Val {
    pub(super) node: Option<NodeId>,
    pub(super) shape: PShape,
    /// Where this value was produced, for labels such as "the body ends here".
    pub(super) span: Span,
}

/// Parameters visible to expressions.
#[derive(Clone, Debug, Default)]
pub(super) struct Env {
    pub(super) vars: BTreeMap<String, Value>,
}

impl Elab<'_> {
    pub(super) fn eval(&mut self, expr: &Expr, env: &Env, input: Option<&Val>) -> Value {
        match &expr.kind {
            ExprKind::Int(v) => Value::Int(*v),
            ExprKind::Float(v) => Value::Float(*v),
            ExprKind::Bool(v) => Value::Bool(*v),
            ExprKind::Error => Value::Poison,
            ExprKind::Name(name) => {
                if let Some(v) = env.vars.get(name) {
                    return v.clone();
                }
                let shape = input.map(|v| v.shape);
                let builtin = match (name.as_str(), shape) {
                    ("in_channels", Some(PShape::Chw(c, _, _))) => Some(c),
                    ("in_height", Some(PShape::Chw(_, h, _))) => Some(h),
                    ("in_width", Some(PShape::Chw(_, _, w))) => Some(w),
                    ("in_features", Some(PShape::Flat(n))) => Some(n),
                    ("in_channels" | "in_features", Some(s)) => Some(s.channels()),
                    _ => None,
                };
                match builtin {
                    Some(Some(v)) => Value::Int(v),
                    Some(None) => {
                        self.poisoned = true;
                        Value::Poison
                    }
                    None => Value::Sym(name.clone()),
                }
            }
            ExprKind::Tuple(items) => {
                Value::Tuple(items.iter().map(|e| self.eval(e, env, input)).collect())
            }
            ExprKind::Neg(inner) => match self.eval(inner, env, input) {
                Value::Int(v) => match v.checked_neg() {
                    Some(v) => Value::Int(v),
                    None => self.overflow(expr.span, format!("−({v}) = {}", -(v as i128))),
                },
                Value::Float(v) => Value::Float(-v),
                Value::Poison => Value::Poison,
                other => self.type_error(inner, &other, "a number", env),
            },
            ExprKind::Not(inner) => match self.eval(inner, env, input) {
                Value::Bool(v) => Value::Bool(!v),
                Value::Poison => Value::Poison,
                other => self.type_error(inner, &other, "`true` or `false`", env),
            },
            ExprKind::Binary(op, lhs, rhs) => {
                let a = self.eval(lhs, env, input);
                let b = self.eval(rhs, env, input);
                self.binary(*op, expr, lhs, a, rhs, b, env)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn binary(
        &mut self,
        op: BinOp,
        expr: &Expr,
        lhs: &Expr,
        a: Value,
        rhs: &Expr,
        b: Value,
        env: &Env,
    ) -> Value {
        use Value::*;
        if a == Poison || b == Poison {
            return Poison;
        }
        match op {
            BinOp::And | BinOp::Or => match (&a, &b) {
                (Bool(x), Bool(y)) => Bool(if op == BinOp::And { *x && *y } else { *x || *y }),
                (Bool(_), _) => self.type_error(rhs, &b, "`true` or `false`", env),
                _ => self.type_error(lhs, &a, "`true` or `false`", env),
            },
            BinOp::Eq | BinOp::Ne => {
                let equal = match (&a, &b) {
                    (Int(x), Float(y)) | (Float(y), Int(x)) => (*x as f64) == *y,
                    _ => a == b,
                };
                Bool(if op == BinOp::Eq { equal } else { !equal })
            }
            _ => {
                let (x, y) = match (&a, &b) {
                    (Int(_) | Float(_), Int(_) | Float(_)) => (a.clone(), b.clone()),
                    (Int(_) | Float(_), _) => return self.type_error(rhs, &b, "a number", env),
                    _ => return self.type_error(lhs, &a, "a number", env),
                };
                match (x, y) {
                    (Int(x), Int(y)) => {
                        let r = match op {
                            BinOp::Add => x.checked_add(y),
                            BinOp::Sub => x.checked_sub(y),
                            BinOp::Mul => x.checked_mul(y),
                            BinOp::Div | BinOp::Rem if y == 0 => {
                                let label = match &rhs.kind {
                                    ExprKind::Name(n) => format!("`{n}` is 0"),
                                    _ => "the right side is 0".to_string(),
                                };
                                let arithmetic = format!("{x} {} 0", op.symbol());
                                self.error(
                                    Diagnostic::error("division by zero", expr.span, label)
                                        .with_note(format!(
                                            "{}{arithmetic}",
                                            expr_prefix(expr, &arithmetic)
                                        )),
                                );
                                return Poison;
                            }
                            // Floor division and its remainder, as Python's `//` and `%`.
                            BinOp::Div => floor_div(x, y),
                            BinOp::Rem => floor_div(x, y)
                                .and_then(|q| q.checked_mul(y))
                                .and_then(|p| x.checked_sub(p)),
                            BinOp::Lt => return Bool(x < y),
                            BinOp::Le => return Bool(x <= y),
                            BinOp::Gt => return Bool(x > y),
                            _ => return Bool(x >= y),
                        };
                        match r {
                            Some(v) => Int(v),
                            None => {
                                let (a, b) = (x as i128, y as i128);
                                let exact = match op {
                                    BinOp::Add => a + b,
                                    BinOp::Sub => a - b,
                                    BinOp::Mul => a * b,
                                    // Only i64::MIN / −1 overflows a division.
                                    _ => -a,
                                };
                                let arithmetic = format!("{x} {} {y}", op.symbol());
                                self.overflow(
                                    expr.span,
                                    format!(
                                        "{}{arithmetic} = {exact}",
                                        expr_prefix(expr, &arithmetic)
                                    ),
                                )
                            }
                        }
                    }
                    (x, y) => {
                        let f = |v: Value| match v {
                            Int(i) => i as f64,
                            Float(f) => f,
                            _ => 0.0,
                        };
                        let (x, y) = (f(x), f(y));
                        match op {
                            BinOp::Add => Float(x + y),
                            BinOp::Sub => Float(x - y),
                            BinOp::Mul => Float(x * y),
                            BinOp::Div => Float(x / y),
                            BinOp::Rem => Float(x % y),
                            BinOp::Lt => Bool(x < y),
                            BinOp::Le => Bool(x <= y),
                            BinOp::Gt => Bool(x > y),
                            _ => Bool(x >= y),
                        }
                    }
                }
            }
        }
    }

    pub(super) fn overflow(&mut self, span: Span, arithmetic: String) -> Value {
        self.error(
            Diagnostic::error("arithmetic overflow", span, "does not fit in 64 bits")
                .with_note(arithmetic)
                .with_note(format!("integers range from {} to {}", i64::MIN, i64::MAX)),
        );
        Value::Poison
    }

    /// Reports a value of the wrong kind; a bare name gets "unknown name" with a suggestion.
    pub(super) fn type_error(
        &mut self,
        expr: &Expr,
        value: &Value,
        expected: &str,
        env: &Env,
    ) -> Value {
        if let Value::Sym(name) = value {
            let mut candidates: Vec<&str> = env.vars.keys().map(|s| s.as_str()).collect();
            candidates.extend(["in_channels", "in_height", "in_width", "in_features"]);
            let mut d = Diagnostic::error(
                format!("unknown name `{name}`"),
                expr.span,
                "not a parameter in scope",
            );
            if let Some(s) = closest(name, candidates.iter().copied()) {
                d = d.with_help(format!("did you mean `{s}`?"));
            } else if !env.vars.is_empty() {
                d = d.with_note(format!(
                    "parameters in scope: {}",
                    env.vars
                        .keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            self.error(d);
        } else if *value != Value::Poison {
            self.error(Diagnostic::error(
                format!("expected {expected}, found {}", value.describe()),
                expr.span,
                format!("expected {expected}"),
            ));
        }
        Value::Poison
    }
}

/// ⌊x / y⌋ for y ≠ 0, or `None` on overflow.
pub(super) fn floor_div(x: i64, y: i64) -> Option<i64> {
    let q = x.checked_div(y)?;
    if x % y != 0 && ((x < 0) != (y < 0)) {
        q.checked_sub(1)
    } else {
        Some(q)
    }
}

/// Source-like text of a small expression (names, numbers, arithmetic), for notes.
pub(super) fn expr_text(e: &Expr) -> Option<String> {
    let operand = |e: &Expr| match &e.kind {
        ExprKind::Binary(..) => expr_text(e).map(|t| format!("({t})")),
        _ => expr_text(e),
    };
    Some(match &e.kind {
        ExprKind::Int(v) => v.to_string(),
        ExprKind::Name(n) => n.clone(),
        ExprKind::Neg(inner) => format!("-{}", operand(inner)?),
        ExprKind::Binary(op, l, r) => format!("{} {} {}", operand(l)?, op.symbol(), operand(r)?),
        _ => return None,
    })
}

/// `text = ` when the expression is more than its value, for arithmetic notes.
pub(super) fn expr_prefix(e: &Expr, value: &str) -> String {
    match expr_text(e) {
        Some(t) if t != value => format!("{t} = "),
        _ => String::new(),
    }
}
