//! `cnnc`: a compiler for convolutional neural networks.
//!
//! ```text
//!  .cnn text ──parse (pest)──▶ AST ──check──▶ graph IR ──▶ summary, reports
//!  (syntax.rs)                     (check.rs)  (ir.rs)      (summary.rs)
//!                                                  │
//!          weights (safetensors) ──bind──▶ reference evaluator (eval.rs)
//!          (weights.rs)                    plain f64 loops, the oracle
//! ```
//!
//! Each stage is a function from one typed value to the next. Problems are
//! [`front::diag::Diagnostic`] values with source spans, rendered in one place
//! ([`front::diag::render`]). [`compile_file`] and [`compile_source`] only chain the
//! stages; the command-line tool in `main.rs` only prints what they return.

// The folders follow the pipeline (docs/architecture.md draws it):
// text → front end → graph IR (and its passes) → back end → a built binary,
// with the tools (summary, emit, the reference evaluator, drawing, training)
// reading the graph IR beside it.
pub mod back;
pub mod front;
pub mod ir;
pub mod tools;

use back::kernel_ir;
use front::check::{self, Declarations, Value};
use front::diag::{self, Diagnostic};
use front::source::{FileId, SourceMap, Span};
use front::syntax;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use syntax::{Decl, SourceFile};
use tools::emit;

/// Largest `.cnn` file read, so a stray multi-gigabyte file is an error, not an allocation.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The result of checking one file: every model in it, and every diagnostic.
pub struct Compilation {
    pub sources: SourceMap,
    pub models: Vec<CheckedModel>,
    pub diagnostics: Vec<Diagnostic>,
}

pub struct CheckedModel {
    pub name: String,
    /// Present when the model has no errors.
    pub graph: Option<ir::Graph>,
}

impl Compilation {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.is_error())
    }

    /// The checked graphs, in file order, when the whole file is free of errors.
    pub fn graphs(&self) -> Option<Vec<&ir::Graph>> {
        if self.has_errors() {
            return None;
        }
        self.models.iter().map(|m| m.graph.as_ref()).collect()
    }

    pub fn render_diagnostics(&self) -> String {
        diag::render(&self.sources, &self.diagnostics)
    }
}

/// The folder of a model file, for naming files relative to it (`.` for a bare file name).
pub fn model_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// One stage of the compilation of the model in `path`, exactly as
/// `cnnc emit --stage STAGE --stable` prints it: files are named relative to
/// the model's folder, so the text is the same on every machine and from
/// every working directory. Made for snapshot tests of your own models
/// (docs/snapshot-testing.md). The file must hold one model; errors in it
/// come back rendered as `cnnc check` prints them (without colour).
pub fn emit_stage(path: &Path, stage: emit::Stage) -> Result<String, String> {
    let mut compilation = compile_file(path, &BTreeMap::new()).map_err(|e| e.0)?;
    if compilation.has_errors() {
        return Err(compilation.render_diagnostics());
    }
    compilation.sources.make_names_relative_to(&model_dir(path));
    if stage == emit::Stage::Ast {
        let source = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let (parsed, _) = syntax::parse(FileId(0), &source);
        return Ok(emit::ast(&parsed));
    }
    let graphs: Vec<&ir::Graph> = compilation
        .models
        .iter()
        .filter_map(|m| m.graph.as_ref())
        .collect();
    match graphs.as_slice() {
        [graph] => emit::stage_text(
            graph,
            &compilation.sources,
            stage,
            kernel_ir::Precision::default(),
        ),
        _ => Err(format!(
            "`{}` has {} models; `emit_stage` takes a file with one",
            path.display(),
            graphs.len()
        )),
    }
}

/// A problem with the command line rather than the model (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `name=value` settings given with `--set`.
pub fn parse_settings(settings: &[String]) -> Result<BTreeMap<String, Value>, UsageError> {
    let mut out = BTreeMap::new();
    for s in settings {
        let Some((name, value)) = s.split_once('=') else {
            return Err(UsageError(format!("`--set {s}`: expected `name=value`")));
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(UsageError(format!(
                "`--set {s}`: `{name}` is not a parameter name"
            )));
        }
        out.insert(name.to_string(), Value::parse_setting(value));
    }
    Ok(out)
}

