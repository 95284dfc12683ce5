//! Items and scopes: the input, conditions and repetition, `expect`,
//! `state_dict` places, and the dispatch on each item's structure.

use super::layers::Call;
use super::values::{Env, PShape, Val, Value};
use super::{Elab, MAX_NODES};
use crate::front::diag::Diagnostic;
use crate::front::source::Span;
use crate::front::syntax::{ExprKind, Ident, Item, ModelDecl, NamePart, Term};
use crate::ir::{Fusion, Node, Op, Shape};

#[derive(Clone, Debug)]
pub(super) enum ScopeKind {
    Module,
    Sequential { next: usize },
}

/// Where an item's copy lives in the `state_dict`.
#[derive(Clone, Debug)]
pub(super) struct Place {
    pub(super) path: String,
    /// Whether `path` is this item's own (named or numbered), rather than its scope's.
    pub(super) own: bool,
}

#[derive(Clone, Debug)]
pub(super) struct Scope {
    pub(super) path: String,
    pub(super) kind: ScopeKind,
}

pub(super) fn join(prefix: &str, component: &str) -> String {
    if prefix.is_empty() {
        component.to_string()
    } else {
        format!("{prefix}.{component}")
    }
}

impl Elab<'_> {
    pub(super) fn input(&mut self, model: &ModelDecl, env: &Env) -> Val {
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

    pub(super) fn items(
        &mut self,
        items: &[Item],
        scope: &mut Scope,
        env: &Env,
        mut input: Val,
    ) -> Val {
        for item in items {
            input = self.item(item, scope, env, input);
        }
        input
    }

    /// Evaluates an item's condition and repetition; returns how many copies to make.
    /// `None` when the condition or count failed (reported): the item's
    /// output is then unknown rather than guessed.
    pub(super) fn copies(&mut self, item: &Item, env: &Env, input: &Val) -> Option<usize> {
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

    pub(super) fn item(&mut self, item: &Item, scope: &mut Scope, env: &Env, input: Val) -> Val {
        let output = self.item_output(item, scope, env, input);
        self.check_expect(item, env, &input, &output);
        output
    }

    /// Enforces an item's `expect [C, H, W]` on its output. Sizes are
    /// evaluated on the item's input (`in_height / 2`); `_` matches any size.
    /// An output already unknown was reported where it failed.
    pub(super) fn check_expect(&mut self, item: &Item, env: &Env, input: &Val, output: &Val) {
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

    pub(super) fn item_output(
        &mut self,
        item: &Item,
        scope: &mut Scope,
        env: &Env,
        input: Val,
    ) -> Val {
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
    pub(super) fn copy_name(
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
    pub(super) fn place(&mut self, item: &Item, scope: &mut Scope) -> Place {
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
    pub(super) fn advance(&mut self, scope: &mut Scope) -> Option<String> {
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
    pub(super) fn term(
        &mut self,
        item: &Item,
        place: Place,
        env: &Env,
        input: Val,
        unused: bool,
    ) -> Val {
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
                shortcut_first,
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
                // Modules are registered in the order they are written:
                // the body first, or the shortcut when it comes first.
                let main = (!*shortcut_first).then(|| self.items(body, &mut scope, env, input));
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
                let main = main.unwrap_or_else(|| self.items(body, &mut scope, env, input));
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
}

/// The `unused` keyword at the start of an item marked `unused`.
pub(super) fn unused_keyword(item: &Item) -> Span {
    Span {
        end: (item.span.start + "unused".len()).min(item.span.end),
        ..item.span
    }
}

pub(super) fn place_name(place: &Place) -> &str {
    if place.own {
        &place.path
    } else {
        ""
    }
}
