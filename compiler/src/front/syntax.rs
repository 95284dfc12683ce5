//! The parser: `.cnn` text to an AST with spans, through the pest grammar in `grammar/cnn.pest`.
//!
//! Parsing reports problems as [`Diagnostic`]s and never panics: the input is
//! screened for nesting depth first (pest descends recursively), integer
//! literals that do not fit are errors, and a syntax error in one declaration
//! does not hide errors in the next (each top-level declaration is re-parsed
//! on its own after the first failure).

use crate::front::diag::Diagnostic;
use crate::front::source::{FileId, Span};
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
    /// A quoted name with `{expression}` parts (`"denselayer{i + 1}"`): the
    /// name is computed for each copy. `name` then holds the text as written.
    pub name_template: Option<Vec<NamePart>>,
    pub term: Term,
    pub term_span: Span,
    pub repeat: Option<Expr>,
    pub condition: Option<Expr>,
    /// `expect [C, H, W]`: the shape the item's output must have.
    pub expect: Option<Expect>,
    pub span: Span,
}

/// `expect [64, 56, 56]` after an item: sizes (`_` for any) and the clause's span.
#[derive(Clone, Debug, PartialEq)]
pub struct Expect {
    pub dims: Vec<Expr>,
    pub span: Span,
}

/// A piece of a name template: literal text, or an integer expression in braces.
#[derive(Clone, Debug, PartialEq)]
pub enum NamePart {
    Text(String),
    Expr(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Term {
    /// `seq { ... }`: an `nn.Sequential`, children numbered by position.
    Seq(Vec<Item>),
    /// `residual [when cond] { body } [shortcut [name] [when cond] { ... }]`:
    /// body(x) + shortcut(x); with a condition that is false, body(x) alone.
    /// The shortcut may also be written before the body
    /// (`shortcut_first`): the same sum, the shortcut's modules registered
    /// (and their `state_dict` entries listed) first.
    Residual {
        condition: Option<Expr>,
        body: Vec<Item>,
        shortcut: Option<Shortcut>,
        shortcut_first: bool,
    },
    /// `split(n) { branch ... }`: the input's channels in `n` equal chunks,
    /// chunk i fed to branch i, the outputs joined along channels.
    Split {
        args: Vec<Arg>,
        args_span: Span,
        branches: Vec<Item>,
    },
    /// `concat { branch ... }`: every item is a branch fed the same input; outputs joined along channels.
    Concat(Vec<Item>),
    /// `gate { body }`: the input times body(input), a [C, 1, 1] or [C, H, W] factor.
    Gate(Vec<Item>),
    /// `{ items }`: a group, items in a module scope of their own that adds
    /// no name; an unnamed group branch of a `concat` takes no position.
    Group(Vec<Item>),
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
    if text.len() > MAX_SOURCE_BYTES {
        // The largest model of the zoo is 2 KB; a million-layer file took
        // 47 s and 680 MB to parse before the layer limit refused it.
        let diagnostic = Diagnostic::error(
            format!("the file is {} bytes long", text.len()),
            Span::new(file, 0..text.chars().next().map_or(0, char::len_utf8)),
            "too large to be a model",
        )
        .with_help(format!(
            ".cnn files may be at most {MAX_SOURCE_BYTES} bytes; use blocks and `* n` repetition"
        ));
        return (
            SourceFile {
                file,
                decls: Vec::new(),
            },
            vec![diagnostic],
        );
    }
    if let Some(diagnostic) = check_nesting(file, text) {
        return (
            SourceFile {
                file,
                decls: Vec::new(),
            },
            vec![diagnostic],
        );
    }
    if let Some(diagnostic) = check_name_lengths(file, text) {
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
                // pest records which literals (`)`, `,`, ...) it tried only when
                // asked; ask on the first error and parse again. The setting is
                // global and only ever turned on, so the result does not depend
                // on other threads.
                let error = if error.parse_attempts().is_some() {
                    error
                } else {
                    pest::set_error_detail(true);
                    match CnnParser::parse(Rule::file, rest) {
                        Err(detailed) => detailed,
                        Ok(_) => error,
                    }
                };
                let lines_before = text[..offset].matches('\n').count();
                let (error_at, diagnostic) = syntax_error(file, offset, lines_before, rest, error);
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
                // An error right at a declaration (a bracket left open
                // before it) belongs to the one before: check this one again.
                let resume = if error_at > 0 && decl_starts(rest).any(|s| s == error_at) {
                    Some(error_at)
                } else {
                    next_decl_start_after(rest, error_at)
                };
                match resume {
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

/// Largest `.cnn` file parsed (each included file separately).
pub const MAX_SOURCE_BYTES: usize = 1 << 20;

/// Longest name accepted. Names become state_dict keys, kernel names and
/// table columns; 64 levels of 255-character names still fit the 65535-column
/// width limit of Rust's formatter (a 1 MB name once made `cnnc summary` panic).
pub const MAX_NAME: usize = 255;

/// Finds a name longer than [`MAX_NAME`] before parsing, skipping comments
/// and strings. The span is the name's first character, so the diagnostic
/// does not underline a megabyte.
fn check_name_lengths(file: FileId, text: &str) -> Option<Diagnostic> {
    let (mut in_comment, mut in_string) = (false, false);
    let mut run: Option<(usize, usize)> = None; // (start, chars) of the current word
    let too_long = |start: usize, chars: usize| {
        Diagnostic::error(
            format!("name is {chars} characters long"),
            Span::new(file, start..start + 1),
            "this name is too long",
        )
        .with_help(format!("names may have at most {MAX_NAME} characters"))
    };
    for (i, c) in text.char_indices() {
        let word = c.is_ascii_alphanumeric() || c == '_';
        if !in_comment && !in_string && word {
            match &mut run {
                Some((_, n)) => *n += 1,
                None if !c.is_ascii_digit() => run = Some((i, 1)),
                None => run = Some((i, 0)), // a number: not counted
            }
            continue;
        }
        if let Some((start, n)) = run.take() {
            if n > MAX_NAME && !text[start..].starts_with(|d: char| d.is_ascii_digit()) {
                return Some(too_long(start, n));
            }
        }
        match c {
            '\n' => {
                in_comment = false;
                in_string = false;
            }
            '#' if !in_string => in_comment = true,
            '"' if !in_comment => in_string = !in_string,
            _ => {}
        }
    }
    match run {
        Some((start, n))
            if n > MAX_NAME && !text[start..].starts_with(|d: char| d.is_ascii_digit()) =>
        {
            Some(too_long(start, n))
        }
        _ => None,
    }
}

fn syntax_error(
    file: FileId,
    offset: usize,
    lines_before: usize,
    text: &str,
    error: pest::error::Error<Rule>,
) -> (usize, Diagnostic) {
    use pest::error::{ErrorVariant, InputLocation};
    let at = match error.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    if let Some(diagnostic) = unclosed_bracket(file, offset, lines_before, text, at) {
        return (at, diagnostic);
    }
    if let Some(diagnostic) = string_error(file, offset, text, at) {
        return (at, diagnostic);
    }
    if let Some(diagnostic) = reserved_word(file, offset, text, at) {
        return (at, diagnostic);
    }
    let found = describe_found(text, at);
    let end = at + found.1;
    let span = Span::new(file, offset + at..offset + end);
    let (message, label) = match &error.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut expected: Vec<&'static str> =
                positives.iter().filter_map(|r| friendly_rule(*r)).collect();
            // pest names rules, not literals; add the punctuation it tried, so
            // a missing `)` or `,` is named. Operators that could extend an
            // expression are then noise.
            let punctuation = expected_punctuation(&error);
            if !punctuation.is_empty() {
                expected.retain(|e| !EXPRESSION_TAILS.contains(e));
                expected.extend(punctuation);
            }
            expected.sort_unstable();
            expected.dedup();
            let at_top = text[..at]
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
            let expected = match expected.len() {
                0 if at_top => "`model`, `block` or `include`".to_string(),
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
    let expects_input = matches!(&error.variant, ErrorVariant::ParsingError { positives, .. }
        if positives.iter().any(|r| matches!(r, Rule::kw_input | Rule::input_decl)));
    if let Some(help) = syntax_help(text, at, expects_input) {
        diagnostic = diagnostic.with_help(help);
    }
    (at, diagnostic)
}

/// What `friendly_rule` calls the operators that may continue an expression.
const EXPRESSION_TAILS: &[&str] = &["`and`", "`or`", "a comparison", "an operator"];

/// The closing and separating punctuation pest tried at the error position.
fn expected_punctuation(error: &pest::error::Error<Rule>) -> Vec<&'static str> {
    let Some(attempts) = error.parse_attempts() else {
        return Vec::new();
    };
    attempts
        .expected_tokens()
        .iter()
        .filter_map(|t| match t.to_string().as_str() {
            ")" => Some("`)`"),
            "]" => Some("`]`"),
            "}" => Some("`}`"),
            "," => Some("`,`"),
            "=" => Some("`=`"),
            _ => None,
        })
        .collect()
}

/// A bracket left open shows up as an error at the next top-level
/// declaration or at the end of the file; report the bracket instead.
fn unclosed_bracket(
    file: FileId,
    offset: usize,
    lines_before: usize,
    text: &str,
    at: usize,
) -> Option<Diagnostic> {
    let at_end = text[at..].trim().is_empty();
    let at_decl = decl_starts(text).any(|s| s == at);
    if !at_end && !at_decl {
        return None;
    }
    // The declaration the error is in starts at the last declaration line before it.
    let from = decl_starts(text)
        .take_while(|&s| s < at)
        .last()
        .unwrap_or(0);
    // Brackets from there to the error, skipping comments and strings: the
    // ones left open, and every `{`.
    let mut open: Vec<(usize, char)> = Vec::new();
    let mut braces: Vec<usize> = Vec::new();
    let mut in_comment = false;
    let mut in_string = false;
    for (i, c) in text[from..at].char_indices() {
        let i = from + i;
        match c {
            '\n' => {
                in_comment = false;
                in_string = false;
            }
            _ if in_comment => {}
            '"' => in_string = !in_string,
            _ if in_string => {}
            '#' => in_comment = true,
            '(' | '[' | '{' => {
                open.push((i, c));
                if c == '{' {
                    braces.push(i);
                }
            }
            ')' | ']' | '}' => {
                open.pop();
            }
            _ => {}
        }
    }
    let &(innermost, innermost_char) = open.last()?;
    // A later `}` may have closed the wrong `{`; the indentation tells which
    // one lacks its `}`: the next line indented no deeper than its own line
    // does not start with `}`.
    let by_indent = braces
        .iter()
        .find_map(|&i| closing_line(text, i, at).map(|line| (i, line)));
    let (bracket, bracket_char, before_line) = match by_indent {
        Some((i, line)) => (i, '{', Some(line)),
        None => (innermost, innermost_char, None),
    };
    let closer = match bracket_char {
        '(' => ')',
        '[' => ']',
        _ => '}',
    };
    let (found_span, found_label) = if at_end {
        let end = text.len();
        (
            Span::new(file, offset + end..offset + end),
            "the file ends here".to_string(),
        )
    } else {
        let keyword: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        (
            Span::new(file, offset + at..offset + at + keyword.len()),
            format!("expected `{closer}` before this `{keyword}`"),
        )
    };
    let help = match before_line {
        Some(line_start) => {
            let line = lines_before + text[..line_start].matches('\n').count() + 1;
            format!("add `{closer}` before line {line}")
        }
        None => format!("add the missing `{closer}`"),
    };
    Some(
        Diagnostic::error(
            format!("unclosed `{bracket_char}`"),
            Span::new(file, offset + bracket..offset + bracket + 1),
            format!("this `{bracket_char}` is never closed"),
        )
        .with_secondary(found_span, found_label)
        .with_help(help),
    )
}

/// Whether `before` ends with a closed `residual [when …] shortcut … { … }`:
/// a shortcut written first, whose body should come next.
fn shortcut_written_first(before: &str) -> bool {
    let Some(r) = before.rfind("residual") else {
        return false;
    };
    let after = &before[r + "residual".len()..];
    let head = after.split('{').next().unwrap_or("");
    // Top-level brace groups closed since: the shortcut's alone.
    let mut depth = 0usize;
    let mut groups = 0;
    for c in after.chars() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                groups += usize::from(depth == 0);
            }
            _ => {}
        }
    }
    head.split_whitespace().any(|w| w == "shortcut")
        && before.trim_end().ends_with('}')
        && groups == 1
        && bracket_depth(&before[r..]) == 0
}

/// How many brackets are open at the end of `text`, skipping comments and strings.
fn bracket_depth(text: &str) -> usize {
    let mut depth = 0usize;
    for line in text.lines() {
        let mut in_string = false;
        for c in line.chars() {
            match c {
                '"' => in_string = !in_string,
                _ if in_string => {}
                '#' => break,
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    depth
}

/// For a `{` that ends its line, the start of the first later line (before
/// `limit`) indented no deeper than the `{`'s line, if that line does not close it.
fn closing_line(text: &str, brace: usize, limit: usize) -> Option<usize> {
    let line_start = text[..brace].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[brace..]
        .find('\n')
        .map(|i| brace + i)
        .unwrap_or(text.len());
    let after_brace = text[brace + 1..line_end].trim();
    if !(after_brace.is_empty() || after_brace.starts_with('#')) {
        return None;
    }
    let indent = |line: &str| line.len() - line.trim_start().len();
    let own = indent(&text[line_start..brace]);
    let mut start = line_end + 1;
    while start < limit.min(text.len()) {
        let end = text[start..]
            .find('\n')
            .map(|i| start + i)
            .unwrap_or(text.len());
        let line = &text[start..end];
        let trimmed = line.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') && indent(line) <= own {
            return (!trimmed.starts_with('}')).then_some(start);
        }
        start = end + 1;
    }
    None
}

/// A string that is not closed on its line, or a string where a value belongs.
fn string_error(file: FileId, offset: usize, text: &str, at: usize) -> Option<Diagnostic> {
    let rest = text[at..].strip_prefix('"')?;
    let line = rest.split('\n').next().unwrap_or("");
    let Some(close) = line.find('"') else {
        let span = Span::new(file, offset + at..offset + at + 1 + line.trim_end().len());
        return Some(
            Diagnostic::error("unterminated string", span, "no closing `\"` on this line")
                .with_help(format!("close it: `\"{}\"`", line.trim_end())),
        );
    };
    let content = &line[..close];
    let span = Span::new(file, offset + at..offset + at + close + 2);
    let is_name = content.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && content
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    let before = text[..at].trim_end();
    if before.ends_with("include") {
        return None;
    }
    let d = Diagnostic::error("expected a value, found a string", span, "not a value");
    Some(if is_name {
        d.with_help(format!("values are written without quotes: `{content}`"))
    } else {
        d.with_note("quotes hold an `include` path or a layer name (`\"block1-0\" = conv(...)`)")
    })
}

/// The words of the language that cannot be names as written.
const KEYWORDS: &[&str] = &[
    "model", "block", "include", "input", "seq", "residual", "shortcut", "concat", "gate", "vgg",
    "when", "unused", "and", "or", "not", "true", "false",
];

/// A reserved word where a name belongs: `block = seq { ... }` (a name
/// followed by `=`) or `shortcut block { ... }`. Says so, and shows the quoted
/// form, which is how such a PyTorch attribute is written.
fn reserved_word(file: FileId, offset: usize, text: &str, at: usize) -> Option<Diagnostic> {
    let rest = &text[at..];
    let word = rest
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .filter(|w| KEYWORDS.contains(w))?;
    let after = rest[word.len()..].trim_start_matches([' ', '\t']);
    let assigned = after.starts_with('=') && !after.starts_with("==");
    // `shortcut seq { ... }` is a misunderstanding of the form, not a name.
    let after_shortcut = text[..at].trim_end().ends_with("shortcut")
        && !["seq", "residual", "concat", "gate", "vgg"].contains(&word);
    if !assigned && !after_shortcut {
        return None;
    }
    let span = Span::new(file, offset + at..offset + at + word.len());
    let d = Diagnostic::error(
        format!("expected a name, found keyword `{word}`"),
        span,
        format!("`{word}` is a reserved word"),
    );
    // A parameter list is on the declaration's line, after its name.
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_before = text[line_start..at].trim_start();
    let in_params = (line_before.starts_with("model ") || line_before.starts_with("block "))
        && line_before.contains('(');
    Some(if in_params {
        d.with_help("parameters are plain names; choose another one")
    } else if assigned {
        d.with_help(format!(
            "to use it as a layer name, quote it: `\"{word}\" = ...`"
        ))
    } else {
        d.with_help(format!(
            "to use it as a shortcut name, quote it: `shortcut \"{word}\"`"
        ))
    })
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

fn syntax_help(text: &str, at: usize, expects_input: bool) -> Option<String> {
    let rest = &text[at..];
    let line_before = &text[text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0)..at];
    if let Some(after) = rest.strip_prefix("input") {
        let sizes = after.lines().next().unwrap_or("");
        let sizes = sizes.split('#').next().unwrap_or("").trim();
        if !sizes.starts_with('[') && !sizes.is_empty() {
            return Some(format!("write the sizes in brackets: `input [{sizes}]`"));
        }
        return Some("a model has one `input` line, and it comes first".to_string());
    }
    if shortcut_written_first(&text[..at]) {
        return Some(
            "a residual whose shortcut is written first takes its body next: `residual shortcut proj { … } { body }`"
                .to_string(),
        );
    }
    if rest.starts_with('=') && !rest.starts_with("==") && line_before.contains("when ") {
        return Some(
            "conditions compare with `==`; a `true`/`false` parameter needs no comparison"
                .to_string(),
        );
    }
    let open_parens = line_before.matches(['(', '[']).count();
    let closed_parens = line_before.matches([')', ']']).count();
    if rest.starts_with(',') && open_parens <= closed_parens {
        return Some("layers are separated by spaces or new lines, not commas".to_string());
    }
    if rest.starts_with('}') && bracket_depth(&text[..at]) == 0 {
        return Some("this `}` closes nothing; remove it".to_string());
    }
    if expects_input {
        // Point at a later `input` line of the same model, if there is one.
        let model_end = next_decl_start_after(text, at).unwrap_or(text.len());
        let later = text[at..model_end]
            .lines()
            .map(str::trim_start)
            .find(|l| l.starts_with("input") && l[5..].trim_start().starts_with('['));
        return Some(match later {
            Some(line) => format!(
                "move `{}` up: it must be the first line of the model",
                line.split('#').next().unwrap_or(line).trim_end()
            ),
            None => {
                "a model's first line is its input shape, e.g. `input [3, 224, 224]`".to_string()
            }
        });
    }
    if let Some(after_colon) = rest.strip_prefix(':') {
        let name: String = text[..at]
            .trim_end()
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let value = after_colon
            .split([',', ')', '\n'])
            .next()
            .unwrap_or("")
            .trim();
        if !name.is_empty() && !value.is_empty() {
            return Some(format!("arguments are named with `=`: `{name} = {value}`"));
        }
        return Some("arguments are named with `=`, as in `k = 3`".to_string());
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
        Rule::ident | Rule::item_name | Rule::quoted_name | Rule::arg_name | Rule::param => {
            "a name"
        }
        Rule::input_decl | Rule::kw_input => "`input [C, H, W]`",
        Rule::item
        | Rule::seq
        | Rule::residual
        | Rule::concat
        | Rule::gate
        | Rule::split
        | Rule::vgg
        | Rule::group
        | Rule::call => "a layer",
        // `split` is not a keyword; where a layer may start, "a layer" says it.
        Rule::kw_split => return None,
        Rule::kw_unused => "`unused`",
        Rule::kw_seq => "`seq`",
        Rule::kw_residual => "`residual`",
        Rule::kw_concat => "`concat`",
        Rule::kw_gate => "`gate`",
        Rule::kw_vgg => "`vgg`",
        Rule::shortcut | Rule::kw_shortcut => "`shortcut`",
        Rule::repeat => "`*`",
        // After every item; listing it would crowd every message about a
        // missing `}` (and it is documented with the items).
        Rule::expect | Rule::kw_expect => return None,
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
    /// The pair's span without the whitespace and comments pest lets a rule
    /// end with (an optional part that did not match after implicit whitespace).
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        let len = trimmed_len(s.as_str());
        Span::new(
            self.file,
            self.offset + s.start()..self.offset + s.start() + len,
        )
    }

    fn ident(&self, pair: Pair<Rule>) -> Ident {
        Ident {
            text: pair.as_str().to_string(),
            span: self.span(&pair),
        }
    }

    /// A layer name: an identifier as written, or the content of a quoted
    /// name, whose characters are checked here (the grammar takes any).
    /// A quoted name with `{expression}` parts also returns its template.
    fn name(
        &self,
        pair: Pair<Rule>,
        diags: &mut Vec<Diagnostic>,
    ) -> (Ident, Option<Vec<NamePart>>) {
        if pair.as_rule() != Rule::quoted_name {
            return (self.ident(pair), None);
        }
        let span = self.span(&pair);
        let quoted = pair.as_str();
        let content = &quoted[1..quoted.len() - 1];
        // Byte offset of the content in the file, past the opening quote.
        let start = self.offset + pair.as_span().start() + 1;
        let ident = Ident {
            text: content.to_string(),
            span,
        };
        if !content.contains(['{', '}']) {
            if let Some(diagnostic) = quoted_name_error(self.file, start, content, span) {
                diags.push(diagnostic);
            }
            return (ident, None);
        }
        (ident, self.name_template(content, start, span, diags))
    }

    /// Splits `"denselayer{i + 1}"` into text and parsed expressions; the
    /// text parts follow the quoted-name rules. `start` is the content's
    /// offset in the file.
    fn name_template(
        &self,
        content: &str,
        start: usize,
        span: Span,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Vec<NamePart>> {
        let mut parts = Vec::new();
        let mut rest = content;
        let mut at = 0; // offset of `rest` in `content`
        let mut ok = true;
        while !rest.is_empty() {
            let text_len = rest.find(['{', '}']).unwrap_or(rest.len());
            let text = &rest[..text_len];
            if !text.is_empty() {
                // Checked as a name of its own; an empty piece is fine here.
                if let Some(d) = quoted_name_error(self.file, start + at, text, span) {
                    diags.push(d);
                    ok = false;
                }
                parts.push(NamePart::Text(text.to_string()));
            }
            rest = &rest[text_len..];
            at += text_len;
            if rest.is_empty() {
                break;
            }
            let brace = Span::new(self.file, start + at..start + at + 1);
            if rest.starts_with('}') {
                diags.push(
                    Diagnostic::error("unmatched `}` in a name", brace, "no `{` before it")
                        .with_help(
                            "`{expression}` inserts a number into a name: `\"layer{i + 1}\"`",
                        ),
                );
                return None;
            }
            let Some(close) = rest.find('}') else {
                diags.push(
                    Diagnostic::error("unclosed `{` in a name", brace, "never closed")
                        .with_help("close it: `\"layer{i + 1}\"`"),
                );
                return None;
            };
            let written = &rest[1..close];
            // pest skips whitespace between tokens only: trim the ends here.
            let lead = written.len() - written.trim_start().len();
            let inner = written.trim();
            let inner_start = start + at + 1 + lead;
            match CnnParser::parse(Rule::expr, inner) {
                Ok(mut pairs) => match pairs.next() {
                    Some(pair) if pair.as_str().len() == inner.len() => {
                        let builder = Builder {
                            file: self.file,
                            offset: inner_start,
                        };
                        parts.push(NamePart::Expr(builder.expr(pair, diags)));
                    }
                    _ => {
                        diags.push(template_expr_error(self.file, inner_start, inner));
                        ok = false;
                    }
                },
                Err(_) => {
                    diags.push(template_expr_error(self.file, inner_start, inner));
                    ok = false;
                }
            }
            rest = &rest[close + 1..];
            at += close + 1;
        }
        ok.then_some(parts)
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
        let mut name_template = None;
        let mut term = None;
        let mut term_span = span;
        let mut repeat = None;
        let mut condition = None;
        let mut expect = None;
        // Where the item ends without its `expect` clause: labels about the
        // layer underline the layer, not the assertion after it.
        let mut end = span.start;
        for p in pair.into_inner() {
            if p.as_rule() != Rule::expect {
                end = end.max(self.span(&p).end);
            }
            match p.as_rule() {
                Rule::kw_unused => unused = true,
                Rule::item_name => {
                    if let Some(n) = p.into_inner().next() {
                        let (ident, template) = self.name(n, diags);
                        name = Some(ident);
                        name_template = template;
                    }
                }
                Rule::repeat => repeat = p.into_inner().next().map(|e| self.expr(e, diags)),
                Rule::condition => condition = self.condition(p, diags),
                Rule::expect => {
                    expect = Some(Expect {
                        span: self.span(&p),
                        dims: p
                            .into_inner()
                            .filter(|e| e.as_rule() == Rule::expr)
                            .map(|e| self.expr(e, diags))
                            .collect(),
                    })
                }
                _ => {
                    term_span = self.span(&p);
                    term = self.term(p, diags);
                }
            }
        }
        Item {
            unused,
            name,
            name_template,
            term: term.unwrap_or(Term::Seq(Vec::new())),
            term_span,
            repeat,
            condition,
            expect,
            span: Span { end, ..span },
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
            Rule::group => Term::Group(
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
            Rule::gate => Term::Gate(
                pair.into_inner()
                    .find(|p| p.as_rule() == Rule::body)
                    .map(|b| self.body(b, diags))
                    .unwrap_or_default(),
            ),
            Rule::residual => {
                let mut body = Vec::new();
                let mut shortcut = None;
                let mut condition = None;
                let mut seen_body = false;
                let mut shortcut_first = false;
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::condition => condition = self.condition(p, diags),
                        Rule::body => {
                            seen_body = true;
                            body = self.body(p, diags)
                        }
                        Rule::shortcut => {
                            shortcut_first = !seen_body;
                            let span = self.span(&p);
                            let mut name = None;
                            let mut condition = None;
                            let mut sbody = Vec::new();
                            for q in p.into_inner() {
                                match q.as_rule() {
                                    Rule::ident | Rule::quoted_name => {
                                        let (ident, template) = self.name(q, diags);
                                        if template.is_some() {
                                            diags.push(
                                                Diagnostic::error(
                                                    "a shortcut's name cannot be computed",
                                                    ident.span,
                                                    "`{...}` in a shortcut name",
                                                )
                                                .with_help("name templates are for items repeated with `* n`"),
                                            );
                                        }
                                        name = Some(ident)
                                    }
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
                Term::Residual {
                    condition,
                    body,
                    shortcut,
                    shortcut_first,
                }
            }
            Rule::split => {
                let mut args = Vec::new();
                let mut args_span = span;
                let mut branches = Vec::new();
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::arg_list => {
                            args_span = self.span(&p);
                            args = self.args(p, diags);
                        }
                        Rule::body => branches = self.body(p, diags),
                        _ => {}
                    }
                }
                Term::Split {
                    args,
                    args_span,
                    branches,
                }
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
                let mut depth = None;
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
                    // `1 + 1 + …` nests one level per operator; the checker recurses on it.
                    let below = depth
                        .unwrap_or_else(|| expr_depth(&lhs))
                        .max(expr_depth(&rhs));
                    depth = Some(below + 1);
                    if below >= MAX_EXPR_DEPTH {
                        diags.push(too_deep(span));
                        return Expr {
                            kind: ExprKind::Error,
                            span,
                        };
                    }
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
                if nots > 0 && nots + expr_depth(&e) > MAX_EXPR_DEPTH {
                    diags.push(too_deep(span));
                    return Expr {
                        kind: ExprKind::Error,
                        span,
                    };
                }
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
            Rule::tuple => {
                let mut items: Vec<Expr> = pair.into_inner().map(|p| self.expr(p, diags)).collect();
                if items.len() == 1 {
                    // `(a)`: parentheses that only group.
                    items.remove(0)
                } else {
                    Expr {
                        kind: ExprKind::Tuple(items),
                        span,
                    }
                }
            }
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
                    diags.push(
                        Diagnostic::error("number is too large", span, "not a finite number")
                            .with_note(format!("the largest number is about {:.1e}", f64::MAX)),
                    );
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

/// The length of `text` without trailing whitespace and `#` comments.
fn trimmed_len(text: &str) -> usize {
    let mut t = text.trim_end();
    loop {
        let line_start = t.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line = &t[line_start..];
        // Strings (only in `include`) may hold `#`; leave such lines alone.
        match line.find('#') {
            Some(i) if !line.contains('"') => t = t[..line_start + i].trim_end(),
            _ => return t.len(),
        }
    }
}

/// Deepest expression tree accepted (operators and `not`s nest one level each).
pub const MAX_EXPR_DEPTH: usize = 256;

/// The depth of an expression tree, without recursion.
fn expr_depth(e: &Expr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(e, 1)];
    while let Some((e, d)) = stack.pop() {
        deepest = deepest.max(d);
        match &e.kind {
            ExprKind::Neg(x) | ExprKind::Not(x) => stack.push((x, d + 1)),
            ExprKind::Binary(_, a, b) => stack.extend([(&**a, d + 1), (&**b, d + 1)]),
            ExprKind::Tuple(items) => stack.extend(items.iter().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    deepest
}

fn too_deep(span: Span) -> Diagnostic {
    Diagnostic::error(
        format!("expression nested deeper than {MAX_EXPR_DEPTH} levels"),
        span,
        "too deep",
    )
    .with_help("split it into parameters, or simplify it")
}

/// Whether a quoted name's character may appear in a `state_dict` key
/// component: what PyTorch module names use (`block1-0`), and nothing that
/// could end a comment or a string in generated code.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Checks the content of a quoted name (`"block1-0"`) that starts at byte
/// `start` of the file; `span` is the whole quoted name.
fn quoted_name_error(file: FileId, start: usize, content: &str, span: Span) -> Option<Diagnostic> {
    if content.is_empty() {
        return Some(
            Diagnostic::error("a name cannot be empty", span, "empty name")
                .with_help("write the PyTorch attribute name between the quotes"),
        );
    }
    let chars = content.chars().count();
    if chars > MAX_NAME {
        return Some(
            Diagnostic::error(
                format!("name is {chars} characters long"),
                Span::new(file, start..start + 1),
                "this name is too long",
            )
            .with_help(format!("names may have at most {MAX_NAME} characters")),
        );
    }
    let (at, bad) = content.char_indices().find(|(_, c)| !is_name_char(*c))?;
    let bad_span = Span::new(file, start + at..start + at + bad.len_utf8());
    Some(if bad == '.' {
        Diagnostic::error(
            "a name cannot contain `.`",
            bad_span,
            "`.` separates the levels of a `state_dict` key",
        )
        .with_help("nest the levels instead: `a = seq { b = ... }` gives keys `a.b.…`")
    } else {
        let shown = if bad == ' ' {
            "a space".to_string()
        } else if bad.is_ascii_graphic() {
            format!("`{bad}`")
        } else {
            format!("the character {bad:?}")
        };
        Diagnostic::error(
            format!("{shown} cannot be part of a name"),
            bad_span,
            "not a letter, digit, `_` or `-`",
        )
        .with_note(
            "a quoted name holds ASCII letters, digits, `_` and `-`, as PyTorch module names do",
        )
    })
}

fn template_expr_error(file: FileId, start: usize, inner: &str) -> Diagnostic {
    let span = Span::new(file, start..start + inner.len().max(1));
    Diagnostic::error(
        "expected an expression between `{` and `}` in a name",
        span,
        "not an expression",
    )
    .with_help("`{expression}` inserts an integer: `\"denselayer{i + 1}\"`")
}

fn missing_ident(span: Span) -> Ident {
    Ident {
        text: String::new(),
        span,
    }
}