/// Reads, parses and checks a `.cnn` file and the files it includes.
pub fn compile_file(
    path: &Path,
    overrides: &BTreeMap<String, Value>,
) -> Result<Compilation, UsageError> {
    compile_file_at(path, overrides, None)
}

/// Like [`compile_file`], with every model's input height and width replaced.
pub fn compile_file_at(
    path: &Path,
    overrides: &BTreeMap<String, Value>,
    input_hw: Option<(i64, i64)>,
) -> Result<Compilation, UsageError> {
    compile_file_with(path, overrides, input_hw, &[])
}

/// Like [`compile_file_at`], with named include directories (`-I DIR`):
/// an `include` is looked up next to the including file, then in each of
/// them, and may only read files inside the root file's folder tree or
/// inside one of them.
pub fn compile_file_with(
    path: &Path,
    overrides: &BTreeMap<String, Value>,
    input_hw: Option<(i64, i64)>,
    include_dirs: &[PathBuf],
) -> Result<Compilation, UsageError> {
    for dir in include_dirs {
        if !dir.is_dir() {
            return Err(UsageError(format!(
                "`-I {}`: not a directory",
                dir.display()
            )));
        }
    }
    let text = read_source(path).map_err(UsageError)?;
    Ok(compile_with(
        path.display().to_string(),
        text,
        path.parent().map(Path::to_path_buf),
        overrides,
        input_hw,
        include_dirs,
    ))
}

/// Parses and checks source text; includes are resolved relative to `dir` if given.
pub fn compile_source(name: &str, text: &str, overrides: &BTreeMap<String, Value>) -> Compilation {
    let dir = Path::new(name).parent().map(Path::to_path_buf);
    compile_with(
        name.to_string(),
        SourceText::Text(text.to_string()),
        dir,
        overrides,
        None,
        &[],
    )
}

/// File contents, or the bytes of a file that is not UTF-8.
enum SourceText {
    Text(String),
    NotUtf8 { lossy: String, at: usize },
}

fn read_source(path: &Path) -> Result<SourceText, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read `{}`: {}", path.display(), io_reason(&e)))?;
    if meta.is_dir() {
        return Err(format!(
            "`{}` is a directory, not a .cnn file",
            path.display()
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "`{}` is {} bytes; .cnn files are limited to {MAX_FILE_BYTES}",
            path.display(),
            meta.len()
        ));
    }
    // Read at most one byte past the limit: a device such as /dev/zero reports length 0.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            let mut limited = std::io::Read::take(f, MAX_FILE_BYTES + 1);
            std::io::Read::read_to_end(&mut limited, &mut bytes)
        })
        .map_err(|e| format!("cannot read `{}`: {}", path.display(), io_reason(&e)))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "`{}` is more than {MAX_FILE_BYTES} bytes, the limit for .cnn files",
            path.display()
        ));
    }
    Ok(match String::from_utf8(bytes) {
        Ok(text) => SourceText::Text(text),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            SourceText::NotUtf8 {
                lossy: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                at,
            }
        }
    })
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}

