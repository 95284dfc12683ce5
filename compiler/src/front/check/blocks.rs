//! Blocks: calls with their arguments, and parameters used as layers.

use super::items::{Scope, ScopeKind};
use super::suggest::closest;
use super::table::{find_layer, layer_names};
use super::values::{Env, Val, Value};
use super::{Declarations, Elab, MAX_BLOCK_DEPTH};
use crate::front::diag::Diagnostic;
use crate::front::source::Span;
use crate::front::syntax::{Arg, BlockDecl, Ident, Item, Term};
use crate::ir::BlockInstance;

/// Where `items` first call `name` as a layer (`act` or `act(...)`), looking
/// into nested structures but not into other blocks. A name that is itself a
/// layer or block is that layer or block, never a parameter.
pub(super) fn used_as_layer(decls: &Declarations, items: &[Item], name: &str) -> Option<Span> {
    if find_layer(name).is_some() || decls.blocks.contains_key(name) {
        return None;
    }
    used_as_layer_in(items, name)
}

pub(super) fn used_as_layer_in(items: &[Item], name: &str) -> Option<Span> {
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

impl Elab<'_> {
    /// Whether `name` is a built-in layer or a declared block.
    pub(super) fn is_layer_or_block(&self, name: &str) -> bool {
        find_layer(name).is_some() || self.decls.blocks.contains_key(name)
    }

    /// Checks the value of a parameter that `owner` uses as a layer (at
    /// `used`): it must name a built-in layer or a block. `at` is where the
    /// value was given. Returns whether it does.
    pub(super) fn check_layer_value(
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
                let mut candidates: Vec<&str> = layer_names().collect();
                candidates.extend(self.decls.blocks.keys().map(String::as_str));
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn call_block(
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
