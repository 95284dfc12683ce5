//! Training parity with PyTorch and gradient checks.
//!
//! - Parity: tests/fixtures/train/make_train_fixtures.py runs 5 optimisation
//!   steps of mnist_cnn, a residual network with batch norm, and a network
//!   with every remaining op, in float64 PyTorch, with SGD (momentum, weight
//!   decay; nesterov for `ops`) and Adam (weight decay). Our f32 trainer must
//!   match its losses, step-1 gradients, weights after steps 1 and 5 and
//!   batch-norm running statistics within 1e-4 relative (to each tensor's
//!   largest magnitude); for weights after 5 steps, or within 3× of how far
//!   PyTorch's own float32 run lands from float64, if that is larger (Adam
//!   divides by √v, which amplifies float32 rounding of small gradients).
//! - Gradient checks: for each op, the analytic gradients of a small network
//!   against central finite differences of the f64 reference evaluator.

use cnnc::ir::{Graph, ParamKind};
use cnnc::tools::train::net::{Mode, Net};
use cnnc::tools::train::optim::{
    clip_grad_norm, smoothed_loss, Loss, OptimConfig, Optimizer, OptimizerKind, Schedule,
    ScheduleKind,
};
use cnnc::tools::train::rng;
use cnnc_runtime::weights::{Data, WeightFile};
use std::collections::BTreeMap;
use std::path::Path;

const SAMPLES: usize = 256;
const TOL: f64 = 1e-4;

fn graph_of(path: &str) -> Graph {
    let c = cnnc::compile_file(Path::new(path), &BTreeMap::new()).unwrap();
    assert!(!c.has_errors(), "{}", c.render_diagnostics());
    c.models[0].graph.clone().unwrap()
}

fn sample(v: &[f32]) -> Vec<f64> {
    let n = v.len();
    if n <= SAMPLES {
        v.iter().map(|&x| x as f64).collect()
    } else {
        (0..SAMPLES).map(|j| v[j * n / SAMPLES] as f64).collect()
    }
}

struct Fixture(WeightFile);

impl Fixture {
    fn get(&self, key: &str) -> Vec<f64> {
        self.0
            .tensors
            .get(key)
            .unwrap_or_else(|| panic!("fixture has no `{key}`"))
            .data
            .to_f64()
    }
}

/// Largest |ours − theirs| over the largest |theirs|.
fn rel_err(ours: &[f64], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    let scale = theirs.iter().fold(0f64, |a, &b| a.max(b.abs())).max(1e-12);
    ours.iter()
        .zip(theirs)
        .fold(0f64, |a, (x, y)| a.max((x - y).abs()))
        / scale
}

struct Report {
    worst: f64,
    what: String,
}

impl Report {
    fn check(&mut self, what: &str, ours: &[f64], theirs: &[f64], tol: f64) {
        let e = rel_err(ours, theirs);
        if e > self.worst {
            self.worst = e;
            self.what = what.to_string();
        }
        assert!(
            e <= tol,
            "{what}: relative error {e:.3e} > {tol:.0e}\n ours   {:?}\n theirs {:?}",
            &ours[..ours.len().min(6)],
            &theirs[..theirs.len().min(6)]
        );
    }
    fn check_sumsq(&mut self, what: &str, ours: &[f32], theirs: f64, tol: f64) {
        let s: f64 = ours.iter().map(|&v| (v as f64).powi(2)).sum();
        self.check(what, &[s], &[theirs], 2.0 * tol);
    }
}

fn mnist_batches(batch: usize) -> Vec<(Vec<f32>, Vec<u8>)> {
    let images = std::fs::read("models/data/mnist-1000-images.idx").unwrap();
    let labels = std::fs::read("models/data/mnist-1000-labels.idx").unwrap();
    (0..5)
        .map(|s| {
            let x = images[16 + s * batch * 784..16 + (s + 1) * batch * 784]
                .iter()
                .map(|&b| b as f32 / 255.0)
                .collect();
            (x, labels[8 + s * batch..8 + (s + 1) * batch].to_vec())
        })
        .collect()
}

fn hashed_batches(batch: usize, per: usize) -> Vec<(Vec<f32>, Vec<u8>)> {
    (0..5u64)
        .map(|s| {
            let k = rng::key(&[99, s]);
            let x = (0..batch * per)
                .map(|i| (2.0 * rng::uniform(k, i as u64) - 1.0) as f32)
                .collect();
            let y = (0..batch).map(|i| ((i as u64 + s) % 10) as u8).collect();
            (x, y)
        })
        .collect()
}

fn sgd(weight_decay: f64, nesterov: bool) -> OptimConfig {
    OptimConfig {
        kind: OptimizerKind::Sgd,
        lr: 0.05,
        momentum: 0.9,
        dampening: 0.0,
        nesterov,
        weight_decay,
        ..OptimConfig::default()
    }
}

fn adam() -> OptimConfig {
    OptimConfig {
        kind: OptimizerKind::Adam,
        lr: 1e-3,
        weight_decay: 1e-4,
        ..OptimConfig::default()
    }
}

/// What a parity run trains with besides the optimiser: a schedule
/// stepping after every optimisation step, label smoothing, a clipping norm.
#[derive(Clone, Default)]
struct Extras {
    schedule: Schedule,
    smoothing: f64,
    clip: Option<f64>,
}

fn plain(sgd: OptimConfig) -> Vec<(&'static str, OptimConfig, Extras)> {
    vec![
        ("sgd", sgd, Extras::default()),
        ("adam", adam(), Extras::default()),
    ]
}

fn adamw(weight_decay: f64) -> OptimConfig {
    OptimConfig {
        kind: OptimizerKind::AdamW,
        weight_decay,
        ..adam()
    }
}

/// Each step's schedule, as torch's schedulers step once per optimisation step.
fn per_step(kind: ScheduleKind) -> Schedule {
    Schedule {
        kind,
        per: cnnc::tools::train::optim::ScheduleUnit::Step,
        ..Schedule::default()
    }
}

fn parity(
    model: &str,
    fixture: &str,
    seed: u64,
    batches: &[(Vec<f32>, Vec<u8>)],
    kind: Loss,
    recipes: Vec<(&str, OptimConfig, Extras)>,
) {
    let graph = graph_of(model);
    let fx = Fixture(
        WeightFile::load(Path::new(&format!(
            "tests/fixtures/train/{fixture}.safetensors"
        )))
        .unwrap(),
    );
    let classes = graph.output_shape().numel() as usize;
    let mut report = Report {
        worst: 0.0,
        what: String::new(),
    };
    for (name, config, extras) in recipes {
        let mut net = Net::new(graph.clone(), &rng::hashed_weights(&graph, seed)).unwrap();
        let mut opt = Optimizer::new(config, graph.params.len());
        let losses = fx.get(&format!("loss.{name}"));
        for (step, (x, y)) in batches.iter().enumerate() {
            let mode = Mode::Train {
                dropout_key: rng::key(&[7, step as u64]),
            };
            opt.config.lr = extras
                .schedule
                .lr(config.lr, step as u64, batches.len() as u64);
            let fwd = net.forward(x, y.len(), mode).unwrap();
            let (l, dout) =
                smoothed_loss(kind, fwd.output(&net.graph), y, classes, extras.smoothing);
            report.check(
                &format!("{fixture} {name} loss at step {}", step + 1),
                &[l],
                &[losses[step]],
                TOL,
            );
            let mut grads = net.backward(&fwd, dout).unwrap();
            if let Some(max) = extras.clip {
                let norm = clip_grad_norm(&mut grads, max);
                // The recipes' norms are chosen so that clipping acts.
                assert!(
                    step > 0 || norm > max,
                    "{fixture} {name}: gradient norm {norm} ≤ {max}"
                );
            }
            if step == 0 && name == "sgd" {
                for (i, p) in graph.params.iter().enumerate() {
                    if !p.kind.is_parameter() {
                        continue;
                    }
                    let g = grads[i].as_ref().expect("a gradient for every parameter");
                    report.check(
                        &format!("{fixture} grad {}", p.key),
                        &sample(g),
                        &fx.get(&format!("grad.{}", p.key)),
                        TOL,
                    );
                    report.check_sumsq(
                        &format!("{fixture} grad sumsq {}", p.key),
                        g,
                        fx.get(&format!("gradsq.{}", p.key))[0],
                        TOL,
                    );
                }
            }
            opt.step(&mut net.state.values, &grads);
            if step == 0 || step == 4 {
                let tag = if step == 0 { "w1" } else { "w5" };
                for (i, p) in graph.params.iter().enumerate() {
                    let what = format!("{fixture} {name} {tag} {}", p.key);
                    if p.kind == ParamKind::NumBatchesTracked {
                        let theirs = fx.get(&format!("{tag}.{name}.{}", p.key));
                        assert_eq!(net.state.counts[i] as f64, theirs[0], "{what}");
                        continue;
                    }
                    let v = &net.state.values[i];
                    let ours = if p.kind.is_parameter() {
                        sample(v)
                    } else {
                        v.iter().map(|&x| x as f64).collect()
                    };
                    // After 5 steps Adam divides by √v, amplifying float32
                    // rounding in small gradients: allow 3× what PyTorch's own
                    // float32 run deviates from float64 there, if that is larger.
                    let tol = if tag == "w5" && p.kind.is_parameter() {
                        TOL.max(3.0 * fx.get(&format!("f32err.w5.{name}.{}", p.key))[0])
                    } else {
                        TOL
                    };
                    report.check(
                        &what,
                        &ours,
                        &fx.get(&format!("{tag}.{name}.{}", p.key)),
                        tol,
                    );
                    report.check_sumsq(
                        &format!("{what} sumsq"),
                        v,
                        fx.get(&format!("{tag}sq.{name}.{}", p.key))[0],
                        TOL,
                    );
                }
            }
        }
    }
    eprintln!(
        "{fixture}: worst relative error {:.2e} ({})",
        report.worst, report.what
    );
}

