//! "Did you mean" suggestions: layer names, PyTorch names, and edit distance.

use super::layers::Call;
use super::table::{layer_names, pytorch_name};
use super::values::Val;
use super::Elab;
use crate::front::diag::Diagnostic;

impl Elab<'_> {
    /// Reports a call of a name that is neither a built-in layer nor a block:
    /// PyTorch's name for a layer, a typo of a layer or block, or unknown.
    pub(super) fn unknown_layer(&mut self, call: &Call) -> Val {
        let op = call.name.text.as_str();
        let span = call.item_span;
        let mut candidates: Vec<&str> = layer_names().collect();
        candidates.extend(self.decls.blocks.keys().map(|k| k.as_str()));
        if self.decls.lost_blocks.contains(op)
            || (self.decls.missing_includes && closest(op, candidates.iter().copied()).is_none())
        {
            return self.unknown(span);
        }
        let mut d = Diagnostic::error(
            format!("unknown layer or block `{op}`"),
            call.name.span,
            "not defined",
        );
        if let Some((layer, usage)) = pytorch_name(op) {
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
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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
