//! A trainable network: a checked graph with f32 parameters, a forward pass
//! that records what the backward pass needs, and reverse-mode
//! differentiation over the graph IR.

use super::kernels::{self as k, BnSaved, ConvGeom, PoolGeom};
use super::rng;
use crate::ir::{Activation, Graph, NodeId, Op, ParamKind, Shape};
use cnnc_runtime::weights::{Data, WeightFile, WeightTensor};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Instant;

/// Parameters and buffers, aligned with `graph.params`.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// f32 values (empty for `num_batches_tracked`).
    pub values: Vec<Vec<f32>>,
    /// `num_batches_tracked` counters (0 elsewhere).
    pub counts: Vec<i64>,
}

/// Which entries of `graph.params` a node uses.
#[derive(Clone, Copy, Debug, Default)]
struct Slots {
    weight: Option<usize>,
    bias: Option<usize>,
    mean: Option<usize>,
    var: Option<usize>,
    count: Option<usize>,
}

/// How a forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// `model.train()`: batch statistics (running ones updated), dropout with
    /// masks drawn from `rng::key(&[dropout_key, ordinal])` (see [`dropout_mask`]).
    Train { dropout_key: u64 },
    /// `model.eval()`: running statistics, no dropout.
    Eval,
}

enum Saved {
    None,
    Arg(Vec<u32>),
    Bn(BnSaved),
    /// Per-element multiplier of dropout (0 or 1/(1−p)).
    Mask(Vec<f32>),
    /// LRN denominators.
    Lrn(Vec<f32>),
    /// Batch norm with running statistics: 1/√(running_var + eps) per channel.
    BnFixed(Vec<f32>),
}

/// What a forward pass leaves for the backward pass.
pub struct Forward {
    pub n: usize,
    /// Every node's output, `n` images each.
    pub values: Vec<Vec<f32>>,
    saved: Vec<Saved>,
}

impl Forward {
    pub fn output(&self, graph: &Graph) -> &[f32] {
        &self.values[graph.output]
    }

    /// Bytes this pass keeps for the backward pass: every node output still
    /// held (an in-place relu's input has handed its buffer on) and what
    /// each node saved (pool indices, batch-norm statistics, masks).
    pub fn bytes(&self) -> usize {
        let saved: usize = self
            .saved
            .iter()
            .map(|s| match s {
                Saved::None => 0,
                Saved::Arg(v) => v.len() * 4,
                Saved::Bn(b) => (b.xhat.len() + b.inv_std.len()) * 4,
                Saved::Mask(v) | Saved::Lrn(v) | Saved::BnFixed(v) => v.len() * 4,
            })
            .sum();
        self.values.iter().map(|v| v.len() * 4).sum::<usize>() + saved
    }
}

/// Training memory at one batch size, in bytes, by what holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrainMemory {
    /// Parameters and buffers (f32), and `num_batches_tracked` counters.
    pub parameters: usize,
    /// The backward pass's parameter gradients (f32; frozen layers' too,
    /// computed and then dropped).
    pub gradients: usize,
    /// The optimiser's moments: SGD's momentum buffer, Adam's two.
    pub optimizer: usize,
    /// What the forward pass keeps for the backward pass ([`Forward::bytes`]).
    pub activations: usize,
    /// The backward pass's activation gradients at their peak.
    pub scratch: usize,
    /// Input batches in flight: the one trained on, the one being decoded
    /// and the prefetch queue's.
    pub batches: usize,
}

/// [`TrainMemory`] at any batch size: the parts that do not depend on it,
/// and (activations, scratch) measured at 2 and 3 images.
#[derive(Clone, Copy, Debug)]
pub struct MemoryModel {
    pub parameters: usize,
    pub gradients: usize,
    pub optimizer: usize,
    at2: [usize; 2],
    at3: [usize; 2],
    /// Bytes of input batches in flight, per image of the batch.
    batch_bytes: usize,
}

impl MemoryModel {
    pub fn at(&self, batch: usize) -> TrainMemory {
        let extend = |i: usize| {
            let (a, b) = (self.at2[i] as i128, self.at3[i] as i128);
            (a + (b - a) * (batch as i128 - 2)).max(0) as usize
        };
        TrainMemory {
            parameters: self.parameters,
            gradients: self.gradients,
            optimizer: self.optimizer,
            activations: extend(0),
            scratch: extend(1),
            batches: self.batch_bytes * batch,
        }
    }

