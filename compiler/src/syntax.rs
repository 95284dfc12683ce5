//! The parser: `.cnn` text to an AST with spans, through the pest grammar in `grammar/cnn.pest`.
//!
//! Parsing reports problems as [`Diagnostic`]s and never panics: the input is
//! screened for nesting depth first (pest descends recursively), integer
//! literals that do not fit are errors, and a syntax error in one declaration
//! does not hide errors in the next (each top-level declaration is re-parsed
//! on its own after the first failure).

use crate::diag::Diagnostic;
use crate::source::{FileId, Span};
use pest::iterators::Pair;
use pest::Parser as _;

#[derive(pest_derive::Parser)]
#[grammar = "grammar/cnn.pest"]
struct CnnParser;

/// Deepest bracket nesting accepted; real models need fewer than ten.
pub const MAX_NESTING: usize = 64;

// ---------------------------------------------------------------------------
// The AST
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub text: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SourceFile {
    pub file: FileId,
    pub decls: Vec<Decl>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decl {
    Include(Include),
    Model(ModelDecl),
    Block(BlockDecl),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Include {
    pub path: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelDecl {
    pub name: Ident,
    pub params: Vec<Param>,
    pub input: Vec<Expr>,
    pub input_span: Span,
    pub body: Vec<Item>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BlockDecl {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Vec<Item>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
}

/// One entry of a body: `[unused] [name =] term [* count] [when condition]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub unused: bool,
    pub name: Option<Ident>,
    pub term: Term,
    pub term_span: Span,
    pub repeat: Option<Expr>,
    pub condition: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Term {
    /// `seq { ... }`: an `nn.Sequential`, children numbered by position.
    Seq(Vec<Item>),
    /// `residual { body } [shortcut [name] [when cond] { ... }]`: body(x) + shortcut(x).
    Residual {
        body: Vec<Item>,
        shortcut: Option<Shortcut>,
    },
    /// `concat { branch ... }`: every item is a branch fed the same input; outputs joined along channels.
    Concat(Vec<Item>),
    /// `vgg(bn = true) [64, M, ...]`: torchvision's `make_layers`.
    Vgg { args: Vec<Arg>, cfg: Vec<Expr> },
    /// A layer (`conv(64, k=3)`) or a block invocation (`bottleneck(64)`).
    Call {
        name: Ident,
        args: Vec<Arg>,
        /// The span of the argument list, or of the name when there are no parentheses.
        args_span: Span,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Shortcut {
    pub name: Option<Ident>,
    pub condition: Option<Expr>,
    pub body: Vec<Item>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Name(String),
    Tuple(Vec<Expr>),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// A literal that could not be read (already reported).
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parses one file. Always returns the declarations it could read, plus diagnostics.
pub fn parse(file: FileId, text: &str) -> (SourceFile, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    if let Some(diagnostic) = check_nesting(file, text) {
        return (
            SourceFile {
                file,
                decls: Vec::new(),
            },
            vec![diagnostic],
        );
    }
    let mut decls = Vec::new();
    let mut offset = 0;
    // Parse the whole file; on a syntax error, keep what came before, report
    // the error, and start again at the next top-level declaration so one
    // typo does not hide the rest of the file.
    loop {
        let rest = &text[offset..];
        match CnnParser::parse(Rule::file, rest) {
            Ok(mut pairs) => {
                let builder = Builder { file, offset };
                if let Some(file_pair) = pairs.next() {
                    builder.decls(file_pair, &mut decls, &mut diagnostics);
                }
                break;
            }
            Err(error) => {
                let (error_at, diagnostic) = syntax_error(file, offset, rest, error);
                diagnostics.push(diagnostic);
                // Keep the declarations that end before the error.
                let good_prefix = last_decl_start_at_or_before(rest, error_at);
                if good_prefix > 0 {
                    if let Ok(mut pairs) = CnnParser::parse(Rule::file, &rest[..good_prefix]) {
                        let builder = Builder { file, offset };
                        if let Some(file_pair) = pairs.next() {
                            builder.decls(file_pair, &mut decls, &mut diagnostics);
                        }
                    }
                }
                match next_decl_start_after(rest, error_at) {
                    Some(next) => offset += next,
                    None => break,
                }
            }
        }
    }
    (SourceFile { file, decls }, diagnostics)
}

/// Byte offsets of lines that start a top-level declaration (`model`, `block`, `include` at column 0).
fn decl_starts(text: &str) -> impl Iterator<Item = usize> + '_ {
    let mut line_start = 0;
    text.split_inclusive('\n').filter_map(move |line| {
        let start = line_start;
        line_start += line.len();
        let starts_decl = ["model", "block", "include"].iter().any(|kw| {
            line.starts_with(kw)
                && line[kw.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_whitespace())
        });
        starts_decl.then_some(start)
    })
}

fn last_decl_start_at_or_before(text: &str, at: usize) -> usize {
    decl_starts(text)
        .take_while(|&s| s <= at)
        .last()
        .unwrap_or(0)
}

fn next_decl_start_after(text: &str, at: usize) -> Option<usize> {
    decl_starts(text).find(|&s| s > at)
}

/// Rejects bracket nesting deeper than [`MAX_NESTING`] before pest (which recurses) sees it.
fn check_nesting(file: FileId, text: &str) -> Option<Diagnostic> {
    let mut depth = 0usize;
    let mut in_comment = false;
    for (i, c) in text.char_indices() {
        match c {
            '\n' => in_comment = false,
            '#' => in_comment = true,
            '(' | '[' | '{' if !in_comment => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(
                        Diagnostic::error(
                            format!("brackets nested deeper than {MAX_NESTING} levels"),
                            Span::new(file, i..i + 1),
                            "too deep",
                        )
                        .with_help("flatten the structure, or move the inner part into a `block`"),
                    );
                }
            }
            ')' | ']' | '}' if !in_comment => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

fn syntax_error(
    file: FileId,
    offset: usize,
    text: &str,
    error: pest::error::Error<Rule>,
) -> (usize, Diagnostic) {
    use pest::error::{ErrorVariant, InputLocation};
    let at = match error.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let found = describe_found(text, at);
    let end = at + found.1;
    let span = Span::new(file, offset + at..offset + end);
    let (message, label) = match &error.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut expected: Vec<&'static str> =
                positives.iter().filter_map(|r| friendly_rule(*r)).collect();
            expected.sort_unstable();
            expected.dedup();
            let expected = match expected.len() {
                0 => "something else".to_string(),
                1 => expected[0].to_string(),
                _ => {
                    let (last, rest) = expected.split_last().unwrap_or((&"", &[]));
                    format!("{} or {}", rest.join(", "), last)
                }
            };
            (
                format!("expected {expected}, found {}", found.0),
                format!("expected {expected}"),
            )
        }
        ErrorVariant::CustomError { message } => (message.clone(), String::new()),
    };
    let mut diagnostic = Diagnostic::error(message, span, label);
    if let Some(help) = syntax_help(text, at) {
        diagnostic = diagnostic.with_help(help);
    }
    (at, diagnostic)
}

/// What the parser ran into, and how many bytes of it to underline.
fn describe_found(text: &str, at: usize) -> (String, usize) {
    let rest = &text[at..];
    match rest.chars().next() {
        None => ("the end of the file".to_string(), 0),
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let len = word.len();
            (format!("`{word}`"), len)
        }
        Some(c) if c.is_ascii_digit() => {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            let len = word.len();
            (format!("`{word}`"), len)
        }
        Some(c) if c.is_control() || !c.is_ascii() => {
            (format!("the character {:?}", c), c.len_utf8())
        }
        Some(c) => (format!("`{c}`"), c.len_utf8()),
    }
}

fn syntax_help(text: &str, at: usize) -> Option<String> {
    let rest = &text[at..];
    if rest.starts_with('"') {
        return Some("strings are only used by `include \"file.cnn\"`".to_string());
    }
    if rest.starts_with("input") {
        return Some("`input [C, H, W]` must be the first line of a model".to_string());
    }
    let before = text[..at].trim_end();
    if before.ends_with("model") || before.ends_with("block") {
        return Some("declarations are named with a letter or `_` first".to_string());
    }
    None
}

fn friendly_rule(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "the end of the file",
        Rule::include | Rule::kw_include => "`include`",
        Rule::model | Rule::kw_model => "`model`",
        Rule::block | Rule::kw_block => "`block`",
        Rule::ident | Rule::item_name | Rule::arg_name | Rule::param => "a name",
        Rule::input_decl | Rule::kw_input => "`input [C, H, W]`",
        Rule::item | Rule::seq | Rule::residual | Rule::concat | Rule::vgg | Rule::call => {
            "a layer"
        }
        Rule::kw_unused => "`unused`",
        Rule::kw_seq => "`seq`",
        Rule::kw_residual => "`residual`",
        Rule::kw_concat => "`concat`",
        Rule::kw_vgg => "`vgg`",
        Rule::shortcut | Rule::kw_shortcut => "`shortcut`",
        Rule::repeat => "`*`",
        Rule::condition | Rule::kw_when => "`when`",
        Rule::body => "`{`",
        Rule::param_list | Rule::arg_list => "`(`",
        Rule::arg => "an argument",
        Rule::expr
        | Rule::and_expr
        | Rule::not_expr
        | Rule::cmp_expr
        | Rule::sum
        | Rule::product
        | Rule::unary
        | Rule::tuple
        | Rule::int
        | Rule::float
        | Rule::boolean => "a value",
        Rule::string => "a quoted path",
        Rule::or_op | Rule::kw_or => "`or`",
        Rule::and_op | Rule::kw_and => "`and`",
        Rule::not_op | Rule::kw_not | Rule::neg_op => "a value",
        Rule::cmp_op => "a comparison",
        Rule::add_op | Rule::mul_op => "an operator",
        _ => return None,
    })
}

/// Turns pest pairs into the AST, shifting spans by `offset` (the start of the
/// slice that was parsed).
struct Builder {
    file: FileId,
    offset: usize,
}

impl Builder {
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        Span::new(self.file, self.offset + s.start()..self.offset + s.end())
    }

    fn ident(&self, pair: Pair<Rule>) -> Ident {
        Ident {
            text: pair.as_str().to_string(),
            span: self.span(&pair),
        }
    }

    fn decls(&self, file: Pair<Rule>, out: &mut Vec<Decl>, diags: &mut Vec<Diagnostic>) {
        for pair in file.into_inner() {
            match pair.as_rule() {
                Rule::include => {
                    let span = self.span(&pair);
                    let path = pair
                        .into_inner()
                        .find(|p| p.as_rule() == Rule::string)
                        .map(|p| p.as_str().trim_matches('"').to_string())
                        .unwrap_or_default();
                    out.push(Decl::Include(Include { path, span }));
                }
                Rule::model => out.push(Decl::Model(self.model(pair, diags))),
                Rule::block => out.push(Decl::Block(self.block(pair, diags))),
                _ => {}
            }
        }
    }

    fn model(&self, pair: Pair<Rule>, diags: &mut Vec<Diagnostic>) -> ModelDecl {
        let span = self.span(&pair);
        let mut name = None;
        let mut params = Vec::new();
        let mut input = Vec::new();
        let mut input_span = span;
        let mut body = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => name = Some(self.ident(p)),
                Rule::param_list => params = self.params(p, diags),
                Rule::input_decl => {
                    input_span = self.span(&p);
                    input = p
                        .into_inner()
                        .filter(|e| e.as_rule() == Rule::expr)
                        .map(|e| self.expr(e, diags))
                        .collect();
                }
                Rule::item => body.push(self.item(p, diags)),
                _ => {}
            }
        }
        ModelDecl {
            name: name.unwrap_or_else(|| missing_ident(span)),
            params,
            input,
            input_span,
            body,
            span,
        }
    }

    fn block(&self, pair: Pair<Rule>, diags: &mut Vec<Diagnostic>) -> BlockDecl {
        let span = self.span(&pair);
        let mut name = None;
        let mut params = Vec::new();
        let mut body = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => name = Some(self.ident(p)),
                Rule::param_list => params = self.params(p, diags),
                Rule::body => body = self.body(p, diags),
                _ => {}
            }
        }
        BlockDecl {
            name: name.unwrap_or_else(|| missing_ident(span)),
            params,
            body,
            span,
        }
    }

    fn params(&self, pair: Pair<Rule>, diags: &mut Vec<Diagnostic>) -> Vec<Param> {
        pair.into_inner()
            .filter(|p| p.as_rule() == Rule::param)
            .map(|p| {
                let mut inner = p.into_inner();
                let name = inner.next().map(|i| self.ident(i));
                let default = inner.next().map(|e| self.expr(e, diags));
                Param {
                    name: name.unwrap_or_else(|| missing_ident(Span::new(self.file, 0..0))),
                    default,
                }
            })
            .collect()
    }

    fn body(&self, pair: Pair<Rule>, diags: &mut Vec<Diagnostic>) -> Vec<Item> {
        pair.into_inner()
            .filter(|p| p.as_rule() == Rule::item)
            .map(|p| self.item(p, diags))
            .collect()
    }

    fn item(&self, pair: Pair<Rule>, diags: &mut Vec<Diagnostic>) -> Item {
        let span = self.span(&pair);
        let mut unused = false;
        let mut name = None;
        let mut term = None;
        let mut term_span = span;
        let mut repeat = None;
        let mut condition = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::kw_unused => unused = true,
                Rule::item_name => name = p.into_inner().next().map(|i| self.ident(i)),
                Rule::repeat => repeat = p.into_inner().next().map(|e| self.expr(e, diags)),
                Rule::condition => condition = self.condition(p, diags),
                _ => {
                    term_span = self.span(&p);
                    term = self.term(p, diags);
                }
            }
        }
        Item {
            unused,
            name,
            term: term.unwrap_or(Term::Seq(Vec::new())),
            term_span,
            repeat,
            condition,
            span,
        }
    }

    fn condition(&self, pair: Pair<Rule>, diags: &mut Vec<Diagnostic>) -> Option<Expr> {
        pair.into_inner()
            .find(|p| p.as_rule() == Rule::expr)
            .map(|e| self.expr(e, diags))
    }

    fn term(&self, pair: Pair<Rule>, diags: &mut Vec<Diagnostic>) -> Option<Term> {
        let span = self.span(&pair);
        Some(match pair.as_rule() {
            Rule::seq => Term::Seq(
                pair.into_inner()
                    .find(|p| p.as_rule() == Rule::body)
                    .map(|b| self.body(b, diags))
                    .unwrap_or_default(),
            ),
            Rule::concat => Term::Concat(
                pair.into_inner()
                    .find(|p| p.as_rule() == Rule::body)
                    .map(|b| self.body(b, diags))
                    .unwrap_or_default(),
            ),
            Rule::residual => {
                let mut body = Vec::new();
                let mut shortcut = None;
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::body => body = self.body(p, diags),
                        Rule::shortcut => {
                            let span = self.span(&p);
                            let mut name = None;
                            let mut condition = None;
                            let mut sbody = Vec::new();
                            for q in p.into_inner() {
                                match q.as_rule() {
                                    Rule::ident => name = Some(self.ident(q)),
                                    Rule::condition => condition = self.condition(q, diags),
                                    Rule::body => sbody = self.body(q, diags),
                                    _ => {}
                                }
                            }
                            shortcut = Some(Shortcut {
                                name,
                                condition,
                                body: sbody,
                                span,
                            });
                        }
                        _ => {}
                    }
                }
                Term::Residual { body, shortcut }
            }
            Rule::vgg => {
                let mut args = Vec::new();
                let mut cfg = Vec::new();
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::arg_list => args = self.args(p, diags),
                        Rule::expr => cfg.push(self.expr(p, diags)),
                        _ => {}
                    }
                }
                Term::Vgg { args, cfg }
            }
            Rule::call => {
                let mut name = None;
                let mut args = Vec::new();
                let mut args_span = span;
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::ident => name = Some(self.ident(p)),
                        Rule::arg_list => {
                            args_span = self.span(&p);
                            args = self.args(p, diags);
                        }
                        _ => {}
                    }
                }
                Term::Call {
                    name: name.unwrap_or_else(|| missing_ident(span)),
                    args,
                    args_span,
                }
            }
            _ => return None,
        })
    }

    fn args(&self, pair: Pair<Rule>, diags: &mut Vec<Diagnostic>) -> Vec<Arg> {
        pair.into_inner()
            .filter(|p| p.as_rule() == Rule::arg)
            .map(|p| {
                let span = self.span(&p);
                let mut name = None;
                let mut value = None;
                for q in p.into_inner() {
                    match q.as_rule() {
                        Rule::arg_name => name = q.into_inner().next().map(|i| self.ident(i)),
                        Rule::expr => value = Some(self.expr(q, diags)),
                        _ => {}
                    }
                }
                Arg {
                    name,
                    value: value.unwrap_or(Expr {
                        kind: ExprKind::Error,
                        span,
                    }),
                    span,
                }
            })
            .collect()
    }

    /// Builds an expression from any of the expression rules.
    fn expr(&self, pair: Pair<Rule>, diags: &mut Vec<Diagnostic>) -> Expr {
        let span = self.span(&pair);
        match pair.as_rule() {
            Rule::expr | Rule::and_expr | Rule::sum | Rule::product | Rule::cmp_expr => {
                let mut inner = pair.into_inner();
                let Some(first) = inner.next() else {
                    return Expr {
                        kind: ExprKind::Error,
                        span,
                    };
                };
                let mut lhs = self.expr(first, diags);
                while let (Some(op), Some(rhs)) = (inner.next(), inner.next()) {
                    let op = match (op.as_rule(), op.as_str().trim()) {
                        (Rule::or_op, _) => BinOp::Or,
                        (Rule::and_op, _) => BinOp::And,
                        (_, "+") => BinOp::Add,
                        (_, "-") => BinOp::Sub,
                        (_, "*") => BinOp::Mul,
                        (_, "/") => BinOp::Div,
                        (_, "%") => BinOp::Rem,
                        (_, "==") => BinOp::Eq,
                        (_, "!=") => BinOp::Ne,
                        (_, "<") => BinOp::Lt,
                        (_, "<=") => BinOp::Le,
                        (_, ">") => BinOp::Gt,
                        _ => BinOp::Ge,
                    };
                    let rhs = self.expr(rhs, diags);
                    let span = lhs.span.join(rhs.span);
                    lhs = Expr {
                        kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                        span,
                    };
                }
                lhs
            }
            Rule::not_expr => {
                let parts: Vec<_> = pair.into_inner().collect();
                let nots = parts.iter().filter(|p| p.as_rule() == Rule::not_op).count();
                let mut e = match parts.into_iter().find(|p| p.as_rule() != Rule::not_op) {
                    Some(p) => self.expr(p, diags),
                    None => Expr {
                        kind: ExprKind::Error,
                        span,
                    },
                };
                for _ in 0..nots {
                    e = Expr {
                        kind: ExprKind::Not(Box::new(e)),
                        span,
                    };
                }
                e
            }
            Rule::unary => {
                let parts: Vec<_> = pair.into_inner().collect();
                let negated = parts.iter().any(|p| p.as_rule() == Rule::neg_op);
                let e = match parts.into_iter().find(|p| p.as_rule() != Rule::neg_op) {
                    Some(p) => self.expr(p, diags),
                    None => Expr {
                        kind: ExprKind::Error,
                        span,
                    },
                };
                if negated {
                    Expr {
                        kind: ExprKind::Neg(Box::new(e)),
                        span,
                    }
                } else {
                    e
                }
            }
            Rule::tuple => Expr {
                kind: ExprKind::Tuple(pair.into_inner().map(|p| self.expr(p, diags)).collect()),
                span,
            },
            Rule::int => {
                let digits: String = pair.as_str().chars().filter(|c| *c != '_').collect();
                match digits.parse::<i64>() {
                    Ok(v) => Expr {
                        kind: ExprKind::Int(v),
                        span,
                    },
                    Err(_) => {
                        diags.push(
                            Diagnostic::error(
                                "integer literal is too large",
                                span,
                                "does not fit in 64 bits",
                            )
                            .with_note(format!("the largest integer is {}", i64::MAX)),
                        );
                        Expr {
                            kind: ExprKind::Error,
                            span,
                        }
                    }
                }
            }
            Rule::float => match pair.as_str().parse::<f64>() {
                Ok(v) if v.is_finite() => Expr {
                    kind: ExprKind::Float(v),
                    span,
                },
                _ => {
                    diags.push(Diagnostic::error(
                        "number is too large",
                        span,
                        "not a finite number",
                    ));
                    Expr {
                        kind: ExprKind::Error,
                        span,
                    }
                }
            },
            Rule::boolean => Expr {
                kind: ExprKind::Bool(pair.as_str() == "true"),
                span,
            },
            Rule::ident => Expr {
                kind: ExprKind::Name(pair.as_str().to_string()),
                span,
            },
            _ => Expr {
                kind: ExprKind::Error,
                span,
            },
        }
    }
}

fn missing_ident(span: Span) -> Ident {
    Ident {
        text: String::new(),
        span,
    }
}
