//! The command line of a binary built by `cnnc build`: load PyTorch weights,
//! read inputs, run on the GPU (or the CPU), print classes or write outputs,
//! or benchmark. The generated driver supplies the plan and the kernels and
//! calls [`main`].

use crate::cuda::{CudaExecutor, KernelImages};
use crate::input::{ImageOptions, IndexRange, InputOptions};
use crate::output::{report, Report, Scores};
use crate::plan::{Ending, Plan};
use crate::{Error, Result};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The GPU if one is usable, otherwise the CPU (and say so).
    Auto,
    Cuda,
    Cpu,
}

#[derive(Parser, Debug)]
#[command(about = "Runs a model compiled by cnnc", long_about = None)]
pub struct Args {
    /// PyTorch state_dict saved with safetensors.torch.save_file.
    #[arg(long)]
    pub weights: PathBuf,
    /// .npy arrays, PNG/JPEG images, or an MNIST IDX image file (not needed with --bench).
    #[arg(long, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Write the outputs as a float32 .npy file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Refuse weights that hold NaN or infinity (by default a warning).
    #[arg(long)]
    pub strict_weights: bool,
    #[arg(long, default_value_t = 5)]
    pub topk: usize,
    /// Class names, one per line.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// True labels (MNIST IDX label file): prints the accuracy.
    #[arg(long)]
    pub targets: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Largest batch run at once (memory is planned for it).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub batch: u64,
    /// Time ITERS forward passes at --batch after warm-up and print latency percentiles.
    #[arg(long, value_name = "ITERS")]
    pub bench: Option<usize>,
    /// With --bench: also time every kernel on its own and print where the time goes.
    #[arg(long, requires = "bench")]
    pub profile: bool,
    /// Samples to take from .npy and IDX inputs: `7` or `0..100`.
    #[arg(long)]
    pub index: Option<String>,
    /// Zero padding around IDX digits.
    #[arg(long, default_value_t = 0)]
    pub pad: usize,
    /// Images: resize the shorter side to this before the centre crop.
    #[arg(long)]
    pub resize: Option<u32>,
    /// Images: keep values in [0, 1].
    #[arg(long)]
    pub no_normalize: bool,
    /// Print at most this many per-input lines.
    #[arg(long, default_value_t = 20)]
    pub show: usize,
}

enum Executor {
    Cuda(Box<CudaExecutor>),
    Cpu(Box<crate::cpu::CpuExecutor>),
}

impl Executor {
    fn run(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        match self {
            Executor::Cuda(e) => e.run(input, batch),
            Executor::Cpu(e) => e.run(input, batch).map(|o| o.to_vec()),
        }
    }
}