fn add_source(
    sources: &mut SourceMap,
    name: String,
    text: SourceText,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<FileId> {
    match text {
        SourceText::Text(t) => Some(sources.add(name, t)),
        SourceText::NotUtf8 { lossy, at } => {
            // Point at the first bad byte; the lossy text keeps offsets before it intact.
            let id = sources.add(name, lossy);
            let end = sources.text(id)[at..]
                .chars()
                .next()
                .map(|c| at + c.len_utf8())
                .unwrap_or(at);
            diagnostics.push(
                Diagnostic::error(
                    "file is not valid UTF-8",
                    Span::new(id, at..end),
                    "invalid byte here",
                )
                .with_help("save the file as UTF-8"),
            );
            None
        }
    }
}

fn compile_with(
    name: String,
    text: SourceText,
    dir: Option<PathBuf>,
    overrides: &BTreeMap<String, Value>,
    input_hw: Option<(i64, i64)>,
    include_dirs: &[PathBuf],
) -> Compilation {
    let roots = IncludeRoots::new(dir.as_deref(), include_dirs);
    let mut sources = SourceMap::new();
    let mut diagnostics = Vec::new();
    let mut files: Vec<SourceFile> = Vec::new();
    let Some(root) = add_source(&mut sources, name.clone(), text, &mut diagnostics) else {
        return Compilation {
            sources,
            models: Vec::new(),
            diagnostics,
        };
    };
    // Parse the root, then what it includes, transitively; each file is read once.
    let mut queue = vec![(root, dir)];
    let mut seen: HashMap<PathBuf, FileId> = HashMap::new();
    let mut missing_includes = false;
    let mut lost_blocks = std::collections::HashSet::new();
    while let Some((file, dir)) = queue.pop() {
        let (parsed, mut diags) = syntax::parse(file, sources.text(file));
        // A syntax error on an `include` line loses the include.
        missing_includes |= diags
            .iter()
            .any(|d| line_at(sources.text(file), d.primary.span.start).starts_with("include"));
        if diags.iter().any(|d| d.is_error()) {
            lost_blocks.extend(lost_block_names(sources.text(file), &parsed));
        }
        diagnostics.append(&mut diags);
        for decl in &parsed.decls {
            let Decl::Include(include) = decl else {
                continue;
            };
            let path = match roots.resolve(dir.as_deref(), &include.path) {
                Ok(path) => path,
                Err(Refused::Missing(path)) => path,
                Err(Refused::Outside) => {
                    missing_includes = true;
                    diagnostics.push(roots.refusal(&include.path, include.span));
                    continue;
                }
            };
            let key = path.canonicalize().unwrap_or(path.clone());
            if seen.contains_key(&key) {
                continue;
            }
            match read_source(&path) {
                Ok(text) => {
                    if let Some(id) =
                        // Named by its path from where cnnc runs, so locations can be opened.
                        add_source(
                            &mut sources,
                            path.display().to_string(),
                            text,
                            &mut diagnostics,
                        )
                    {
                        seen.insert(key, id);
                        queue.push((id, path.parent().map(Path::to_path_buf)));
                    } else {
                        missing_includes = true;
                    }
                }
                Err(reason) => {
                    missing_includes = true;
                    diagnostics.push(
                        Diagnostic::error(
                            format!("cannot include `{}`", include.path),
                            include.span,
                            reason,
                        )
                        .with_note(
                            "include paths are relative to the including file, then to each `-I` folder",
                        ),
                    )
                }
            }
        }
        files.push(parsed);
    }
    files.sort_by_key(|f| f.file);

    // Collect blocks from every file; models from the root file only.
    let mut blocks: HashMap<String, &syntax::BlockDecl> = HashMap::new();
    let mut model_decls: Vec<&syntax::ModelDecl> = Vec::new();
    let mut model_names: HashMap<&str, Span> = HashMap::new();
    for file in &files {
        for decl in &file.decls {
            match decl {
                Decl::Block(b) => {
                    if let Some(first) = blocks.get(&b.name.text) {
                        diagnostics.push(
                            Diagnostic::error(
                                format!("block `{}` is defined twice", b.name.text),
                                b.name.span,
                                "second definition",
                            )
                            .with_secondary(first.name.span, "first defined here"),
                        );
                    } else {
                        blocks.insert(b.name.text.clone(), b);
                    }
                }
                Decl::Model(m) if file.file == root => {
                    if let Some(first) = model_names.get(m.name.text.as_str()) {
                        diagnostics.push(
                            Diagnostic::error(
                                format!("model `{}` is defined twice", m.name.text),
                                m.name.span,
                                "second definition",
                            )
                            .with_secondary(*first, "first defined here"),
                        );
                        continue;
                    }
                    model_names.insert(&m.name.text, m.name.span);
                    model_decls.push(m);
                }
                _ => {}
            }
        }
    }
    if model_decls.is_empty() && diagnostics.is_empty() {
        let text = sources.text(root);
        let end = text.len();
        let blank = text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        let has_blocks = files
            .iter()
            .any(|f| f.file == root && f.decls.iter().any(|d| matches!(d, Decl::Block(_))));
        let mut d = Diagnostic::error(
            "no model in this file",
            Span::new(root, end..end),
            if blank {
                "the file is empty"
            } else {
                "expected `model name { ... }`"
            },
        );
        d = if has_blocks {
            d.with_help(
                "this file only declares blocks; `include` it from a file that declares a model",
            )
        } else {
            d.with_help(
                "a model starts with `model name {` and its first line is `input [C, H, W]`",
            )
        };
        diagnostics.push(d);
    }
    // A block parsed in another file is not lost.
    lost_blocks.retain(|name: &String| !blocks.contains_key(name));
    let decls = Declarations {
        blocks,
        missing_includes,
        lost_blocks,
    };
    let mut models = Vec::new();
    for model in model_decls.iter().copied() {
        // Only the settings a model declares apply to it.
        let mine: BTreeMap<String, Value> = overrides
            .iter()
            .filter(|(k, _)| model.params.iter().any(|p| &p.name.text == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (graph, mut diags) = check::check_model_at(&decls, model, &mine, input_hw);
        diagnostics.append(&mut diags);
        models.push(CheckedModel {
            name: model.name.text.clone(),
            graph,
        });
    }
    // A model without a graph must have an error to show (and exit code 1).
    if !diagnostics.iter().any(|d| d.is_error()) {
        for (model, decl) in models.iter().zip(&model_decls) {
            if model.graph.is_none() {
                diagnostics.push(Diagnostic::error(
                    format!(
                        "internal error: model `{}` could not be checked",
                        model.name
                    ),
                    decl.name.span,
                    "no error was reported for it",
                ));
            }
        }
    }
    // In file order, each once (a block used by two models reports its error once).
    diagnostics.sort_by_key(|d| (d.primary.span.file, d.primary.span.start));
    let mut seen = std::collections::HashSet::new();
    diagnostics.retain(|d| seen.insert((d.message.clone(), d.primary.span)));
    Compilation {
        sources,
        models,
        diagnostics,
    }
}

/// The folders an `include` may read from, canonical: the root file's
/// folder and the `-I` folders. A `.cnn` file from someone else must not
/// be able to read (and quote in an error) any other file of the user's.
struct IncludeRoots {
    allowed: Vec<PathBuf>,
    /// The `-I` folders as given, searched in order after the including file's folder.
    search: Vec<PathBuf>,
    /// The root file's folder as given, for messages.
    shown: Vec<String>,
}

/// Why an include is not read.
enum Refused {
    /// Inside the allowed folders but not there: reported as a missing file.
    Missing(PathBuf),
    /// Outside every allowed folder (whether or not it exists, which is not said).
    Outside,
}

impl IncludeRoots {
    fn new(root_dir: Option<&Path>, include_dirs: &[PathBuf]) -> IncludeRoots {
        let root = match root_dir {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut allowed = Vec::new();
        let mut shown = Vec::new();
        for dir in std::iter::once(&root).chain(include_dirs) {
            if let Ok(c) = dir.canonicalize() {
                allowed.push(c);
            }
            shown.push(format!("`{}`", dir.display()));
        }
        IncludeRoots {
            allowed,
            search: include_dirs.to_vec(),
            shown,
        }
    }

    /// Where `include "name"` in a file of folder `dir` reads from: the first
    /// of `dir/name`, `I/name` for each `-I` folder that exists; the path is
    /// checked (symbolic links and `..` resolved) to lie inside an allowed
    /// folder before anything is read.
    fn resolve(&self, dir: Option<&Path>, name: &str) -> Result<PathBuf, Refused> {
        let here = dir.unwrap_or(Path::new("")).join(name);
        let mut outside = false;
        for candidate in
            std::iter::once(here.clone()).chain(self.search.iter().map(|d| d.join(name)))
        {
            match candidate.canonicalize() {
                Ok(real) if self.inside(&real) => return Ok(candidate),
                Ok(_) => outside = true,
                Err(_) => {
                    // Not there: judge the path by its text, so whether a file
                    // outside exists is not revealed either.
                    if !self.inside(&lexical(&candidate)) {
                        outside = true;
                    }
                }
            }
        }
        if outside {
            Err(Refused::Outside)
        } else {
            Err(Refused::Missing(here))
        }
    }

    fn inside(&self, path: &Path) -> bool {
        self.allowed.iter().any(|a| path.starts_with(a))
    }

    fn refusal(&self, name: &str, span: Span) -> Diagnostic {
        Diagnostic::error(
            format!("cannot include `{name}`: it is outside the model's folder"),
            span,
            "not read",
        )
        .with_note(format!(
            "includes are read only from inside {}",
            self.shown.join(" and ")
        ))
        .with_help("copy the file next to the model, or name its folder with `-I DIR`")
    }
}

/// `path` made absolute against the current directory with `.` and `..`
/// removed by their text (for a path that does not exist, so cannot be
/// canonicalised); an existing ancestor is canonicalised so symbolic links
/// in it count.
fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::env::current_dir().unwrap_or_default().join(path);
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    // The longest existing ancestor, canonical, then the rest as written.
    let mut existing = out.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match existing.file_name() {
            Some(name) => rest.push(name.to_os_string()),
            None => break,
        }
        existing.pop();
    }
    let mut result = existing.canonicalize().unwrap_or(existing);
    for name in rest.into_iter().rev() {
        result.push(name);
    }
    result
}

/// Names of the blocks a file's text declares (`block name` at the start of
/// a line) that its parse does not have: their declarations had syntax errors.
fn lost_block_names(text: &str, parsed: &SourceFile) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix("block")?;
            if !rest.starts_with(char::is_whitespace) {
                return None;
            }
            let rest = rest.trim_start();
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (end > 0).then(|| rest[..end].to_string())
        })
        .filter(|name| {
            !parsed
                .decls
                .iter()
                .any(|d| matches!(d, Decl::Block(b) if &b.name.text == name))
        })
        .collect()
}