    /// The largest batch whose memory is at most `limit` bytes (0 if none).
    pub fn largest_batch(&self, limit: usize) -> usize {
        let (mut lo, mut hi) = (0usize, 1usize << 32);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.at(mid).total() <= limit {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }
}

impl TrainMemory {
    pub fn total(&self) -> usize {
        self.parameters
            + self.gradients
            + self.optimizer
            + self.activations
            + self.scratch
            + self.batches
    }
}

pub struct Net {
    pub graph: Graph,
    pub state: State,
    /// Per-node (forward, backward) seconds, summed over passes, when
    /// profiling (`Some`); a cell so that `backward(&self)` can add to it.
    pub profile: RefCell<Option<Vec<[f64; 2]>>>,
    /// Batch norms use their running statistics in training mode too (and
    /// leave them as they are), as after `bn.eval()` in a `train()` model:
    /// for fine-tuning with small batches. Their weight and bias still train.
    pub batchnorm_eval: bool,
    /// Bytes of activation gradients alive at once in the last backward
    /// pass, at their peak (the `scratch` of [`TrainMemory`]).
    pub gradient_peak: Cell<usize>,
    slots: Vec<Slots>,
    /// For dropout nodes, their position among the graph's dropout nodes (the mask's key).
    dropout_ordinal: Vec<u64>,
    /// Relu nodes that overwrite their input in place: the input's only
    /// reader, not the network's input, and made by an op whose backward
    /// pass does not read its own output (relu's own backward reads `y`).
    relu_in_place: Vec<bool>,
    /// Convolutions whose output goes only to an in-place relu: they apply
    /// it themselves (their own output is read by nothing else, and their
    /// backward pass does not read it), and that relu just passes it on.
    fused_relu: Vec<bool>,
    /// In-place relus whose only reader is a convolution or a max pool
    /// taking it as its first input: that reader's backward pass applies
    /// the relu's gradient and passes the result straight to the relu's
    /// input, so the relu's own backward pass never runs.
    relu_folded: Vec<bool>,
    /// Convolutions that run with their relu and the 2×2 max pool after it
    /// ([`k::conv_relu_maxpool_forward`]): the pool's node id. The conv and
    /// relu nodes then keep no output of their own (nothing reads it: the
    /// relu is folded into the pool's backward pass).
    pool_fused: Vec<Option<NodeId>>,
}

fn chw(shape: Shape) -> (usize, usize, usize) {
    match shape {
        Shape::Chw(c, h, w) => (c as usize, h as usize, w as usize),
        Shape::Flat(f) => (f as usize, 1, 1),
    }
}

impl Net {
    /// A network with weights from a state_dict (checked strictly: every key, shape).
    pub fn new(graph: Graph, weights: &WeightFile) -> Result<Net, String> {
        if graph.nodes.iter().any(|n| n.fusion != Default::default()) {
            return Err("training needs the checked graph, not a fused one".into());
        }
        let mut values = Vec::new();
        let mut counts = Vec::new();
        for p in &graph.params {
            let t = weights
                .tensors
                .get(&p.key)
                .ok_or_else(|| format!("the weights have no `{}`", p.key))?;
            let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let numel: usize = shape.iter().product();
            if p.kind == ParamKind::NumBatchesTracked {
                let v = match &t.data {
                    Data::I64(v) if v.len() == 1 => v[0],
                    _ => return Err(format!("`{}` must be one int64", p.key)),
                };
                values.push(Vec::new());
                counts.push(v);
            } else {
                if t.shape != shape || t.data.to_f32().len() != numel {
                    return Err(format!(
                        "`{}` has shape {:?}, the model needs {:?}",
                        p.key, t.shape, shape
                    ));
                }
                values.push(t.data.to_f32());
                counts.push(0);
            }
        }
        let extra: Vec<&String> = weights
            .tensors
            .keys()
            .filter(|k| !graph.params.iter().any(|p| &p.key == *k))
            .collect();
        if let Some(e) = extra.first() {
            return Err(format!(
                "the weights have `{e}`, which the model `{}` does not declare",
                graph.name
            ));
        }
        let mut slots = vec![Slots::default(); graph.nodes.len()];
        for (i, p) in graph.params.iter().enumerate() {
            let Some(node) = p.node else { continue };
            let s = &mut slots[node];
            match p.kind {
                ParamKind::Weight | ParamKind::Bare => s.weight = Some(i),
                ParamKind::Bias => s.bias = Some(i),
                ParamKind::RunningMean => s.mean = Some(i),
                ParamKind::RunningVar => s.var = Some(i),
                ParamKind::NumBatchesTracked => s.count = Some(i),
            }
        }
        let mut dropout_ordinal = vec![0; graph.nodes.len()];
        let mut next = 0;
        for (id, node) in graph.nodes.iter().enumerate() {
            if matches!(
                node.op,
                Op::Dropout { .. } | Op::Dropout2d { .. } | Op::StochasticDepth { .. }
            ) {
                dropout_ordinal[id] = next;
                next += 1;
            }
        }
        let mut readers = vec![0usize; graph.nodes.len()];
        for node in &graph.nodes {
            for &i in &node.inputs {
                readers[i] += 1;
            }
        }
        let relu_in_place: Vec<bool> = graph
            .nodes
            .iter()
            .map(|node| {
                let src = node.inputs.first().copied().unwrap_or(0);
                matches!(node.op, Op::Activation(Activation::Relu))
                    && src != 0
                    && src != graph.output
                    && readers[src] == 1
                    && !matches!(graph.nodes[src].op, Op::Softmax | Op::LogSoftmax)
            })
            .collect();
        let mut fused_relu = vec![false; graph.nodes.len()];
        for (id, node) in graph.nodes.iter().enumerate() {
            if relu_in_place[id] && matches!(graph.nodes[node.inputs[0]].op, Op::Conv2d { .. }) {
                fused_relu[node.inputs[0]] = true;
            }
        }
        let mut relu_folded = vec![false; graph.nodes.len()];
        for node in &graph.nodes {
            let src = node.inputs.first().copied().unwrap_or(0);
            let folds = matches!(
                node.op,
                Op::Conv2d { .. } | Op::MaxPool2d { .. } | Op::AdaptiveMaxPool2d { .. }
            );
            if folds && relu_in_place[src] && readers[src] == 1 && src != graph.output {
                relu_folded[src] = true;
            }
        }
        let mut pool_fused = vec![None; graph.nodes.len()];
        for (p, node) in graph.nodes.iter().enumerate() {
            let Op::MaxPool2d {
                kernel: (2, 2),
                stride: (2, 2),
                padding: (0, 0),
                dilation: (1, 1),
                ..
            } = node.op
            else {
                continue;
            };
            let r = node.inputs[0];
            let c = graph.nodes[r].inputs.first().copied().unwrap_or(0);
            let (_, h, w) = chw(graph.nodes[r].shape);
            let (_, oh, ow) = chw(node.shape);
            // Every window inside the map (ceil mode may add one that is not).
            if relu_folded[r] && fused_relu[c] && 2 * oh <= h && 2 * ow <= w {
                pool_fused[c] = Some(p);
            }
        }
        Ok(Net {
            graph,
            state: State { values, counts },
            slots,
            dropout_ordinal,
            relu_in_place,
            fused_relu,
            relu_folded,
            pool_fused,
            profile: RefCell::new(None),
            batchnorm_eval: false,
            gradient_peak: Cell::new(0),
        })
    }