/// Entry point of a built binary.
pub fn main(plan: Plan, images: KernelImages) -> ExitCode {
    let args = Args::parse();
    // The main thread joins rayon's pool as worker 0, so the CPU executor's
    // parallel steps start on it directly instead of handing each one over to
    // a pool thread and sleeping until it is done (RAYON_NUM_THREADS sets the
    // size, the machine's cores by default). If this fails, rayon's default
    // pool still works.
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
    match run(&plan, &images, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

/// Entry point of a built binary whose driver embeds its plan as JSON
/// (`plan.json`, written by `cnnc build` with the runtime it links, so it
/// parses unless the crate was edited by hand).
pub fn main_with_plan_json(plan_json: &str, images: KernelImages) -> ExitCode {
    match Plan::from_json(plan_json) {
        Ok(plan) => main(plan, images),
        Err(Error(message)) => {
            eprintln!("error: {message}\nhelp: rebuild the binary with `cnnc build`");
            ExitCode::from(1)
        }
    }
}

fn run(plan: &Plan, images: &KernelImages, args: &Args) -> Result<()> {
    if let Some(path) = &args.output {
        crate::output::check_target(path)?;
    }
    if args.input.is_empty() && args.bench.is_none() {
        return Err(Error(
            "give --input (or --bench ITERS to time the model)".to_string(),
        ));
    }
    // The file's tensors move into the prepared ones (or are freed) here.
    let weights = crate::weights::WeightFile::load(&args.weights)?;
    let where_ = args.weights.display();
    match weights.check_finite(args.strict_weights) {
        Ok(None) => {}
        Ok(Some(warning)) => eprintln!("warning: `{where_}`: {warning}"),
        Err(Error(e)) => return Err(Error(format!("`{where_}`: {e}"))),
    }
    let prepared = crate::prepare::prepare_owned(plan, weights)?;
    let max_batch = args.batch as usize;
    let mut executor = match args.device {
        Device::Cuda => Executor::Cuda(Box::new(CudaExecutor::new(
            plan, &prepared, images, max_batch,
        )?)),
        Device::Cpu => Executor::Cpu(Box::new(crate::cpu::CpuExecutor::new(
            plan.clone(),
            prepared,
            max_batch,
        )?)),
        Device::Auto => match CudaExecutor::new(plan, &prepared, images, max_batch) {
            Ok(e) => Executor::Cuda(Box::new(e)),
            Err(Error(why)) => {
                eprintln!("note: running on the CPU: {why}");
                Executor::Cpu(Box::new(crate::cpu::CpuExecutor::new(
                    plan.clone(),
                    prepared,
                    max_batch,
                )?))
            }
        },
    };
    if let Executor::Cuda(e) = &executor {
        eprintln!(
            "device: {} (kernels from {})",
            e.device_name, e.kernels_from
        );
    }
    if let Some(iters) = args.bench {
        bench(&mut executor, plan, max_batch, iters.max(1))?;
        if args.profile {
            profile(&mut executor, plan, max_batch, iters.max(1))?;
        }
        return Ok(());
    }
    let chw = match plan.input_shape.as_slice() {
        [c, h, w] => [*c, *h, *w],
        other => {
            return Err(Error(format!(
                "this model takes flat inputs {other:?}; files are read as [C, H, W] images, so only --bench runs it"
            )))
        }
    };
    let index = args.index.as_deref().map(IndexRange::parse).transpose()?;
    let options = InputOptions {
        image: ImageOptions {
            resize: args.resize,
            normalize: None,
            no_normalize: args.no_normalize,
        },
        index,
        pad: args.pad,
    };
    let input = crate::input::load(&args.input, chw, &options)?;
    let n = input.shape[0];
    let per = chw.iter().product::<usize>();
    let mut outputs = Vec::with_capacity(n * plan.output.numel());
    for start in (0..n).step_by(max_batch) {
        let end = (start + max_batch).min(n);
        outputs.extend(executor.run(&input.data[start * per..end * per], end - start)?);
    }
    if let Some(path) = &args.output {
        let mut shape = vec![n];
        shape.extend(&plan.output_shape);
        crate::output::write_npy(path, &crate::Tensor::new(shape, outputs.clone())?)?;
    }
    if plan.output_shape.len() == 1 {
        let labels = match &args.labels {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| Error(format!("cannot read `{}`: {e}", p.display())))?
                    .lines()
                    .map(|l| l.trim().to_string())
                    .collect::<Vec<_>>(),
            ),
            None => None,
        };
        let targets = match &args.targets {
            Some(p) => {
                let all = crate::input::idx_labels(p)?;
                let offset = index.map_or(0, |r| r.start);
                Some(
                    all.get(offset..offset + n)
                        .ok_or_else(|| {
                            Error(format!("`{}` has fewer labels than inputs", p.display()))
                        })?
                        .to_vec(),
                )
            }
            None => None,
        };
        let scores = match plan.ends_in {
            Ending::Logits => Scores::Logits,
            Ending::Probabilities => Scores::Probabilities,
            Ending::LogProbabilities => Scores::LogProbabilities,
        };
        let r = Report {
            classes: plan.output_shape[0],
            scores,
            labels: labels.as_deref(),
            targets: targets.as_deref(),
            topk: args.topk,
            show: args.show,
        };
        print!("{}", report(&outputs, n, &r));
    } else {
        println!("{n} outputs of shape {:?}", plan.output_shape);
    }
    if let Some(path) = &args.output {
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bench(executor: &mut Executor, plan: &Plan, batch: usize, iters: usize) -> Result<()> {
    let input = vec![0.5f32; batch * plan.input.numel()];
    // Warm-up: the first run loads kernels and captures the CUDA graph.
    for _ in 0..3.min(iters) {
        executor.run(&input, batch)?;
    }
    let mut ms: Vec<f64> = match executor {
        Executor::Cuda(e) => e.time(batch, iters)?,
        Executor::Cpu(_) => {
            let mut t = Vec::with_capacity(iters);
            for _ in 0..iters {
                let start = Instant::now();
                executor.run(&input, batch)?;
                t.push(start.elapsed().as_secs_f64() * 1e3);
            }
            t
        }
    };
    ms.sort_by(f64::total_cmp);
    let p50 = percentile(&ms, 0.5);
    println!(
        "{}: batch {batch}, {iters} iterations on {}: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, min {:.3} ms, {:.1} images/s (at p50)",
        plan.model,
        match executor {
            Executor::Cuda(e) => e.device_name.clone(),
            Executor::Cpu(_) => "the CPU".to_string(),
        },
        p50,
        percentile(&ms, 0.9),
        percentile(&ms, 0.99),
        ms[0],
        batch as f64 / (p50 / 1e3)
    );
    Ok(())
}

/// Times each step (each kernel on its own: launched one by one on the GPU,
/// so a launch's overhead is in its time, unlike the graph replay `bench`
/// times) and prints the slowest, with what they compute.
fn profile(executor: &mut Executor, plan: &Plan, batch: usize, iters: usize) -> Result<()> {
    let ms: Vec<f64> = match executor {
        Executor::Cuda(e) => e.profile(batch, iters)?,
        Executor::Cpu(e) => {
            let input = vec![0.5f32; batch * plan.input.numel()];
            e.profile_steps(true);
            for _ in 0..iters {
                e.run(&input, batch)?;
            }
            let total = e.step_ms().map(<[f64]>::to_vec).unwrap_or_default();
            e.profile_steps(false);
            total.iter().map(|t| t / iters as f64).collect()
        }
    };
    print!("{}", profile_table(plan, batch, &ms));
    Ok(())
}

/// The profile as text: steps by decreasing time (at most 20), then the total.
pub fn profile_table(plan: &Plan, batch: usize, ms: &[f64]) -> String {
    use std::fmt::Write;
    let total: f64 = ms.iter().sum();
    let mut order: Vec<usize> = (0..ms.len().min(plan.steps.len())).collect();
    order.sort_by(|&a, &b| ms[b].total_cmp(&ms[a]).then(a.cmp(&b)));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: time per step at batch {batch} (each step on its own){}",
        plan.model,
        if ms.len() > 20 {
            ", the 20 slowest"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "{:>4}  {:>9}  {:>5}  {:<40}  layers",
        "step", "ms", "%", "kernel"
    );
    for &i in order.iter().take(20) {
        let step = &plan.steps[i];
        let launch = step.launch(batch);
        let layers = step.layers.first().map(String::as_str).unwrap_or("");
        let more = match step.layers.len() {
            0 | 1 => String::new(),
            n => format!(" (+{} fused)", n - 1),
        };
        let _ = writeln!(
            out,
            "{i:>4}  {:>9.4}  {:>5.1}  {:<40}  {layers}{more}",
            ms[i],
            100.0 * ms[i] / total.max(f64::MIN_POSITIVE),
            launch.kernel,
        );
    }
    let _ = writeln!(out, "total {total:.4} ms over {} steps", ms.len());
    out
}
