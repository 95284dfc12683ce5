//! `cnnc train`: the training loop, its configuration, checkpoints and the
//! loss plot.

use super::data::{self, Fit, Loader, Split};
use super::net::{MemoryModel, Mode, Net, TrainMemory};
use super::optim::{
    clip_grad_norm, loss, smoothed_loss, Loss, OptimConfig, Optimizer, OptimizerKind, Schedule,
    ScheduleKind, ScheduleUnit,
};
use super::rng;
use super::transforms::Pipeline;
use crate::ir::{Graph, Op};
use cnnc_runtime::output::write_atomic;
use cnnc_runtime::weights::WeightFile;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Command-line options of `cnnc train` (each overrides the YAML config).
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    pub file: PathBuf,
    /// The data: an image folder (`DIR/<class>/<image>.png`), CIFAR-10/100 binary batches (a directory or a `.bin` file), or MNIST IDX (a directory or an image file) [default: the bundled 10,000 digits].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// An image folder to evaluate on (the same class folders as `--data`), instead of a held-out part of `--data`.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Override a model parameter, e.g. `--set num_classes=2` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Hyperparameters as YAML (keys as the long flags, e.g. `lr: 0.001`); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Passes over the training data [default: 10].
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Images per optimisation step [default: 256].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Learning rate [default: 0.0002].
    #[arg(long)]
    pub lr: Option<f64>,
    /// The optimiser, with torch.optim's update rule [default: adam].
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// SGD momentum [default: 0].
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Weight decay: L2, added to the gradient, for SGD and Adam; decoupled for AdamW (as torch.optim's weight_decay) [default: 0, AdamW 0.01].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Learning-rate schedule (its settings in the config's `schedule:`) [default: constant].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Label smoothing ε of the cross-entropy (F.cross_entropy's label_smoothing) [default: 0].
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Scale the gradients so their global L2 norm is at most this (torch's clip_grad_norm_).
    #[arg(long)]
    pub clip_grad_norm: Option<f64>,
    /// Loss (default: cross-entropy, or NLL for models that end in log_softmax).
    #[arg(long, value_enum)]
    pub loss: Option<Loss>,
    /// Seed of the initial weights, shuffling and dropout [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Images held out for evaluation when there is no separate evaluation set: the first N of an IDX or CIFAR file, N chosen by the seed in an image folder (default: 2000 of the bundled digits, else a fifth).
    #[arg(long)]
    pub holdout: Option<usize>,
    /// Zero padding around each digit (2 turns MNIST's 28×28 into LeNet's 32×32) [default: 0].
    #[arg(long)]
    pub pad: Option<usize>,
    /// Start from these weights (safetensors) instead of a fresh initialisation.
    #[arg(long, conflicts_with = "resume")]
    pub weights: Option<PathBuf>,
    /// Continue a run from its checkpoint (`<output>.ckpt`).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Where the trained weights go (a PyTorch state_dict as safetensors), rewritten after each epoch.
    #[arg(short, long, required_unless_present = "dry_run")]
    pub output: Option<PathBuf>,
    /// Print the training memory for the batch size (parameters, gradients, optimiser state, activations kept for the backward pass, scratch, input batches) and exit without training. A real run refuses, before training, a batch that needs more than the memory available (MemAvailable in /proc/meminfo, or the environment's CNNC_MEMORY_LIMIT, e.g. `2GiB`).
    #[arg(long)]
    pub dry_run: bool,
    /// The loss curve (SVG; default: the output with `.loss.svg`).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Stop after this many optimisation steps (for benchmarks and tests).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Print where the training steps' time went: each layer's forward and
    /// backward pass, the loss and the optimiser, in ms per step.
    #[arg(long)]
    pub profile: bool,
    /// Re-initialise these layers (a parameter-key prefix, e.g. `fc`) instead of taking them from `--weights`: a classifier for a new class count.
    #[arg(long, value_name = "LAYER", num_args = 1..)]
    pub reset: Vec<String>,
    /// Do not update these layers' parameters (parameter-key prefixes, e.g. `features`).
    #[arg(long, value_name = "LAYER", num_args = 1..)]
    pub freeze: Vec<String>,
    /// Batch norms in training use batch statistics (`train`, as model.train()) or their running ones, left unchanged (`eval`) [default: train].
    #[arg(long, value_enum)]
    pub batchnorm: Option<BatchnormMode>,
    /// How fresh weights are drawn (and `--reset` layers): PyTorch's defaults, or torchvision's VGG/ResNet recipe (kaiming-normal convs, N(0, 0.01) linears, zero biases) [default: pytorch].
    #[arg(long, value_enum)]
    pub init: Option<crate::ir::weights::InitScheme>,
}

/// How batch norms behave while training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BatchnormMode {
    /// Batch statistics, running statistics updated (`model.train()`).
    #[default]
    Train,
    /// Running statistics, not updated (`bn.eval()` inside a training model).
    Eval,
}

