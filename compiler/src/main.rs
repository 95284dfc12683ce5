//! The `cnnc` command line: parses arguments, calls the library, prints results.
//!
//! Exit codes: 0 fine, 1 the model has errors, 2 bad command line.

use clap::{Parser, Subcommand};
use cnnc::ir::{Graph, Op};
use cnnc::weights::InitScheme;
use cnnc::{
    compile_file, diag, parse_settings, summary, unknown_settings, Compilation, UsageError,
};
use cnnc_runtime::input::{ImageOptions, IndexRange, InputOptions};
use cnnc_runtime::output::{Report, Scores};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// mimalloc keeps freed memory for reuse: `cnnc train` and `cnnc run` free
/// and allocate the same large activation buffers every step, and glibc's
/// malloc returned them to the kernel each time (munmap and page faults
/// with TLB shootdowns across threads: a fifth of a training step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (libmimalloc-sys
/// names the options around it but not this one).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never hand freed pages back to the kernel (mimalloc's default: a second
/// after the free). A training run reallocates the same activation buffers
/// every step; with purging, `perf stat` counted 7,500 page faults in 21
/// steps of mnist_cnn, without it 330. Peak memory is unchanged.
fn keep_freed_memory() {
    // SAFETY: sets a documented option to a documented value (-1: never
    // purge); called first thing in main, before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// What `cnnc build` needs and uses, for `cnnc build --help`.
const BUILD_HELP: &str = "\
What it needs and uses:
  cargo         builds the generated crate (`CARGO` names another cargo)
  nvcc          compiles the kernels to cubins for sm_80 and sm_90: `CNNC_NVCC`,
                then `PATH`, then /usr/local/cuda/bin/nvcc; without it the CUDA
                source is embedded and compiled with NVRTC when the binary
                first runs on a GPU
  the cache     the runtime crate (built into cnnc, unpacked on first use) and
                the compiled dependencies, shared by every build of this cnnc
                version: $CNNC_CACHE_DIR/<version>, else
                $XDG_CACHE_HOME/cnnc/<version>, else ~/.cache/cnnc/<version>.
                The first build compiles the dependencies (minutes); later
                builds take seconds.

Environment:
  CNNC_CACHE_DIR     the cache folder (<version> is appended)
  CARGO_TARGET_DIR   cargo's target folder instead of the cache's target/
  CNNC_RUNTIME_PATH  a runtime crate (a checkout's runtime/) instead of the built-in one
  CNNC_NVCC          the nvcc to use
  CARGO              the cargo to use";

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
        /// Fail when a model's activations (the arena a built binary plans, at
        /// --batch) exceed this size: bytes, or with a unit, e.g. 512MiB, 2GB.
        #[arg(long, value_name = "SIZE", value_parser = cnnc::summary::parse_size)]
        memory_budget: Option<u64>,
        /// Batch size for --memory-budget.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        batch: i64,
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
    /// Print a stage of the compilation: ast, ir, fused (fusion report), kernels or cuda.
    Emit {
        file: PathBuf,
        #[arg(long, value_enum)]
        stage: cnnc::emit::Stage,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        model: Option<String>,
        /// Name files relative to the model's folder, so the output is the
        /// same on every machine (for snapshot tests; see docs/snapshot-testing.md).
        #[arg(long)]
        stable: bool,
    },
    /// Draw the model (one box per layer, repeated blocks as `× N`) as SVG or DOT.
    Graph {
        file: PathBuf,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = cnnc::graph::Format::Svg)]
        format: cnnc::graph::Format,
        /// Shade the layers that the fusion passes merge into one kernel.
        #[arg(long)]
        fused: bool,
        /// Draw every instance of a repeated block instead of one `× N` box.
        #[arg(long)]
        expand: bool,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        model: Option<String>,
    },
    /// Build a standalone binary that runs the model on an NVIDIA GPU (or the CPU).
    #[command(after_help = BUILD_HELP)]
    Build {
        file: PathBuf,
        /// Directory for the generated crate and the binary (default: build/<model>).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        model: Option<String>,
    },
    /// Run a model on inputs with the reference evaluator (f64, PyTorch eval() semantics).
    Run(Box<RunArgs>),
    /// Train a model on MNIST-style IDX data (CPU, f32): Adam/SGD, checkpoints, loss plot.
    Train(Box<cnnc::train::run::TrainArgs>),
    /// Write freshly initialised weights for a model as safetensors.
    Init {
        file: PathBuf,
        /// Where to write the weights.
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = InitScheme::Pytorch)]
        scheme: InitScheme,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        model: Option<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    file: PathBuf,
    /// PyTorch state_dict saved with safetensors.torch.save_file.
    #[arg(long)]
    weights: PathBuf,
    /// .npy arrays ([N,C,H,W] or [C,H,W]; f32, f64 or u8), PNG/JPEG images, or an MNIST IDX image file.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Write the outputs (logits) as a float32 .npy file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// How many classes to list per input.
    #[arg(long, default_value_t = 5)]
    topk: usize,
    /// Class names, one per line (models/labels/imagenet.txt, models/labels/digits.txt).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// True labels as an MNIST IDX label file: prints the accuracy.
    #[arg(long)]
    targets: Option<PathBuf>,
    /// Samples to take from .npy and IDX inputs: `7` or `0..100`.
    #[arg(long)]
    index: Option<String>,
    /// Zero padding around IDX digits (2 turns 28×28 into LeNet's 32×32).
    #[arg(long, default_value_t = 0)]
    pad: usize,
    /// Images: resize the shorter side to this before the centre crop.
    #[arg(long)]
    resize: Option<u32>,
    /// Images: keep values in [0, 1] instead of normalising with ImageNet statistics.
    #[arg(long)]
    no_normalize: bool,
    /// Images: per-channel mean, e.g. `0.5,0.5,0.5` (with --std).
    #[arg(long, requires = "std")]
    mean: Option<String>,
    /// Images: per-channel standard deviation (with --mean).
    #[arg(long, requires = "mean")]
    std: Option<String>,
    /// Images evaluated at once (memory grows with it).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    batch: u64,
    /// Print at most this many per-input lines.
    #[arg(long, default_value_t = 20)]
    show: usize,
    /// Fail, instead of warning, when a weight is NaN or infinite.
    #[arg(long)]
    strict_weights: bool,
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    #[arg(long)]
    model: Option<String>,
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check {
            files,
            set,
            memory_budget,
            batch,
        } => check(&files, &set, memory_budget.map(|b| (b, batch))),
        Command::Summary {
            file,
            set,
            batch,
            json,
            model,
        } => summarize(&file, &set, batch, json, model.as_deref()),
        Command::Run(args) => run(&args),
        Command::Train(args) => train(&args),
        Command::Build {
            file,
            output,
            set,
            model,
        } => build(&file, output.as_deref(), &set, model.as_deref()),
        Command::Emit {
            file,
            stage,
            output,
            set,
            model,
            stable,
        } => emit(
            &file,
            stage,
            output.as_deref(),
            &set,
            model.as_deref(),
            stable,
        ),
        Command::Graph {
            file,
            output,
            format,
            fused,
            expand,
            set,
            model,
        } => draw(
            &file,
            output.as_deref(),
            format,
            cnnc::graph::Options { fused, expand },
            &set,
            model.as_deref(),
        ),
        Command::Init {
            file,
            output,
            seed,
            scheme,
            set,
            model,
        } => init(&file, &output, seed, scheme, &set, model.as_deref()),
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
            "no model in `{}` has a parameter {}\n{}",
            file.display(),
            unknown
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", "),
            cnnc::unknown_settings_help(
                &unknown,
                &cnnc::declared_parameters(file).unwrap_or_default()
            )
        )));
    }
    compile_file(file, &overrides)
}

