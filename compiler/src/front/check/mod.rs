//! The checker: elaborates a parsed model (blocks, parameters, repetition,
//! conditions) into the graph IR, inferring every shape and naming every
//! `state_dict` entry as PyTorch would.
//!
//! Naming follows two kinds of scope, mirroring PyTorch modules:
//! - a *module* scope (a model or block body, the inside of `residual`, an
//!   unnamed `shortcut`, a group `{ }`) names children only by their explicit
//!   names; unnamed items add no path component, so an unnamed layer with
//!   weights is an error there;
//! - a *sequential* scope (`seq { }`, `vgg [...]`, a named `shortcut`,
//!   `name = X * n`) numbers every item by position, as `nn.Sequential`
//!   does. The branches of a `concat` are numbered the same way, as an
//!   `nn.ModuleList`'s are, except an unnamed group, which takes no position
//!   and names its layers in the concat's path (Inception v3's branches).
//!
//! Errors never stop the walk: a failed shape becomes unknown and later
//! checks that need it are skipped, so one run reports every independent error.

use crate::front::diag::Diagnostic;
use crate::front::shape::{SizeError, Window};
use crate::front::source::Span;
use crate::front::syntax::{
    Arg, BinOp, BlockDecl, Expr, ExprKind, Ident, Item, ModelDecl, NamePart, Term,
};
use crate::ir::{
    Activation, BlockInstance, Fusion, Graph, Node, NodeId, Op, Padding, PaddingMode, ParamEntry,
    ParamKind, Shape, F64,
};
use std::collections::{BTreeMap, HashMap};