/// Whether parameter `key` belongs to layer `name` (`fc` owns `fc.weight`, `fc.0.bias`, ...).
fn under(key: &str, name: &str) -> bool {
    key.strip_prefix(name)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// Indices of the parameters under each of `names`; an error names a layer with none.
fn layers(graph: &Graph, names: &[String], flag: &str) -> Result<Vec<bool>, String> {
    let mut picked = vec![false; graph.params.len()];
    for name in names {
        let name = name.trim_end_matches('.');
        let mut any = false;
        for (i, p) in graph.params.iter().enumerate() {
            if under(&p.key, name) {
                picked[i] = true;
                any = true;
            }
        }
        if !any {
            let mut owners: Vec<&str> = graph
                .params
                .iter()
                .filter_map(|p| p.key.split('.').next())
                .collect();
            owners.dedup();
            return Err(format!(
                "`{flag} {name}`: the model has no parameters under `{name}` (its top-level layers with parameters: {})",
                owners.join(", ")
            ));
        }
    }
    Ok(picked)
}

/// Everything that decides a run; saved in checkpoints.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: u64,
    pub batch: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    /// `None`: 0, or torch's 0.01 for AdamW.
    pub weight_decay: Option<f64>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub loss: Option<Loss>,
    pub seed: u64,
    pub holdout: Option<usize>,
    pub pad: usize,
    pub data: Option<PathBuf>,
    pub val: Option<PathBuf>,
    pub transforms: TransformsConfig,
    pub schedule: Schedule,
    pub label_smoothing: f64,
    pub clip_grad_norm: Option<f64>,
    pub reset: Vec<String>,
    pub freeze: Vec<String>,
    pub batchnorm: BatchnormMode,
    pub init: crate::ir::weights::InitScheme,
}

/// `transforms: {train: [...], eval: [...]}`: torchvision-named transforms
/// (see [`super::transforms`]); a list left out takes the defaults.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TransformsConfig {
    pub train: Option<Vec<serde_yaml::Value>>,
    pub eval: Option<Vec<serde_yaml::Value>>,
}

impl TransformsConfig {
    /// The parsed (train, eval) pipelines; `None` where the defaults apply.
    pub fn pipelines(&self) -> Result<(Option<Pipeline>, Option<Pipeline>), String> {
        Ok((
            self.train
                .as_deref()
                .map(|t| Pipeline::parse(t, "train"))
                .transpose()?,
            self.eval
                .as_deref()
                .map(|t| Pipeline::parse(t, "eval"))
                .transpose()?,
        ))
    }
}

impl Default for TrainConfig {
    /// The source chapter's setup: Adam, lr 0.0002, batch 256, 10 epochs, cross-entropy.
    fn default() -> Self {
        let o = OptimConfig::default();
        TrainConfig {
            epochs: 10,
            batch: 256,
            optimizer: OptimizerKind::Adam,
            lr: 0.0002,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: None,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            loss: None,
            seed: 0,
            holdout: None,
            pad: 0,
            data: None,
            val: None,
            transforms: TransformsConfig::default(),
            schedule: Schedule::default(),
            label_smoothing: 0.0,
            clip_grad_norm: None,
            reset: Vec::new(),
            freeze: Vec::new(),
            batchnorm: BatchnormMode::Train,
            init: crate::ir::weights::InitScheme::Pytorch,
        }
    }
}

impl TrainConfig {
    pub fn resolve(args: &TrainArgs) -> Result<TrainConfig, String> {
        let mut c = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
                let mut c: TrainConfig = serde_yaml::from_str(&text)
                    .map_err(|e| format!("`{}`: {e}", path.display()))?;
                // Data paths in the config are relative to the config file.
                if let Some(dir) = path.parent() {
                    for d in [&mut c.data, &mut c.val].into_iter().flatten() {
                        if d.is_relative() {
                            *d = dir.join(&*d);
                        }
                    }
                }
                c
            }
            None => TrainConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = args.$f.clone() { c.$f = v; } )* };
        }
        set!(epochs, batch, lr, optimizer, momentum, seed, pad);
        if args.weight_decay.is_some() {
            c.weight_decay = args.weight_decay;
        }
        if let Some(k) = args.schedule {
            c.schedule.kind = k;
        }
        if let Some(e) = args.label_smoothing {
            c.label_smoothing = e;
        }
        if args.clip_grad_norm.is_some() {
            c.clip_grad_norm = args.clip_grad_norm;
        }
        c.reset.extend(args.reset.iter().cloned());
        c.freeze.extend(args.freeze.iter().cloned());
        if let Some(b) = args.batchnorm {
            c.batchnorm = b;
        }
        if let Some(i) = args.init {
            c.init = i;
        }
        c.schedule.check()?;
        if !(0.0..1.0).contains(&c.label_smoothing) {
            return Err(format!(
                "label smoothing must be in [0, 1), not {}",
                c.label_smoothing
            ));
        }
        if let Some(m) = c.clip_grad_norm {
            if !(m > 0.0 && m.is_finite()) {
                return Err(format!("the clipping norm must be positive, not {m}"));
            }
        }
        if args.loss.is_some() {
            c.loss = args.loss;
        }
        if args.holdout.is_some() {
            c.holdout = args.holdout;
        }
        if args.data.is_some() {
            c.data = args.data.clone();
        }
        if args.val.is_some() {
            c.val = args.val.clone();
        }
        c.transforms.pipelines()?;
        if c.batch == 0 {
            return Err("the batch size must be at least 1".into());
        }
        if !(c.lr > 0.0 && c.lr.is_finite()) {
            return Err(format!("the learning rate must be positive, not {}", c.lr));
        }
        if c.nesterov && (c.momentum <= 0.0 || c.dampening != 0.0) {
            return Err("nesterov needs a momentum and zero dampening (as in PyTorch)".into());
        }
        Ok(c)
    }

    pub fn optim(&self) -> OptimConfig {
        OptimConfig {
            kind: self.optimizer,
            lr: self.lr,
            momentum: self.momentum,
            dampening: self.dampening,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay.unwrap_or(match self.optimizer {
                OptimizerKind::AdamW => 0.01,
                _ => 0.0,
            }),
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        }
    }
}

