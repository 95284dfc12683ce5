//! The `cnnc` command line: parses arguments, calls the library, prints results.
//!
//! Exit codes: 0 fine, 1 the model has errors, 2 bad command line.

use clap::{Parser, Subcommand};
use cnnc::{
    compile_file, diag, parse_settings, summary, unknown_settings, Compilation, UsageError,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cnnc", version, about = "A compiler for convolutional neural networks", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every shape in one or more .cnn files; one line per model, or the errors.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Override a model parameter, e.g. `--set num_classes=10`.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// Per-layer table: state_dict name, op, output shape, params, MACs, activation memory.
    Summary {
        file: PathBuf,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Batch size for activation memory.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        batch: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Which model, when the file has several.
        #[arg(long)]
        model: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { files, set } => check(&files, &set),
        Command::Summary {
            file,
            set,
            batch,
            json,
            model,
        } => summarize(&file, &set, batch, json, model.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(UsageError(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn load(file: &Path, set: &[String]) -> Result<Compilation, UsageError> {
    let overrides = parse_settings(set)?;
    let unknown = unknown_settings(file, &overrides);
    if !unknown.is_empty() {
        return Err(UsageError(format!(
            "no model in `{}` has a parameter {}",
            file.display(),
            unknown
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    compile_file(file, &overrides)
}

fn check(files: &[PathBuf], set: &[String]) -> Result<ExitCode, UsageError> {
    let mut failed = false;
    for file in files {
        let compilation = load(file, set)?;
        for model in &compilation.models {
            if let Some(graph) = &model.graph {
                println!("{}", summary::check_line(graph));
            }
        }
        if compilation.has_errors() {
            diag::emit_to_stderr(&compilation.sources, &compilation.diagnostics);
            let count = compilation
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .count();
            eprintln!(
                "{}: {count} error{}",
                file.display(),
                if count == 1 { "" } else { "s" }
            );
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn summarize(
    file: &Path,
    set: &[String],
    batch: i64,
    json: bool,
    model: Option<&str>,
) -> Result<ExitCode, UsageError> {
    let compilation = load(file, set)?;
    if compilation.has_errors() {
        diag::emit_to_stderr(&compilation.sources, &compilation.diagnostics);
        return Ok(ExitCode::from(1));
    }
    let graphs: Vec<_> = compilation
        .models
        .iter()
        .filter_map(|m| m.graph.as_ref())
        .collect();
    let chosen: Vec<_> = match model {
        Some(name) => {
            let g: Vec<_> = graphs.iter().filter(|g| g.name == name).copied().collect();
            if g.is_empty() {
                let names: Vec<_> = graphs.iter().map(|g| format!("`{}`", g.name)).collect();
                return Err(UsageError(format!(
                    "no model `{name}` in `{}`; it has {}",
                    file.display(),
                    names.join(", ")
                )));
            }
            g
        }
        None => graphs,
    };
    for graph in chosen {
        if json {
            let text = serde_json::to_string_pretty(&summary::summary(graph))
                .map_err(|e| UsageError(e.to_string()))?;
            println!("{text}");
        } else {
            print!("{}", summary::table(graph, batch));
        }
    }
    Ok(ExitCode::SUCCESS)
}
