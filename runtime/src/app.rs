//! The command line of a binary built by `cnnc build`: load PyTorch weights,
//! read inputs, run on the GPU (or the CPU), print classes or write outputs,
//! or benchmark. The generated driver supplies the plan and the kernels and
//! calls [`main`].

use crate::cuda::{CudaExecutor, KernelImages};
use crate::output::Scores;
use crate::plan::{Ending, Plan, Precision};
use crate::run::{run_inputs, ModelIo, RunOptions};
use crate::{Error, Result};
use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The GPU if one is usable, otherwise the CPU (and say so).
    Auto,
    Cuda,
    Cpu,
}

#[derive(clap::Parser, Debug)]
#[command(about = "Runs a model compiled by cnnc", long_about = None)]
pub struct Args {
    /// What to run on and what to print: the same flags as `cnnc run`.
    #[command(flatten)]
    pub run: RunOptions,
    /// Where to run: the GPU, the CPU, or the GPU when one is usable.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Time ITERS forward passes at --batch after warm-up and print latency percentiles (no --input needed).
    #[arg(long, value_name = "ITERS")]
    pub bench: Option<usize>,
    /// With --bench: also time every kernel on its own and print where the time goes.
    #[arg(long, requires = "bench")]
    pub profile: bool,
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
    let args = parse_args(&plan);
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

/// The command line, with `--help` naming the model and what its GPU
/// kernels compute in.
fn parse_args(plan: &Plan) -> Args {
    let command = Args::command().after_help(format!(
        "Model {}: input {:?}, output {:?}.\nOn the GPU, {}.\nOn the CPU, everything computes in FP32.",
        plan.model,
        plan.input_shape,
        plan.output_shape,
        plan.precision.describe()
    ));
    Args::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit())
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
    let options = &args.run;
    options.check_output(&[])?;
    if options.input.is_empty() && args.bench.is_none() {
        return Err(Error(
            "give --input (or --bench ITERS to time the model)".to_string(),
        ));
    }
    // The file's tensors move into the prepared ones (or are freed) here.
    let weights = options.load_weights()?;
    let prepared = crate::prepare::prepare_owned(plan, weights)?;
    let max_batch = options.batch as usize;
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
    match &executor {
        Executor::Cuda(e) => eprintln!(
            "device: {} (kernels from {}; {})",
            e.device_name,
            e.kernels_from,
            plan.precision.name()
        ),
        Executor::Cpu(_) if plan.precision != Precision::Fp32 => eprintln!(
            "note: the CPU computes in FP32; {} applies on the GPU",
            plan.precision.name()
        ),
        Executor::Cpu(_) => {}
    }
    if let Some(iters) = args.bench {
        let p50 = bench(&mut executor, plan, max_batch, iters.max(1))?;
        if args.profile {
            profile(&mut executor, plan, max_batch, iters.max(1), p50)?;
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
    let model = ModelIo {
        chw,
        output_shape: plan.output_shape.clone(),
        scores: match plan.ends_in {
            Ending::Logits => Scores::Logits,
            Ending::Probabilities => Scores::Probabilities,
            Ending::LogProbabilities => Scores::LogProbabilities,
        },
    };
    run_inputs(options, &model, &mut |input, n| executor.run(input, n))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Prints latency percentiles of whole forward passes; returns the p50 in ms.
fn bench(executor: &mut Executor, plan: &Plan, batch: usize, iters: usize) -> Result<f64> {
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
        "{}: batch {batch}, {iters} iterations on {} ({}): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, min {:.3} ms, {:.1} images/s (at p50)",
        plan.model,
        match executor {
            Executor::Cuda(e) => e.device_name.clone(),
            Executor::Cpu(_) => "the CPU".to_string(),
        },
        match executor {
            Executor::Cuda(_) => plan.precision.name(),
            Executor::Cpu(_) => "fp32",
        },
        p50,
        percentile(&ms, 0.9),
        percentile(&ms, 0.99),
        ms[0],
        batch as f64 / (p50 / 1e3)
    );
    Ok(p50)
}

/// Times each step (each kernel on its own: launched one by one on the GPU,
/// so a launch's overhead is in its time, unlike the graph replay `bench`
/// times) and prints the slowest, with what they compute.
fn profile(
    executor: &mut Executor,
    plan: &Plan,
    batch: usize,
    iters: usize,
    p50: f64,
) -> Result<()> {
    let on_gpu = matches!(executor, Executor::Cuda(_));
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
    print!("{}", profile_note(ms.iter().sum(), p50, on_gpu));
    Ok(())
}

/// Why the steps of `--profile` add up to more than a whole pass of
/// `--bench`: they are timed differently, and a reader comparing the two
/// numbers should not have to guess.
pub fn profile_note(total: f64, p50: f64, on_gpu: bool) -> String {
    let how = if on_gpu {
        "each kernel was launched on its own with a timing event after it, while --bench replays the CUDA graph, which launches them back to back without those gaps"
    } else {
        "each step was timed on its own, with a clock reading after it, and its time is the mean over the iterations, while --bench reports the median of whole passes"
    };
    if total > p50 {
        format!(
            "note: the steps add up to {total:.4} ms, {:.2}× the p50 of {p50:.4} ms: {how}\n",
            total / p50.max(f64::MIN_POSITIVE)
        )
    } else {
        format!("note: the steps add up to {total:.4} ms against a p50 of {p50:.4} ms for whole passes\n")
    }
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

#[cfg(test)]
mod tests {
    use super::profile_note;

    #[test]
    fn the_profile_says_why_its_steps_add_up_to_more_than_the_p50() {
        let gpu = profile_note(2.0, 1.0, true);
        assert!(
            gpu.starts_with("note: the steps add up to 2.0000 ms, 2.00× the p50 of 1.0000 ms: "),
            "{gpu}"
        );
        assert!(gpu.contains("CUDA graph"), "{gpu}");
        let cpu = profile_note(1.5, 1.0, false);
        assert!(cpu.contains("mean over the iterations"), "{cpu}");
        let below = profile_note(0.9, 1.0, false);
        assert!(!below.contains('×'), "{below}");
    }
}
