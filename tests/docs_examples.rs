//! Keeps the documentation true. In docs/language.md, docs/architecture.md
//! and README.md:
//!
//! - every ```cnn block is a complete file that must check without errors;
//! - a ```state_dict block right after one lists exactly the keys and shapes
//!   that example gets, in order;
//! - a ```cnn-error block is a file that must fail to check;
//! - a ```text block that starts with `$ cnnc ...` is a transcript, and its
//!   output must be what the command prints (line prefixes, in order, where
//!   the transcript elides with `...`). `check` and `summary` go through the
//!   library and may name a file shown in an earlier ```cnn block; `run`,
//!   `emit` and `train` (its `--dry-run`, in docs/training.md) run the real
//!   binary from the repository root on repository files;
//! - the README's zoo table quotes each model's input, parameters and MACs;
//! - in docs/training.md, every ```yaml block is a `cnnc train` config that
//!   parses, its transforms included;
//! - a ```cnn block whose first line is `# PATH`, PATH a repository file, is
//!   that file (so transcripts can run on it), and the ```rust block of
//!   docs/snapshot-testing.md is tests/snapshot_template.rs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The documents whose examples are checked, relative to the repository root.
const DOCUMENTS: &[&str] = &[
    "docs/language.md",
    "docs/architecture.md",
    "docs/snapshot-testing.md",
    "docs/training.md",
    "README.md",
];

/// Subcommands whose transcripts are reproduced by running the `cnnc` binary.
const RUN_BY_BINARY: &[&str] = &["run", "emit", "train"];

/// One fenced code block: its info string, its text, and the line of its opening fence.
struct Fence {
    info: String,
    text: String,
    line: usize,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(document: &str) -> String {
    std::fs::read_to_string(root().join(document))
        .unwrap_or_else(|e| panic!("cannot read {document}: {e}"))
}

/// Every fenced block in a Markdown text, in order. Fences are lines starting with ``` .
fn fences(markdown: &str) -> Vec<Fence> {
    let mut out = Vec::new();
    let mut open: Option<Fence> = None;
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some(Fence {
                        info: info.trim().to_string(),
                        text: String::new(),
                        line: index + 1,
                    });
                }
            }
            Some(mut fence) => {
                if trimmed.starts_with("```") {
                    out.push(fence);
                } else {
                    fence.text.push_str(line);
                    fence.text.push('\n');
                    open = Some(fence);
                }
            }
        }
    }
    if let Some(fence) = open {
        panic!(
            "the code block opened on line {} is never closed",
            fence.line
        );
    }
    out
}

/// A scratch directory of our own for the example files.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-docs-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// Checks one example; returns its `state_dict` as `key [shape]` lines, or the rendered errors.
fn check_example(dir: &Path, document: &str, fence: &Fence) -> Result<Vec<String>, String> {
    let stem = document.replace(['/', '.'], "_");
    let path = dir.join(format!("{stem}_line{}.cnn", fence.line));
    std::fs::write(&path, &fence.text).expect("write the example");
    let compilation = cnnc::compile_file(&path, &BTreeMap::new()).map_err(|e| e.to_string())?;
    if compilation.has_errors() {
        return Err(compilation.render_diagnostics());
    }
    if compilation.models.is_empty() {
        return Err("the example declares no model".to_string());
    }
    let mut keys = Vec::new();
    for model in &compilation.models {
        let graph = model.graph.as_ref().ok_or("a model has no graph")?;
        graph.verify()?;
        for p in &graph.params {
            keys.push(format!("{} {:?}", p.key, p.shape));
        }
    }
    Ok(keys)
}

/// Normalises a listed key line: `key  [a, b]` with any spacing becomes `key [a, b]`.
fn listed_key(line: &str) -> Option<String> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return None;
    }
    let (key, shape) = line.split_once(char::is_whitespace).unwrap_or((line, "[]"));
    Some(format!("{key} {}", shape.trim()))
}