#[test]
fn mnist_cnn_matches_pytorch() {
    parity(
        "models/mnist_cnn.cnn",
        "mnist_cnn",
        1,
        &mnist_batches(16),
        Loss::CrossEntropy,
        plain(sgd(5e-4, false)),
    );
}

#[test]
fn resnet_with_batchnorm_matches_pytorch() {
    parity(
        "tests/fixtures/train/resnet_bn.cnn",
        "resnet_bn",
        2,
        &mnist_batches(8),
        Loss::CrossEntropy,
        plain(sgd(5e-4, false)),
    );
}

#[test]
fn every_other_op_matches_pytorch() {
    parity(
        "tests/fixtures/train/ops.cnn",
        "ops",
        3,
        &hashed_batches(6, 3 * 12 * 12),
        Loss::Nll,
        plain(sgd(1e-3, true)),
    );
}

/// Warm-up + MultiStepLR with SGD, warm-up + CosineAnnealingLR with AdamW,
/// label smoothing and gradient clipping (make_train_fixtures.py's RESNET_RECIPES).
#[test]
fn schedules_adamw_smoothing_and_clipping_match_pytorch_on_resnet() {
    let multistep = Schedule {
        milestones: vec![1, 2],
        gamma: 0.5,
        warmup: 2,
        warmup_factor: 0.25,
        ..per_step(ScheduleKind::Multistep)
    };
    let cosine = Schedule {
        t_max: Some(4),
        eta_min: 1e-5,
        warmup: 1,
        warmup_factor: 0.1,
        ..per_step(ScheduleKind::Cosine)
    };
    parity(
        "tests/fixtures/train/resnet_bn.cnn",
        "resnet_bn_recipes",
        2,
        &mnist_batches(8),
        Loss::CrossEntropy,
        vec![
            (
                "sgd",
                sgd(5e-4, false),
                Extras {
                    schedule: multistep,
                    smoothing: 0.1,
                    clip: Some(0.5),
                },
            ),
            (
                "adamw",
                adamw(0.05),
                Extras {
                    schedule: cosine,
                    smoothing: 0.2,
                    clip: Some(0.4),
                },
            ),
        ],
    );
}

/// StepLR with nesterov SGD, CosineAnnealingLR (default T_max: the run's
/// length) with AdamW, clipping, on every other op (OPS_RECIPES).
#[test]
fn schedules_adamw_and_clipping_match_pytorch_on_every_other_op() {
    let step = Schedule {
        step_size: 2,
        gamma: 0.3,
        ..per_step(ScheduleKind::Step)
    };
    parity(
        "tests/fixtures/train/ops.cnn",
        "ops_recipes",
        3,
        &hashed_batches(6, 3 * 12 * 12),
        Loss::Nll,
        vec![
            (
                "sgd",
                sgd(1e-3, true),
                Extras {
                    schedule: step,
                    clip: Some(0.05),
                    ..Extras::default()
                },
            ),
            (
                "adamw",
                OptimConfig {
                    eps: 1e-6,
                    ..adamw(0.01)
                },
                Extras {
                    schedule: per_step(ScheduleKind::Cosine),
                    clip: Some(0.1),
                    ..Extras::default()
                },
            ),
        ],
    );
}

#[test]
fn shuffle_and_convnext_ops_match_pytorch() {
    // split + channel_shuffle, LayerNorm2d, a ConvNeXt block (layer norm and
    // linear layers at each pixel after PyTorch's permute, GELU, layer_scale).
    parity(
        "tests/fixtures/train/shuffle_convnext.cnn",
        "shuffle_convnext",
        4,
        &hashed_batches(6, 3 * 12 * 12),
        Loss::CrossEntropy,
        plain(sgd(5e-4, false)),
    );
}

/// Σ r·f(x; θ) with the f64 reference evaluator.
fn weighted_output(
    graph: &Graph,
    sources: &cnnc::front::source::SourceMap,
    weights: &WeightFile,
    n: usize,
    x: &[f32],
    r: &[f32],
) -> f64 {
    let bound = cnnc::ir::weights::bind(graph, weights, sources).unwrap();
    let out = cnnc::tools::eval::evaluate(graph, &bound, n, x).unwrap();
    out.data.iter().zip(r).map(|(a, &b)| a * b as f64).sum()
}

