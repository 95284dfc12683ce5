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
//!
//! The files, by concern: `values` (values, partial shapes, expressions),
//! `items` (items, scopes and `state_dict` places), `structure` (`concat`,
//! `split`, `residual`, `gate`, `vgg`), `blocks` (block calls, parameters
//! used as layers), `args` (layer arguments), `table` (the built-in layers as
//! data: names, aliases, arguments, PyTorch classes, rules), `layers` (their
//! elaboration), `windows` (convolution and pooling sizes) and `suggest`
//! ("did you mean").

use crate::front::diag::Diagnostic;
use crate::front::source::Span;
use crate::front::syntax::{BlockDecl, ModelDecl};
use crate::ir::{BlockInstance, Fusion, Graph, Node, NodeId, Op, ParamEntry, ParamKind};
use blocks::used_as_layer;
use items::{join, Scope, ScopeKind};
use std::collections::{BTreeMap, HashMap};
use values::{Env, PShape, Val};

mod args;
mod blocks;
mod items;
mod layers;
mod structure;
mod suggest;
mod table;
mod values;
mod windows;

pub use suggest::closest;
pub use values::Value;

/// Most layers one model may expand to, so `* 1000000000` is an error, not a hang.
pub const MAX_NODES: usize = 200_000;

/// Deepest chain of block calls.
pub const MAX_BLOCK_DEPTH: usize = 64;

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
}