    /// The state_dict as a weight file (f32 tensors, int64 counters), PyTorch's names.
    pub fn to_weight_file(&self) -> WeightFile {
        let mut tensors = BTreeMap::new();
        for (i, p) in self.graph.params.iter().enumerate() {
            let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let (dtype, data) = if p.kind == ParamKind::NumBatchesTracked {
                ("I64", Data::I64(vec![self.state.counts[i]]))
            } else {
                ("F32", Data::F32(self.state.values[i].clone()))
            };
            tensors.insert(
                p.key.clone(),
                WeightTensor {
                    dtype: dtype.into(),
                    shape,
                    data,
                },
            );
        }
        WeightFile { tensors }
    }

    /// Indices of `graph.params` that the optimiser updates: weights and
    /// biases of layers in the graph (PyTorch skips parameters without a
    /// gradient, which is what `unused` layers' parameters are).
    pub fn trainable(&self) -> Vec<usize> {
        self.graph
            .params
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind.is_parameter() && p.node.is_some())
            .map(|(i, _)| i)
            .collect()
    }

    fn param(
        &self,
        slot: Option<usize>,
        node: &crate::ir::Node,
        what: &str,
    ) -> Result<&[f32], String> {
        slot.map(|i| self.state.values[i].as_slice())
            .ok_or_else(|| format!("missing {what} of `{}`", node.name))
    }

    /// Runs `n` images (NCHW f32). In training mode batch norms use batch
    /// statistics and update their running statistics as PyTorch does.
    /// Training memory as a function of the batch size, from what the
    /// trainer allocates: one forward and backward pass over 2 and over 3
    /// blank images (in training mode; the state is restored afterwards),
    /// their kept activations ([`Forward::bytes`]) and activation-gradient
    /// peak ([`Net::gradient_peak`]) measured, to be extended linearly (each
    /// of those buffers holds a whole number of images, or a per-channel
    /// statistic that does not depend on the batch); the parameter gradients
    /// as the backward pass returns them; `moments` optimiser buffers (0, 1
    /// or 2) the size of each parameter that is not `frozen`; and `in_flight`
    /// input batches.
    pub fn memory_model(
        &mut self,
        moments: usize,
        frozen: &[bool],
        in_flight: usize,
    ) -> Result<MemoryModel, String> {
        let per = self.graph.input_shape().numel() as usize;
        let kept = self.state.clone();
        type Probe = ([usize; 2], Vec<Option<Vec<f32>>>);
        let mut probe = |n: usize| -> Result<Probe, String> {
            let fwd = self.forward(&vec![0.0; n * per], n, Mode::Train { dropout_key: 0 })?;
            let dout = vec![0.0; fwd.output(&self.graph).len()];
            let grads = self.backward(&fwd, dout)?;
            Ok(([fwd.bytes(), self.gradient_peak.get()], grads))
        };
        let two = probe(2);
        let three = probe(3);
        self.state = kept;
        let ((at2, grads), (at3, _)) = (two?, three?);
        let bytes = |g: &Option<Vec<f32>>| g.as_ref().map_or(0, |g| g.len() * 4);
        let trained: usize = grads
            .iter()
            .zip(frozen)
            .filter(|(_, &f)| !f)
            .map(|(g, _)| bytes(g))
            .sum();
        Ok(MemoryModel {
            parameters: self.parameter_bytes(),
            gradients: grads.iter().map(bytes).sum(),
            optimizer: moments * trained,
            at2,
            at3,
            batch_bytes: in_flight * (per * 4 + 1),
        })
    }

    /// Bytes of the parameters and buffers as held ([`State`]).
    pub fn parameter_bytes(&self) -> usize {
        self.state.values.iter().map(|v| v.len() * 4).sum::<usize>() + self.state.counts.len() * 8
    }