/// Analytic gradients of Σ r·f against central differences of the f64 evaluator,
/// at up to 8 elements of every parameter (the first layer's gradient also checks
/// each later op's input gradient).
fn gradient_check(body: &str, input: &str) {
    let text = format!("model m {{\n  input {input}\n  {body}\n}}\n");
    let c = cnnc::compile_source("m.cnn", &text, &BTreeMap::new());
    assert!(!c.has_errors(), "{}", c.render_diagnostics());
    let graph = c.models[0].graph.clone().unwrap();
    let wf = rng::hashed_weights(&graph, 11);
    let n = 2;
    let per = graph.input_shape().numel() as usize;
    let kx = rng::key(&[12]);
    let x: Vec<f32> = (0..n * per)
        .map(|i| (2.0 * rng::uniform(kx, i as u64) - 1.0) as f32)
        .collect();
    let kr = rng::key(&[13]);
    let outs = n * graph.output_shape().numel() as usize;
    let r: Vec<f32> = (0..outs)
        .map(|i| (2.0 * rng::uniform(kr, i as u64) - 1.0) as f32)
        .collect();
    let mut net = Net::new(graph.clone(), &wf).unwrap();
    let fwd = net.forward(&x, n, Mode::Eval).unwrap();
    let grads = net.backward(&fwd, r.clone()).unwrap();
    // Small steps: the f64 evaluator keeps them accurate, and they rarely cross a kink.
    let h = 1e-6;
    let mut checked = 0;
    for (i, p) in graph.params.iter().enumerate() {
        if !p.kind.is_parameter() {
            continue;
        }
        let g = grads[i].as_ref().unwrap();
        let scale = g.iter().fold(0f32, |a, &b| a.max(b.abs())) as f64;
        let len = g.len();
        for j in (0..8)
            .map(|s| s * len / 8)
            .collect::<std::collections::BTreeSet<_>>()
        {
            let at = |delta: f64| {
                let mut w = wf.clone();
                let t = w.tensors.get_mut(&p.key).unwrap();
                let mut v = t.data.to_f64();
                v[j] += delta;
                t.data = Data::F64(v);
                t.dtype = "F64".into();
                weighted_output(&graph, &c.sources, &w, n, &x, &r)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let ours = g[j] as f64;
            assert!(
                (ours - fd).abs() <= 2e-3 * scale.max(fd.abs()) + 1e-6,
                "`{body}`: d/d {}[{j}] = {ours}, finite differences give {fd} (scale {scale})",
                p.key
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[test]
fn convolution_gradients_match_finite_differences() {
    for conv in [
        "conv(4, k=3)",
        "conv(4, k=3, s=2, p=1)",
        "conv(4, k=(3, 2), s=(2, 1), p=(1, 0))",
        "conv(4, k=3, d=2, p=2)",
        "conv(6, k=3, p=1, groups=3)",
        "conv(4, k=3, p=same)",
        "conv(4, k=4, p=same)",
        "conv(4, k=3, p=2, mode=reflect)",
        "conv(4, k=3, p=1, mode=replicate)",
        "conv(4, k=3, p=2, mode=circular)",
        "conv(4, k=1, bias=false)",
    ] {
        gradient_check(&format!("a = conv(3, k=1)\n  b = {conv}"), "[3, 7, 7]");
    }
}

#[test]
fn pool_and_norm_gradients_match_finite_differences() {
    for op in [
        "maxpool(2)",
        "maxpool(3, s=2, p=1)",
        "maxpool(3, s=2, ceil=true)",
        "maxpool(2, d=2)",
        "avgpool(2)",
        "avgpool(3, s=2, p=1)",
        "avgpool(3, s=2, p=1, ceil=true, count_include_pad=false)",
        "adaptive_avgpool(3)",
        "adaptive_avgpool((2, 4))",
        "adaptive_maxpool(3)",
        "adaptive_maxpool((4, 2))",
        "lrn(3, alpha=0.1, beta=0.75, k=1)",
        "lrn(4, alpha=0.05, beta=0.5, k=2)",
        "dropout(0.5)",
        "dropout2d(0.3)",
        "stochastic_depth(0.3)",
        "stochastic_depth(0.3, mode=batch)",
        "identity",
    ] {
        gradient_check(
            &format!("a = conv(4, k=2)\n  {op}\n  b = conv(3, k=1)"),
            "[2, 9, 9]",
        );
    }
}

#[test]
fn activation_and_output_gradients_match_finite_differences() {
    for act in [
        "relu",
        "relu6",
        "leaky_relu(0.2)",
        "elu(0.7)",
        "tanh",
        "sigmoid",
        "silu",
        "gelu",
        "gelu(approximate=tanh)",
        "hardsigmoid",
        "hardswish",
    ] {
        // Scaled inputs reach both sides of every kink (relu6 at 6, hard* at ±3).
        gradient_check(
            &format!("a = conv(6, k=2)\n  {act}\n  b = conv(2, k=1)"),
            "[2, 5, 5]",
        );
        gradient_check(
            &format!("flatten\n  a = linear(8)\n  {act}\n  b = linear(3)"),
            "[2, 3, 3]",
        );
    }
    gradient_check("flatten\n  a = linear(6)\n  softmax", "[2, 3, 3]");
    gradient_check("flatten\n  a = linear(6)\n  log_softmax", "[2, 3, 3]");
    gradient_check("a = conv(4, k=1)\n  softmax", "[2, 3, 3]");
}

/// torchvision's StochasticDepth: in training each image (`row`) or the
/// whole batch (`batch`) is zeroed with probability p, else scaled by
/// 1/(1 − p), from the seeded key; the gradient follows the same mask; at
/// inference it is the identity.
#[test]
fn stochastic_depth_drops_whole_images_in_training_only() {
    for (mode, row) in [("row", true), ("batch", false)] {
        let text = format!(
            "model m {{\n  input [2, 3, 3]\n  a = conv(2, k=1)\n  stochastic_depth(0.25, mode={mode})\n}}\n"
        );
        let c = cnnc::compile_source("m.cnn", &text, &BTreeMap::new());
        assert!(!c.has_errors(), "{}", c.render_diagnostics());
        let graph = c.models[0].graph.clone().unwrap();
        let mut net = Net::new(graph.clone(), &rng::hashed_weights(&graph, 3)).unwrap();
        let (n, per) = (400usize, 18usize);
        let x: Vec<f32> = (0..n * per)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let plain = net.forward(&x, n, Mode::Eval).unwrap();
        let plain = plain.output(&net.graph).to_vec();
        let mut dropped_runs = 0;
        let runs = if row { 1 } else { 200 };
        for run in 0..runs {
            let key = rng::key(&[5, run]);
            let fwd = net
                .forward(&x, n, Mode::Train { dropout_key: key })
                .unwrap();
            let y = fwd.output(&net.graph).to_vec();
            let again = net
                .forward(&x, n, Mode::Train { dropout_key: key })
                .unwrap();
            assert_eq!(
                y,
                again.output(&net.graph),
                "the same key draws the same mask"
            );
            let mut kept = 0usize;
            let mut dropped = 0usize;
            for i in 0..n {
                let (got, want) = (&y[i * per..(i + 1) * per], &plain[i * per..(i + 1) * per]);
                if got.iter().all(|&v| v == 0.0) {
                    dropped += 1;
                } else {
                    kept += 1;
                    for (g, w) in got.iter().zip(want) {
                        assert!(
                            (g - w / 0.75).abs() <= 1e-5 * w.abs().max(1.0),
                            "{mode}: {g} vs {w}/0.75"
                        );
                    }
                }
            }
            if row {
                // 400 draws of p = 0.25: 100 expected, 8.7 standard deviation.
                assert!(
                    (60..=140).contains(&dropped),
                    "row: {dropped} of {n} images dropped"
                );
            } else {
                assert!(
                    kept == 0 || dropped == 0,
                    "batch: one draw for the whole batch"
                );
                dropped_runs += (dropped == n) as usize;
            }
            // d(Σ y)/d bias_k: 9 pixels of each kept image, times 1/(1 − p).
            let grads = net.backward(&fwd, vec![1.0; y.len()]).unwrap();
            let bias = graph.params.iter().position(|p| p.key == "a.bias").unwrap();
            let db = grads[bias].as_ref().unwrap();
            let want = kept as f32 * 9.0 / 0.75;
            assert!(
                (db[0] - want).abs() <= 1e-3 * want.max(1.0),
                "{mode}: d bias {} vs {want}",
                db[0]
            );
        }
        if !row {
            // 200 batches of p = 0.25: 50 expected, 6.1 standard deviation.
            assert!(
                (25..=75).contains(&dropped_runs),
                "batch: {dropped_runs} of 200 batches dropped"
            );
        }
    }
}

#[test]
fn gate_gradients_match_finite_differences() {
    // A [C, 1, 1] factor (broadcast: its gradient sums over the map) and a
    // [C, H, W] one, each reaching back through the gate's input and its body.
    gradient_check(
        "a = conv(4, k=1)\n  se = gate { avgpool = adaptive_avgpool(1) fc1 = conv(2, k=1) silu fc2 = conv(4, k=1) sigmoid }\n  m = gate { c = conv(4, k=3, p=1) hardsigmoid }\n  flatten\n  fc = linear(3)",
        "[2, 5, 5]",
    );
}

#[test]
fn shuffle_and_norm_gradients_match_finite_differences() {
    // split (each chunk's gradient lands in its channels), channel_shuffle
    // (the inverse permutation), layer_norm on maps and on a 1×1 map,
    // per-pixel linear layers, gelu and a scale inside a residual.
    gradient_check(
        "stem = conv(6, k=3, p=1)\n  s = split(2) { identity  b = seq { conv(3, k=1) } }\n  channel_shuffle(3)\n  ln = layer_norm(eps=1e-6)\n  r = residual { dw = conv(6, k=3, p=1, groups=6) pw1 = linear(8, per_pixel=true) gelu pw2 = linear(6, per_pixel=true) layer_scale = scale }\n  global_avgpool\n  hn = layer_norm\n  flatten\n  fc = linear(3)",
        "[2, 5, 5]",
    );
}

#[test]
fn residual_and_concat_gradients_match_finite_differences() {
    gradient_check(
        "a = conv(4, k=1)\n  r = residual { c = conv(4, k=3, p=1) relu d = conv(4, k=1) }\n  cat = concat { x = conv(2, k=1) y = seq { maxpool(3, s=1, p=1) conv(3, k=1) } z = identity }\n  flatten\n  fc = linear(3)",
        "[2, 5, 5]",
    );
}

use crate::common::run_cnnc as cnnc;

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cnnc-train-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn bad_data_is_an_error_before_training() {
    let dir = temp_dir("bad");
    let images = std::fs::read("models/data/mnist-1000-images.idx").unwrap();
    let labels = std::fs::read("models/data/mnist-1000-labels.idx").unwrap();
    let out = dir.join("w.safetensors");
    let out_s = out.to_str().unwrap();
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "magic",
            [&[0u8, 0, 9, 3][..], &images[4..]].concat(),
            labels.clone(),
            "type code",
        ),
        (
            "truncated",
            images[..images.len() - 100].to_vec(),
            labels.clone(),
            "truncated",
        ),
        (
            "count",
            images.clone(),
            [&[0u8, 0, 8, 1, 0, 0, 3, 0xe7][..], &labels[8..8 + 999]].concat(),
            "999 labels",
        ),
        (
            "label",
            images.clone(),
            [&labels[..8], &[12u8][..], &labels[9..]].concat(),
            "label 12",
        ),
    ];
    for (tag, im, lb, expect) in cases {
        let ip = dir.join(format!("{tag}-images.idx"));
        std::fs::write(&ip, im).unwrap();
        std::fs::write(dir.join(format!("{tag}-labels.idx")), lb).unwrap();
        let o = cnnc(&[
            "train",
            "models/mnist_cnn.cnn",
            "--data",
            ip.to_str().unwrap(),
            "-o",
            out_s,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{tag}: {err}");
        assert!(err.contains(expect) && err.contains(tag), "{tag}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{tag}: wrote weights");
    }
    // Images of the wrong size for the model, with the fix suggested.
    let o = cnnc(&["train", "models/lenet5.cnn", "-o", out_s]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--pad 2"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checkpoints_resume_and_load_in_cnnc_run() {
    let dir = temp_dir("resume");
    let out = dir.join("w.safetensors");
    let out_s = out.to_str().unwrap();
    let cfg = dir.join("train.yaml");
    std::fs::write(
        &cfg,
        "optimizer: sgd\nlr: 0.01\nmomentum: 0.9\nbatch: 64\nholdout: 200\n",
    )
    .unwrap();
    let base = [
        "train",
        "tests/fixtures/train/resnet_bn.cnn",
        "--data",
        "models/data/mnist-1000-images.idx",
        "--config",
        cfg.to_str().unwrap(),
    ];
    let o = cnnc(
        &[
            &base[..],
            &["--epochs", "1", "--max-steps", "3", "-o", out_s],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("epoch 1/1") && text.contains("accuracy"),
        "{text}"
    );
    assert!(dir.join("w.ckpt").exists() && dir.join("w.loss.svg").exists());
    let svg = std::fs::read_to_string(dir.join("w.loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("held-out loss"));
    // The weights are a strict state_dict: `cnnc run` binds them.
    let o = cnnc(&[
        "run",
        "tests/fixtures/train/resnet_bn.cnn",
        "--weights",
        out_s,
        "--input",
        "models/data/mnist-1000-images.idx",
        "--index",
        "0..4",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let w = WeightFile::load(&out).unwrap();
    assert_eq!(
        w.tensors["bn1.num_batches_tracked"].data,
        Data::I64(vec![3])
    );
    // Resume: the step counter and epoch continue from the checkpoint.
    let o = cnnc(
        &[
            &base[..],
            &[
                "--epochs",
                "2",
                "--max-steps",
                "5",
                "--resume",
                dir.join("w.ckpt").to_str().unwrap(),
                "-o",
                out_s,
            ],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("epoch 2/2"));
    let w = WeightFile::load(&out).unwrap();
    assert_eq!(
        w.tensors["bn1.num_batches_tracked"].data,
        Data::I64(vec![5])
    );
    // A weights file is not a checkpoint.
    let o = cnnc(&[
        "train",
        "models/mnist_cnn.cnn",
        "--resume",
        out_s,
        "-o",
        out_s,
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a `cnnc train` checkpoint"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--profile`: one row per layer that ran, with forward and backward ms,
/// then the loss, the optimiser and a total that is the sum of the rows.
#[test]
fn profile_lists_every_layer_and_adds_up() {
    let dir = temp_dir("profile");
    let out = dir.join("w.safetensors");
    let o = cnnc(&[
        "train",
        "models/mnist_cnn.cnn",
        "--data",
        "models/data/mnist-1000-images.idx",
        "--holdout",
        "100",
        "--batch",
        "32",
        "--epochs",
        "1",
        "--max-steps",
        "3",
        "--profile",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("profile over 3 steps (ms per step):"),
        "{text}"
    );
    let mut sum = 0.0;
    for layer in [
        "layer.0",
        "layer.1",
        "layer.2",
        "layer.4",
        "layer.5",
        "layer.7",
        "fc_layer.0",
        "fc_layer.2",
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(layer))
            .unwrap_or_else(|| panic!("no row for {layer}:\n{text}"));
        let ms: Vec<f64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        // forward, backward (the share ends in %, so it does not parse)
        assert_eq!(ms.len(), 2, "{line}");
        assert!(ms.iter().all(|&v| v >= 0.0), "{line}");
        sum += ms[0] + ms[1];
    }
    let value = |label: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row:\n{text}"));
        line.split_whitespace()
            .filter_map(|w| w.parse().ok())
            .next()
            .unwrap()
    };
    let total = value("total");
    assert!(
        total > 0.0 && sum <= total + 0.05,
        "{sum} vs {total}:\n{text}"
    );
    assert!(value("(optimiser)") >= 0.0 && value("(loss)") >= 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn both_spellings_of_cross_entropy_and_progress_lines_in_a_pipe() {
    let dir = temp_dir("spellings");
    let out = dir.join("w.safetensors");
    let cfg = dir.join("train.yaml");
    // The YAML spelling of a flag's value, and the flag's spelling in YAML.
    for (yaml, flag) in [
        ("cross-entropy", "cross_entropy"),
        ("cross_entropy", "cross-entropy"),
    ] {
        std::fs::write(&cfg, format!("loss: {yaml}\nbatch: 64\nholdout: 200\n")).unwrap();
        let base = [
            "train",
            "models/mnist_cnn.cnn",
            "--data",
            "models/data/mnist-1000-images.idx",
            "--config",
            cfg.to_str().unwrap(),
            "--epochs",
            "1",
            "--max-steps",
            "2",
            "-o",
            out.to_str().unwrap(),
        ];
        let o = cnnc(&base);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "loss: {yaml}: {err}");
        // stderr is a pipe here: the bar is hidden, so progress comes as lines.
        assert!(
            err.lines()
                .any(|l| l.starts_with("epoch 1/1 64/800 loss ") && l.contains("samples/s")),
            "{err}"
        );
        let o = cnnc(&[&base[..], &["--loss", flag]].concat());
        assert!(
            o.status.success(),
            "--loss {flag}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_loss_plot_labels_epochs_as_integers() {
    use cnnc::tools::train::run::{plot_svg, History};
    for epochs in [4u64, 10, 25] {
        let history = History {
            epoch: epochs,
            train: (1..=epochs * 4)
                .map(|i| (i as f64 / 4.0, 1.0 / i as f64))
                .collect(),
            test: (1..=epochs)
                .map(|e| (e as f64, 0.5 / e as f64, 90.0))
                .collect(),
        };
        let svg = plot_svg(&history, "t").unwrap();
        // The x-axis labels are the numeric texts that share one `y` (the
        // y-axis labels each have their own).
        let mut by_row: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for element in svg.split("<text").skip(1) {
            let Some((attributes, rest)) = element.split_once('>') else {
                continue;
            };
            let text = rest.split("</text>").next().unwrap_or("").trim();
            let y = attributes
                .split("y=\"")
                .nth(1)
                .and_then(|v| v.split('"').next())
                .unwrap_or("");
            if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.') {
                by_row
                    .entry(y.to_string())
                    .or_default()
                    .push(text.to_string());
            }
        }
        let labels = by_row
            .into_values()
            .max_by_key(|row| row.len())
            .unwrap_or_default();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert!(labels.len() > 2, "{epochs} epochs: {labels:?}");
        assert!(
            labels.iter().all(|l| !l.contains('.')),
            "{epochs} epochs: {labels:?}"
        );
        if epochs == 4 {
            assert_eq!(labels, ["0", "1", "2", "3", "4"]);
        }
        assert!(svg.contains("held-out loss") && svg.contains("held-out accuracy (%)"));
    }
}

// --- image data ---------------------------------------------------------------

/// An image folder of bundled MNIST digits rendered as `size`×`size` RGB
/// images, each digit in a colour that changes from image to image: class
/// folder `name` gets `per_class` images of `digit`, starting at its
/// `skip`-th occurrence in the 10,000 digits; every fourth is a JPEG.
fn digit_folder(root: &Path, classes: &[(&str, u8)], per_class: usize, skip: usize, size: u32) {
    let (images, labels) = cnnc_runtime::idx::read_labelled(
        Path::new("models/data/mnist-10k-images.idx.gz"),
        Path::new("models/data/mnist-10k-labels.idx.gz"),
    )
    .unwrap();
    for &(name, digit) in classes {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let picks = (0..images.n)
            .filter(|&i| labels[i] == digit)
            .skip(skip)
            .take(per_class);
        for (k, i) in picks.enumerate() {
            let grey = image::GrayImage::from_raw(28, 28, images.image(i).to_vec()).unwrap();
            let grey =
                image::imageops::resize(&grey, size, size, image::imageops::FilterType::Triangle);
            let tint = [
                100 + (k * 53 % 156) as u32,
                100 + (k * 97 % 156) as u32,
                100 + (k * 31 % 156) as u32,
            ];
            let rgb = image::RgbImage::from_fn(size, size, |x, y| {
                let g = grey.get_pixel(x, y).0[0] as u32;
                image::Rgb(tint.map(|t| (g * t / 255) as u8))
            });
            let ext = if k % 4 == 3 { "jpg" } else { "png" };
            rgb.save(dir.join(format!("{i:05}.{ext}"))).unwrap();
        }
    }
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn failure(o: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

const DIGITS_RGB: &str = "tests/fixtures/train/digits_rgb.cnn";

/// Image folders: classes sorted by name, a validation folder or a seeded
/// split, the class names written next to the weights and read back by
/// `cnnc run --labels`.
#[test]
fn image_folders_train_and_write_their_class_names() {
    let dir = temp_dir("folders");
    digit_folder(&dir.join("train"), &[("three", 3), ("eight", 8)], 24, 0, 16);
    digit_folder(&dir.join("val"), &[("three", 3), ("eight", 8)], 8, 500, 20);
    let out = dir.join("w.safetensors");
    let text = ok(&cnnc(&[
        "train",
        DIGITS_RGB,
        "--data",
        dir.join("train").to_str().unwrap(),
        "--val",
        dir.join("val").to_str().unwrap(),
        "--epochs",
        "1",
        "--batch",
        "16",
        "-o",
        out.to_str().unwrap(),
    ]));
    assert!(
        text.contains("/16)") && text.contains("labels.txt"),
        "{text}"
    );
    let labels = dir.join("w.labels.txt");
    assert_eq!(std::fs::read_to_string(&labels).unwrap(), "eight\nthree\n");
    // `cnnc run` with the default preprocessing (what training used) names the class.
    let img = std::fs::read_dir(dir.join("val/three"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let run = ok(&cnnc(&[
        "run",
        DIGITS_RGB,
        "--weights",
        out.to_str().unwrap(),
        "--input",
        img.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
    ]));
    assert!(run.contains("three") || run.contains("eight"), "{run}");
    // No --val: a seeded holdout.
    let o = cnnc(&[
        "train",
        DIGITS_RGB,
        "--data",
        dir.join("train").to_str().unwrap(),
        "--holdout",
        "10",
        "--max-steps",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("38 training images, 10 held out"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Bad image data is an error before any training, naming the file or folder.
#[test]
fn bad_image_data_is_an_error_naming_the_file() {
    let dir = temp_dir("badimages");
    let out = dir.join("w.safetensors");
    let train = |data: &Path, extra: &[&str]| {
        let o = cnnc(
            &[
                &[
                    "train",
                    DIGITS_RGB,
                    "--data",
                    data.to_str().unwrap(),
                    "-o",
                    out.to_str().unwrap(),
                ][..],
                extra,
            ]
            .concat(),
        );
        let err = failure(&o);
        assert!(!out.exists(), "wrote weights: {err}");
        err
    };
    // An empty class folder.
    let empty = dir.join("empty");
    digit_folder(&empty, &[("a", 1)], 4, 0, 16);
    std::fs::create_dir_all(empty.join("b")).unwrap();
    let err = train(&empty, &[]);
    assert!(err.contains("b` has no images"), "{err}");
    // An unreadable image.
    let broken = dir.join("broken");
    digit_folder(&broken, &[("a", 1), ("b", 2)], 4, 0, 16);
    std::fs::write(broken.join("b/zz.png"), b"not a png").unwrap();
    let err = train(&broken, &[]);
    assert!(err.contains("zz.png` is not a readable image"), "{err}");
    // More classes than the model has outputs: the fix is `--set`.
    let three = dir.join("three");
    digit_folder(&three, &[("a", 1), ("b", 2), ("c", 3)], 4, 0, 16);
    let err = train(&three, &[]);
    assert!(
        err.contains("3 classes") && err.contains("--set num_classes=3"),
        "{err}"
    );
    // Images the transforms do not bring to the model's size.
    let good = dir.join("good");
    digit_folder(&good, &[("a", 1), ("b", 2)], 4, 0, 16);
    let cfg = dir.join("crop.yaml");
    std::fs::write(&cfg, "transforms:\n  train: [random_crop: 12]\n").unwrap();
    let err = train(&good, &["--config", cfg.to_str().unwrap()]);
    assert!(
        err.contains("good/a/0")
            && err.contains(
                ".png`: a 16×16 image is 12×12 after transforms.train, but the model takes 16×16"
            ),
        "{err}"
    );
    std::fs::write(&cfg, "transforms:\n  train: [center_crop: 24]\n").unwrap();
    let err = train(
        &three,
        &["--config", cfg.to_str().unwrap(), "--set", "num_classes=3"],
    );
    assert!(err.contains("larger than the 16×16 image"), "{err}");
    // A directory of nothing known.
    let nothing = dir.join("nothing");
    std::fs::create_dir_all(&nothing).unwrap();
    std::fs::write(nothing.join("notes.txt"), "x").unwrap();
    let err = train(&nothing, &[]);
    assert!(
        err.contains("no class folders") && err.contains("MNIST") && err.contains("CIFAR"),
        "{err}"
    );
    // Padding that leaves no room for the image.
    let err = train(&good, &["--pad", "8"]);
    assert!(err.contains("`--pad 8` leaves nothing"), "{err}");
    // A validation folder with other classes.
    let err = train(
        &three,
        &["--set", "num_classes=3", "--val", good.to_str().unwrap()],
    );
    assert!(err.contains("the same class folders"), "{err}");
    // A CIFAR file that is not whole records.
    let bin = dir.join("part.bin");
    std::fs::write(&bin, vec![0u8; 3073 * 2 + 5]).unwrap();
    let err = train(&bin, &[]);
    assert!(
        err.contains("not a whole number of CIFAR-10 records"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The CIFAR fixtures (tests/fixtures/train/make_cifar_fixture.py): records
/// as published, CIFAR-100's fine label, the class names from the meta file.
#[test]
fn cifar_batches_are_read_as_published() {
    let (pixels, labels) = cnnc::tools::train::data::read_cifar(
        Path::new("tests/fixtures/train/cifar10/data_batch_1.bin"),
        false,
    )
    .unwrap();
    assert_eq!(labels, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(pixels.len(), 6 * 3072);
    // Record 2, green plane, pixel 5: (37·2 + 85 + 5) mod 256.
    assert_eq!(pixels[2 * 3072 + 1024 + 5], 164);
    let (_, fine) = cnnc::tools::train::data::read_cifar(
        Path::new("tests/fixtures/train/cifar100/train.bin"),
        true,
    )
    .unwrap();
    assert_eq!(fine, vec![0, 7, 14, 21]);
    let dir = temp_dir("cifar");
    let out = dir.join("w.safetensors");
    let cfg = dir.join("t.yaml");
    std::fs::write(
        &cfg,
        "batch: 4\ntransforms:\n  train: [random_crop: {size: 32, padding: 4}, random_horizontal_flip, resize: 16]\n  eval: [resize: 16]\n",
    )
    .unwrap();
    let text = ok(&cnnc(&[
        "train",
        DIGITS_RGB,
        "--set",
        "num_classes=10",
        "--data",
        "tests/fixtures/train/cifar10",
        "--config",
        cfg.to_str().unwrap(),
        "--epochs",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]));
    assert!(text.contains("(0/3)") || text.contains("/3)"), "{text}");
    let names = std::fs::read_to_string(dir.join("w.labels.txt")).unwrap();
    assert!(names.starts_with("airplane\nautomobile\n") && names.lines().count() == 10);
    // The directory the published archive unpacks to, one level down.
    let nested = dir.join("archive/cifar-10-batches-bin");
    std::fs::create_dir_all(&nested).unwrap();
    for f in ["data_batch_1.bin", "test_batch.bin"] {
        std::fs::copy(
            Path::new("tests/fixtures/train/cifar10").join(f),
            nested.join(f),
        )
        .unwrap();
    }
    let o = cnnc(&[
        "train",
        DIGITS_RGB,
        "--set",
        "num_classes=10",
        "--data",
        dir.join("archive").to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--max-steps",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("CIFAR-10, 6 training images (1 file), 3 test images"),
        "{err}"
    );
    // CIFAR-100's labels go past a 10-class model.
    let err = failure(&cnnc(&[
        "train",
        DIGITS_RGB,
        "--set",
        "num_classes=10",
        "--data",
        "tests/fixtures/train/cifar100",
        "--config",
        cfg.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]));
    assert!(err.contains("train.bin`: label 14"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Random transforms are seeded: two runs with one seed write the same
/// bytes, another seed other weights.
#[test]
fn augmented_runs_with_one_seed_are_bit_identical() {
    let dir = temp_dir("seeded");
    digit_folder(&dir.join("data"), &[("a", 1), ("b", 7)], 12, 0, 20);
    let cfg = dir.join("t.yaml");
    std::fs::write(
        &cfg,
        "batch: 8\nholdout: 8\ntransforms:\n  train:\n    - random_resized_crop: {size: 16, scale: [0.5, 1.0]}\n    - random_horizontal_flip\n    - normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}\n  eval: [resize: 16, normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}]\n",
    )
    .unwrap();
    let run = |seed: &str, name: &str| {
        let out = dir.join(name);
        ok(&cnnc(&[
            "train",
            DIGITS_RGB,
            "--data",
            dir.join("data").to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--epochs",
            "2",
            "--seed",
            seed,
            "-o",
            out.to_str().unwrap(),
        ]));
        std::fs::read(out).unwrap()
    };
    let a = run("5", "a.safetensors");
    assert_eq!(a, run("5", "b.safetensors"));
    assert_ne!(a, run("6", "c.safetensors"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The recipe settings through `cnnc train`: a per-epoch cosine schedule
/// after a warm-up (the lr printed each epoch), AdamW, label smoothing,
/// clipping; and the settings that are refused.
#[test]
fn schedules_and_recipes_through_the_command_line() {
    let dir = temp_dir("recipes");
    let out = dir.join("w.safetensors");
    let cfg = dir.join("r.yaml");
    std::fs::write(
        &cfg,
        "optimizer: adamw\nlr: 0.01\nbatch: 300\nholdout: 100\nlabel_smoothing: 0.1\nclip_grad_norm: 1.0\nschedule:\n  kind: cosine\n  warmup: 1\n  warmup_factor: 0.5\n  eta_min: 0.001\n",
    )
    .unwrap();
    let base = [
        "train",
        "models/mnist_cnn.cnn",
        "--data",
        "models/data/mnist-1000-images.idx",
        "--config",
        cfg.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    let o = cnnc(&[&base[..], &["--epochs", "3"]].concat());
    let text = ok(&o);
    // Epoch 1 warms up at 0.5·lr; epochs 2 and 3 are cosine over 2 epochs.
    assert!(text.contains("lr 5.000e-3"), "{text}");
    assert!(text.contains("lr 1.000e-2"), "{text}");
    assert!(text.contains("lr 5.500e-3"), "{text}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("AdamW lr 0.01 (cosine schedule per epoch, 1 of warm-up)")
            && err.contains("label smoothing 0.1")
            && err.contains("clip 1"),
        "{err}"
    );
    for (flags, expect) in [
        (
            vec!["--label-smoothing", "1.5"],
            "label smoothing must be in [0, 1)",
        ),
        (
            vec!["--clip-grad-norm", "0"],
            "clipping norm must be positive",
        ),
    ] {
        let err = failure(&cnnc(&[&base[..], &flags[..]].concat()));
        assert!(err.contains(expect), "{err}");
    }
    // LeNet-5 ends in log_softmax: NLL, which has no label smoothing.
    let err = failure(&cnnc(&[
        "train",
        "models/lenet5.cnn",
        "--pad",
        "2",
        "--label-smoothing",
        "0.1",
        "-o",
        out.to_str().unwrap(),
    ]));
    assert!(
        err.contains("label smoothing applies to cross-entropy"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Batch norm with fixed (running) statistics — evaluation mode, and
/// training with `batchnorm: eval` — against finite differences; in
/// training with `batchnorm_eval` the running statistics stay as they are.
#[test]
fn batchnorm_with_running_statistics_trains_its_affine_only() {
    gradient_check(
        "a = conv(4, k=3)\n  b = batchnorm\n  relu\n  c = conv(3, k=3)",
        "[2, 6, 6]",
    );
    gradient_check(
        "flatten\n  a = linear(5)\n  b = batchnorm\n  relu\n  c = linear(3)",
        "[2, 3, 3]",
    );
    let graph = graph_of("tests/fixtures/train/resnet_bn.cnn");
    let mut net = Net::new(graph.clone(), &rng::hashed_weights(&graph, 2)).unwrap();
    net.batchnorm_eval = true;
    let before = net.state.clone();
    let (x, y) = &mnist_batches(8)[0];
    let fwd = net
        .forward(x, y.len(), Mode::Train { dropout_key: 1 })
        .unwrap();
    assert_eq!(net.state, before, "running statistics moved");
    let eval = net.forward(x, y.len(), Mode::Eval).unwrap();
    assert_eq!(fwd.output(&net.graph), eval.output(&net.graph));
    let (_, dout) = smoothed_loss(Loss::CrossEntropy, fwd.output(&graph), y, 10, 0.0);
    let grads = net.backward(&fwd, dout).unwrap();
    let bn1 = graph
        .params
        .iter()
        .position(|p| p.key == "bn1.weight")
        .unwrap();
    assert!(grads[bn1].as_ref().unwrap().iter().any(|&g| g != 0.0));
}

/// Fine-tuning: a trained 2-class model becomes a 3-class one with `--set`
/// and `--reset fc`, its features frozen and its batch norms on running
/// statistics; the best epoch's weights are kept next to the last.
#[test]
fn fine_tuning_resets_freezes_and_keeps_the_best_epoch() {
    let dir = temp_dir("finetune");
    digit_folder(&dir.join("two"), &[("a", 1), ("b", 7)], 16, 0, 16);
    digit_folder(
        &dir.join("three"),
        &[("a", 1), ("b", 7), ("c", 0)],
        16,
        100,
        16,
    );
    let base = dir.join("base.safetensors");
    let text = ok(&cnnc(&[
        "train",
        DIGITS_RGB,
        "--data",
        dir.join("two").to_str().unwrap(),
        "--epochs",
        "2",
        "--batch",
        "8",
        "-o",
        base.to_str().unwrap(),
    ]));
    assert!(
        text.contains(" best,") && text.contains("best.safetensors"),
        "{text}"
    );
    let best = WeightFile::load(&dir.join("base.best.safetensors")).unwrap();
    assert!(best.tensors.contains_key("fc.weight"));
    let tuned = dir.join("tuned.safetensors");
    let finetune = |extra: &[&str]| {
        cnnc(
            &[
                &[
                    "train",
                    DIGITS_RGB,
                    "--data",
                    dir.join("three").to_str().unwrap(),
                    "--set",
                    "num_classes=3",
                    "--weights",
                    base.to_str().unwrap(),
                    "--epochs",
                    "1",
                    "--batch",
                    "8",
                    "-o",
                    tuned.to_str().unwrap(),
                ][..],
                extra,
            ]
            .concat(),
        )
    };
    // Without --reset the old classifier does not fit, and the error says what to do.
    let err = failure(&finetune(&[]));
    assert!(
        err.contains("fc.weight") && err.contains("--reset fc"),
        "{err}"
    );
    let err = failure(&finetune(&["--freeze", "head"]));
    assert!(
        err.contains("no parameters under `head`") && err.contains("features, fc"),
        "{err}"
    );
    let o = finetune(&[
        "--reset",
        "fc",
        "--freeze",
        "features",
        "--batchnorm",
        "eval",
    ]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("re-initialised: fc.weight, fc.bias"), "{err}");
    let before = WeightFile::load(&base).unwrap();
    let after = WeightFile::load(&tuned).unwrap();
    assert_eq!(after.tensors["fc.weight"].shape, vec![3, 256]);
    for (k, t) in &before.tensors {
        if k.starts_with("features.") {
            // Frozen weights, and running statistics left as they were.
            assert_eq!(t.data, after.tensors[k].data, "{k} changed");
        }
    }
    assert_ne!(
        after.tensors["fc.bias"].data,
        before.tensors["fc.bias"].data
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// End to end on real images: two digits (3 and 8) of the bundled MNIST
/// set, rendered as 16×16 RGB PNGs/JPEGs in changing colours, 300 of each
/// to train on and 100 other ones of each in a validation folder; the small
/// `digits_rgb` model with augmentation, AdamW and a cosine schedule must
/// reach 95% on the validation images (measured: see docs/training.md).
#[test]
fn end_to_end_on_rendered_digit_images() {
    let dir = temp_dir("e2e");
    digit_folder(
        &dir.join("train"),
        &[("three", 3), ("eight", 8)],
        300,
        0,
        16,
    );
    digit_folder(
        &dir.join("val"),
        &[("three", 3), ("eight", 8)],
        100,
        500,
        16,
    );
    let cfg = dir.join("e2e.yaml");
    std::fs::write(
        &cfg,
        "optimizer: adamw\nlr: 0.01\nbatch: 32\nepochs: 6\nlabel_smoothing: 0.05\nschedule: {kind: cosine}\ntransforms:\n  train:\n    - random_crop: {size: 16, padding: 1}\n    - normalize: {mean: [0.2, 0.2, 0.2], std: [0.3, 0.3, 0.3]}\n  eval:\n    - normalize: {mean: [0.2, 0.2, 0.2], std: [0.3, 0.3, 0.3]}\n",
    )
    .unwrap();
    let out = dir.join("w.safetensors");
    let started = std::time::Instant::now();
    let text = ok(&cnnc(&[
        "train",
        DIGITS_RGB,
        "--data",
        dir.join("train").to_str().unwrap(),
        "--val",
        dir.join("val").to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]));
    let acc = validation_accuracy(&text, 6);
    eprintln!(
        "end to end: {acc}% on 200 validation images, {:.1} s\n{text}",
        started.elapsed().as_secs_f64()
    );
    assert!(acc >= 95.0, "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The validation accuracy (in %) on the line of the last of `epochs`
/// epochs: its second `accuracy` (the first is the training accuracy).
fn validation_accuracy(text: &str, epochs: usize) -> f64 {
    let last = text
        .lines()
        .rfind(|l| l.starts_with(&format!("epoch {epochs}/{epochs}")))
        .unwrap_or_else(|| panic!("no line for epoch {epochs}:\n{text}"));
    last.split("accuracy ")
        .nth(2)
        .and_then(|a| a.split('%').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in `{last}`"))
}

/// The source chapter's three networks (`models/vgg_small.cnn`,
/// `models/googlenet_small.cnn`, `models/resnet50_bottleneck.cnn`, none with
/// batch norm) trained to a held-out accuracy on real images: 3s and 8s of
/// the bundled digits rendered as 32×32 RGB PNGs/JPEGs in changing colours,
/// 300 of each to train on and 100 other ones of each in `--val`. Each
/// model at `--set size=32 --set base_dim=8` (a fraction of the chapter's
/// 224×224 input and width, for CI time), torchvision's kaiming
/// initialisation (`init: kaiming`; from PyTorch's default one the deep
/// VGG and ResNet sometimes stay at chance for many epochs), Adam lr 1e-3
/// with a cosine schedule, batch 32, 10 epochs, `random_crop` with padding
/// 2, must reach 90% on the validation images after its last epoch
/// (measured: see docs/training.md).
#[test]
fn the_chapter_models_train_to_an_accuracy_on_digit_images() {
    let dir = temp_dir("chapter_accuracy");
    let classes = [("three", 3), ("eight", 8)];
    digit_folder(&dir.join("train"), &classes, 300, 0, 32);
    digit_folder(&dir.join("val"), &classes, 100, 500, 32);
    let cfg = dir.join("chapter.yaml");
    std::fs::write(
        &cfg,
        "optimizer: adam\ninit: kaiming\nlr: 0.001\nbatch: 32\nepochs: 10\nschedule: {kind: cosine}\ntransforms:\n  train:\n    - random_crop: {size: 32, padding: 2}\n    - normalize: {mean: [0.2, 0.2, 0.2], std: [0.3, 0.3, 0.3]}\n  eval:\n    - normalize: {mean: [0.2, 0.2, 0.2], std: [0.3, 0.3, 0.3]}\n",
    )
    .unwrap();
    for model in [
        "models/vgg_small.cnn",
        "models/googlenet_small.cnn",
        "models/resnet50_bottleneck.cnn",
    ] {
        let out = dir.join("w.safetensors");
        let started = std::time::Instant::now();
        let text = ok(&cnnc(&[
            "train",
            model,
            "--set",
            "size=32",
            "--set",
            "base_dim=8",
            "--data",
            dir.join("train").to_str().unwrap(),
            "--val",
            dir.join("val").to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]));
        let acc = validation_accuracy(&text, 10);
        eprintln!(
            "{model}: {acc}% on 200 validation images, {:.1} s\n{text}",
            started.elapsed().as_secs_f64()
        );
        assert!(acc >= 90.0, "{model}: {text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The source chapter's VGG and ResNet-50 (`models/vgg_small.cnn`,
/// `models/resnet50_bottleneck.cnn`, 224×224 RGB, 2 classes), at reduced
/// width for CI time, train on a 224×224 image folder with the default
/// preprocessing (cnnc run's) and the default recipe: two steps each, a
/// finite loss, weights that `cnnc run` loads and a labels file it reads.
/// (googlenet_small's inception widths are fixed: too slow for a test.)
#[test]
fn the_chapter_models_train_on_a_224_image_folder() {
    let dir = temp_dir("chapter");
    digit_folder(&dir.join("data"), &[("three", 3), ("eight", 8)], 4, 0, 224);
    for model in ["models/vgg_small.cnn", "models/resnet50_bottleneck.cnn"] {
        let out = dir.join("w.safetensors");
        let text = ok(&cnnc(&[
            "train",
            model,
            "--set",
            "base_dim=2",
            "--data",
            dir.join("data").to_str().unwrap(),
            "--holdout",
            "2",
            "--batch",
            "3",
            "--epochs",
            "1",
            "-o",
            out.to_str().unwrap(),
        ]));
        assert!(
            text.contains("2 steps") && !text.contains("NaN"),
            "{model}: {text}"
        );
        let img = dir
            .join("data/three")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let run = ok(&cnnc(&[
            "run",
            model,
            "--set",
            "base_dim=2",
            "--weights",
            out.to_str().unwrap(),
            "--labels",
            dir.join("w.labels.txt").to_str().unwrap(),
            "--input",
            img.to_str().unwrap(),
        ]));
        assert!(run.contains("three") || run.contains("eight"), "{run}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `cnnc train --dry-run`'s figures come from the trainer's own buffers,
/// measured on 2 and 3 images and extended to the batch: at another batch
/// they must equal what a real training step (forward, loss, backward,
/// optimiser step, on real values) allocates, byte for byte, on models
/// with every op (dropout masks, LRN, pools' indices, batch norm in both
/// modes, stochastic depth, in-place relus, fused conv → relu → pool).
#[test]
fn memory_model_equals_what_a_training_step_allocates() {
    for (model, batchnorm_eval) in [
        ("tests/fixtures/train/ops.cnn", false),
        ("tests/fixtures/train/resnet_bn.cnn", false),
        ("tests/fixtures/train/resnet_bn.cnn", true),
        ("tests/fixtures/train/shuffle_convnext.cnn", false),
        ("models/mnist_cnn.cnn", false),
    ] {
        let graph = graph_of(model);
        let classes = graph.output_shape().numel() as usize;
        let per = graph.input_shape().numel() as usize;
        // The first parameter frozen: no optimiser state for it.
        let mut frozen = vec![false; graph.params.len()];
        frozen[0] = true;
        for (config, n) in [(adam(), 7), (sgd(0.0, false), 5)] {
            let mut net = Net::new(graph.clone(), &rng::hashed_weights(&graph, 3)).unwrap();
            net.batchnorm_eval = batchnorm_eval;
            let planned = net
                .memory_model(config.moments(), &frozen, 5)
                .unwrap()
                .at(n);
            let (x, y) = hashed_batches(n, per).swap_remove(0);
            let y: Vec<u8> = y.iter().map(|&l| l % classes as u8).collect();
            let fwd = net.forward(&x, n, Mode::Train { dropout_key: 11 }).unwrap();
            let loss = if model.ends_with("ops.cnn") {
                Loss::Nll
            } else {
                Loss::CrossEntropy
            };
            let (_, dout) = smoothed_loss(loss, fwd.output(&net.graph), &y, classes, 0.0);
            let activations = fwd.bytes();
            let mut grads = net.backward(&fwd, dout).unwrap();
            let gradients: usize = grads.iter().flatten().map(|g| g.len() * 4).sum();
            for (g, _) in grads.iter_mut().zip(&frozen).filter(|(_, &f)| f) {
                *g = None;
            }
            let mut opt = Optimizer::new(config, graph.params.len());
            opt.step(&mut net.state.values, &grads);
            let what = format!("{model} (batchnorm eval {batchnorm_eval}), {n} images, {config:?}");
            assert_eq!(planned.activations, activations, "activations of {what}");
            assert_eq!(
                planned.scratch,
                net.gradient_peak.get(),
                "scratch of {what}"
            );
            assert_eq!(planned.gradients, gradients, "gradients of {what}");
            assert_eq!(planned.optimizer, opt.bytes(), "optimiser of {what}");
            assert_eq!(planned.parameters, net.parameter_bytes(), "{what}");
            assert_eq!(planned.batches, 5 * n * (per * 4 + 1), "{what}");
            assert!(activations > 0 && planned.scratch > 0, "{what}");
        }
    }
}

/// The figures of a `--dry-run` line, in bytes: "  NAME  HUMAN  BYTES bytes  ...".
fn dry_run_bytes(text: &str, name: &str) -> usize {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no `{name}` in\n{text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "bytes").unwrap();
    words[at - 1].parse().unwrap()
}

/// `cnnc train --dry-run` prints the training memory and exits without
/// training (no weights written); a real run at the same batch prints what
/// its first step allocated, which must be the dry run's figures exactly.
#[test]
fn dry_run_prints_what_the_first_step_allocates() {
    let dir = temp_dir("dry_run");
    digit_folder(&dir.join("data"), &[("three", 3), ("eight", 8)], 20, 0, 16);
    let data = dir.join("data");
    let out = dir.join("w.safetensors");
    let common = [
        "train",
        DIGITS_RGB,
        "--data",
        data.to_str().unwrap(),
        "--holdout",
        "8",
        "--batch",
        "24",
        "--optimizer",
        "sgd",
        "--momentum",
        "0.9",
    ];
    let dry = ok(&cnnc(&[&common[..], &["--dry-run"]].concat()));
    assert!(
        dry.starts_with("training memory of digits_rgb at batch 24"),
        "{dry}"
    );
    assert!(!out.exists() && !dir.join("w.ckpt").exists());
    let o = cnnc(
        &[
            &common[..],
            &["--max-steps", "1", "-o", out.to_str().unwrap()],
        ]
        .concat(),
    );
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("memory at the first step of 24 images"))
        .unwrap_or_else(|| panic!("{err}"));
    for name in [
        "parameters",
        "gradients",
        "optimiser",
        "activations",
        "scratch",
    ] {
        let measured: usize = line
            .split(&format!("{name} "))
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in `{line}`"));
        let planned = dry_run_bytes(
            &dry,
            if name == "optimiser" {
                "optimiser state"
            } else {
                name
            },
        );
        assert_eq!(planned, measured, "{name}: dry run\n{dry}\nrun: {line}");
    }
    // SGD with momentum keeps one buffer per parameter: as many bytes as the gradients.
    assert_eq!(
        dry_run_bytes(&dry, "optimiser state"),
        dry_run_bytes(&dry, "gradients")
    );
    let total = dry_run_bytes(&dry, "total");
    let parts: usize = [
        "parameters",
        "gradients",
        "optimiser state",
        "activations",
        "scratch",
        "input batches",
    ]
    .iter()
    .map(|n| dry_run_bytes(&dry, n))
    .sum();
    assert_eq!(total, parts, "{dry}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A batch that does not fit the memory (here `CNNC_MEMORY_LIMIT`, one byte
/// less than the dry run's total) is refused before training, with both
/// numbers and a batch that fits; that batch then trains under the same
/// limit. A limit that is not a size is an error.
#[test]
fn a_batch_that_does_not_fit_is_refused_with_one_that_does() {
    let dir = temp_dir("memory_limit");
    digit_folder(&dir.join("data"), &[("three", 3), ("eight", 8)], 20, 0, 16);
    let data = dir.join("data");
    let out = dir.join("w.safetensors");
    let args = |batch: &str| {
        vec![
            "train".to_string(),
            DIGITS_RGB.to_string(),
            "--data".to_string(),
            data.to_str().unwrap().to_string(),
            "--holdout".to_string(),
            "8".to_string(),
            "--batch".to_string(),
            batch.to_string(),
            "--max-steps".to_string(),
            "1".to_string(),
        ]
    };
    let with_limit = |args: Vec<String>, limit: &str| {
        crate::common::cnnc()
            .args(args)
            .env("CNNC_MEMORY_LIMIT", limit)
            .output()
            .unwrap()
    };
    let mut dry = args("32");
    dry.push("--dry-run".into());
    let dry_text = ok(&with_limit(dry.clone(), "1GiB"));
    let total = dry_run_bytes(&dry_text, "total");
    assert!(
        dry_text.contains("fits; the largest batch that fits is"),
        "{dry_text}"
    );
    let limit = (total - 1).to_string();
    // The dry run says it does not fit, and still exits 0.
    assert!(ok(&with_limit(dry, &limit)).contains("does not fit"));
    let mut run = args("32");
    run.extend(["-o".to_string(), out.to_str().unwrap().to_string()]);
    let err = failure(&with_limit(run, &limit));
    let human = |b: usize| cnnc::tools::summary::bytes(b as i64);
    assert!(
        err.contains(&format!("a batch of 32 needs {}", human(total)))
            && err.contains(&format!(
                "but {} is available (CNNC_MEMORY_LIMIT)",
                human(total - 1)
            )),
        "{err}"
    );
    let fits: usize = err
        .split("pass `--batch ")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no batch suggested: {err}"));
    assert!((1..32).contains(&fits), "{err}");
    assert!(!out.exists(), "weights written after the refusal");
    let mut run = args(&fits.to_string());
    run.extend(["-o".to_string(), out.to_str().unwrap().to_string()]);
    ok(&with_limit(run, &limit));
    // Too small for even one image: says what the fixed part needs.
    let mut run = args("32");
    run.extend(["-o".to_string(), out.to_str().unwrap().to_string()]);
    let err = failure(&with_limit(run.clone(), "1000"));
    assert!(err.contains("even a batch of 1 needs"), "{err}");
    let err = failure(&with_limit(run, "lots"));
    assert!(
        err.contains("CNNC_MEMORY_LIMIT: ") && err.contains("`lots`"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