#[test]
fn every_cnn_example_in_the_docs_checks() {
    let dir = scratch();
    let mut failures = Vec::new();
    let mut examples = 0;
    let mut key_lists = 0;
    for document in DOCUMENTS {
        let blocks = fences(&read(document));
        for (i, fence) in blocks.iter().enumerate() {
            if fence.info != "cnn" {
                continue;
            }
            examples += 1;
            let keys = match check_example(&dir, document, fence) {
                Ok(keys) => keys,
                Err(errors) => {
                    failures.push(format!(
                        "{document}:{}: the ```cnn example does not check:\n{errors}",
                        fence.line
                    ));
                    continue;
                }
            };
            // A ```state_dict block that follows lists the example's keys, in order.
            if let Some(listing) = blocks.get(i + 1).filter(|f| f.info == "state_dict") {
                key_lists += 1;
                let expected: Vec<String> = listing.text.lines().filter_map(listed_key).collect();
                if keys != expected {
                    failures.push(format!(
                        "{document}:{}: the ```state_dict listing differs from what the example on line {} gives.\n  listed:\n    {}\n  actual:\n    {}",
                        listing.line,
                        fence.line,
                        expected.join("\n    "),
                        keys.join("\n    ")
                    ));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} of {examples} documentation examples are wrong:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    // Guard against a change in fence syntax silently skipping everything.
    assert!(examples >= 20, "only {examples} ```cnn examples found");
    assert!(
        key_lists >= 5,
        "only {key_lists} ```state_dict listings found"
    );
}

#[test]
fn every_state_dict_listing_follows_an_example() {
    for document in DOCUMENTS {
        let blocks = fences(&read(document));
        for (i, fence) in blocks.iter().enumerate() {
            if fence.info == "state_dict" {
                assert!(
                    i > 0 && blocks[i - 1].info == "cnn",
                    "{document}:{}: a ```state_dict block must directly follow a ```cnn example",
                    fence.line
                );
            }
        }
    }
}

/// The README's zoo table quotes each model's input, parameters and MACs as `cnnc check` prints them.
#[test]
fn readme_zoo_table_matches_the_models() {
    let readme = read("README.md");
    let mut models: Vec<PathBuf> = std::fs::read_dir(root().join("models"))
        .expect("models/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .collect();
    models.sort();
    assert!(!models.is_empty());
    for path in models {
        let compilation = cnnc::compile_file(&path, &BTreeMap::new()).expect("readable");
        let graph = compilation.models[0].graph.as_ref().expect("checks");
        let file = format!("models/{}", path.file_name().unwrap().to_string_lossy());
        let row = readme
            .lines()
            .find(|l| l.starts_with('|') && l.contains(&format!("({file})")))
            .unwrap_or_else(|| panic!("README.md: no zoo table row links {file}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let expected = [
            graph.input_shape().to_string(),
            cnnc::tools::summary::grouped(graph.total_params()),
            cnnc::tools::summary::macs(graph.total_macs()),
        ];
        for value in expected {
            assert!(
                cells.contains(&value.as_str()),
                "README.md: the zoo row for {file} should have a cell `{value}`:\n{row}"
            );
        }
    }
}

/// What `cnnc check` prints for one file: `ok:` lines, then the errors and their count.
fn check_output(name: &str, compilation: &cnnc::Compilation) -> String {
    let mut out = String::new();
    for model in &compilation.models {
        if let Some(graph) = &model.graph {
            out.push_str(&cnnc::tools::summary::check_line(graph));
            out.push('\n');
        }
    }
    if compilation.has_errors() {
        out.push_str(&compilation.render_diagnostics());
        let count = compilation
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .count();
        let plural = if count == 1 { "" } else { "s" };
        out.push_str(&format!("{name}: {count} error{plural}\n"));
    }
    out
}

/// Compiles a file named in a transcript: a file of the repository, or else the
/// nearest ```cnn or ```cnn-error block before the transcript, under that name.
fn compile_named(
    file: &str,
    source: Option<&Fence>,
    settings: &[String],
) -> Result<cnnc::Compilation, String> {
    let overrides = cnnc::parse_settings(settings).map_err(|e| e.to_string())?;
    let path = root().join(file);
    if path.is_file() {
        return cnnc::compile_file(&path, &overrides).map_err(|e| e.to_string());
    }
    let source = source.ok_or(format!("`{file}` is neither a file nor shown above"))?;
    Ok(cnnc::compile_source(file, &source.text, &overrides))
}

/// The files a transcript argument names: `dir/*.cnn` in sorted order, as a shell expands it.
fn expand(file: &str) -> Vec<String> {
    let Some(dir) = file.strip_suffix("/*.cnn") else {
        return vec![file.to_string()];
    };
    let mut names: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cnn"))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    names.sort();
    names
}

/// What the `cnnc` binary prints (standard output, then standard error) when
/// run from the repository root with `args`; only repository files may be named.
fn run_binary(args: &[&str]) -> Result<String, String> {
    let output = crate::common::cnnc()
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .map_err(|e| format!("cannot run cnnc: {e}"))?;
    let mut out = String::from_utf8_lossy(&output.stdout).into_owned();
    out.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok(out)
}

/// What a transcript's command prints, or why it cannot be reproduced.
fn run_transcript(command: &str, source: Option<&Fence>) -> Result<String, String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let (subcommand, rest) = match words.as_slice() {
        ["$", "cnnc", sub, rest @ ..] => (*sub, rest),
        _ => return Err(format!("not a `$ cnnc` command: {command}")),
    };
    if RUN_BY_BINARY.contains(&subcommand) {
        if rest.iter().any(|a| a.contains(['*', '?', '>', '|', '$'])) {
            return Err("the test runs no shell: no globs, pipes or redirections".to_string());
        }
        return run_binary(&words[2..]);
    }
    let mut files = Vec::new();
    let mut settings = Vec::new();
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        match *arg {
            "--set" => settings.push(args.next().ok_or("`--set` without a value")?.to_string()),
            a if a.starts_with('-') => return Err(format!("the test does not know `{a}`")),
            a => files.extend(expand(a)),
        }
    }
    let mut out = String::new();
    for file in &files {
        let compilation = compile_named(file, source, &settings)?;
        match subcommand {
            "check" => out.push_str(&check_output(file, &compilation)),
            "summary" => {
                if compilation.has_errors() {
                    return Err(compilation.render_diagnostics());
                }
                for model in &compilation.models {
                    let graph = model.graph.as_ref().ok_or("no graph")?;
                    out.push_str(&cnnc::tools::summary::table(graph, &compilation.sources, 1));
                }
            }
            other => return Err(format!("the test does not know `cnnc {other}`")),
        }
    }
    Ok(out)
}

/// Compares a transcript with real output: exactly, or, where the transcript
/// elides with `...`, each shown line as a prefix of a real line, in order.
fn matches(shown: &str, real: &str) -> bool {
    let elided = shown
        .lines()
        .any(|l| l.trim() == "..." || l.trim_end().ends_with(" ..."));
    if !elided {
        return shown == real;
    }
    let mut real_lines = real.lines().map(str::trim_end);
    shown
        .lines()
        .map(|l| l.trim_end())
        .filter(|l| l.trim() != "...")
        .map(|l| l.strip_suffix("...").unwrap_or(l).trim_end())
        .all(|prefix| real_lines.any(|r| r.starts_with(prefix)))
}

#[test]
fn every_transcript_in_the_docs_is_real_output() {
    let mut failures = Vec::new();
    let mut transcripts = 0;
    for document in DOCUMENTS {
        let blocks = fences(&read(document));
        for (i, fence) in blocks.iter().enumerate() {
            let Some((command, shown)) = fence.text.split_once('\n') else {
                continue;
            };
            if fence.info != "text" || !command.starts_with("$ cnnc ") {
                continue;
            }
            transcripts += 1;
            let source = blocks[..i]
                .iter()
                .rev()
                .find(|f| f.info == "cnn" || f.info == "cnn-error");
            match run_transcript(command, source) {
                Ok(real) if matches(shown, &real) => {}
                Ok(real) => failures.push(format!(
                    "{document}:{}: `{command}` prints something else:\n--- shown\n{shown}--- real\n{real}",
                    fence.line
                )),
                Err(e) => failures.push(format!("{document}:{}: `{command}`: {e}", fence.line)),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(transcripts >= 5, "only {transcripts} transcripts found");
}

#[test]
fn every_cnn_error_example_fails() {
    for document in DOCUMENTS {
        for fence in fences(&read(document)) {
            if fence.info == "cnn-error" {
                let compilation =
                    cnnc::compile_source("example.cnn", &fence.text, &BTreeMap::new());
                assert!(
                    compilation.has_errors(),
                    "{document}:{}: this ```cnn-error example checks without errors",
                    fence.line
                );
            }
        }
    }
}

/// Blocks that show a repository file show it as it is.
#[test]
fn blocks_that_name_a_repository_file_show_it() {
    let mut shown = 0;
    for document in DOCUMENTS {
        for fence in fences(&read(document)) {
            let Some(path) = fence
                .text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# "))
                .map(|l| l.split_whitespace().next().unwrap_or(""))
            else {
                continue;
            };
            let file = root().join(path);
            if fence.info != "cnn" || !path.ends_with(".cnn") || !file.is_file() {
                continue;
            }
            shown += 1;
            assert_eq!(
                fence.text,
                std::fs::read_to_string(&file).expect("readable"),
                "{document}:{}: the block differs from {path}",
                fence.line
            );
        }
    }
    assert!(shown >= 1, "no block shows a repository file");
    let template = fences(&read("docs/snapshot-testing.md"))
        .into_iter()
        .find(|f| f.info == "rust")
        .expect("docs/snapshot-testing.md shows the template");
    assert_eq!(
        template.text,
        read("tests/snapshot_template.rs"),
        "docs/snapshot-testing.md: the template differs from tests/snapshot_template.rs"
    );
}

/// docs/training.md: every YAML block is a config `cnnc train` accepts.
#[test]
fn training_configs_parse() {
    let text = read("docs/training.md");
    let blocks: Vec<Fence> = fences(&text)
        .into_iter()
        .filter(|f| f.info == "yaml")
        .collect();
    assert!(blocks.len() >= 3, "docs/training.md has no yaml blocks");
    for f in blocks {
        let config: cnnc::tools::train::run::TrainConfig = serde_yaml::from_str(&f.text)
            .unwrap_or_else(|e| panic!("docs/training.md:{}: {e}", f.line));
        if let Err(e) = config.transforms.pipelines() {
            panic!("docs/training.md:{}: {e}", f.line);
        }
    }
}

/// Every source file of the three crates, relative to the repository root.
fn source_files() -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = ["compiler/src", "runtime/src", "runtime/kernels/src"]
        .iter()
        .map(|d| root().join(d))
        .collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "cuh") {
                let relative = path.strip_prefix(root()).unwrap();
                out.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// docs/architecture.md's code map names every source file: by its path,
/// or, inside a folder the map describes under a heading of its own
/// (`runtime/src/cpu/`), by its file name in that section. Renaming or adding a file
/// without telling the map fails here.
#[test]
fn the_code_map_names_every_source_file() {
    let map = read("docs/architecture.md");
    // The text under the heading that names `folder/`, up to the next heading.
    let section = |folder: &str| -> Option<&str> {
        let heading = map.find(&format!("# `{folder}/`"))?;
        let body = &map[heading..];
        let end = body[1..].find("\n#").map_or(body.len(), |e| e + 1);
        Some(&body[..end])
    };
    let missing: Vec<String> = source_files()
        .into_iter()
        .filter(|file| {
            let (folder, name) = file.rsplit_once('/').unwrap();
            !(map.contains(&format!("`{file}`"))
                || section(folder).is_some_and(|s| s.contains(&format!("`{name}`"))))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md's code map does not name:\n  {}",
        missing.join("\n  ")
    );
    // And names no file that is gone.
    let mut gone = Vec::new();
    for prefix in ["compiler/src/", "runtime/src/", "runtime/kernels/"] {
        for (i, _) in map.match_indices(&format!("`{prefix}")) {
            let path: String = map[i + 1..].chars().take_while(|&c| c != '`').collect();
            let path = path.split_whitespace().next().unwrap_or("").to_string();
            if !root().join(&path).exists() {
                gone.push(path);
            }
        }
    }
    assert!(
        gone.is_empty(),
        "docs/architecture.md names paths that do not exist:\n  {}",
        gone.join("\n  ")
    );
}