    pub fn forward(&mut self, x: &[f32], n: usize, mode: Mode) -> Result<Forward, String> {
        let per = self.graph.input_shape().numel() as usize;
        if x.len() != n * per {
            return Err(format!(
                "input has {} values, {n} images need {}",
                x.len(),
                n * per
            ));
        }
        let train = matches!(mode, Mode::Train { .. });
        let mut values: Vec<Vec<f32>> = Vec::with_capacity(self.graph.nodes.len());
        let mut saved = Vec::with_capacity(self.graph.nodes.len());
        values.push(x.to_vec());
        saved.push(Saved::None);
        // Fused convs' pooled outputs, by pool node, until it takes them.
        let mut pooled: BTreeMap<NodeId, (Vec<f32>, Vec<u32>)> = BTreeMap::new();
        for id in 1..self.graph.nodes.len() {
            let node = &self.graph.nodes[id];
            let slots = self.slots[id];
            let in_shape = self.graph.nodes[node.inputs[0]].shape;
            let (c, h, w) = chw(in_shape);
            let (oc, oh, ow) = chw(node.shape);
            let xin = &values[node.inputs[0]];
            let mut keep = Saved::None;
            let started = self.profile.borrow().is_some().then(Instant::now);
            let out = match node.op {
                Op::Input => return Err("a second input node".into()),
                Op::Conv2d { .. } => {
                    let g = conv_geom(node, in_shape)?;
                    let wt = self.param(slots.weight, node, "weight")?;
                    let b = slots.bias.map(|i| self.state.values[i].as_slice());
                    if let Some(p) = self.pool_fused[id] {
                        let (_, ph, pw) = chw(self.graph.nodes[p].shape);
                        let out = k::conv_relu_maxpool_forward(&g, n, xin, wt, b, (ph, pw));
                        pooled.insert(p, out);
                        Vec::new()
                    } else {
                        k::conv_forward(&g, n, xin, wt, b, self.fused_relu[id])
                    }
                }
                Op::Linear {
                    in_features,
                    out_features,
                    ..
                } => {
                    let wt = self.param(slots.weight, node, "weight")?;
                    let b = slots.bias.map(|i| self.state.values[i].as_slice());
                    k::linear_forward(n, in_features as usize, out_features as usize, xin, wt, b)
                }
                Op::MaxPool2d { .. } if pooled.contains_key(&id) => {
                    let (y, arg) = pooled.remove(&id).expect("just checked");
                    keep = Saved::Arg(arg);
                    y
                }
                Op::MaxPool2d {
                    kernel,
                    stride,
                    padding,
                    dilation,
                    ..
                } => {
                    let g = PoolGeom {
                        h,
                        w,
                        oh,
                        ow,
                        kernel,
                        stride,
                        padding,
                        dilation,
                    };
                    let (y, arg) = k::maxpool_forward(&g, n * c, xin);
                    keep = Saved::Arg(arg);
                    y
                }
                Op::AvgPool2d {
                    kernel,
                    stride,
                    padding,
                    count_include_pad,
                    ..
                } => {
                    let g = PoolGeom {
                        h,
                        w,
                        oh,
                        ow,
                        kernel,
                        stride,
                        padding,
                        dilation: (1, 1),
                    };
                    k::avgpool_forward(&g, count_include_pad, n * c, xin)
                }
                Op::AdaptiveAvgPool2d { .. } => {
                    k::adaptive_avg_forward(n * c, (h, w), (oh, ow), xin)
                }
                Op::AdaptiveMaxPool2d { .. } => {
                    let (y, arg) = k::adaptive_max_forward(n * c, (h, w), (oh, ow), xin);
                    keep = Saved::Arg(arg);
                    y
                }
                Op::BatchNorm { eps, momentum, .. } => {
                    let gamma = self.param(slots.weight, node, "weight")?;
                    let beta = self.param(slots.bias, node, "bias")?;
                    if train && !self.batchnorm_eval {
                        let (y, s, mean, var) =
                            k::batchnorm_train_forward(n, c, h * w, eps.0, xin, gamma, beta)
                                .map_err(|e| format!("`{}`: {e}", node.name))?;
                        keep = Saved::Bn(s);
                        // PyTorch: running = (1 − m)·running + m·batch (unbiased variance).
                        let m = momentum.0 as f32;
                        if let Some(i) = slots.mean {
                            for (r, &b) in self.state.values[i].iter_mut().zip(&mean) {
                                *r = (1.0 - m) * *r + m * b as f32;
                            }
                        }
                        if let Some(i) = slots.var {
                            for (r, &b) in self.state.values[i].iter_mut().zip(&var) {
                                *r = (1.0 - m) * *r + m * b as f32;
                            }
                        }
                        if let Some(i) = slots.count {
                            self.state.counts[i] += 1;
                        }
                        y
                    } else {
                        let mean = self.param(slots.mean, node, "running_mean")?;
                        let var = self.param(slots.var, node, "running_var")?;
                        {
                            keep = Saved::BnFixed(
                                var.iter()
                                    .map(|&v| (1.0 / (v as f64 + eps.0).sqrt()) as f32)
                                    .collect(),
                            );
                        }
                        k::batchnorm_eval(c, h * w, eps.0, xin, gamma, beta, mean, var)
                    }
                }
                Op::LocalResponseNorm {
                    size,
                    alpha,
                    beta,
                    k: kk,
                } => {
                    let (y, den) =
                        k::lrn_forward(n, c, h * w, (size as usize, alpha.0, beta.0, kk.0), xin);
                    keep = Saved::Lrn(den);
                    y
                }
                Op::Dropout { p } | Op::Dropout2d { p } => match mode {
                    Mode::Train { dropout_key } if p.0 > 0.0 => {
                        let per_channel = matches!(node.op, Op::Dropout2d { .. });
                        let mask = dropout_mask(
                            dropout_key,
                            self.dropout_ordinal[id],
                            n,
                            c,
                            h * w,
                            p.0,
                            per_channel,
                        );
                        let y = xin.iter().zip(&mask).map(|(a, b)| a * b).collect();
                        keep = Saved::Mask(mask);
                        y
                    }
                    _ => xin.clone(),
                },
                Op::StochasticDepth { p, row } => match mode {
                    Mode::Train { dropout_key } if p.0 > 0.0 => {
                        // torchvision draws one Bernoulli per image (`row`)
                        // or one for the whole batch (`batch`).
                        let total = xin.len();
                        let (units, per_unit) = if row {
                            (n, total / n.max(1))
                        } else {
                            (1, total)
                        };
                        let mask = dropout_mask(
                            dropout_key,
                            self.dropout_ordinal[id],
                            units,
                            1,
                            per_unit,
                            p.0,
                            true,
                        );
                        let y = xin.iter().zip(&mask).map(|(a, b)| a * b).collect();
                        keep = Saved::Mask(mask);
                        y
                    }
                    _ => xin.clone(),
                },
                Op::Flatten | Op::Identity => xin.clone(),
                Op::LayerNormStats { .. } => {
                    return Err(
                        "training runs the checked graph; layer norm statistics are a fusion"
                            .into(),
                    )
                }
                Op::LayerNorm { eps, .. } => {
                    let gamma = self.param(slots.weight, node, "weight")?;
                    let beta = self.param(slots.bias, node, "bias")?;
                    let mut y = vec![0.0; xin.len()];
                    let hw = h * w;
                    for (x, y) in xin.chunks(c * hw).zip(y.chunks_mut(c * hw)) {
                        let (mean, inv) = layer_norm_stats(x, c, hw, eps.0);
                        for ch in 0..c {
                            let rows = x[ch * hw..(ch + 1) * hw]
                                .iter()
                                .zip(&mut y[ch * hw..(ch + 1) * hw]);
                            for (((&v, o), &m), &r) in rows.zip(&mean).zip(&inv) {
                                *o = ((v as f64 - m) * r) as f32 * gamma[ch] + beta[ch];
                            }
                        }
                    }
                    y
                }
                Op::Scale { .. } => {
                    let s = self.param(slots.weight, node, "scale")?;
                    let hw = h * w;
                    xin.iter()
                        .enumerate()
                        .map(|(i, &v)| v * s[(i / hw) % c])
                        .collect()
                }
                Op::ChannelShuffle { groups } => {
                    let hw = h * w;
                    let g = groups as usize;
                    let per = c / g;
                    let mut y = vec![0.0; xin.len()];
                    for img in 0..n {
                        for to_c in 0..c {
                            let from = (img * c + (to_c % g) * per + to_c / g) * hw;
                            let to = (img * c + to_c) * hw;
                            y[to..to + hw].copy_from_slice(&xin[from..from + hw]);
                        }
                    }
                    y
                }
                Op::ChannelSlice { offset, channels } => {
                    let hw = h * w;
                    let (offset, channels) = (offset as usize, channels as usize);
                    let mut y = Vec::with_capacity(n * channels * hw);
                    for img in 0..n {
                        let from = (img * c + offset) * hw;
                        y.extend_from_slice(&xin[from..from + channels * hw]);
                    }
                    y
                }
                Op::Softmax | Op::LogSoftmax => {
                    k::softmax_forward(n, c, h * w, matches!(node.op, Op::LogSoftmax), xin)
                }
                Op::Activation(Activation::Relu) if self.relu_in_place[id] => {
                    let mut y = std::mem::take(&mut values[node.inputs[0]]);
                    if !self.fused_relu[node.inputs[0]] {
                        k::relu_in_place(&mut y);
                    }
                    y
                }
                Op::Activation(a) => k::activate_all(a, xin),
                Op::Add => {
                    let other = &values[node.inputs[1]];
                    xin.iter().zip(other).map(|(a, b)| a + b).collect()
                }
                Op::Mul => {
                    // A [C, 1, 1] factor has one value per plane of H·W.
                    let f = &values[node.inputs[1]];
                    let hw = oh * ow;
                    let broadcast = f.len() * hw == xin.len();
                    xin.iter()
                        .enumerate()
                        .map(|(i, &v)| v * if broadcast { f[i / hw] } else { f[i] })
                        .collect()
                }
                Op::Concat => {
                    let hw = oh * ow;
                    let mut y = Vec::with_capacity(n * oc * hw);
                    for i in 0..n {
                        for &inp in &node.inputs {
                            let ci = chw(self.graph.nodes[inp].shape).0;
                            y.extend_from_slice(&values[inp][i * ci * hw..(i + 1) * ci * hw]);
                        }
                    }
                    y
                }
            };
            debug_assert!(
                out.len() == n * node.shape.numel() as usize
                    || (out.is_empty() && !pooled.is_empty()),
                "node {id}"
            );
            if let (Some(t), Some(p)) = (started, self.profile.get_mut().as_mut()) {
                p[id][0] += t.elapsed().as_secs_f64();
            }
            values.push(out);
            saved.push(keep);
        }
        Ok(Forward { n, values, saved })
    }