/// Progress so far, saved in checkpoints and drawn in the plot.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct History {
    /// Epochs completed.
    pub epoch: u64,
    /// (fractional epoch, mean training loss) every few steps.
    pub train: Vec<(f64, f64)>,
    /// (epoch, held-out loss, held-out accuracy in %) after each epoch.
    pub test: Vec<(f64, f64, f64)>,
}

/// The loss a model trains with: cross-entropy on logits, NLL after log_softmax.
pub fn pick_loss(graph: &Graph, asked: Option<Loss>) -> Result<Loss, String> {
    let last = &graph.nodes[graph.output].op;
    match (asked, last) {
        (_, Op::Softmax) => Err(
            "the model ends in softmax; train on logits (remove the softmax) or end in log_softmax"
                .into(),
        ),
        (Some(Loss::CrossEntropy), Op::LogSoftmax) => Err(
            "the model ends in log_softmax: use `--loss nll` (cross-entropy would apply log-softmax twice)".into(),
        ),
        (Some(l), _) => Ok(l),
        (None, Op::LogSoftmax) => Ok(Loss::Nll),
        (None, _) => Ok(Loss::CrossEntropy),
    }
}

/// Batches decoded ahead of the one being trained on.
const PREFETCH: usize = 3;
/// Input batches alive at once: the queue's, the one being decoded and the
/// one being trained on.
const IN_FLIGHT: usize = PREFETCH + 2;

/// The memory training may use, in bytes, and where that figure comes from:
/// `CNNC_MEMORY_LIMIT` if set, else MemAvailable from /proc/meminfo; `None`
/// where neither is known (no check then).
fn memory_limit() -> Result<Option<(u64, &'static str)>, String> {
    if let Ok(text) = std::env::var("CNNC_MEMORY_LIMIT") {
        return crate::tools::summary::parse_size(&text)
            .map(|b| Some((b, "CNNC_MEMORY_LIMIT")))
            .map_err(|e| format!("CNNC_MEMORY_LIMIT: {e}"));
    }
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return Ok(None);
    };
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| (kb * 1024, "MemAvailable in /proc/meminfo")))
}

