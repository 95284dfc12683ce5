//! Losses, optimisers, learning-rate schedules and gradient clipping, with
//! PyTorch's exact rules (torch.nn.functional.cross_entropy with
//! label_smoothing, torch.optim.SGD/Adam/AdamW, torch.optim.lr_scheduler's
//! StepLR/MultiStepLR/CosineAnnealingLR after a LinearLR warm-up,
//! torch.nn.utils.clip_grad_norm_).

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
    smoothed_loss(kind, out, labels, classes, 0.0)
}

/// [`loss`] with label smoothing ε (cross-entropy only): the target is
/// (1 − ε)·one-hot + ε/classes, as `F.cross_entropy(label_smoothing=ε)`.
pub fn smoothed_loss(
    kind: Loss,
    out: &[f32],
    labels: &[u8],
    classes: usize,
    smoothing: f64,
) -> (f64, Vec<f32>) {
    let n = labels.len();
    let spread = smoothing / classes as f64;
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
                total += (1.0 - smoothing) * (lse - row[t] as f64);
                if smoothing != 0.0 {
                    // ε · mean over classes of −log p_j.
                    let all: f64 = row.iter().map(|&v| lse - v as f64).sum();
                    total += smoothing * all / classes as f64;
                }
                for (j, gv) in g.iter_mut().enumerate() {
                    let p = (row[j] as f64 - lse).exp();
                    let target = if j == t { 1.0 - smoothing } else { 0.0 } + spread;
                    *gv = ((p - target) / n as f64) as f32;
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
    /// Adam with decoupled weight decay (torch.optim.AdamW).
    #[value(name = "adamw")]
    #[serde(rename = "adamw")]
    AdamW,
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

impl OptimConfig {
    /// Buffers the size of each trained parameter that [`Optimizer::step`]
    /// allocates: Adam's two moments, SGD's momentum buffer (none without
    /// momentum).
    pub fn moments(&self) -> usize {
        match self.kind {
            OptimizerKind::Adam | OptimizerKind::AdamW => 2,
            OptimizerKind::Sgd if self.momentum != 0.0 => 1,
            OptimizerKind::Sgd => 0,
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

    /// Bytes of the moment buffers allocated so far.
    pub fn bytes(&self) -> usize {
        self.m.iter().chain(&self.v).map(|b| b.len() * 4).sum()
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
                OptimizerKind::Adam | OptimizerKind::AdamW => {
                    // AdamW: p ← p·(1 − lr·wd) first, and no L2 term in the gradient.
                    let decoupled = c.kind == OptimizerKind::AdamW;
                    if decoupled && wd != 0.0 {
                        let keep = (1.0 - c.lr * c.weight_decay) as f32;
                        p.iter_mut().for_each(|v| *v *= keep);
                    }
                    let wd = if decoupled { 0.0 } else { wd };
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

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: scales every gradient
/// by min(1, max_norm / (‖g‖₂ + 1e-6)), ‖g‖₂ over all of them together.
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Vec<f32>>], max_norm: f64) -> f64 {
    let total = grads
        .iter()
        .flatten()
        .map(|g| g.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .sum::<f64>()
        .sqrt();
    let coef = (max_norm / (total + 1e-6)).min(1.0) as f32;
    if coef < 1.0 {
        for g in grads.iter_mut().flatten() {
            g.iter_mut().for_each(|v| *v *= coef);
        }
    }
    total
}

/// Which learning-rate schedule, as torch.optim.lr_scheduler names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// The learning rate stays (after any warm-up).
    #[default]
    Constant,
    /// StepLR: × gamma every `step_size`.
    Step,
    /// MultiStepLR: × gamma at each of `milestones`.
    Multistep,
    /// CosineAnnealingLR: from lr down to `eta_min` over `t_max`.
    Cosine,
}

/// When the scheduler steps: after each epoch (torchvision's references) or
/// after each optimisation step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleUnit {
    #[default]
    Epoch,
    Step,
}

/// `schedule:` in the YAML config. A warm-up is torch's
/// `SequentialLR([LinearLR(warmup_factor, 1, warmup), main], [warmup])`:
/// the main schedule starts counting when the warm-up ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub step_size: u64,
    pub milestones: Vec<u64>,
    pub gamma: f64,
    /// Cosine: the length of the half period; default the epochs (or steps) after the warm-up.
    pub t_max: Option<u64>,
    pub eta_min: f64,
    /// Length of the linear warm-up, in the schedule's units.
    pub warmup: u64,
    /// The warm-up's first factor (LinearLR's start_factor).
    pub warmup_factor: f64,
    pub per: ScheduleUnit,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            kind: ScheduleKind::Constant,
            step_size: 30,
            milestones: Vec::new(),
            gamma: 0.1,
            t_max: None,
            eta_min: 0.0,
            warmup: 0,
            warmup_factor: 0.01,
            per: ScheduleUnit::Epoch,
        }
    }
}

impl Schedule {
    pub fn check(&self) -> Result<(), String> {
        if self.kind == ScheduleKind::Step && self.step_size == 0 {
            return Err("`schedule.step_size` must be at least 1".into());
        }
        if self.kind == ScheduleKind::Multistep && self.milestones.windows(2).any(|w| w[0] > w[1]) {
            return Err("`schedule.milestones` must be in increasing order".into());
        }
        if !(self.warmup_factor > 0.0 && self.warmup_factor <= 1.0) {
            return Err(format!(
                "`schedule.warmup_factor` must be in (0, 1], not {}",
                self.warmup_factor
            ));
        }
        if self.t_max == Some(0) {
            return Err("`schedule.t_max` must be at least 1".into());
        }
        Ok(())
    }

    /// The learning rate after `t` scheduler steps (closed forms of
    /// torch's schedulers); `total` is the schedule's length (epochs or
    /// steps), for cosine's default `t_max`.
    pub fn lr(&self, base: f64, t: u64, total: u64) -> f64 {
        if t < self.warmup {
            let f = self.warmup_factor;
            return base * (f + (1.0 - f) * t as f64 / self.warmup as f64);
        }
        let u = t - self.warmup;
        match self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Step => base * self.gamma.powi((u / self.step_size) as i32),
            ScheduleKind::Multistep => {
                let passed = self.milestones.iter().filter(|&&m| m <= u).count();
                base * self.gamma.powi(passed as i32)
            }
            ScheduleKind::Cosine => {
                let t_max = self
                    .t_max
                    .unwrap_or(total.saturating_sub(self.warmup).max(1));
                let cos = (std::f64::consts::PI * u as f64 / t_max as f64).cos();
                self.eta_min + (base - self.eta_min) * (1.0 + cos) / 2.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_torch() {
        let s = Schedule {
            kind: ScheduleKind::Multistep,
            milestones: vec![2, 4],
            gamma: 0.5,
            warmup: 2,
            warmup_factor: 0.25,
            ..Schedule::default()
        };
        let lrs: Vec<f64> = (0..8).map(|t| s.lr(1.0, t, 8)).collect();
        assert_eq!(lrs, [0.25, 0.625, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]);
        let c = Schedule {
            kind: ScheduleKind::Cosine,
            eta_min: 0.1,
            ..Schedule::default()
        };
        assert!((c.lr(1.0, 5, 10) - 0.55).abs() < 1e-12);
        assert!((c.lr(1.0, 10, 10) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_all_gradients_together() {
        let mut g = vec![Some(vec![3.0f32]), None, Some(vec![4.0f32])];
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        let v = g[0].as_ref().unwrap()[0];
        assert!((v - 0.6).abs() < 1e-6, "{v}");
        let mut g = vec![Some(vec![0.3f32])];
        clip_grad_norm(&mut g, 1.0);
        assert_eq!(g[0].as_ref().unwrap()[0], 0.3);
    }
}
