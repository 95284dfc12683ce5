//! Losses and optimisers, with PyTorch's exact update rules.

use serde::{Deserialize, Serialize};

/// Which loss: cross-entropy on logits, or NLL on log-probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// `nn.CrossEntropyLoss`: log-softmax fused with NLL, on logits.
    // Both spellings everywhere: flags say `cross-entropy`, YAML keys `cross_entropy`.
    #[value(alias = "cross_entropy")]
    #[serde(alias = "cross-entropy")]
    CrossEntropy,
    /// `nn.NLLLoss`: for models that end in `log_softmax`.
    Nll,
}

/// Mean loss over the batch and its gradient with respect to the model output
/// (`[n, classes]`). Labels must be `< classes` (checked before training).
pub fn loss(kind: Loss, out: &[f32], labels: &[u8], classes: usize) -> (f64, Vec<f32>) {
    let n = labels.len();
    let mut grad = vec![0f32; out.len()];
    let mut total = 0f64;
    for (i, &t) in labels.iter().enumerate() {
        let row = &out[i * classes..(i + 1) * classes];
        let g = &mut grad[i * classes..(i + 1) * classes];
        let t = t as usize;
        match kind {
            Loss::CrossEntropy => {
                let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
                let lse = max + sum.ln();
                total += lse - row[t] as f64;
                for (j, gv) in g.iter_mut().enumerate() {
                    let p = (row[j] as f64 - lse).exp();
                    *gv = ((p - if j == t { 1.0 } else { 0.0 }) / n as f64) as f32;
                }
            }
            Loss::Nll => {
                total -= row[t] as f64;
                g[t] = (-1.0 / n as f64) as f32;
            }
        }
    }
    (total / n as f64, grad)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adam,
    Sgd,
}

/// Hyperparameters of `torch.optim.SGD` / `torch.optim.Adam`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            kind: OptimizerKind::Adam,
            lr: 0.0002,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Optimiser state for each parameter (aligned with `graph.params`).
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    pub config: OptimConfig,
    pub step: u64,
    /// SGD momentum buffers, or Adam's first moments.
    pub m: Vec<Vec<f32>>,
    /// Adam's second moments.
    pub v: Vec<Vec<f32>>,
}

impl Optimizer {
    pub fn new(config: OptimConfig, params: usize) -> Optimizer {
        Optimizer {
            config,
            step: 0,
            m: vec![Vec::new(); params],
            v: vec![Vec::new(); params],
        }
    }

    /// One step over every parameter that has a gradient.
    pub fn step(&mut self, params: &mut [Vec<f32>], grads: &[Option<Vec<f32>>]) {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let p = &mut params[i];
            let wd = c.weight_decay as f32;
            match c.kind {
                OptimizerKind::Sgd => {
                    let lr = c.lr as f32;
                    let mom = c.momentum as f32;
                    let first = self.m[i].is_empty();
                    if mom != 0.0 && first {
                        self.m[i] = vec![0.0; p.len()];
                    }
                    let buf = &mut self.m[i];
                    for j in 0..p.len() {
                        let mut d = g[j];
                        if wd != 0.0 {
                            d += wd * p[j];
                        }
                        if mom != 0.0 {
                            // PyTorch: the first step copies d into the buffer.
                            buf[j] = if first {
                                d
                            } else {
                                mom * buf[j] + (1.0 - c.dampening as f32) * d
                            };
                            d = if c.nesterov { d + mom * buf[j] } else { buf[j] };
                        }
                        p[j] -= lr * d;
                    }
                }
                OptimizerKind::Adam => {
                    if self.m[i].is_empty() {
                        self.m[i] = vec![0.0; p.len()];
                        self.v[i] = vec![0.0; p.len()];
                    }
                    let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
                    let bc1 = 1.0 - c.beta1.powi(t);
                    let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt() as f32;
                    let step_size = (c.lr / bc1) as f32;
                    let eps = c.eps as f32;
                    let (m, v) = (&mut self.m[i], &mut self.v[i]);
                    for j in 0..p.len() {
                        let mut d = g[j];
                        if wd != 0.0 {
                            d += wd * p[j];
                        }
                        // exp_avg.lerp_(grad, 1 − β1); exp_avg_sq·β2 + (1 − β2)·g²
                        m[j] += (1.0 - b1) * (d - m[j]);
                        v[j] = v[j] * b2 + (1.0 - b2) * d * d;
                        let denom = v[j].sqrt() / bc2_sqrt + eps;
                        p[j] -= step_size * m[j] / denom;
                    }
                }
            }
        }
    }
}