/// An error, with the numbers and a batch that fits, when training at
/// `batch` needs more than `limit`.
fn check_fits(
    model: &MemoryModel,
    batch: usize,
    limit: Option<(u64, &'static str)>,
) -> Result<(), String> {
    let Some((limit, from)) = limit else {
        return Ok(());
    };
    let need = model.at(batch).total();
    if need as u64 <= limit {
        return Ok(());
    }
    let fits = model.largest_batch(usize::try_from(limit).unwrap_or(usize::MAX));
    let b = |n: usize| crate::tools::summary::bytes(n as i64);
    Err(format!(
        "a batch of {batch} needs {} of memory to train, but {} is available ({from}); {}",
        b(need),
        b(limit as usize),
        if fits > 0 {
            format!(
                "a batch of {fits} fits ({}): pass `--batch {fits}` (`cnnc train --dry-run` lists where it goes)",
                b(model.at(fits).total())
            )
        } else {
            format!(
                "even a batch of 1 needs {}: the parameters, gradients and optimiser state alone take {}",
                b(model.at(1).total()),
                b(model.parameters + model.gradients + model.optimizer)
            )
        }
    ))
}

/// `cnnc train --dry-run`: the training memory at the configured batch,
/// from the trainer's own buffers ([`Net::memory_model`]), on stdout.
fn dry_run(graph: Graph, config: &TrainConfig, frozen: &[bool]) -> Result<(), String> {
    let weights = crate::ir::weights::init(&graph, config.init, config.seed)?;
    let mut net = Net::new(graph, &weights)?;
    net.batchnorm_eval = config.batchnorm == BatchnormMode::Eval;
    let optim = config.optim();
    let model = net.memory_model(optim.moments(), frozen, IN_FLIGHT)?;
    let m = model.at(config.batch);
    let b = |n: usize| crate::tools::summary::bytes(n as i64);
    let params = net.graph.total_params();
    println!(
        "training memory of {} at batch {} (f32, {:?}):",
        net.graph.name, config.batch, optim.kind
    );
    let rows = [
        (
            "parameters",
            m.parameters,
            format!(
                "{} parameters, and buffers",
                crate::tools::summary::grouped(params)
            ),
        ),
        ("gradients", m.gradients, "one per parameter".to_string()),
        (
            "optimiser state",
            m.optimizer,
            format!("{} moment buffer(s) per trained parameter", optim.moments()),
        ),
        (
            "activations",
            m.activations,
            "kept by the forward pass for the backward pass".to_string(),
        ),
        (
            "scratch",
            m.scratch,
            "activation gradients alive at once in the backward pass, at their peak".to_string(),
        ),
        (
            "input batches",
            m.batches,
            format!("{IN_FLIGHT} in flight (decoding and prefetch)"),
        ),
        ("total", m.total(), String::new()),
    ];
    for (name, bytes, what) in rows {
        let line = format!("  {name:<16} {:>10}  {bytes:>14} bytes  {what}", b(bytes));
        println!("{}", line.trim_end());
    }
    match memory_limit()? {
        Some((limit, from)) => {
            let fits = model.largest_batch(usize::try_from(limit).unwrap_or(usize::MAX));
            println!(
                "available: {} ({from}): {}; the largest batch that fits is {fits}",
                b(limit as usize),
                if m.total() as u64 <= limit {
                    "fits"
                } else {
                    "does not fit"
                },
            );
        }
        None => println!("available: unknown (no /proc/meminfo; set CNNC_MEMORY_LIMIT)"),
    }
    Ok(())
}

/// How many rows' largest score (the first of equals) is the label.
fn count_correct(out: &[f32], labels: &[u8], classes: usize) -> usize {
    labels
        .iter()
        .enumerate()
        .filter(|&(i, &t)| {
            let row = &out[i * classes..(i + 1) * classes];
            let best = (0..classes)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            best == t as usize
        })
        .count()
}

/// Mean loss and accuracy (%) on a data set, in evaluation mode.
pub fn evaluate(
    net: &mut Net,
    data: &data::Dataset,
    loader: &Loader,
    kind: Loss,
) -> Result<(f64, f64), String> {
    let classes = net.graph.output_shape().numel() as usize;
    let (mut total, mut correct) = (0f64, 0usize);
    let order: Vec<usize> = (0..data.len()).collect();
    for chunk in order.chunks(500) {
        let (x, y) = loader.batch(data, chunk, &|item| rng::key(&[5, item as u64]))?;
        let fwd = net.forward(&x, y.len(), Mode::Eval)?;
        let out = fwd.output(&net.graph);
        let (l, _) = loss(kind, out, &y, classes);
        total += l * y.len() as f64;
        correct += count_correct(out, &y, classes);
    }
    Ok((
        total / data.len() as f64,
        100.0 * correct as f64 / data.len() as f64,
    ))
}

/// The checkpoint next to the weights: `W.safetensors` → `W.ckpt`.
pub fn checkpoint_path(output: &Path) -> PathBuf {
    output.with_extension("ckpt")
}

/// Weights, optimiser moments (`optim.m.<key>`, `optim.v.<key>`) and, in the
/// header metadata, the config, step counter and history.
fn save_checkpoint(
    path: &Path,
    net: &Net,
    opt: &Optimizer,
    config: &TrainConfig,
    history: &History,
) -> Result<(), String> {
    use cnnc_runtime::weights::{Data, WeightTensor};
    let mut file = net.to_weight_file();
    for (i, p) in net.graph.params.iter().enumerate() {
        for (tag, moments) in [("m", &opt.m), ("v", &opt.v)] {
            if !moments[i].is_empty() {
                file.tensors.insert(
                    format!("optim.{tag}.{}", p.key),
                    WeightTensor {
                        dtype: "F32".into(),
                        shape: vec![moments[i].len()],
                        data: Data::F32(moments[i].clone()),
                    },
                );
            }
        }
    }
    let bytes = file.to_bytes().map_err(|e| e.0)?;
    // Re-serialise with metadata (WeightFile::to_bytes writes none).
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    let meta = std::collections::HashMap::from([
        ("cnnc_train".to_string(), "1".to_string()),
        (
            "config".to_string(),
            serde_json::to_string(config).map_err(|e| e.to_string())?,
        ),
        ("step".to_string(), opt.step.to_string()),
        (
            "history".to_string(),
            serde_json::to_string(history).map_err(|e| e.to_string())?,
        ),
    ]);
    let views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors().into_iter().collect();
    let out = safetensors::tensor::serialize(views, Some(meta)).map_err(|e| e.to_string())?;
    write_atomic(path, &out).map_err(|e| e.0)
}

struct Resumed {
    weights: WeightFile,
    config: TrainConfig,
    step: u64,
    history: History,
    moments: WeightFile,
}

fn load_checkpoint(path: &Path) -> Result<Resumed, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| format!("`{}`: not a safetensors file: {e}", path.display()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("cnnc_train").map(String::as_str) != Some("1") {
        return Err(format!(
            "`{}` is not a `cnnc train` checkpoint (those are the `.ckpt` files written next to the weights)",
            path.display()
        ));
    }
    let field = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| format!("`{}`: the checkpoint has no `{k}`", path.display()))
    };
    let config: TrainConfig = serde_json::from_str(&field("config")?).map_err(|e| e.to_string())?;
    let history: History = serde_json::from_str(&field("history")?).map_err(|e| e.to_string())?;
    let step: u64 = field("step")?.parse().map_err(|_| "bad step".to_string())?;
    let all = WeightFile::from_bytes(&bytes).map_err(|e| e.0)?;
    let (mut weights, mut moments) = (WeightFile::default(), WeightFile::default());
    for (k, t) in all.tensors {
        if k.starts_with("optim.") {
            moments.tensors.insert(k, t);
        } else {
            weights.tensors.insert(k, t);
        }
    }
    Ok(Resumed {
        weights,
        config,
        step,
        history,
        moments,
    })
}