/// The text of the line containing `offset`, from its start.
fn line_at(text: &str, offset: usize) -> &str {
    let offset = offset.min(text.len());
    let start = text
        .get(..offset)
        .and_then(|t| t.rfind('\n'))
        .map(|i| i + 1)
        .unwrap_or(0);
    text.get(start..).unwrap_or("")
}

/// Settings that no model in the file declares (a command-line mistake).
pub fn unknown_settings(path: &Path, overrides: &BTreeMap<String, Value>) -> Vec<String> {
    // An unreadable file is reported when it is compiled.
    let Some(declared) = declared_parameters(path) else {
        return Vec::new();
    };
    overrides
        .keys()
        .filter(|k| !declared.contains(k))
        .cloned()
        .collect()
}

/// The parameters the models of a file declare, in file order, each once;
/// `None` when the file cannot be read as text.
pub fn declared_parameters(path: &Path) -> Option<Vec<String>> {
    let Ok(SourceText::Text(text)) = read_source(path) else {
        return None;
    };
    let (parsed, _) = syntax::parse(FileId(0), &text);
    let mut declared: Vec<String> = Vec::new();
    for decl in &parsed.decls {
        if let Decl::Model(m) = decl {
            for p in &m.params {
                if !declared.contains(&p.name.text) {
                    declared.push(p.name.text.clone());
                }
            }
        }
    }
    Some(declared)
}

/// The lines that follow "no model ... has a parameter ...": a "did you
/// mean" for each near miss among the `declared` parameters, else the list
/// of what may be set.
pub fn unknown_settings_help(unknown: &[String], declared: &[String]) -> String {
    let mut lines = Vec::new();
    let mut all_matched = true;
    for name in unknown {
        match check::closest(name, declared.iter().map(String::as_str)) {
            Some(near) => lines.push(format!("help: `{name}`: did you mean `{near}`?")),
            None => all_matched = false,
        }
    }
    if !all_matched {
        lines.push(if declared.is_empty() {
            "note: no model here takes parameters".to_string()
        } else {
            let names: Vec<String> = declared.iter().map(|d| format!("`{d}`")).collect();
            format!(
                "note: the parameters that can be set are {}",
                names.join(", ")
            )
        });
    }
    lines.join("\n")
}