fn check(
    files: &[PathBuf],
    set: &[String],
    budget: Option<(u64, i64)>,
) -> Result<ExitCode, UsageError> {
    // A setting applies to the models that declare it; it is a mistake only
    // if no file given declares it.
    let overrides = parse_settings(set)?;
    let mut unknown: Vec<String> = overrides.keys().cloned().collect();
    for file in files {
        let missing = unknown_settings(file, &overrides);
        unknown.retain(|k| missing.contains(k));
    }
    if !unknown.is_empty() {
        let mut declared: Vec<String> = Vec::new();
        for file in files {
            for p in cnnc::declared_parameters(file).unwrap_or_default() {
                if !declared.contains(&p) {
                    declared.push(p);
                }
            }
        }
        return Err(UsageError(format!(
            "no model in the files given has a parameter {}\n{}",
            unknown
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", "),
            cnnc::unknown_settings_help(&unknown, &declared)
        )));
    }
    let mut failed = false;
    for file in files {
        let compilation = compile_file(file, &overrides)?;
        for model in &compilation.models {
            if let Some(graph) = &model.graph {
                println!("{}", summary::check_line(graph));
                if let Some((limit, batch)) = budget {
                    if let Err(message) = summary::check_memory_budget(graph, limit, batch) {
                        eprintln!("error: {}: {message}", file.display());
                        failed = true;
                    }
                }
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

/// Checks a file and picks one model from it; errors are printed, exit code returned.
fn one_model(
    compilation: &Compilation,
    file: &Path,
    model: Option<&str>,
) -> Result<Result<Graph, ExitCode>, UsageError> {
    if compilation.has_errors() {
        diag::emit_to_stderr(&compilation.sources, &compilation.diagnostics);
        return Ok(Err(ExitCode::from(1)));
    }
    let graphs: Vec<&Graph> = compilation
        .models
        .iter()
        .filter_map(|m| m.graph.as_ref())
        .collect();
    let names = || {
        graphs
            .iter()
            .map(|g| format!("`{}`", g.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match model {
        Some(name) => match graphs.iter().find(|g| g.name == name) {
            Some(g) => Ok(Ok((*g).clone())),
            None => Err(UsageError(format!(
                "no model `{name}` in `{}`; it has {}",
                file.display(),
                names()
            ))),
        },
        None if graphs.len() == 1 => Ok(Ok(graphs[0].clone())),
        None => Err(UsageError(format!(
            "`{}` has several models ({}); pick one with `--model`",
            file.display(),
            names()
        ))),
    }
}

/// A runtime failure (bad weights or inputs): printed, exit code 1.
fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(1)
}

fn parse_floats(text: &str, flag: &str) -> Result<Vec<f32>, UsageError> {
    text.split(',')
        .map(|v| {
            v.trim().parse::<f32>().map_err(|_| {
                UsageError(format!(
                    "`--{flag} {text}`: expected numbers separated by commas"
                ))
            })
        })
        .collect()
}

fn run(args: &RunArgs) -> Result<ExitCode, UsageError> {
    let compilation = load(&args.file, &args.set)?;
    let graph = match one_model(&compilation, &args.file, args.model.as_deref())? {
        Ok(g) => g,
        Err(code) => return Ok(code),
    };
    // Fail on an unwritable --output before reading weights or evaluating.
    if let Some(path) = &args.output {
        if let Err(e) = cnnc_runtime::output::check_target(path) {
            return Ok(fail(e));
        }
        let inputs = args.input.iter().chain([&args.weights, &args.file]);
        if let Some(same) = cnnc_runtime::output::same_file_as(path, inputs) {
            return Ok(fail(format!(
                "`--output {}` is the input `{}`; write the outputs to another file",
                path.display(),
                same.display()
            )));
        }
    }
    let index = args
        .index
        .as_deref()
        .map(IndexRange::parse)
        .transpose()
        .map_err(|e| UsageError(e.0))?;
    let normalize = match (&args.mean, &args.std) {
        (Some(m), Some(s)) => Some((parse_floats(m, "mean")?, parse_floats(s, "std")?)),
        _ => None,
    };
    let options = InputOptions {
        image: ImageOptions {
            resize: args.resize,
            normalize,
            no_normalize: args.no_normalize,
        },
        index,
        pad: args.pad,
    };
    let labels = match &args.labels {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(
                text.lines()
                    .map(|l| l.trim().to_string())
                    .collect::<Vec<_>>(),
            ),
            Err(e) => return Ok(fail(format!("cannot read `{}`: {e}", path.display()))),
        },
        None => None,
    };
    let weights = match cnnc_runtime::weights::WeightFile::load(&args.weights) {
        Ok(w) => w,
        Err(e) => return Ok(fail(e)),
    };
    match weights.check_finite(args.strict_weights) {
        Ok(None) => {}
        Ok(Some(warning)) => eprintln!("warning: `{}`: {warning}", args.weights.display()),
        Err(e) => return Ok(fail(format!("`{}`: {e}", args.weights.display()))),
    }
    let bound = match cnnc::weights::bind(&graph, &weights, &compilation.sources) {
        Ok(b) => b,
        Err(e) => return Ok(fail(format!("`{}`: {e}", args.weights.display()))),
    };
    let dims = graph.input_shape().dims();
    let chw = match dims.as_slice() {
        [c, h, w] => [*c as usize, *h as usize, *w as usize],
        _ => return Ok(fail("cnnc run takes models with [C, H, W] inputs")),
    };
    let input = match cnnc_runtime::input::load(&args.input, chw, &options) {
        Ok(t) => t,
        Err(e) => return Ok(fail(e)),
    };
    let targets = match &args.targets {
        Some(path) => match cnnc_runtime::input::idx_labels(path) {
            Ok(t) => Some(t),
            Err(e) => return Ok(fail(e)),
        },
        None => None,
    };
    let n = input.shape[0];
    let per = chw.iter().product::<usize>();
    let mut outputs: Vec<f64> = Vec::new();
    for start in (0..n).step_by(args.batch as usize) {
        let end = (start + args.batch as usize).min(n);
        match cnnc::eval::evaluate(
            &graph,
            &bound,
            end - start,
            &input.data[start * per..end * per],
        ) {
            Ok(b) => outputs.extend(b.data),
            Err(e) => return Ok(fail(format!("evaluation failed: {e}"))),
        }
    }
    let out_dims = graph.output_shape().dims();
    let out_per = graph.output_shape().numel() as usize;
    if let Some(path) = &args.output {
        let mut shape = vec![n];
        shape.extend(out_dims.iter().map(|&d| d as usize));
        let tensor = cnnc_runtime::Tensor::new(shape, outputs.iter().map(|&v| v as f32).collect())
            .map_err(|e| UsageError(e.0))?;
        if let Err(e) = cnnc_runtime::output::write_npy(path, &tensor) {
            return Ok(fail(e));
        }
    }
    if out_dims.len() != 1 {
        println!(
            "{n} outputs of shape {} (no class table for feature maps)",
            graph.output_shape()
        );
        return Ok(ExitCode::SUCCESS);
    }
    // A model that ends in softmax already gives probabilities.
    let scores = match graph.nodes[graph.output].op {
        Op::Softmax => Scores::Probabilities,
        Op::LogSoftmax => Scores::LogProbabilities,
        _ => Scores::Logits,
    };
    let offset = options.index.map_or(0, |r| r.start);
    let targets = match &targets {
        Some(t) if t.len() < offset + n => {
            return Ok(fail(format!(
                "the label file has {} labels, fewer than the {} inputs",
                t.len(),
                offset + n
            )));
        }
        Some(t) => Some(&t[offset..offset + n]),
        None => None,
    };
    let outputs: Vec<f32> = outputs.iter().map(|&v| v as f32).collect();
    let report = Report {
        classes: out_per,
        scores,
        labels: labels.as_deref(),
        targets,
        topk: args.topk,
        show: args.show,
    };
    print!("{}", cnnc_runtime::output::report(&outputs, n, &report));
    if let Some(path) = &args.output {
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn train(args: &cnnc::train::run::TrainArgs) -> Result<ExitCode, UsageError> {
    let compilation = load(&args.file, &[])?;
    let graph = match one_model(&compilation, &args.file, None)? {
        Ok(g) => g,
        Err(code) => return Ok(code),
    };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match cnnc::train::run::train(graph, args, &repo) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Ok(fail(e)),
    }
}

fn init(
    file: &Path,
    output: &Path,
    seed: u64,
    scheme: InitScheme,
    set: &[String],
    model: Option<&str>,
) -> Result<ExitCode, UsageError> {
    let compilation = load(file, set)?;
    let graph = match one_model(&compilation, file, model)? {
        Ok(g) => g,
        Err(code) => return Ok(code),
    };
    if let Err(e) = cnnc_runtime::output::check_target(output) {
        return Ok(fail(e));
    }
    if cnnc_runtime::output::same_file_as(output, [&file.to_path_buf()]).is_some() {
        return Ok(fail(format!(
            "`--output {}` is the model file; write the weights to another file",
            output.display()
        )));
    }
    let weights = match cnnc::weights::init(&graph, scheme, seed) {
        Ok(w) => w,
        Err(e) => return Ok(fail(e)),
    };
    let bytes = match weights.to_bytes() {
        Ok(b) => b,
        Err(e) => return Ok(fail(e)),
    };
    if let Err(e) = cnnc_runtime::output::write_atomic(output, &bytes) {
        return Ok(fail(e));
    }
    println!(
        "wrote {} ({} tensors, {} params)",
        output.display(),
        weights.tensors.len(),
        summary::grouped(graph.total_params())
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks `-o` of `emit` and `graph` before any work: a bad path is a usage
/// error (exit 2); the model file itself is refused with exit 1.
fn refuse_output(output: Option<&Path>, file: &Path) -> Result<Option<ExitCode>, UsageError> {
    let Some(path) = output else {
        return Ok(None);
    };
    cnnc_runtime::output::check_target(path).map_err(|e| UsageError(e.0))?;
    if cnnc_runtime::output::same_file_as(path, [&file.to_path_buf()]).is_some() {
        return Ok(Some(fail(format!(
            "`--output {}` is the model file; write to another file",
            path.display()
        ))));
    }
    Ok(None)
}

fn emit(
    file: &Path,
    stage: cnnc::emit::Stage,
    output: Option<&Path>,
    set: &[String],
    model: Option<&str>,
    stable: bool,
) -> Result<ExitCode, UsageError> {
    use cnnc::emit::Stage;
    if let Some(code) = refuse_output(output, file)? {
        return Ok(code);
    }
    let compilation = load(file, set)?;
    let text = if stage == Stage::Ast {
        if compilation.has_errors() {
            diag::emit_to_stderr(&compilation.sources, &compilation.diagnostics);
            return Ok(ExitCode::from(1));
        }
        let source = std::fs::read_to_string(file).map_err(|e| UsageError(e.to_string()))?;
        let (parsed, _) = cnnc::syntax::parse(cnnc::source::FileId(0), &source);
        cnnc::emit::ast(&parsed)
    } else {
        let graph = match one_model(&compilation, file, model)? {
            Ok(g) => g,
            Err(code) => return Ok(code),
        };
        let mut sources = compilation.sources;
        if stable {
            sources.make_names_relative_to(&cnnc::model_dir(file));
        }
        match cnnc::emit::stage_text(&graph, &sources, stage) {
            Ok(t) => t,
            Err(e) => return Ok(fail(e)),
        }
    };
    Ok(write_text(output, &text))
}

/// `text` to `output` (a temporary file renamed over it) or to standard output.
fn write_text(output: Option<&Path>, text: &str) -> ExitCode {
    match output {
        Some(path) => match cnnc_runtime::output::write_atomic(path, text.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        None => {
            print!("{text}");
            ExitCode::SUCCESS
        }
    }
}

/// `cnnc graph`: the picture, to a file (atomically) or standard output.
fn draw(
    file: &Path,
    output: Option<&Path>,
    format: cnnc::graph::Format,
    options: cnnc::graph::Options,
    set: &[String],
    model: Option<&str>,
) -> Result<ExitCode, UsageError> {
    if let Some(code) = refuse_output(output, file)? {
        return Ok(code);
    }
    let compilation = load(file, set)?;
    let graph = match one_model(&compilation, file, model)? {
        Ok(g) => g,
        Err(code) => return Ok(code),
    };
    let text = match cnnc::graph::render(&graph, options, format) {
        Ok(t) => t,
        Err(e) => return Ok(fail(e)),
    };
    Ok(write_text(output, &text))
}

fn build(
    file: &Path,
    output: Option<&Path>,
    set: &[String],
    model: Option<&str>,
) -> Result<ExitCode, UsageError> {
    let compilation = load(file, set)?;
    let graph = match one_model(&compilation, file, model)? {
        Ok(g) => g,
        Err(code) => return Ok(code),
    };
    let (_, program, plan) = match cnnc::plan::compile(&graph, &compilation.sources) {
        Ok(x) => x,
        Err(e) => return Ok(fail(format!("internal error: {e}"))),
    };
    let source = match cnnc::cuda::print(&program) {
        Ok(s) => s,
        Err(e) => return Ok(fail(format!("internal error: {e}"))),
    };
    let out_dir = output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("build").join(cnnc::build::crate_name(&plan.model)));
    // The runtime's sources and compiled dependencies live in the user's
    // cache, shared by every build of this cnnc version (cache.rs).
    let cache = match cnnc::cache::cache_dir() {
        Ok(c) => c,
        Err(e) => return Ok(fail(e)),
    };
    let runtime = match cnnc::cache::runtime_crate(&cache) {
        Ok(r) => r,
        Err(e) => return Ok(fail(e)),
    };
    let opts = cnnc::build::BuildOptions {
        out_dir,
        runtime,
        lockfile: Some(cnnc::cache::LOCK_FILE),
        nvcc: cnnc::build::find_nvcc(),
        target_dir: cnnc::cache::target_dir(&cache),
        cubin_cache: Some(cache.join("cubins")),
    };
    let mut log = |m: &str| eprintln!("  {m}");
    match cnnc::build::build(&plan, &source, &opts, &mut log) {
        Ok(path) => {
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(fail(e)),
    }
}