/// The loss curve as SVG: training loss per logged step, held-out loss per
/// epoch, and held-out accuracy per epoch on a right-hand axis.
pub fn plot_svg(history: &History, title: &str) -> Result<String, String> {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let xmax = history
            .train
            .iter()
            .map(|p| p.0)
            .chain(history.test.iter().map(|p| p.0))
            .fold(1.0f64, f64::max);
        let ymax = history
            .train
            .iter()
            .map(|p| p.1)
            .chain(history.test.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold(0.1f64, f64::max)
            * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .right_y_label_area_size(56)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(|e| e.to_string())?
            .set_secondary_coord(0f64..xmax, 0f64..100f64);
        // Epochs are counted in whole numbers: ticks at integers only
        // (plotters would label 0.0, 2.0, 4.0 or halves).
        let whole = |v: &f64| {
            if (v - v.round()).abs() < 1e-9 {
                format!("{}", v.round() as i64)
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_labels((xmax.ceil() as usize + 1).min(11))
            .x_label_formatter(&whole)
            .x_desc("epoch")
            .y_desc("loss")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(history.train.iter().copied(), &BLUE))
            .map_err(|e| e.to_string())?
            .label("training loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(
                history.test.iter().map(|p| (p.0, p.1)),
                RED.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label("held-out loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .draw_series(
                history
                    .test
                    .iter()
                    .map(|p| Circle::new((p.0, p.1), 3, RED.filled())),
            )
            .map_err(|e| e.to_string())?;
        // Held-out accuracy on the right-hand axis, in %.
        chart
            .configure_secondary_axes()
            .y_desc("held-out accuracy (%)")
            .draw()
            .map_err(|e| e.to_string())?;
        let green = RGBColor(0, 140, 60);
        chart
            .draw_secondary_series(LineSeries::new(
                history.test.iter().map(|p| (p.0, p.2)),
                green.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label("held-out accuracy (%)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], green));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Runs `cnnc train` on a checked graph. Errors are messages for `error: `.
pub fn train(graph: Graph, args: &TrainArgs, repo: &Path) -> Result<(), String> {
    let resumed = args.resume.as_deref().map(load_checkpoint).transpose()?;
    let config = match &resumed {
        Some(r) => {
            // The checkpoint's settings, with a new epoch count if given.
            let mut c = r.config.clone();
            if let Some(e) = args.epochs {
                c.epochs = e;
            }
            c
        }
        None => TrainConfig::resolve(args)?,
    };
    let kind = pick_loss(&graph, config.loss)?;
    if kind == Loss::Nll && config.label_smoothing != 0.0 {
        return Err(
            "label smoothing applies to cross-entropy, and this model trains with NLL".into(),
        );
    }
    let frozen_names = layers(&graph, &config.freeze, "--freeze")?;
    if args.dry_run {
        return dry_run(graph, &config, &frozen_names);
    }
    let output = args
        .output
        .clone()
        .ok_or("`cnnc train` needs `-o FILE` for the weights")?;
    cnnc_runtime::output::check_target(&output).map_err(|e| e.0)?;
    let plot = args
        .plot
        .clone()
        .unwrap_or_else(|| output.with_extension("loss.svg"));
    cnnc_runtime::output::check_target(&plot).map_err(|e| e.0)?;
    let ckpt = checkpoint_path(&output);
    let best = output.with_extension("best.safetensors");
    cnnc_runtime::output::check_target(&best).map_err(|e| e.0)?;

    // Data first: bad files are errors before any work.
    let chw = match graph.input_shape().dims().as_slice() {
        [c, h, w] => [*c as usize, *h as usize, *w as usize],
        _ => return Err("cnnc train takes models with [C, H, W] inputs".into()),
    };
    let classes = graph.output_shape().numel() as usize;
    if graph.output_shape().dims().len() != 1 {
        return Err(format!(
            "the model's output is {}, not a vector of class scores",
            graph.output_shape()
        ));
    }
    let data_path = config
        .data
        .clone()
        .unwrap_or_else(|| repo.join("models").join("data"));
    let (train_pipeline, eval_pipeline) = config.transforms.pipelines()?;
    for p in [&train_pipeline, &eval_pipeline].into_iter().flatten() {
        if let Some((mean, _)) = &p.normalize {
            if mean.len() != chw[0] {
                return Err(format!(
                    "`normalize` has {} means, but the model takes {} channels",
                    mean.len(),
                    chw[0]
                ));
            }
        }
    }
    let fit = Fit {
        chw,
        pad: config.pad,
        classes,
        seed: config.seed,
        train: train_pipeline.as_ref(),
        eval: eval_pipeline.as_ref(),
    };
    let (
        Split {
            train: train_set,
            test: test_set,
            description,
            classes: class_names,
        },
        train_pipeline,
        eval_pipeline,
    ) = data::load(&data_path, config.val.as_deref(), config.holdout, &fit)?;
    let train_loader = Loader {
        chw,
        pad: config.pad,
        pipeline: train_pipeline,
    };
    let eval_loader = Loader {
        chw,
        pad: config.pad,
        pipeline: eval_pipeline,
    };
    let labels_path = output.with_extension("labels.txt");
    if let Some(names) = &class_names {
        cnnc_runtime::output::check_target(&labels_path).map_err(|e| e.0)?;
        let mut text = names.join("\n");
        text.push('\n');
        write_atomic(&labels_path, text.as_bytes()).map_err(|e| e.0)?;
    }

    let reset = layers(&graph, &config.reset, "--reset")?;
    let frozen = frozen_names;
    let weights = match (&resumed, &args.weights) {
        (Some(r), _) => r.weights.clone(),
        (None, Some(path)) => {
            let mut w = WeightFile::load(path).map_err(|e| e.0)?;
            if reset.contains(&true) {
                // Fresh values for the reset layers, PyTorch's initialisation.
                let fresh = crate::ir::weights::init(&graph, config.init, config.seed)?;
                for (p, _) in graph.params.iter().zip(&reset).filter(|(_, &r)| r) {
                    w.tensors
                        .insert(p.key.clone(), fresh.tensors[&p.key].clone());
                }
            }
            w
        }
        (None, None) => crate::ir::weights::init(&graph, config.init, config.seed)?,
    };
    let mut net = Net::new(graph, &weights).map_err(|e| match &args.weights {
        // A classifier of another class count: say how to replace it.
        Some(path) if e.contains("has shape") => {
            let layer = e
                .trim_start_matches('`')
                .split('`')
                .next()
                .and_then(|k| k.rsplit_once('.'))
                .map_or("LAYER", |(l, _)| l)
                .to_string();
            format!(
                "`{}`: {e}; to train that layer afresh (a classifier for another class count), pass `--reset {layer}`",
                path.display()
            )
        }
        _ => e,
    })?;
    net.batchnorm_eval = config.batchnorm == BatchnormMode::Eval;
    // The training memory for this batch, refused up front if it does not fit.
    let model = net.memory_model(config.optim().moments(), &frozen, IN_FLIGHT)?;
    let planned = model.at(config.batch);
    let limit = memory_limit()?;
    check_fits(&model, config.batch, limit)?;
    eprintln!(
        "training memory at batch {}: {}{}",
        config.batch,
        crate::tools::summary::bytes(planned.total() as i64),
        limit
            .map(|(l, from)| format!(
                " of {} available ({from})",
                crate::tools::summary::bytes(l as i64)
            ))
            .unwrap_or_default()
    );
    let mut measured_once = false;
    if args.profile {
        net.profile = RefCell::new(Some(vec![[0.0; 2]; net.graph.nodes.len()]));
    }
    // Seconds of the loss and of the optimiser, and the steps profiled.
    let (mut loss_time, mut opt_time, mut profiled) = (0f64, 0f64, 0usize);
    let mut opt = Optimizer::new(config.optim(), net.graph.params.len());
    let mut history = History::default();
    if let Some(r) = &resumed {
        opt.step = r.step;
        history = r.history.clone();
        for (i, p) in net.graph.params.iter().enumerate() {
            for (tag, dst) in [("m", &mut opt.m), ("v", &mut opt.v)] {
                if let Some(t) = r.moments.tensors.get(&format!("optim.{tag}.{}", p.key)) {
                    dst[i] = t.data.to_f32();
                }
            }
        }
    }
    eprintln!(
        "training {} ({} params) on {description}",
        net.graph.name,
        crate::tools::summary::grouped(net.graph.total_params())
    );
    eprintln!(
        "{:?} lr {}{} batch {} epochs {} loss {:?}{}{} seed {}, {} threads",
        config.optimizer,
        config.lr,
        match config.schedule.kind {
            ScheduleKind::Constant if config.schedule.warmup == 0 => String::new(),
            k => format!(
                " ({k:?} schedule per {:?}{})",
                config.schedule.per,
                if config.schedule.warmup > 0 {
                    format!(", {} of warm-up", config.schedule.warmup)
                } else {
                    String::new()
                }
            )
            .to_lowercase(),
        },
        config.batch,
        config.epochs,
        kind,
        if config.label_smoothing > 0.0 {
            format!(" (label smoothing {})", config.label_smoothing)
        } else {
            String::new()
        },
        config
            .clip_grad_norm
            .map(|m| format!(" clip {m}"))
            .unwrap_or_default(),
        config.seed,
        rayon::current_num_threads()
    );
    let names = |picked: &[bool]| {
        net.graph
            .params
            .iter()
            .zip(picked)
            .filter(|(p, &k)| k && p.kind.is_parameter())
            .map(|(p, _)| p.key.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if resumed.is_none() && args.weights.is_some() && reset.contains(&true) {
        eprintln!("re-initialised: {}", names(&reset));
    }
    if frozen.contains(&true) {
        eprintln!("frozen (not updated): {}", names(&frozen));
    }
    if net.batchnorm_eval {
        eprintln!("batch norms use their running statistics (--batchnorm eval)");
    }
    if history.epoch >= config.epochs {
        eprintln!(
            "the checkpoint has already done {} of {} epochs",
            history.epoch, config.epochs
        );
    }
    let steps_per_epoch = train_set.len().div_ceil(config.batch) as f64;
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log_every = (train_set.len().div_ceil(config.batch) / 10).max(1);
    for epoch in history.epoch..config.epochs {
        let order = rng::permutation(train_set.len(), rng::key(&[config.seed, 1, epoch]));
        let bar = indicatif::ProgressBar::new(train_set.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, ETA {eta})",
            )
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, config.epochs));
        let start = Instant::now();
        let (mut sum, mut count, mut logged_sum, mut logged_n) = (0f64, 0usize, 0f64, 0usize);
        // Throughput is timed from the end of the epoch's first step (warm-up: allocation, caches).
        let mut timed: Option<(Instant, usize)> = None;
        let mut correct = 0usize;
        // Batches are decoded and transformed on another thread, at most
        // PREFETCH ahead, while this one trains on the previous batch.
        let (seed, batch, set, loader) = (config.seed, config.batch, &train_set, &train_loader);
        let order = &order;
        std::thread::scope(|scope| -> Result<(), String> {
            let (tx, rx) = std::sync::mpsc::sync_channel(PREFETCH);
            scope.spawn(move || {
                for chunk in order.chunks(batch) {
                    let b =
                        loader.batch(set, chunk, &|item| rng::key(&[seed, 3, epoch, item as u64]));
                    if tx.send(b).is_err() {
                        break;
                    }
                }
            });
            for (b, got) in rx.iter().enumerate() {
                let (x, y) = got?;
                let mode = Mode::Train {
                    dropout_key: rng::key(&[config.seed, 2, opt.step]),
                };
                let fwd = net.forward(&x, y.len(), mode)?;
                let t_loss = Instant::now();
                let (l, dout) = smoothed_loss(
                    kind,
                    fwd.output(&net.graph),
                    &y,
                    classes,
                    config.label_smoothing,
                );
                correct += count_correct(fwd.output(&net.graph), &y, classes);
                loss_time += t_loss.elapsed().as_secs_f64();
                if !l.is_finite() {
                    return Err(format!(
                    "the loss became {l} at epoch {}, step {}; lower the learning rate (the last good checkpoint is `{}`)",
                    epoch + 1,
                    b + 1,
                    ckpt.display()
                ));
                }
                let mut grads = net.backward(&fwd, dout)?;
                let measured = (!measured_once).then(|| TrainMemory {
                    parameters: net.parameter_bytes(),
                    gradients: grads.iter().flatten().map(|g| g.len() * 4).sum(),
                    optimizer: 0,
                    activations: fwd.bytes(),
                    scratch: net.gradient_peak.get(),
                    batches: 0,
                });
                for (g, _) in grads.iter_mut().zip(&frozen).filter(|(_, &f)| f) {
                    *g = None;
                }
                if let Some(max) = config.clip_grad_norm {
                    clip_grad_norm(&mut grads, max);
                }
                opt.config.lr = match config.schedule.per {
                    ScheduleUnit::Epoch => config.schedule.lr(config.lr, epoch, config.epochs),
                    ScheduleUnit::Step => config.schedule.lr(
                        config.lr,
                        opt.step,
                        config.epochs * steps_per_epoch as u64,
                    ),
                };
                drop(fwd);
                let t_opt = Instant::now();
                opt.step(&mut net.state.values, &grads);
                opt_time += t_opt.elapsed().as_secs_f64();
                if let Some(m) = measured {
                    // What this first step allocated, as `--dry-run` counts it.
                    measured_once = true;
                    eprintln!(
                        "memory at the first step of {} images (measured, bytes): parameters {}, gradients {}, optimiser {}, activations {}, scratch {}",
                        y.len(),
                        m.parameters,
                        m.gradients,
                        opt.bytes(),
                        m.activations,
                        m.scratch
                    );
                }
                profiled += 1;
                sum += l * y.len() as f64;
                count += y.len();
                logged_sum += l * y.len() as f64;
                logged_n += y.len();
                if b % 5 == 4 || count == train_set.len() {
                    history.train.push((
                        epoch as f64 + (b + 1) as f64 / steps_per_epoch,
                        logged_sum / logged_n as f64,
                    ));
                    logged_sum = 0.0;
                    logged_n = 0;
                }
                let rate = match timed {
                    Some((t, c)) => (count - c) as f64 / t.elapsed().as_secs_f64().max(1e-9),
                    None => {
                        timed = Some((Instant::now(), count));
                        count as f64 / start.elapsed().as_secs_f64().max(1e-9)
                    }
                };
                bar.set_position(count as u64);
                bar.set_message(format!(
                    "loss {:.4} {rate:.0} samples/s",
                    sum / count as f64
                ));
                // The bar draws only on a terminal; into a pipe or a log file,
                // print a line every tenth of an epoch instead of nothing.
                if !on_terminal && ((b + 1) % log_every == 0 || count == train_set.len()) {
                    eprintln!(
                        "epoch {}/{} {count}/{} loss {:.4} {rate:.0} samples/s ({:.1} s)",
                        epoch + 1,
                        config.epochs,
                        train_set.len(),
                        sum / count as f64,
                        start.elapsed().as_secs_f64()
                    );
                }
                if args.max_steps.is_some_and(|m| opt.step >= m) {
                    break;
                }
            }
            Ok(())
        })?;
        bar.finish_and_clear();
        let train_time = start.elapsed().as_secs_f64();
        let rate = match timed {
            Some((t, c)) if count > c => (count - c) as f64 / t.elapsed().as_secs_f64(),
            _ => count as f64 / train_time,
        };
        // Evaluation is not part of the training profile.
        let times = net.profile.take();
        let (test_loss, acc) = evaluate(&mut net, &test_set, &eval_loader, kind)?;
        net.profile.replace(times);
        history.epoch = epoch + 1;
        history.test.push(((epoch + 1) as f64, test_loss, acc));
        // Checkpoint first (weights + optimiser), then the plain weights:
        // each is written to a temporary file and renamed.
        save_checkpoint(&ckpt, &net, &opt, &config, &history)?;
        let bytes = net.to_weight_file().to_bytes().map_err(|e| e.0)?;
        write_atomic(&output, &bytes).map_err(|e| e.0)?;
        // The best epoch so far (highest held-out accuracy, then lowest loss).
        let best_before = history.test[..history.test.len() - 1]
            .iter()
            .all(|&(_, l, a)| acc > a || (acc == a && test_loss < l));
        if best_before {
            write_atomic(&best, &bytes).map_err(|e| e.0)?;
        }
        let svg = plot_svg(&history, &format!("{}: training", net.graph.name))?;
        write_atomic(&plot, svg.as_bytes()).map_err(|e| e.0)?;
        println!(
            "epoch {}/{}: train loss {:.4} (accuracy {:.2}%), held-out loss {:.4}, accuracy {:.2}% ({}/{}){}, {:.0} samples/s, {:.1} s, {} steps, lr {:.3e}",
            epoch + 1,
            config.epochs,
            sum / count.max(1) as f64,
            100.0 * correct as f64 / count.max(1) as f64,
            test_loss,
            acc,
            (acc / 100.0 * test_set.len() as f64).round(),
            test_set.len(),
            if best_before { " best" } else { "" },
            rate,
            train_time,
            count.div_ceil(config.batch),
            opt.config.lr
        );
        if args.max_steps.is_some_and(|m| opt.step >= m) {
            break;
        }
    }
    if let Some(times) = net.profile.get_mut() {
        print_profile(&net.graph, times, loss_time, opt_time, profiled);
    }
    println!(
        "wrote {} (weights), {} (the best epoch's), {} (checkpoint for --resume), {} (loss curve){}",
        output.display(),
        best.display(),
        ckpt.display(),
        plot.display(),
        if class_names.is_some() {
            format!(
                ", {} (class names, for `cnnc run --labels`)",
                labels_path.display()
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The `--profile` table: ms per step of each layer's forward and backward
/// pass (layers that took no time left out), the loss and the optimiser.
fn print_profile(graph: &Graph, times: &[[f64; 2]], loss: f64, opt: f64, steps: usize) {
    let per = |s: f64| s * 1e3 / steps.max(1) as f64;
    let total: f64 = times.iter().map(|t| t[0] + t[1]).sum::<f64>() + loss + opt;
    println!("profile over {steps} steps (ms per step):");
    println!(
        "  {:<28} {:<14} {:>9} {:>9} {:>6}",
        "layer", "op", "forward", "backward", "share"
    );
    for (node, t) in graph.nodes.iter().zip(times) {
        if t[0] + t[1] == 0.0 {
            continue;
        }
        println!(
            "  {:<28} {:<14} {:>9.2} {:>9.2} {:>5.1}%",
            node.name,
            node.op.name(),
            per(t[0]),
            per(t[1]),
            100.0 * (t[0] + t[1]) / total
        );
    }
    for (what, s) in [("(loss)", loss), ("(optimiser)", opt)] {
        println!("  {what:<43} {:>9.2} {:>15.1}%", per(s), 100.0 * s / total);
    }
    println!("  {:<43} {:>9.2}", "total", per(total));
}