    /// Gradients of every trainable parameter (aligned with `graph.params`,
    /// `None` where there is none) given d(loss)/d(output).
    pub fn backward(&self, fwd: &Forward, dout: Vec<f32>) -> Result<Vec<Option<Vec<f32>>>, String> {
        let g = &self.graph;
        let n = fwd.n;
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; g.nodes.len()];
        let mut pgrads: Vec<Option<Vec<f32>>> = vec![None; g.params.len()];
        grads[g.output] = Some(dout);
        let add = |grads: &mut Vec<Option<Vec<f32>>>, to: NodeId, d: Vec<f32>| {
            if to == 0 {
                return;
            }
            match &mut grads[to] {
                Some(acc) => acc.iter_mut().zip(&d).for_each(|(a, b)| *a += b),
                slot => *slot = Some(d),
            }
        };
        // Where a folded relu's gradient goes: to the relu's input.
        let past_folded_relu = |src: NodeId| {
            if self.relu_folded[src] {
                g.nodes[src].inputs[0]
            } else {
                src
            }
        };
        let mut peak = 0usize;
        for id in (1..g.nodes.len()).rev() {
            let Some(dy) = grads[id].take() else { continue };
            let started = self.profile.borrow().is_some().then(Instant::now);
            let (dy_at, dy_bytes) = (dy.as_ptr(), dy.len() * 4);
            let node = &g.nodes[id];
            let slots = self.slots[id];
            let src = node.inputs[0];
            let need_dx = src != 0;
            let in_shape = g.nodes[src].shape;
            let (c, h, w) = chw(in_shape);
            let (_, oh, ow) = chw(node.shape);
            let x = &fwd.values[src];
            let y = &fwd.values[id];
            match node.op {
                Op::Input => {}
                Op::Conv2d { .. } => {
                    let geom = conv_geom(node, in_shape)?;
                    let wt = self.param(slots.weight, node, "weight")?;
                    let folded = self.relu_folded[src];
                    let (dx, dw, db) = k::conv_backward(&geom, n, x, wt, &dy, need_dx, folded);
                    pgrads[slots.weight.unwrap()] = Some(dw);
                    if let Some(b) = slots.bias {
                        pgrads[b] = Some(db);
                    }
                    if let Some(dx) = dx {
                        add(&mut grads, past_folded_relu(src), dx);
                    }
                }
                Op::Linear {
                    in_features,
                    out_features,
                    ..
                } => {
                    let wt = self.param(slots.weight, node, "weight")?;
                    let (dx, dw, db) = k::linear_backward(
                        n,
                        in_features as usize,
                        out_features as usize,
                        x,
                        wt,
                        &dy,
                        need_dx,
                    );
                    pgrads[slots.weight.unwrap()] = Some(dw);
                    if let Some(b) = slots.bias {
                        pgrads[b] = Some(db);
                    }
                    if let Some(dx) = dx {
                        add(&mut grads, src, dx);
                    }
                }
                Op::MaxPool2d { .. } | Op::AdaptiveMaxPool2d { .. } => {
                    let Saved::Arg(arg) = &fwd.saved[id] else {
                        return Err("max pool without saved indices".into());
                    };
                    let relu_of = self.relu_folded[src].then_some(y.as_slice());
                    let dx = k::argmax_backward(n * c, h * w, arg, &dy, relu_of);
                    add(&mut grads, past_folded_relu(src), dx);
                }
                Op::AvgPool2d {
                    kernel,
                    stride,
                    padding,
                    count_include_pad,
                    ..
                } => {
                    let geom = PoolGeom {
                        h,
                        w,
                        oh,
                        ow,
                        kernel,
                        stride,
                        padding,
                        dilation: (1, 1),
                    };
                    add(
                        &mut grads,
                        src,
                        k::avgpool_backward(&geom, count_include_pad, n * c, &dy),
                    );
                }
                Op::AdaptiveAvgPool2d { .. } => {
                    add(
                        &mut grads,
                        src,
                        k::adaptive_avg_backward(n * c, (h, w), (oh, ow), &dy),
                    );
                }
                Op::BatchNorm { .. } if matches!(fwd.saved[id], Saved::BnFixed(_)) => {
                    // y = (x − μ)·γ·s + β with fixed μ and s = 1/√(σ² + eps):
                    // dx = dy·γ·s, dγ = Σ dy·(x − μ)·s, dβ = Σ dy.
                    let Saved::BnFixed(inv) = &fwd.saved[id] else {
                        unreachable!("matched above")
                    };
                    let gamma = self.param(slots.weight, node, "weight")?;
                    let mean = self.param(slots.mean, node, "running_mean")?;
                    let hw = h * w;
                    let mut dx = vec![0f32; dy.len()];
                    let (mut dg, mut db) = (vec![0f64; c], vec![0f64; c]);
                    for (plane, (dxp, (dyp, xp))) in dx
                        .chunks_mut(hw)
                        .zip(dy.chunks(hw).zip(x.chunks(hw)))
                        .enumerate()
                    {
                        let ch = plane % c;
                        let scale = gamma[ch] * inv[ch];
                        for ((d, &g), &xv) in dxp.iter_mut().zip(dyp).zip(xp) {
                            *d = g * scale;
                            dg[ch] += g as f64 * ((xv - mean[ch]) * inv[ch]) as f64;
                            db[ch] += g as f64;
                        }
                    }
                    pgrads[slots.weight.unwrap()] = Some(dg.iter().map(|&v| v as f32).collect());
                    pgrads[slots.bias.unwrap()] = Some(db.iter().map(|&v| v as f32).collect());
                    add(&mut grads, src, dx);
                }
                Op::BatchNorm { .. } => {
                    let Saved::Bn(s) = &fwd.saved[id] else {
                        return Err(format!(
                            "`{}`: backward needs a training-mode forward pass",
                            node.name
                        ));
                    };
                    let gamma = self.param(slots.weight, node, "weight")?;
                    let (dx, dg, db) = k::batchnorm_train_backward(n, c, h * w, s, gamma, &dy);
                    pgrads[slots.weight.unwrap()] = Some(dg);
                    pgrads[slots.bias.unwrap()] = Some(db);
                    add(&mut grads, src, dx);
                }
                Op::LocalResponseNorm {
                    size,
                    alpha,
                    beta,
                    k: kk,
                } => {
                    let Saved::Lrn(den) = &fwd.saved[id] else {
                        return Err("LRN without saved denominators".into());
                    };
                    let dx = k::lrn_backward(
                        c,
                        h * w,
                        (size as usize, alpha.0, beta.0, kk.0),
                        x,
                        den,
                        &dy,
                    );
                    add(&mut grads, src, dx);
                }
                Op::Dropout { .. } | Op::Dropout2d { .. } | Op::StochasticDepth { .. } => {
                    match &fwd.saved[id] {
                        Saved::Mask(m) => add(
                            &mut grads,
                            src,
                            dy.iter().zip(m).map(|(a, b)| a * b).collect(),
                        ),
                        _ => add(&mut grads, src, dy),
                    }
                }
                Op::Flatten | Op::Identity => add(&mut grads, src, dy),
                Op::LayerNormStats { .. } => {
                    return Err(
                        "training runs the checked graph; layer norm statistics are a fusion"
                            .into(),
                    )
                }
                Op::LayerNorm { eps, .. } => {
                    // x̂ = (x − μ)·r, y = γ·x̂ + β over the C channels of a
                    // pixel: dx = r/C·(C·g − Σg − x̂·Σ(g·x̂)), g = dy·γ.
                    let gamma = self.param(slots.weight, node, "weight")?;
                    let hw = h * w;
                    // Channel rows of whole maps at a time (a loop over a
                    // pixel's channels reads a plane apart); per pixel and
                    // per channel the sums run in the same order as a
                    // pixel-by-pixel loop, so the results are the same.
                    let mut dx = vec![0.0f32; x.len()];
                    let mut dg = vec![0.0f64; c];
                    let mut db = vec![0.0f64; c];
                    let cf = c as f64;
                    for i in 0..n {
                        let at = |ch: usize| (i * c + ch) * hw..(i * c + ch + 1) * hw;
                        let (mean, inv) =
                            layer_norm_stats(&x[i * c * hw..(i + 1) * c * hw], c, hw, eps.0);
                        let (mut sum_g, mut sum_gx) = (vec![0.0f64; hw], vec![0.0f64; hw]);
                        for ch in 0..c {
                            let g = gamma[ch] as f64;
                            let (xs, ds) = (&x[at(ch)], &dy[at(ch)]);
                            for p in 0..hw {
                                let (v, d) = (xs[p] as f64, ds[p] as f64);
                                let xhat = (v - mean[p]) * inv[p];
                                let gx = d * g;
                                sum_g[p] += gx;
                                sum_gx[p] += gx * xhat;
                                dg[ch] += d * xhat;
                                db[ch] += d;
                            }
                        }
                        for ch in 0..c {
                            let g = gamma[ch] as f64;
                            let (xs, ds) = (&x[at(ch)], &dy[at(ch)]);
                            for (p, o) in dx[at(ch)].iter_mut().enumerate() {
                                let xhat = (xs[p] as f64 - mean[p]) * inv[p];
                                let gx = ds[p] as f64 * g;
                                *o = (inv[p] / cf * (cf * gx - sum_g[p] - xhat * sum_gx[p])) as f32;
                            }
                        }
                    }
                    pgrads[slots.weight.unwrap()] = Some(dg.iter().map(|&v| v as f32).collect());
                    pgrads[slots.bias.unwrap()] = Some(db.iter().map(|&v| v as f32).collect());
                    add(&mut grads, src, dx);
                }
                Op::Scale { .. } => {
                    // y = x·s[c]: dx = dy·s[c]; ds[c] = Σ dy·x over images and the map.
                    let s = self.param(slots.weight, node, "scale")?;
                    let hw = h * w;
                    let mut ds = vec![0.0f64; c];
                    for (i, (&d, &v)) in dy.iter().zip(x).enumerate() {
                        ds[(i / hw) % c] += d as f64 * v as f64;
                    }
                    pgrads[slots.weight.unwrap()] = Some(ds.iter().map(|&v| v as f32).collect());
                    let dx = dy
                        .iter()
                        .enumerate()
                        .map(|(i, &d)| d * s[(i / hw) % c])
                        .collect();
                    add(&mut grads, src, dx);
                }
                Op::ChannelShuffle { groups } => {
                    // The inverse permutation: input channel i·per + j took
                    // output channel j·g + i.
                    let hw = h * w;
                    let g = groups as usize;
                    let per = c / g;
                    let mut dx = vec![0.0; dy.len()];
                    for img in 0..n {
                        for to_c in 0..c {
                            let from = (img * c + (to_c % g) * per + to_c / g) * hw;
                            let to = (img * c + to_c) * hw;
                            dx[from..from + hw].copy_from_slice(&dy[to..to + hw]);
                        }
                    }
                    add(&mut grads, src, dx);
                }
                Op::ChannelSlice { offset, channels } => {
                    let hw = h * w;
                    let (offset, channels) = (offset as usize, channels as usize);
                    let mut dx = vec![0.0; n * c * hw];
                    for img in 0..n {
                        let to = (img * c + offset) * hw;
                        let from = img * channels * hw;
                        dx[to..to + channels * hw].copy_from_slice(&dy[from..from + channels * hw]);
                    }
                    add(&mut grads, src, dx);
                }
                Op::Softmax | Op::LogSoftmax => {
                    let log = matches!(node.op, Op::LogSoftmax);
                    add(
                        &mut grads,
                        src,
                        k::softmax_backward(n, c, h * w, log, y, &dy),
                    );
                }
                Op::Activation(a) => {
                    // Relu's gradient from its output (y ≤ 0 exactly where x ≤ 0;
                    // a NaN in both passes it on), so an in-place relu needs no input.
                    let mut dx = dy;
                    if a == Activation::Relu {
                        k::relu_grad_in_place(&mut dx, y);
                    } else {
                        k::activation_grad_in_place(a, &mut dx, x);
                    }
                    add(&mut grads, src, dx);
                }
                Op::Add => {
                    add(&mut grads, node.inputs[1], dy.clone());
                    add(&mut grads, src, dy);
                }
                Op::Mul => {
                    // y = x·f: dx = dy·f; df = dy·x, summed over the plane
                    // where f was broadcast over it.
                    let f = &fwd.values[node.inputs[1]];
                    let hw = oh * ow;
                    let broadcast = f.len() * hw == x.len();
                    let dx: Vec<f32> = dy
                        .iter()
                        .enumerate()
                        .map(|(i, &d)| d * if broadcast { f[i / hw] } else { f[i] })
                        .collect();
                    let df: Vec<f32> = if broadcast {
                        dy.chunks(hw)
                            .zip(x.chunks(hw))
                            .map(|(d, v)| d.iter().zip(v).map(|(a, b)| a * b).sum())
                            .collect()
                    } else {
                        dy.iter().zip(x).map(|(a, b)| a * b).collect()
                    };
                    add(&mut grads, node.inputs[1], df);
                    add(&mut grads, src, dx);
                }
                Op::Concat => {
                    let hw = oh * ow;
                    let total = chw(node.shape).0;
                    let mut offset = 0;
                    for &inp in &node.inputs {
                        let ci = chw(g.nodes[inp].shape).0;
                        let mut d = Vec::with_capacity(n * ci * hw);
                        for i in 0..n {
                            let at = (i * total + offset) * hw;
                            d.extend_from_slice(&dy[at..at + ci * hw]);
                        }
                        add(&mut grads, inp, d);
                        offset += ci;
                    }
                }
            }
            if let (Some(t), Some(p)) = (started, self.profile.borrow_mut().as_mut()) {
                p[id][1] += t.elapsed().as_secs_f64();
            }
            // This node's output gradient and the input gradients it made
            // (added to the ones waiting) are alive together here; an op
            // that passed its output gradient on unchanged holds it once.
            let waiting: usize = grads.iter().flatten().map(|d| d.len() * 4).sum();
            let passed_on = grads.iter().flatten().any(|d| d.as_ptr() == dy_at);
            peak = peak.max(waiting + if passed_on { 0 } else { dy_bytes });
        }
        self.gradient_peak.set(peak);
        Ok(pgrads)
    }
}