/// Most layers one model may expand to, so `* 1000000000` is an error, not a hang.
pub const MAX_NODES: usize = 200_000;
/// Deepest chain of block calls.
pub const MAX_BLOCK_DEPTH: usize = 64;

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
    fn describe(&self) -> String {
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
enum PShape {
    Chw(Option<i64>, Option<i64>, Option<i64>),
    Flat(Option<i64>),
    Unknown,
}

impl PShape {
    fn known(&self) -> Option<Shape> {
        match *self {
            PShape::Chw(Some(c), Some(h), Some(w)) => Some(Shape::Chw(c, h, w)),
            PShape::Flat(Some(n)) => Some(Shape::Flat(n)),
            _ => None,
        }
    }

    fn channels(&self) -> Option<i64> {
        match *self {
            PShape::Chw(c, _, _) => c,
            PShape::Flat(n) => n,
            PShape::Unknown => None,
        }
    }

    fn show(&self) -> String {
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
struct Val {
    node: Option<NodeId>,
    shape: PShape,
    /// Where this value was produced, for labels such as "the body ends here".
    span: Span,
}

#[derive(Clone, Debug)]
enum ScopeKind {
    Module,
    Sequential { next: usize },
}

/// Where an item's copy lives in the `state_dict`.
#[derive(Clone, Debug)]
struct Place {
    path: String,
    /// Whether `path` is this item's own (named or numbered), rather than its scope's.
    own: bool,
}

#[derive(Clone, Debug)]
struct Scope {
    path: String,
    kind: ScopeKind,
}

fn join(prefix: &str, component: &str) -> String {
    if prefix.is_empty() {
        component.to_string()
    } else {
        format!("{prefix}.{component}")
    }
}

/// Parameters visible to expressions.
#[derive(Clone, Debug, Default)]
struct Env {
    vars: BTreeMap<String, Value>,
}

/// The declarations a model may use: every block from the file and its includes.
pub struct Declarations<'a> {
    pub blocks: HashMap<String, &'a BlockDecl>,
    /// An `include` could not be read or parsed (already reported): an unknown
    /// name may be defined there, so it is not reported again unless it looks
    /// like a typo of a known one.
    pub missing_includes: bool,
    /// Blocks whose declaration has a syntax error (already reported), so
    /// they were not parsed: a use of one is a consequence, not reported.
    pub lost_blocks: std::collections::HashSet<String>,
}

/// Checks one model with parameter overrides; returns the graph when it has no errors.
pub fn check_model(
    decls: &Declarations,
    model: &ModelDecl,
    overrides: &BTreeMap<String, Value>,
) -> (Option<Graph>, Vec<Diagnostic>) {
    check_model_at(decls, model, overrides, None)
}

/// Like [`check_model`], with the input's height and width replaced (to
/// test or explain a model at another resolution).
pub fn check_model_at(
    decls: &Declarations,
    model: &ModelDecl,
    overrides: &BTreeMap<String, Value>,
    input_hw: Option<(i64, i64)>,
) -> (Option<Graph>, Vec<Diagnostic>) {
    let mut elab = Elab {
        input_hw,
        decls,
        diags: Vec::new(),
        nodes: Vec::new(),
        params: Vec::new(),
        keys: HashMap::new(),
        stack: Vec::new(),
        instances: Vec::new(),
        calls: 0,
        poisoned: false,
        too_large: false,
    };
    let mut env = Env::default();
    for param in &model.params {
        let value = match overrides.get(&param.name.text) {
            Some(v) => v.clone(),
            None => match &param.default {
                Some(e) => elab.eval(e, &env, None),
                None => {
                    elab.error(
                        Diagnostic::error(
                            format!("model parameter `{}` has no default", param.name.text),
                            param.name.span,
                            "needs a value",
                        )
                        .with_help(format!(
                            "give it one (`{} = ...`), or pass `--set {}=...`",
                            param.name.text, param.name.text
                        )),
                    );
                    Value::Poison
                }
            },
        };
        if let Some(used) = used_as_layer(decls, &model.body, &param.name.text) {
            // A `--set` value has no span of its own: point at the parameter.
            let set = overrides.contains_key(&param.name.text);
            let at = match (set, &param.default) {
                (false, Some(default)) => default.span,
                _ => param.name.span,
            };
            let name = &param.name.text;
            if !elab.check_layer_value(name, &value, at, used, &model.name.text) && set {
                if let (Some(d), Value::Sym(v)) = (elab.diags.last_mut(), &value) {
                    d.notes
                        .push(format!("the value comes from `--set {name}={v}`"));
                }
            }
        }
        env.vars.insert(param.name.text.clone(), value);
    }
    let input = elab.input(model, &env);
    let mut scope = Scope {
        path: String::new(),
        kind: ScopeKind::Module,
    };
    let out = elab.items(&model.body, &mut scope, &env, input);
    dedup(&mut elab.diags);
    if !elab.diags.is_empty() || elab.poisoned {
        return (None, elab.diags);
    }
    let Some(output) = out.node else {
        return (None, elab.diags);
    };
    let graph = Graph {
        name: model.name.text.clone(),
        nodes: elab.nodes,
        output,
        params: own_parameters_first(elab.params),
    };
    if let Some(what) = graph.count_overflow() {
        elab.diags.push(
            Diagnostic::error(
                format!(
                    "model `{}` is too large: {what} does not fit in 64 bits",
                    model.name.text
                ),
                model.name.span,
                "too large to count",
            )
            .with_note(format!("counts are 64-bit integers, at most {}", i64::MAX)),
        );
        return (None, elab.diags);
    }
    (Some(graph), elab.diags)
}

/// PyTorch's `state_dict` order: a module's own parameters before its
/// children's entries, whatever order they were assigned in. Only a bare
/// parameter (a `scale`, ConvNeXt's `layer_scale`) is an own parameter of a
/// module that has children, so each moves to just before the first entry of
/// its module (after the module's other bare parameters); the rest keep
/// their order.
fn own_parameters_first(mut params: Vec<ParamEntry>) -> Vec<ParamEntry> {
    fn module(key: &str) -> &str {
        key.rsplit_once('.').map_or("", |(m, _)| m)
    }
    for i in 0..params.len() {
        if params[i].kind != ParamKind::Bare {
            continue;
        }
        let m = module(&params[i].key).to_string();
        let prefix = format!("{m}.");
        let inside = |p: &ParamEntry| m.is_empty() || p.key.starts_with(&prefix);
        let own = |p: &ParamEntry| p.kind == ParamKind::Bare && module(&p.key) == m;
        if let Some(j) = (0..i).find(|&j| inside(&params[j]) && !own(&params[j])) {
            let p = params.remove(i);
            params.insert(j, p);
        }
    }
    params
}

/// Where `items` first call `name` as a layer (`act` or `act(...)`), looking
/// into nested structures but not into other blocks. A name that is itself a
/// layer or block is that layer or block, never a parameter.
fn used_as_layer(decls: &Declarations, items: &[Item], name: &str) -> Option<Span> {
    if LAYERS.contains(&name) || decls.blocks.contains_key(name) {
        return None;
    }
    used_as_layer_in(items, name)
}

fn used_as_layer_in(items: &[Item], name: &str) -> Option<Span> {
    items.iter().find_map(|item| match &item.term {
        Term::Call { name: called, .. } if called.text == name => Some(called.span),
        Term::Call { .. } | Term::Vgg { .. } => None,
        Term::Seq(body)
        | Term::Concat(body)
        | Term::Group(body)
        | Term::Gate(body)
        | Term::Split { branches: body, .. } => used_as_layer_in(body, name),
        Term::Residual { body, shortcut, .. } => used_as_layer_in(body, name).or_else(|| {
            shortcut
                .as_ref()
                .and_then(|sc| used_as_layer_in(&sc.body, name))
        }),
    })
}

/// Keeps the first of identical diagnostics (a block used many times reports its own error once).
fn dedup(diags: &mut Vec<Diagnostic>) {
    let mut seen = std::collections::HashSet::new();
    diags.retain(|d| seen.insert((d.message.clone(), d.primary.span)));
}

struct Elab<'a> {
    /// Replaces the declared input height and width.
    input_hw: Option<(i64, i64)>,
    decls: &'a Declarations<'a>,
    diags: Vec<Diagnostic>,
    nodes: Vec<Node>,
    params: Vec<ParamEntry>,
    keys: HashMap<String, Span>,
    /// Block calls in progress: block name and call site.
    stack: Vec<(String, Span)>,
    /// The block instances of `stack`, recorded on each node (for `cnnc graph`).
    instances: Vec<BlockInstance>,
    /// Block calls made so far (numbers the instances).
    calls: usize,
    /// Set when something failed without a diagnostic of its own (an unknown shape).
    poisoned: bool,
    too_large: bool,
}

impl<'a> Elab<'a> {
    fn error(&mut self, mut diagnostic: Diagnostic) {
        if let Some((name, site)) = self.stack.last() {
            if diagnostic.primary.span.file != site.file
                || !(site.start..site.end).contains(&diagnostic.primary.span.start)
            {
                diagnostic =
                    diagnostic.with_secondary(*site, format!("in block `{name}`, used here"));
            }
            if self.stack.len() > 1 {
                let chain: Vec<&str> = self.stack.iter().map(|(n, _)| n.as_str()).collect();
                let shown = if chain.len() > 8 {
                    format!(
                        "{} → … → {} ({} blocks)",
                        chain[..3].join(" → "),
                        chain[chain.len() - 3..].join(" → "),
                        chain.len()
                    )
                } else {
                    chain.join(" → ")
                };
                diagnostic = diagnostic.with_note(format!("reached through {shown}"));
            }
        }
        self.diags.push(diagnostic);
    }

    // -- values -------------------------------------------------------------

    fn eval(&mut self, expr: &Expr, env: &Env, input: Option<&Val>) -> Value {
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
    fn binary(
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

    fn overflow(&mut self, span: Span, arithmetic: String) -> Value {
        self.error(
            Diagnostic::error("arithmetic overflow", span, "does not fit in 64 bits")
                .with_note(arithmetic)
                .with_note(format!("integers range from {} to {}", i64::MIN, i64::MAX)),
        );
        Value::Poison
    }

    /// Reports a value of the wrong kind; a bare name gets "unknown name" with a suggestion.
    fn type_error(&mut self, expr: &Expr, value: &Value, expected: &str, env: &Env) -> Value {
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

    // -- the input ------------------------------------------------------------

    fn input(&mut self, model: &ModelDecl, env: &Env) -> Val {
        let mut dims = Vec::new();
        for e in &model.input {
            match self.eval(e, env, None) {
                Value::Int(v) if v >= 1 => dims.push(Some(v)),
                Value::Int(v) => {
                    self.error(Diagnostic::error(
                        format!("input sizes must be at least 1, found {v}"),
                        e.span,
                        "not a size",
                    ));
                    dims.push(None);
                }
                Value::Poison => dims.push(None),
                other => {
                    self.type_error(e, &other, "an integer", env);
                    dims.push(None);
                }
            }
        }
        let shape = match (dims.as_slice(), self.input_hw) {
            ([c, _, _], Some((h, w))) => PShape::Chw(*c, Some(h), Some(w)),
            ([c, h, w], _) => PShape::Chw(*c, *h, *w),
            ([n], _) => PShape::Flat(*n),
            _ => {
                self.error(
                    Diagnostic::error(
                        format!("`input` takes [C, H, W], found {} sizes", dims.len()),
                        model.input_span,
                        "expected 3 sizes",
                    )
                    .with_help("the batch size is chosen when running; write only channels, height and width, e.g. `input [3, 224, 224]`"),
                );
                PShape::Unknown
            }
        };
        let node = shape.known().map(|s| {
            self.nodes.push(Node {
                op: Op::Input,
                inputs: Vec::new(),
                shape: s,
                name: String::new(),
                span: model.input_span,
                call_stack: Vec::new(),
                blocks: Vec::new(),
                fusion: Fusion::default(),
            });
            0
        });
        Val {
            node,
            shape,
            span: model.input_span,
        }
    }

    // -- items and scopes -------------------------------------------------------

    fn items(&mut self, items: &[Item], scope: &mut Scope, env: &Env, mut input: Val) -> Val {
        for item in items {
            input = self.item(item, scope, env, input);
        }
        input
    }

    /// Evaluates an item's condition and repetition; returns how many copies to make.
    /// `None` when the condition or count failed (reported): the item's
    /// output is then unknown rather than guessed.
    fn copies(&mut self, item: &Item, env: &Env, input: &Val) -> Option<usize> {
        if let Some(cond) = &item.condition {
            match self.eval(cond, env, Some(input)) {
                Value::Bool(true) => {}
                Value::Bool(false) => return Some(0),
                Value::Poison => return None,
                Value::Int(v) => {
                    let mut d = Diagnostic::error(
                        format!("expected `true` or `false`, found `{v}`"),
                        cond.span,
                        "a condition is `true` or `false`",
                    );
                    if let ExprKind::Name(n) = &cond.kind {
                        d = d.with_help(format!(
                            "compare it (`when {n} != 0`), or make `{n}` `true` or `false`"
                        ));
                    }
                    self.error(d);
                    return None;
                }
                other => {
                    self.type_error(cond, &other, "`true` or `false`", env);
                    return None;
                }
            }
        }
        let Some(repeat) = &item.repeat else {
            return Some(1);
        };
        match self.eval(repeat, env, Some(input)) {
            Value::Int(n) if (0..=10_000).contains(&n) => Some(n as usize),
            Value::Int(n) => {
                self.error(Diagnostic::error(
                    format!("repetition count must be between 0 and 10000, found {n}"),
                    repeat.span,
                    "out of range",
                ));
                None
            }
            Value::Poison => None,
            other => {
                self.type_error(repeat, &other, "an integer", env);
                None
            }
        }
    }

    fn item(&mut self, item: &Item, scope: &mut Scope, env: &Env, input: Val) -> Val {
        let output = self.item_output(item, scope, env, input);
        self.check_expect(item, env, &input, &output);
        output
    }

    /// Enforces an item's `expect [C, H, W]` on its output. Sizes are
    /// evaluated on the item's input (`in_height / 2`); `_` matches any size.
    /// An output already unknown was reported where it failed.
    fn check_expect(&mut self, item: &Item, env: &Env, input: &Val, output: &Val) {
        let Some(expect) = &item.expect else {
            return;
        };
        let mut wanted: Vec<Option<i64>> = Vec::new();
        for e in &expect.dims {
            match self.eval(e, env, Some(input)) {
                Value::Int(v) => wanted.push(Some(v)),
                Value::Sym(s) if s == "_" => wanted.push(None),
                Value::Poison => return,
                other => {
                    let scope: Vec<String> = env.vars.keys().cloned().collect();
                    self.symbol_or_error(&other, e.span, "a size or `_`", &scope, &["_"]);
                    return;
                }
            }
        }
        let got: Vec<i64> = match output.shape.known() {
            Some(Shape::Chw(c, h, w)) => vec![c, h, w],
            Some(Shape::Flat(n)) => vec![n],
            None => return,
        };
        let show = |dims: &[Option<i64>]| {
            let parts: Vec<String> = dims
                .iter()
                .map(|d| d.map_or("_".to_string(), |v| v.to_string()))
                .collect();
            format!("[{}]", parts.join(", "))
        };
        let matches = wanted.len() == got.len()
            && wanted
                .iter()
                .zip(&got)
                .all(|(w, g)| w.is_none_or(|w| w == *g));
        if matches {
            return;
        }
        let mut d = Diagnostic::error(
            format!(
                "the output is {}, not the expected {}",
                output.shape.show(),
                show(&wanted)
            ),
            expect.span,
            format!("expects {}", show(&wanted)),
        )
        .with_secondary(item.span, format!("gives {}", output.shape.show()))
        .with_secondary(input.span, format!("from {} here", input.shape.show()));
        if wanted.len() == got.len() {
            let axes: &[&str] = if got.len() == 3 {
                &["channels", "height", "width"]
            } else {
                &["features"]
            };
            let differ: Vec<String> = wanted
                .iter()
                .zip(&got)
                .zip(axes)
                .filter(|((w, g), _)| w.is_some_and(|w| w != **g))
                .map(|((w, g), axis)| format!("{axis} {g}, expected {}", w.unwrap_or(0)))
                .collect();
            d = d.with_note(differ.join("; "));
            if differ
                .iter()
                .any(|a| a.starts_with("height") || a.starts_with("width"))
            {
                d = d.with_help(
                    "when porting from PyTorch, compare this layer's padding and stride with the original (a missing `p=1` shows here first)",
                );
            }
        }
        self.error(d);
    }

    fn item_output(&mut self, item: &Item, scope: &mut Scope, env: &Env, input: Val) -> Val {
        let Some(copies) = self.copies(item, env, &input) else {
            return self.unknown(item.span);
        };
        if copies == 0 {
            return input;
        }
        if item.name_template.is_some() {
            // `"denselayer{i + 1}" = X * n`: each copy has a name of its own
            // in this scope (and, in a `seq`, its position), not `name.k`.
            let mut value = input;
            for copy in 0..copies {
                let Some(Some(name)) = self.copy_name(item, env, &value, copy) else {
                    return self.unknown(item.span);
                };
                self.advance(scope);
                let place = Place {
                    path: join(&scope.path, &name),
                    own: true,
                };
                let out = self.term(item, place, env, value, item.unused);
                if !item.unused {
                    value = out;
                }
            }
            return value;
        }
        if item.unused {
            // Declared for its weights only: checked against the current input, not applied.
            let place = self.place(item, scope);
            self.term(item, place, env, input, true);
            return input;
        }
        if let (Some(name), true) = (&item.name, item.repeat.is_some()) {
            // `name = X * n` is `name = seq { X X ... }`.
            self.advance(scope);
            let mut inner = Scope {
                path: join(&scope.path, &name.text),
                kind: ScopeKind::Sequential { next: 0 },
            };
            let mut value = input;
            for _ in 0..copies {
                let place = Place {
                    path: self.advance(&mut inner).unwrap_or_default(),
                    own: true,
                };
                value = self.term(item, place, env, value, false);
            }
            return value;
        }
        let mut value = input;
        for _ in 0..copies {
            let place = self.place(item, scope);
            value = self.term(item, place, env, value, false);
        }
        value
    }

    /// The name of copy `copy` of an item: the name as written, or its
    /// template evaluated, with `i` the copy's number from 0 when the item is
    /// repeated. `Some(None)` for an unnamed item, `None` when the template
    /// failed (reported).
    fn copy_name(
        &mut self,
        item: &Item,
        env: &Env,
        input: &Val,
        copy: usize,
    ) -> Option<Option<String>> {
        let Some(name) = &item.name else {
            return Some(None);
        };
        let Some(template) = &item.name_template else {
            return Some(Some(name.text.clone()));
        };
        let mut env = env.clone();
        if item.repeat.is_some() {
            env.vars.insert("i".to_string(), Value::Int(copy as i64));
        }
        let mut out = String::new();
        for part in template {
            match part {
                NamePart::Text(text) => out.push_str(text),
                NamePart::Expr(e) => match self.eval(e, &env, Some(input)) {
                    Value::Int(v) => out.push_str(&v.to_string()),
                    Value::Poison => return None,
                    Value::Sym(s) if s == "i" && item.repeat.is_none() => {
                        self.error(
                            Diagnostic::error(
                                "`i` numbers the copies of a repeated item, but this item is not repeated",
                                e.span,
                                "no copies to number",
                            )
                            .with_help("repeat the item with `* n`, or write the name without `{i}`"),
                        );
                        return None;
                    }
                    other => {
                        let scope: Vec<String> = env.vars.keys().cloned().collect();
                        self.symbol_or_error(&other, e.span, "an integer", &scope, &[]);
                        return None;
                    }
                },
            }
        }
        if out.chars().count() > crate::front::syntax::MAX_NAME {
            self.error(
                Diagnostic::error(
                    format!("name is {} characters long", out.chars().count()),
                    name.span,
                    "this name is too long",
                )
                .with_help(format!(
                    "names may have at most {} characters",
                    crate::front::syntax::MAX_NAME
                )),
            );
            return None;
        }
        Some(Some(out))
    }

    /// Where one copy of an item lives: its own name, its position in a
    /// sequential scope, or (unnamed in a module scope) the scope's own path.
    fn place(&mut self, item: &Item, scope: &mut Scope) -> Place {
        let index = self.advance(scope);
        match (&item.name, index) {
            (Some(name), _) => Place {
                path: join(&scope.path, &name.text),
                own: true,
            },
            (None, Some(path)) => Place { path, own: true },
            (None, None) => Place {
                path: scope.path.clone(),
                own: false,
            },
        }
    }

    /// Advances a sequential scope's position counter, returning the child's
    /// path; a module scope has no positions.
    fn advance(&mut self, scope: &mut Scope) -> Option<String> {
        match &mut scope.kind {
            ScopeKind::Sequential { next } => {
                let path = join(&scope.path, &next.to_string());
                *next += 1;
                Some(path)
            }
            ScopeKind::Module => None,
        }
    }

    /// Elaborates one copy of an item's term at `place`.
    fn term(&mut self, item: &Item, place: Place, env: &Env, input: Val, unused: bool) -> Val {
        if self.nodes.len() > MAX_NODES || self.params.len() > MAX_NODES {
            if !self.too_large {
                self.too_large = true;
                self.error(Diagnostic::error(
                    format!("model expands to more than {MAX_NODES} layers"),
                    item.span,
                    "while expanding this",
                ));
            }
            return self.unknown(item.span);
        }
        if unused && !matches!(item.term, Term::Call { .. }) {
            let what = match &item.term {
                Term::Seq(_) => "a `seq`",
                Term::Residual { .. } => "a `residual`",
                Term::Concat(_) => "a `concat`",
                Term::Gate(_) => "a `gate`",
                Term::Split { .. } => "a `split`",
                Term::Group(_) => "a group `{ }`",
                Term::Vgg { .. } => "a `vgg` list",
                Term::Call { .. } => "a call",
            };
            self.error(
                Diagnostic::error(
                    "`unused` applies to single layers",
                    unused_keyword(item),
                    "marks a single layer",
                )
                .with_secondary(item.term_span, format!("this is {what}"))
                .with_help(
                    "mark each layer inside `unused` instead, e.g. `unused aux = linear(10)`",
                ),
            );
            return input;
        }
        match &item.term {
            Term::Seq(items) => {
                let mut scope = Scope {
                    path: place.path,
                    kind: ScopeKind::Sequential { next: 0 },
                };
                self.items(items, &mut scope, env, input)
            }
            Term::Group(items) => {
                // A module scope at the item's place: named, its own path;
                // unnamed in a module scope, the enclosing path.
                let mut scope = Scope {
                    path: place.path,
                    kind: ScopeKind::Module,
                };
                self.items(items, &mut scope, env, input)
            }
            Term::Residual {
                condition,
                body,
                shortcut,
            } => {
                let mut scope = Scope {
                    path: place.path.clone(),
                    kind: ScopeKind::Module,
                };
                if let Some(cond) = condition {
                    // Evaluated on the residual's input, like a shortcut's `when`.
                    match self.eval(cond, env, Some(&input)) {
                        Value::Bool(true) => {}
                        Value::Bool(false) => return self.items(body, &mut scope, env, input),
                        Value::Poison => return self.unknown(item.span),
                        other => {
                            self.type_error(cond, &other, "`true` or `false`", env);
                            return self.unknown(item.span);
                        }
                    }
                }
                let main = self.items(body, &mut scope, env, input);
                let mut short = input;
                let mut projected = false;
                if let Some(sc) = shortcut {
                    let take = match &sc.condition {
                        None => true,
                        Some(cond) => match self.eval(cond, env, Some(&input)) {
                            Value::Bool(b) => b,
                            Value::Poison => false,
                            other => {
                                self.type_error(cond, &other, "`true` or `false`", env);
                                false
                            }
                        },
                    };
                    if take {
                        projected = true;
                        let mut scope = match &sc.name {
                            Some(name) => Scope {
                                path: join(&place.path, &name.text),
                                kind: ScopeKind::Sequential { next: 0 },
                            },
                            None => Scope {
                                path: place.path.clone(),
                                kind: ScopeKind::Module,
                            },
                        };
                        short = self.items(&sc.body, &mut scope, env, input);
                        // Labels point at the `shortcut` keyword, not the whole block.
                        short.span = Span {
                            end: (sc.span.start + "shortcut".len()).min(sc.span.end),
                            ..sc.span
                        };
                    }
                }
                let keyword = Span {
                    end: item.term_span.start + "residual".len(),
                    ..item.term_span
                };
                self.residual_add(keyword, main, short, input, projected, &place.path)
            }
            Term::Concat(branches) => {
                let outputs = self.branches(branches, &place, env, input, None);
                let keyword = Span {
                    end: item.term_span.start + "concat".len(),
                    ..item.term_span
                };
                self.concat(keyword, &outputs, input, &place.path)
            }
            Term::Split {
                args,
                args_span,
                branches,
            } => {
                let keyword = Span {
                    end: item.term_span.start + "split".len(),
                    ..item.term_span
                };
                let Some(chunks) =
                    self.split_chunks(keyword, args, *args_span, branches, env, input)
                else {
                    return self.unknown(item.span);
                };
                let outputs = self.branches(branches, &place, env, input, Some(chunks));
                self.concat(keyword, &outputs, input, &place.path)
            }
            Term::Gate(body) => {
                // A module scope, like a residual body: torchvision's
                // SqueezeExcitation names its layers `fc1`, `fc2`.
                let mut scope = Scope {
                    path: place.path.clone(),
                    kind: ScopeKind::Module,
                };
                let factor = self.items(body, &mut scope, env, input);
                let keyword = Span {
                    end: item.term_span.start + "gate".len(),
                    ..item.term_span
                };
                self.gate(keyword, factor, input, &place.path)
            }
            Term::Vgg { args, cfg } => self.vgg(args, cfg, place.path, env, input, item.term_span),
            Term::Call {
                name,
                args,
                args_span,
            } => {
                // A parameter used as a layer (`act` in a block called with
                // `act = hardswish`) stands for the layer or block it names.
                // Its value was checked where it was bound; a bad one is
                // already reported there.
                // A parameter named like a layer or block (`relu = 1`) does
                // not hide it, as before parameters could be layers.
                let resolved;
                let name = match env.vars.get(&name.text) {
                    _ if self.is_layer_or_block(&name.text) => name,
                    Some(Value::Sym(layer)) if self.is_layer_or_block(layer) => {
                        resolved = Ident {
                            text: layer.clone(),
                            span: name.span,
                        };
                        &resolved
                    }
                    Some(_) => return self.unknown(item.span),
                    None => name,
                };
                if let Some(block) = self.decls.blocks.get(&name.text).copied() {
                    if unused {
                        self.error(
                            Diagnostic::error(
                                "`unused` applies to single layers, not blocks",
                                unused_keyword(item),
                                "marks a single layer",
                            )
                            .with_secondary(name.span, format!("`{}` is a block", name.text))
                            .with_help("mark the layers inside the block `unused` instead"),
                        );
                        return input;
                    }
                    // Labels about the result point at the call, not inside the block.
                    let mut out = self.call_block(block, name, args, place.path, env, input);
                    out.span = item.term_span;
                    out
                } else {
                    let call = Call {
                        name,
                        args,
                        args_span: *args_span,
                        item_span: item.span,
                    };
                    self.layer(&call, place, env, input, unused)
                }
            }
        }
    }

    /// The outputs of a `concat`'s or `split`'s branches, each fed `input`,
    /// or for a `split` (`chunks` = the chunks, their count already checked)
    /// its own chunk of the input's channels.
    fn branches(
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
    fn split_chunks(
        &mut self,
        keyword: Span,
        args: &[Arg],
        args_span: Span,
        branches: &[Item],
        env: &Env,
        input: Val,
    ) -> Option<(i64, Span)> {
        let b = self.bind(
            "split",
            &[Spec::req("chunks", &[])],
            args,
            env,
            &input,
            args_span,
        )?;
        let n = self.get_int(&b, 0, 1, 1);
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
    fn chunk(&mut self, input: Val, offset: i64, size: i64, span: Span) -> Val {
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

    /// Whether `name` is a built-in layer or a declared block.
    fn is_layer_or_block(&self, name: &str) -> bool {
        LAYERS.contains(&name) || self.decls.blocks.contains_key(name)
    }

    /// Checks the value of a parameter that `owner` uses as a layer (at
    /// `used`): it must name a built-in layer or a block. `at` is where the
    /// value was given. Returns whether it does.
    fn check_layer_value(
        &mut self,
        param: &str,
        value: &Value,
        at: Span,
        used: Span,
        owner: &str,
    ) -> bool {
        match value {
            Value::Sym(layer) if self.is_layer_or_block(layer) => true,
            Value::Poison => false,
            Value::Sym(layer) => {
                let mut d = Diagnostic::error(
                    format!("unknown layer or block `{layer}`"),
                    at,
                    format!("`{param}` is used as a layer"),
                )
                .with_secondary(used, format!("`{owner}` uses `{param}` as a layer here"));
                let candidates: Vec<&str> = LAYERS
                    .iter()
                    .copied()
                    .chain(self.decls.blocks.keys().map(String::as_str))
                    .collect();
                if let Some(s) = closest(layer, candidates.into_iter()) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                self.error(d);
                false
            }
            other => {
                self.error(
                    Diagnostic::error(
                        format!("expected a layer or block name, found {}", other.describe()),
                        at,
                        format!("`{param}` is used as a layer"),
                    )
                    .with_secondary(used, format!("`{owner}` uses `{param}` as a layer here"))
                    .with_help(format!("pass a layer by name, e.g. `{param} = relu`")),
                );
                false
            }
        }
    }

    fn unknown(&mut self, span: Span) -> Val {
        self.poisoned = true;
        Val {
            node: None,
            shape: PShape::Unknown,
            span,
        }
    }

    /// Adds a node when its inputs and shape are known.
    fn push(&mut self, op: Op, inputs: &[Val], shape: PShape, name: &str, span: Span) -> Val {
        let ids: Option<Vec<NodeId>> = inputs.iter().map(|v| v.node).collect();
        let node = match (ids, shape.known()) {
            (Some(ids), Some(known)) => {
                self.nodes.push(Node {
                    op,
                    inputs: ids,
                    shape: known,
                    name: name.to_string(),
                    span,
                    call_stack: self.stack.iter().map(|(_, s)| *s).collect(),
                    blocks: self.instances.clone(),
                    fusion: Fusion::default(),
                });
                Some(self.nodes.len() - 1)
            }
            _ => {
                self.poisoned = true;
                None
            }
        };
        Val { node, shape, span }
    }

    fn add_param(
        &mut self,
        path: &str,
        kind: ParamKind,
        shape: Vec<Option<i64>>,
        node: Option<NodeId>,
        span: Span,
    ) {
        let key = match kind {
            // A bare parameter's key is the layer's path itself.
            ParamKind::Bare => path.to_string(),
            _ => join(path, kind.suffix()),
        };
        if let Some(first) = self.keys.get(&key).copied() {
            // One report per layer, not one per tensor (`weight`, `bias`, ...).
            let reported = self
                .diags
                .iter()
                .any(|d| d.primary.span == span && d.message.starts_with("`state_dict` key"));
            if reported {
                return;
            }
            let d = Diagnostic::error(
                format!("`state_dict` key `{key}` is defined twice"),
                span,
                "second definition",
            )
            .with_secondary(first, "first defined here")
            .with_help("give one of the layers a different name, or wrap unnamed layers in `seq { }` so they are numbered");
            self.error(d);
            return;
        }
        self.keys.insert(key.clone(), span);
        let shape = shape.into_iter().map(|d| d.unwrap_or(0)).collect();
        self.params.push(ParamEntry {
            key,
            shape,
            kind,
            node,
            span,
        });
    }

    fn residual_add(
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
    fn gate(&mut self, keyword: Span, factor: Val, input: Val, name: &str) -> Val {
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

    fn concat(&mut self, keyword: Span, outputs: &[Val], input: Val, name: &str) -> Val {
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

    fn vgg(
        &mut self,
        args: &[Arg],
        cfg: &[Expr],
        path: String,
        env: &Env,
        input: Val,
        span: Span,
    ) -> Val {
        let specs = [
            Spec::opt("batch_norm", &["bn"]),
            Spec::opt("kernel_size", &["k"]),
        ];
        let Some(bound) = self.bind("vgg", &specs, args, env, &input, span) else {
            return self.unknown(span);
        };
        let bn = self.get_bool(&bound, 0, false);
        let k = self.get_int(&bound, 1, 3, 1);
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

    #[allow(clippy::too_many_arguments)]
    fn call_block(
        &mut self,
        block: &BlockDecl,
        name: &Ident,
        args: &[Arg],
        path: String,
        env: &Env,
        input: Val,
    ) -> Val {
        if self.stack.iter().any(|(n, _)| *n == block.name.text) {
            self.error(
                Diagnostic::error(
                    format!("block `{}` uses itself", block.name.text),
                    name.span,
                    "recursive use",
                )
                .with_secondary(block.name.span, "block defined here")
                .with_help("blocks cannot be recursive; use repetition (`block(...) * n`) instead"),
            );
            return self.unknown(name.span);
        }
        if self.stack.len() >= MAX_BLOCK_DEPTH {
            self.error(
                Diagnostic::error(
                    "blocks are nested too deeply",
                    name.span,
                    format!("more than {MAX_BLOCK_DEPTH} block calls deep"),
                )
                .with_help(
                    "flatten the chain of blocks; repetition (`block(...) * n`) does not nest",
                ),
            );
            return self.unknown(name.span);
        }
        // Bind arguments: positional first, then by name, then defaults (which
        // may refer to earlier parameters).
        let mut values: Vec<Option<Value>> = vec![None; block.params.len()];
        let mut first_spans: Vec<Option<Span>> = vec![None; block.params.len()];
        let mut ok = true;
        let mut positional = 0;
        let positional_args: Vec<&Arg> = args.iter().filter(|a| a.name.is_none()).collect();
        for arg in args {
            let index = match &arg.name {
                None => {
                    positional += 1;
                    if positional > block.params.len() {
                        if positional == block.params.len() + 1 {
                            // Reported once, covering every extra argument.
                            let extra = positional_args[block.params.len()..]
                                .iter()
                                .fold(arg.span, |s, a| s.join(a.span));
                            let count = block.params.len();
                            let params: Vec<String> = block
                                .params
                                .iter()
                                .map(|p| format!("`{}`", p.name.text))
                                .collect();
                            self.error(
                                Diagnostic::error(
                                    format!(
                                        "block `{}` takes {count} argument{}, found {}",
                                        block.name.text,
                                        if count == 1 { "" } else { "s" },
                                        positional_args.len()
                                    ),
                                    extra,
                                    if positional_args.len() - count == 1 {
                                        "extra argument"
                                    } else {
                                        "extra arguments"
                                    },
                                )
                                .with_secondary(
                                    block.name.span,
                                    if params.is_empty() {
                                        "block defined here, without parameters".to_string()
                                    } else {
                                        format!("block defined here with {}", params.join(", "))
                                    },
                                ),
                            );
                        }
                        ok = false;
                        continue;
                    }
                    positional - 1
                }
                Some(n) => match block.params.iter().position(|p| p.name.text == n.text) {
                    Some(i) => i,
                    None => {
                        let mut d = Diagnostic::error(
                            format!("block `{}` has no parameter `{}`", block.name.text, n.text),
                            n.span,
                            "unknown parameter",
                        )
                        .with_secondary(block.name.span, "block defined here");
                        if let Some(s) =
                            closest(&n.text, block.params.iter().map(|p| p.name.text.as_str()))
                        {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        }
                        self.error(d);
                        ok = false;
                        continue;
                    }
                },
            };
            if values[index].is_some() {
                let mut d = Diagnostic::error(
                    format!(
                        "parameter `{}` of block `{}` is given twice",
                        block.params[index].name.text, block.name.text
                    ),
                    arg.span,
                    "second value",
                );
                if let Some(first) = first_spans[index] {
                    d = d.with_secondary(first, "first value");
                }
                self.error(d);
                ok = false;
                continue;
            }
            values[index] = Some(self.eval(&arg.value, env, Some(&input)));
            first_spans[index] = Some(arg.span);
        }
        let mut inner = Env::default();
        for (index, (param, value)) in block.params.iter().zip(values).enumerate() {
            let value = match value {
                Some(v) => v,
                None => match &param.default {
                    Some(e) => self.eval(e, &inner, Some(&input)),
                    None => {
                        self.error(
                            Diagnostic::error(
                                format!(
                                    "missing argument `{}` of block `{}`",
                                    param.name.text, block.name.text
                                ),
                                name.span,
                                format!("`{}` needs a value", param.name.text),
                            )
                            .with_secondary(param.name.span, "parameter declared here")
                            .with_help(format!(
                                "add `{} = ...` to the call, or give the parameter a default",
                                param.name.text
                            )),
                        );
                        ok = false;
                        Value::Poison
                    }
                },
            };
            if let Some(used) = used_as_layer(self.decls, &block.body, &param.name.text) {
                let at = first_spans[index]
                    .or(param.default.as_ref().map(|d| d.span))
                    .unwrap_or(name.span);
                ok &= self.check_layer_value(&param.name.text, &value, at, used, &block.name.text);
            }
            inner.vars.insert(param.name.text.clone(), value);
        }
        if !ok {
            return self.unknown(name.span);
        }
        self.stack.push((block.name.text.clone(), name.span));
        self.instances.push(BlockInstance {
            block: block.name.text.clone(),
            path: path.clone(),
            id: self.calls,
        });
        self.calls += 1;
        let mut scope = Scope {
            path,
            kind: ScopeKind::Module,
        };
        let out = self.items(&block.body, &mut scope, &inner, input);
        self.instances.pop();
        self.stack.pop();
        out
    }
}

// ---------------------------------------------------------------------------
// Built-in layers
// ---------------------------------------------------------------------------

struct Call<'c> {
    name: &'c Ident,
    args: &'c [Arg],
    args_span: Span,
    item_span: Span,
}

/// One accepted argument of a built-in layer.
struct Spec {
    name: &'static str,
    aliases: &'static [&'static str],
    required: bool,
}

impl Spec {
    const fn req(name: &'static str, aliases: &'static [&'static str]) -> Spec {
        Spec {
            name,
            aliases,
            required: true,
        }
    }
    const fn opt(name: &'static str, aliases: &'static [&'static str]) -> Spec {
        Spec {
            name,
            aliases,
            required: false,
        }
    }
}

/// Arguments matched to a layer's specs, by position in the spec list.
struct Bound {
    values: Vec<Option<(Value, Span)>>,
    /// The argument names, for messages.
    names: Vec<&'static str>,
    /// Parameters in scope, for "did you mean" on an unknown name.
    scope: Vec<String>,
}

enum PadSpec {
    Explicit(i64, i64),
    Same,
}

struct ConvArgs {
    out: i64,
    kernel: (i64, i64),
    stride: (i64, i64),
    padding: PadSpec,
    dilation: (i64, i64),
    groups: i64,
    bias: bool,
    mode: PaddingMode,
    in_check: Option<(i64, Span)>,
}

const LAYERS: &[&str] = &[
    "conv",
    "conv2d",
    "maxpool",
    "avgpool",
    "adaptive_avgpool",
    "adaptive_maxpool",
    "global_avgpool",
    "global_maxpool",
    "batchnorm",
    "lrn",
    "local_response_norm",
    "dropout",
    "dropout2d",
    "stochastic_depth",
    "flatten",
    "linear",
    "softmax",
    "log_softmax",
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "tanh",
    "sigmoid",
    "silu",
    "gelu",
    "hardsigmoid",
    "hardswish",
    "identity",
    "layer_norm",
    "scale",
    "channel_shuffle",
];

/// PyTorch module names users write by habit: the layer, and how to call it.
const PYTORCH_NAMES: &[(&str, &str, &str)] = &[
    (
        "Conv2d",
        "conv",
        "`conv(out_channels, k = ...)`, the input channels are inferred",
    ),
    (
        "BatchNorm2d",
        "batchnorm",
        "`batchnorm`, the feature count is inferred",
    ),
    (
        "Linear",
        "linear",
        "`linear(out_features)`, the input features are inferred",
    ),
    ("MaxPool2d", "maxpool", "`maxpool(k, s = ...)`"),
    ("AvgPool2d", "avgpool", "`avgpool(k, s = ...)`"),
    (
        "AdaptiveAvgPool2d",
        "adaptive_avgpool",
        "`adaptive_avgpool(size)`",
    ),
    (
        "AdaptiveMaxPool2d",
        "adaptive_maxpool",
        "`adaptive_maxpool(size)`",
    ),
    ("LocalResponseNorm", "lrn", "`lrn(size)`"),
    ("Dropout", "dropout", "`dropout(p)`"),
    ("Dropout2d", "dropout2d", "`dropout2d(p)`"),
    (
        "StochasticDepth",
        "stochastic_depth",
        "`stochastic_depth(p, mode = row)`",
    ),
    ("Flatten", "flatten", ""),
    ("Sequential", "seq", "`seq { ... }`"),
    ("Identity", "identity", ""),
    (
        "LayerNorm",
        "layer_norm",
        "`layer_norm(eps = ...)`, over the channels at each pixel",
    ),
    (
        "LayerNorm2d",
        "layer_norm",
        "`layer_norm(eps = ...)`, over the channels at each pixel",
    ),
    (
        "ChannelShuffle",
        "channel_shuffle",
        "`channel_shuffle(groups)`",
    ),
    ("ReLU", "relu", ""),
    ("ReLU6", "relu6", ""),
    ("LeakyReLU", "leaky_relu", "`leaky_relu(slope)`"),
    ("ELU", "elu", ""),
    ("GELU", "gelu", ""),
    ("SiLU", "silu", ""),
    ("Tanh", "tanh", ""),
    ("Sigmoid", "sigmoid", ""),
    ("Hardsigmoid", "hardsigmoid", ""),
    ("Hardswish", "hardswish", ""),
    ("Softmax", "softmax", ""),
    ("LogSoftmax", "log_softmax", ""),
];

impl<'a> Elab<'a> {
    fn bind(
        &mut self,
        op: &str,
        specs: &[Spec],
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
    fn symbol_or_error(
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

    fn layer(&mut self, call: &Call, place: Place, env: &Env, input: Val, unused: bool) -> Val {
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
    fn simple(&mut self, op: Op, input: Val, span: Span, place: &Place) -> Val {
        self.push(op, &[input], input.shape, place_name(place), span)
    }

    /// Reports a flat input where feature maps are needed; returns the shape.
    fn needs_maps(&mut self, op: &str, input: &Val, span: Span) -> PShape {
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
    fn require_name(&mut self, op: &str, place: &Place, span: Span) -> bool {
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

    fn conv_layer(
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
    fn window_size(
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
    fn pool_layer(
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

    #[allow(clippy::too_many_arguments)]
    fn batchnorm_layer(
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
    fn linear_layer(
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
    fn layer_norm_layer(
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
    fn scale_layer(
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
    fn pixel_linear_layer(
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

/// ⌊x / y⌋ for y ≠ 0, or `None` on overflow.
fn floor_div(x: i64, y: i64) -> Option<i64> {
    let q = x.checked_div(y)?;
    if x % y != 0 && ((x < 0) != (y < 0)) {
        q.checked_sub(1)
    } else {
        Some(q)
    }
}

fn place_name(place: &Place) -> &str {
    if place.own {
        &place.path
    } else {
        ""
    }
}

/// A number with a real minus sign, as the size formulas print it.
fn minus(v: i64) -> String {
    if v < 0 {
        format!("−{}", v.unsigned_abs())
    } else {
        v.to_string()
    }
}

/// Source-like text of a small expression (names, numbers, arithmetic), for notes.
fn expr_text(e: &Expr) -> Option<String> {
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
fn expr_prefix(e: &Expr, value: &str) -> String {
    match expr_text(e) {
        Some(t) if t != value => format!("{t} = "),
        _ => String::new(),
    }
}

/// The `unused` keyword at the start of an item marked `unused`.
fn unused_keyword(item: &Item) -> Span {
    Span {
        end: (item.span.start + "unused".len()).min(item.span.end),
        ..item.span
    }
}

fn pair_text(p: (i64, i64)) -> String {
    if p.0 == p.1 {
        p.0.to_string()
    } else {
        format!("({}, {})", p.0, p.1)
    }
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a typo.
pub fn closest<'c>(name: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= limit && *c != name)
        .min()
        .map(|(_, c)| c)
}

/// Edit distance counting an insertion, a deletion, a substitution or a swap
/// of two neighbouring characters (`bais` for `bias`) as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows of the table: distances from a[..i-2], a[..i-1] and a[..i] to every b[..j].
    let mut before: Vec<usize> = (0..=b.len()).collect();
    let mut prev: Vec<usize> = before.clone();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            cur[j] = best;
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}
