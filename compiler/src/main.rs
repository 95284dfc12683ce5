//! The `cnnc` command line: parses arguments, calls the library, prints results.
//!
//! Exit codes: 0 fine, 1 the model has errors, 2 bad command line.

use clap::{Parser, Subcommand};
use cnnc::front::diag;
use cnnc::ir::weights::InitScheme;
use cnnc::ir::{Graph, Op};
use cnnc::tools::summary;
use cnnc::{compile_file_with, parse_settings, unknown_settings, Compilation, UsageError};
use cnnc_runtime::output::Scores;
use cnnc_runtime::run::{ModelIo, RunOptions};
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
  nvcc          compiles each distinct kernel for sm_80 and sm_90, one nvcc
                per core: `CNNC_NVCC`, then `PATH`, then
                /usr/local/cuda/bin/nvcc; without it the CUDA source is
                embedded and compiled with NVRTC when the binary first runs on
                a GPU
  the cache     the runtime crate (built into cnnc, unpacked on first use),
                the compiled dependencies and the cubins (by the digest of
                each kernel's code), shared by every build of this cnnc
                version: $CNNC_CACHE_DIR/<version>, else
                $XDG_CACHE_HOME/cnnc/<version>, else ~/.cache/cnnc/<version>.
                The first build compiles the dependencies (minutes); later
                builds take seconds, and compile only kernels not built before.

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
        /// Override a model parameter, e.g. `--set num_classes=10` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Also look for included files in DIR, and allow reading them from it
        /// (by default only the model's folder and the folders below it).
        #[arg(short = 'I', long = "include-dir", value_name = "DIR")]
        include: Vec<PathBuf>,
        /// Fail when a model's activations (the arena a built binary plans, at
        /// --batch) exceed this size: bytes, or with a unit, e.g. 512MiB, 2GB.
        #[arg(long, value_name = "SIZE", value_parser = cnnc::tools::summary::parse_size)]
        memory_budget: Option<u64>,
        /// Batch size for --memory-budget.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        batch: i64,
    },
    /// Per-layer table: state_dict name, op, output shape, params, MACs, activation memory.
    Summary {
        file: PathBuf,
        /// Override a model parameter, e.g. `--set num_classes=10` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Also look for included files in DIR, and allow reading them from it
        /// (by default only the model's folder and the folders below it).
        #[arg(short = 'I', long = "include-dir", value_name = "DIR")]
        include: Vec<PathBuf>,
        /// Batch size for activation memory.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        batch: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Which model, when the file declares several.
        #[arg(long)]
        model: Option<String>,
        /// The GPU build to describe (`cnnc build --precision`): what its
        /// convolutions compute in and, for bf16 and fp16, its arena of
        /// 16-bit activations (half the f32 one the CPU path uses).
        #[arg(long, value_name = "P", default_value = "tf32", value_parser = parse_precision)]
        precision: cnnc::back::kernel_ir::Precision,
    },
    /// Print a stage of the compilation: ast, ir, fused (fusion report), kernels, cuda, driver, plan or roofline.
    Emit {
        file: PathBuf,
        /// What to print: the parse tree, the graph IR, the fusion report, the
        /// kernel IR, the CUDA C source, the Rust driver `cnnc build` writes,
        /// its execution plan, or each kernel's roofline bound on an H100/H200.
        #[arg(long, value_enum)]
        stage: cnnc::tools::emit::Stage,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Override a model parameter, e.g. `--set num_classes=10` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Also look for included files in DIR, and allow reading them from it
        /// (by default only the model's folder and the folders below it).
        #[arg(short = 'I', long = "include-dir", value_name = "DIR")]
        include: Vec<PathBuf>,
        /// Which model, when the file declares several.
        #[arg(long)]
        model: Option<String>,
        /// Name files relative to the model's folder, so the output is the
        /// same on every machine (for snapshot tests; see docs/snapshot-testing.md).
        #[arg(long)]
        stable: bool,
        /// What convolutions and linear layers compute in on the GPU: tf32
        /// (the default, as PyTorch's convolutions and TensorRT: tensor cores,
        /// operands rounded to TF32's 10-bit mantissa, FP32 sums), tf32x3
        /// (FP32-level accuracy on tensor cores: three products per
        /// multiply), bf16 or fp16 (weights and every activation stored in
        /// 16 bits on the GPU: half the memory and traffic; tensor cores
        /// with FP32 sums, FP32 arithmetic inside each kernel), or fp32
        /// (strict FP32 on CUDA cores).
        /// The CPU path always computes in FP32.
        #[arg(long, value_name = "P", default_value = "tf32", value_parser = parse_precision)]
        precision: cnnc::back::kernel_ir::Precision,
    },
    /// Draw the model (one box per layer, repeated blocks as `× N`) as SVG or DOT.
    Graph {
        file: PathBuf,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// SVG to look at, or Graphviz DOT to lay out with another tool.
        #[arg(long, value_enum, default_value_t = cnnc::tools::draw::Format::Svg)]
        format: cnnc::tools::draw::Format,
        /// Shade the layers that the fusion passes merge into one kernel.
        #[arg(long)]
        fused: bool,
        /// Draw every instance of a repeated block instead of one `× N` box.
        #[arg(long)]
        expand: bool,
        /// Override a model parameter, e.g. `--set num_classes=10` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Also look for included files in DIR, and allow reading them from it
        /// (by default only the model's folder and the folders below it).
        #[arg(short = 'I', long = "include-dir", value_name = "DIR")]
        include: Vec<PathBuf>,
        /// Which model, when the file declares several.
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
        /// Override a model parameter, e.g. `--set num_classes=10` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Also look for included files in DIR, and allow reading them from it
        /// (by default only the model's folder and the folders below it).
        #[arg(short = 'I', long = "include-dir", value_name = "DIR")]
        include: Vec<PathBuf>,
        /// Which model, when the file declares several.
        #[arg(long)]
        model: Option<String>,
        /// What convolutions and linear layers compute in on the GPU: tf32
        /// (the default, as PyTorch's convolutions and TensorRT: tensor cores,
        /// operands rounded to TF32's 10-bit mantissa, FP32 sums), tf32x3
        /// (FP32-level accuracy on tensor cores: three products per
        /// multiply), bf16 or fp16 (weights and every activation stored in
        /// 16 bits on the GPU: half the memory and traffic; tensor cores
        /// with FP32 sums, FP32 arithmetic inside each kernel), or fp32
        /// (strict FP32 on CUDA cores).
        /// The CPU path always computes in FP32.
        #[arg(long, value_name = "P", default_value = "tf32", value_parser = parse_precision)]
        precision: cnnc::back::kernel_ir::Precision,
    },
    /// Run a model on inputs with the reference evaluator (f64, PyTorch eval() semantics).
    Run(Box<RunArgs>),
    /// Train a model on image folders, CIFAR or MNIST IDX data (CPU, f32): Adam/SGD, augmentation, checkpoints, loss plot.
    Train(Box<cnnc::tools::train::run::TrainArgs>),
    /// Write freshly initialised weights for a model as safetensors.
    Init {
        file: PathBuf,
        /// Where to write the weights.
        #[arg(short, long)]
        output: PathBuf,
        /// Seed of the random draws: a seed gives the same file on every platform.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// PyTorch's default initialisation of each layer, or torchvision's kaiming recipe.
        #[arg(long, value_enum, default_value_t = InitScheme::Pytorch)]
        scheme: InitScheme,
        /// Override a model parameter, e.g. `--set num_classes=10` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Also look for included files in DIR, and allow reading them from it
        /// (by default only the model's folder and the folders below it).
        #[arg(short = 'I', long = "include-dir", value_name = "DIR")]
        include: Vec<PathBuf>,
        /// Which model, when the file declares several.
        #[arg(long)]
        model: Option<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    file: PathBuf,
    /// What to run on and what to print: the same flags as a binary built by `cnnc build`.
    #[command(flatten)]
    run: RunOptions,
    /// Override a model parameter, e.g. `--set num_classes=10` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Which model, when the file declares several.
    #[arg(long)]
    model: Option<String>,
    /// Also look for included files in DIR, and allow reading them from it
    /// (by default only the model's folder and the folders below it).
    #[arg(short = 'I', long = "include-dir", value_name = "DIR")]
    include: Vec<PathBuf>,
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check {
            files,
            set,
            include,
            memory_budget,
            batch,
        } => check(&files, &set, &include, memory_budget.map(|b| (b, batch))),
        Command::Summary {
            file,
            set,
            include,
            batch,
            json,
            model,
            precision,
        } => summarize(
            &file,
            &set,
            &include,
            (batch, precision),
            json,
            model.as_deref(),
        ),
        Command::Run(args) => run(&args),
        Command::Train(args) => train(&args),
        Command::Build {
            file,
            output,
            set,
            include,
            model,
            precision,
        } => build(
            &file,
            output.as_deref(),
            (&set, &include),
            model.as_deref(),
            precision,
        ),
        Command::Emit {
            file,
            stage,
            output,
            set,
            include,
            model,
            stable,
            precision,
        } => emit(
            &file,
            stage,
            output.as_deref(),
            (&set, &include),
            model.as_deref(),
            (stable, precision),
        ),
        Command::Graph {
            file,
            output,
            format,
            fused,
            expand,
            set,
            include,
            model,
        } => draw(
            &file,
            output.as_deref(),
            format,
            cnnc::tools::draw::Options { fused, expand },
            (&set, &include),
            model.as_deref(),
        ),
        Command::Init {
            file,
            output,
            seed,
            scheme,
            set,
            include,
            model,
        } => init(
            &file,
            &output,
            seed,
            scheme,
            (&set, &include),
            model.as_deref(),
        ),
    };
    match result {
        Ok(code) => code,
        Err(UsageError(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn load(file: &Path, set: &[String], include: &[PathBuf]) -> Result<Compilation, UsageError> {
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
    compile_file_with(file, &overrides, None, include)
}

fn check(
    files: &[PathBuf],
    set: &[String],
    include: &[PathBuf],
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
        let compilation = compile_file_with(file, &overrides, None, include)?;
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
    include: &[PathBuf],
    (batch, precision): (i64, cnnc::back::kernel_ir::Precision),
    json: bool,
    model: Option<&str>,
) -> Result<ExitCode, UsageError> {
    let compilation = load(file, set, include)?;
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
            print_out(&format!("{text}\n"));
        } else {
            print_out(&summary::table_for(
                graph,
                &compilation.sources,
                batch,
                precision,
            ));
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

fn run(args: &RunArgs) -> Result<ExitCode, UsageError> {
    let options = &args.run;
    // clap cannot require --input here only (a built binary's --bench runs without it).
    if options.input.is_empty() {
        return Err(UsageError(
            "the following required argument was not provided: `--input <INPUT>...`".to_string(),
        ));
    }
    let compilation = load(&args.file, &args.set, &args.include)?;
    let graph = match one_model(&compilation, &args.file, args.model.as_deref())? {
        Ok(g) => g,
        Err(code) => return Ok(code),
    };
    // Fail on an unwritable --output before reading weights or evaluating.
    if let Err(e) = options.check_output(&[&args.file]) {
        return Ok(fail(e));
    }
    let weights = match options.load_weights() {
        Ok(w) => w,
        Err(e) => return Ok(fail(e)),
    };
    let bound = match cnnc::ir::weights::bind(&graph, &weights, &compilation.sources) {
        Ok(b) => b,
        Err(e) => return Ok(fail(format!("`{}`: {e}", options.weights.display()))),
    };
    drop(weights);
    let dims = graph.input_shape().dims();
    let chw = match dims.as_slice() {
        [c, h, w] => [*c as usize, *h as usize, *w as usize],
        _ => return Ok(fail("cnnc run takes models with [C, H, W] inputs")),
    };
    // A model that ends in softmax already gives probabilities.
    let scores = match graph.nodes[graph.output].op {
        Op::Softmax => Scores::Probabilities,
        Op::LogSoftmax => Scores::LogProbabilities,
        _ => Scores::Logits,
    };
    let model = ModelIo {
        chw,
        output_shape: graph
            .output_shape()
            .dims()
            .iter()
            .map(|&d| d as usize)
            .collect(),
        scores,
    };
    let mut forward = |input: &[f32], n: usize| {
        cnnc::tools::eval::evaluate(&graph, &bound, n, input)
            .map(|out| out.data.iter().map(|&v| v as f32).collect())
            .map_err(|e| cnnc_runtime::Error(format!("evaluation failed: {e}")))
    };
    match cnnc_runtime::run::run_inputs(options, &model, &mut forward) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Ok(fail(e)),
    }
}

fn train(args: &cnnc::tools::train::run::TrainArgs) -> Result<ExitCode, UsageError> {
    let compilation = load(&args.file, &args.set, &[])?;
    let graph = match one_model(&compilation, &args.file, None)? {
        Ok(g) => g,
        Err(code) => return Ok(code),
    };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match cnnc::tools::train::run::train(graph, args, &repo) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Ok(fail(e)),
    }
}

fn init(
    file: &Path,
    output: &Path,
    seed: u64,
    scheme: InitScheme,
    (set, include): (&[String], &[PathBuf]),
    model: Option<&str>,
) -> Result<ExitCode, UsageError> {
    let compilation = load(file, set, include)?;
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
    let weights = match cnnc::ir::weights::init(&graph, scheme, seed) {
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

/// `--precision`: one of the precisions, by name.
fn parse_precision(text: &str) -> Result<cnnc::back::kernel_ir::Precision, String> {
    use cnnc::back::kernel_ir::Precision;
    let names = Precision::ALL.map(|p| p.name()).join(", ");
    match Precision::parse(text) {
        Some(p) => Ok(p),
        None => Err(format!("expected one of {names}")),
    }
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
    stage: cnnc::tools::emit::Stage,
    output: Option<&Path>,
    (set, include): (&[String], &[PathBuf]),
    model: Option<&str>,
    (stable, precision): (bool, cnnc::back::kernel_ir::Precision),
) -> Result<ExitCode, UsageError> {
    use cnnc::tools::emit::Stage;
    if let Some(code) = refuse_output(output, file)? {
        return Ok(code);
    }
    let compilation = load(file, set, include)?;
    let text = if stage == Stage::Ast {
        if compilation.has_errors() {
            diag::emit_to_stderr(&compilation.sources, &compilation.diagnostics);
            return Ok(ExitCode::from(1));
        }
        let source = std::fs::read_to_string(file).map_err(|e| UsageError(e.to_string()))?;
        let (parsed, _) = cnnc::front::syntax::parse(cnnc::front::source::FileId(0), &source);
        cnnc::tools::emit::ast(&parsed)
    } else {
        let graph = match one_model(&compilation, file, model)? {
            Ok(g) => g,
            Err(code) => return Ok(code),
        };
        let mut sources = compilation.sources;
        if stable {
            sources.make_names_relative_to(&cnnc::model_dir(file));
        }
        match cnnc::tools::emit::stage_text(&graph, &sources, stage, precision) {
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
        None => print_out(text),
    }
}

/// `text` to standard output. A reader that stops early (`| head`) closes
/// the pipe: that ends the output quietly, as for other command-line tools,
/// instead of a panic.
fn print_out(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(format!("cannot write to standard output: {e}")),
    }
}

/// `cnnc graph`: the picture, to a file (atomically) or standard output.
fn draw(
    file: &Path,
    output: Option<&Path>,
    format: cnnc::tools::draw::Format,
    options: cnnc::tools::draw::Options,
    (set, include): (&[String], &[PathBuf]),
    model: Option<&str>,
) -> Result<ExitCode, UsageError> {
    if let Some(code) = refuse_output(output, file)? {
        return Ok(code);
    }
    let compilation = load(file, set, include)?;
    let graph = match one_model(&compilation, file, model)? {
        Ok(g) => g,
        Err(code) => return Ok(code),
    };
    let text = match cnnc::tools::draw::render(&graph, options, format) {
        Ok(t) => t,
        Err(e) => return Ok(fail(e)),
    };
    Ok(write_text(output, &text))
}

fn build(
    file: &Path,
    output: Option<&Path>,
    (set, include): (&[String], &[PathBuf]),
    model: Option<&str>,
    precision: cnnc::back::kernel_ir::Precision,
) -> Result<ExitCode, UsageError> {
    let compilation = load(file, set, include)?;
    let graph = match one_model(&compilation, file, model)? {
        Ok(g) => g,
        Err(code) => return Ok(code),
    };
    let (_, program, plan) =
        match cnnc::back::plan::compile_with(&graph, &compilation.sources, precision) {
            Ok(x) => x,
            Err(e) => return Ok(fail(format!("internal error: {e}"))),
        };
    let kernels = match cnnc::back::build::KernelSources::new(&program) {
        Ok(s) => s,
        Err(e) => return Ok(fail(format!("internal error: {e}"))),
    };
    let out_dir = output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("build").join(cnnc::back::build::crate_name(&plan.model)));
    // The runtime's sources and compiled dependencies live in the user's
    // cache, shared by every build of this cnnc version (cache.rs).
    let cache = match cnnc::back::cache::cache_dir() {
        Ok(c) => c,
        Err(e) => return Ok(fail(e)),
    };
    let runtime = match cnnc::back::cache::runtime_crate(&cache) {
        Ok(r) => r,
        Err(e) => return Ok(fail(e)),
    };
    let opts = cnnc::back::build::BuildOptions {
        out_dir,
        runtime,
        lockfile: Some(cnnc::back::cache::LOCK_FILE),
        nvcc: cnnc::back::build::find_nvcc(),
        target_dir: cnnc::back::cache::target_dir(&cache),
        cubin_cache: Some(cache.join("cubins")),
    };
    let mut log = |m: &str| eprintln!("  {m}");
    log(&format!("GPU arithmetic: {}", program.precision_line()));
    match cnnc::back::build::build(&plan, &kernels, &opts, &mut log) {
        Ok(path) => {
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(fail(e)),
    }
}