/// Per pixel of one image's [c][hw] map: the mean over channels and
/// 1/√(biased variance + eps), in f64, summed over channels in order.
fn layer_norm_stats(x: &[f32], c: usize, hw: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let (mut mean, mut var) = (vec![0.0f64; hw], vec![0.0f64; hw]);
    for row in x.chunks(hw).take(c) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= c as f64);
    for row in x.chunks(hw).take(c) {
        for ((s, &m), &v) in var.iter_mut().zip(&mean).zip(row) {
            *s += (v as f64 - m).powi(2);
        }
    }
    let inv = var
        .iter()
        .map(|s| 1.0 / (s / c as f64 + eps).sqrt())
        .collect();
    (mean, inv)
}

/// Dropout multipliers: 0 with probability p, else 1/(1−p); one draw per
/// element, or per (image, channel) for dropout2d. Draw `i` is
/// `uniform(key([key, ordinal]), i)`, `ordinal` the node's position among
/// the dropout nodes.
pub fn dropout_mask(
    key: u64,
    ordinal: u64,
    n: usize,
    c: usize,
    hw: usize,
    p: f64,
    per_channel: bool,
) -> Vec<f32> {
    let key = rng::key(&[key, ordinal]);
    let scale = (1.0 / (1.0 - p)) as f32;
    let unit = if per_channel { hw } else { 1 };
    (0..n * c * hw)
        .map(|i| {
            if rng::uniform(key, (i / unit) as u64) < p {
                0.0
            } else {
                scale
            }
        })
        .collect()
}

fn conv_geom(node: &crate::ir::Node, in_shape: Shape) -> Result<ConvGeom, String> {
    let Op::Conv2d {
        out_channels,
        kernel,
        stride,
        padding,
        dilation,
        groups,
        padding_mode,
        ..
    } = node.op
    else {
        return Err("not a convolution".into());
    };
    let (c, h, w) = chw(in_shape);
    let (_, oh, ow) = chw(node.shape);
    Ok(ConvGeom {
        c,
        h,
        w,
        oc: out_channels as usize,
        oh,
        ow,
        kh: kernel.0 as usize,
        kw: kernel.1 as usize,
        sh: stride.0 as usize,
        sw: stride.1 as usize,
        dh: dilation.0 as usize,
        dw: dilation.1 as usize,
        pads: [padding.top, padding.bottom, padding.left, padding.right].map(|p| p as usize),
        groups: groups as usize,
        mode: padding_mode,
    })
}
