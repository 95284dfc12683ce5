//! Optimisation passes on the graph IR, run as one readable pipeline.
//!
//! Each pass is a small function that rewrites the graph and returns whether
//! it changed something; [`optimize`] runs them in order and verifies the IR
//! after each. What a pass could not fuse is recorded with the reason, for
//! `cnnc emit --stage fused`.

use crate::ir::{
    Epilogue, FoldedBatchNorm, Graph, MergedLayer, NodeId, Op, Padding, Prologue, Shape,
};

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassLog {
    pub pass: &'static str,
    pub changed: bool,
    /// Fusions made, one line each.
    pub fused: Vec<String>,
    /// Layers left as they were, with the reason.
    pub not_fused: Vec<String>,
}

type Pass = fn(&mut Graph, &mut PassLog);

/// The pipeline, in order.
pub const PIPELINE: &[(&str, Pass)] = &[
    (
        "drop dropout and identity (inference)",
        drop_inference_noops,
    ),
    ("fold batch norm into conv/linear", fold_batchnorm),
    ("fuse activations into epilogues", fuse_activations),
    ("fuse residual adds into epilogues", fuse_residual_adds),
    ("fuse activations after residual adds", fuse_activations),
    (
        "gate multiply into the next convolution",
        gate_into_next_conv,
    ),
    (
        "layer norm into the convolution that reads it",
        layer_norm_into_next_conv,
    ),
    ("global average pool into linear", global_pool_into_linear),
    ("flatten as a view", flatten_as_view),
    ("concat in place", concat_in_place),
    ("report unfused pooling", report_pooling),
];

/// Runs every pass; the graph is verified after each (a failure is a compiler bug).
pub fn optimize(graph: &Graph) -> Result<(Graph, Vec<PassLog>), String> {
    let mut g = graph.clone();
    let mut logs = Vec::new();
    for (name, pass) in PIPELINE {
        let mut log = PassLog {
            pass: name,
            ..PassLog::default()
        };
        pass(&mut g, &mut log);
        log.changed = !log.fused.is_empty();
        g.verify()
            .map_err(|e| format!("IR invalid after pass `{name}`: {e}"))?;
        logs.push(log);
    }
    Ok((g, logs))
}

/// Readers of each node; the graph output counts as a reader (`usize::MAX`).
fn consumers(g: &Graph) -> Vec<Vec<NodeId>> {
    let mut out = vec![Vec::new(); g.nodes.len()];
    for (id, node) in g.nodes.iter().enumerate() {
        for &i in &node.inputs {
            out[i].push(id);
        }
    }
    out[g.output].push(usize::MAX);
    out
}

/// How reports name a node: its module path, or for functional ops (which
/// have none) the op and the nearest named layer before it.
fn label(g: &Graph, id: NodeId) -> String {
    let n = &g.nodes[id];
    if !n.name.is_empty() {
        return format!("`{}` ({})", n.name, n.op.name());
    }
    let mut at = id;
    while let Some(&input) = g.nodes[at].inputs.first() {
        if !g.nodes[input].name.is_empty() {
            return format!("`{}` after `{}`", n.op.name(), g.nodes[input].name);
        }
        at = input;
    }
    format!("`{}` after the input", n.op.name())
}

fn merged(g: &Graph, id: NodeId) -> MergedLayer {
    let n = &g.nodes[id];
    MergedLayer {
        op: n.op.describe(),
        name: n.name.clone(),
        span: n.span,
    }
}

/// Removes `dead` nodes, pointing readers of each at `replacement[dead]`, and renumbers.
fn remove(g: &mut Graph, dead: &[bool], replacement: &[NodeId]) {
    // Follow chains of replaced nodes to a live one.
    let resolve = |mut id: NodeId| {
        while dead[id] {
            id = replacement[id];
        }
        id
    };
    let mut new_index = vec![usize::MAX; g.nodes.len()];
    let mut next = 0;
    for id in 0..g.nodes.len() {
        if !dead[id] {
            new_index[id] = next;
            next += 1;
        }
    }
    let output = new_index[resolve(g.output)];
    let old = std::mem::take(&mut g.nodes);
    for (id, mut node) in old.into_iter().enumerate() {
        if dead[id] {
            continue;
        }
        node.inputs = node.inputs.iter().map(|&i| new_index[resolve(i)]).collect();
        g.nodes.push(node);
    }
    for p in &mut g.params {
        p.node = p.node.map(|n| new_index[resolve(n)]);
    }
    g.output = output;
}

fn is_gemm(op: &Op) -> bool {
    matches!(op, Op::Conv2d { .. } | Op::Linear { .. })
}

/// Dropout, stochastic depth and identity compute nothing at inference.
fn drop_inference_noops(g: &mut Graph, log: &mut PassLog) {
    let mut dead = vec![false; g.nodes.len()];
    let mut replacement: Vec<NodeId> = (0..g.nodes.len()).collect();
    for (id, node) in g.nodes.iter().enumerate() {
        if matches!(
            node.op,
            Op::Dropout { .. } | Op::Dropout2d { .. } | Op::StochasticDepth { .. } | Op::Identity
        ) {
            dead[id] = true;
            replacement[id] = node.inputs[0];
            log.fused.push(format!("dropped {}", label(g, id)));
        }
    }
    remove(g, &dead, &replacement);
}

/// A batch norm right after a conv or linear layer becomes a scale and shift
/// of that layer's weights and bias (done when weights are prepared). So
/// does a `scale` (ConvNeXt's layer_scale) right after a convolution with
/// nothing folded into it yet: w·s and b·s per output channel. (One pass
/// for both keeps the report's pass list as it was.)
fn fold_batchnorm(g: &mut Graph, log: &mut PassLog) {
    let readers = consumers(g);
    let mut dead = vec![false; g.nodes.len()];
    let mut replacement: Vec<NodeId> = (0..g.nodes.len()).collect();
    for id in 0..g.nodes.len() {
        if matches!(g.nodes[id].op, Op::Scale { .. }) {
            fold_scale(g, id, &readers, log, &mut dead, &mut replacement);
            continue;
        }
        let Op::BatchNorm { eps, .. } = g.nodes[id].op else {
            continue;
        };
        let producer = g.nodes[id].inputs[0];
        let p = &g.nodes[producer];
        let reason = if !is_gemm(&p.op) {
            Some(format!(
                "its input comes from {}, not a conv or linear layer; it runs as its own kernel",
                label(g, producer)
            ))
        } else if readers[producer].len() != 1 {
            Some(format!(
                "the output of {} is also read elsewhere",
                label(g, producer)
            ))
        } else if p.fusion.folded_batchnorm.is_some()
            || p.fusion.folded_scale.is_some()
            || !p.fusion.epilogue.is_empty()
        {
            Some(format!("{} already has work after it", label(g, producer)))
        } else {
            None
        };
        if let Some(reason) = reason {
            log.not_fused.push(format!("{}: {reason}", label(g, id)));
            continue;
        }
        let bn = merged(g, id);
        let name = g.nodes[id].name.clone();
        log.fused.push(format!(
            "{} folded into {}",
            label(g, id),
            label(g, producer)
        ));
        let p = &mut g.nodes[producer];
        p.fusion.folded_batchnorm = Some(FoldedBatchNorm { name, eps });
        p.fusion.merged.push(bn);
        dead[id] = true;
        replacement[id] = producer;
    }
    remove(g, &dead, &replacement);
}

/// Folds the `scale` node `id` into the convolution before it, or says why not.
fn fold_scale(
    g: &mut Graph,
    id: NodeId,
    readers: &[Vec<NodeId>],
    log: &mut PassLog,
    dead: &mut [bool],
    replacement: &mut [NodeId],
) {
    let producer = g.nodes[id].inputs[0];
    let p = &g.nodes[producer];
    let reason = if !matches!(p.op, Op::Conv2d { .. }) || dead[producer] {
        Some(format!(
            "its input comes from {}, not a convolution; it runs as a channel-affine kernel",
            label(g, producer)
        ))
    } else if readers[producer].len() != 1 {
        Some(format!(
            "the output of {} is also read elsewhere; it runs as a channel-affine kernel",
            label(g, producer)
        ))
    } else if p.fusion.folded_batchnorm.is_some()
        || p.fusion.folded_scale.is_some()
        || !p.fusion.epilogue.is_empty()
    {
        Some(format!(
            "{} already has work after it; it runs as a channel-affine kernel",
            label(g, producer)
        ))
    } else {
        None
    };
    if let Some(reason) = reason {
        log.not_fused.push(format!("{}: {reason}", label(g, id)));
        return;
    }
    let scale = merged(g, id);
    let key = g.nodes[id].name.clone();
    log.fused.push(format!(
        "{} folded into {}",
        label(g, id),
        label(g, producer)
    ));
    let p = &mut g.nodes[producer];
    p.fusion.folded_scale = Some(key);
    p.fusion.merged.push(scale);
    dead[id] = true;
    replacement[id] = producer;
}

/// An activation after a conv/linear layer runs in that layer's epilogue.
fn fuse_activations(g: &mut Graph, log: &mut PassLog) {
    let readers = consumers(g);
    let mut dead = vec![false; g.nodes.len()];
    let mut replacement: Vec<NodeId> = (0..g.nodes.len()).collect();
    for id in 0..g.nodes.len() {
        let Op::Activation(a) = g.nodes[id].op else {
            continue;
        };
        let producer = g.nodes[id].inputs[0];
        if dead[producer] {
            continue;
        }
        let p = &g.nodes[producer];
        if !is_gemm(&p.op) {
            if !matches!(p.op, Op::Add) {
                log.not_fused.push(format!(
                    "{}: its input comes from {}, which has no epilogue; it runs as its own kernel",
                    label(g, id),
                    label(g, producer)
                ));
            }
            continue;
        }
        if readers[producer].len() != 1 {
            log.not_fused.push(format!(
                "{}: the output of {} is also read elsewhere",
                label(g, id),
                label(g, producer)
            ));
            continue;
        }
        let act = merged(g, id);
        log.fused.push(format!(
            "{} into the epilogue of {}",
            label(g, id),
            label(g, producer)
        ));
        let p = &mut g.nodes[producer];
        p.fusion.epilogue.push(Epilogue::Activation(a));
        p.fusion.merged.push(act);
        dead[id] = true;
        replacement[id] = producer;
    }
    remove(g, &dead, &replacement);
}

/// `body + shortcut`: the later of the two producers adds the other operand in its epilogue.
fn fuse_residual_adds(g: &mut Graph, log: &mut PassLog) {
    let readers = consumers(g);
    let mut dead = vec![false; g.nodes.len()];
    let mut replacement: Vec<NodeId> = (0..g.nodes.len()).collect();
    for id in 0..g.nodes.len() {
        if g.nodes[id].op != Op::Add {
            continue;
        }
        let (a, b) = (g.nodes[id].inputs[0], g.nodes[id].inputs[1]);
        // The anchor must run after the other operand exists: take the later one.
        let (anchor, other) = if a > b { (a, b) } else { (b, a) };
        let p = &g.nodes[anchor];
        if !is_gemm(&p.op) || dead[anchor] {
            log.not_fused.push(format!(
                "{}: the later operand comes from {}, which has no epilogue; it runs as its own kernel",
                label(g, id),
                label(g, anchor)
            ));
            continue;
        }
        if readers[anchor].len() != 1 || a == b {
            log.not_fused.push(format!(
                "{}: the output of {} is also read elsewhere",
                label(g, id),
                label(g, anchor)
            ));
            continue;
        }
        let add = merged(g, id);
        log.fused.push(format!(
            "{} into the epilogue of {}",
            label(g, id),
            label(g, anchor)
        ));
        let p = &mut g.nodes[anchor];
        p.inputs.push(other);
        let index = p.inputs.len() - 1;
        p.fusion.epilogue.push(Epilogue::AddInput(index));
        p.fusion.merged.push(add);
        dead[id] = true;
        replacement[id] = anchor;
    }
    remove(g, &dead, &replacement);
}

/// A gate's multiply by a [C, 1, 1] factor, `x · f`, whose only reader is a
/// convolution: that convolution reads `x` and `f` and scales each input
/// channel as it reads it, so the gated map never goes through memory. (The
/// multiply cannot be the epilogue of the layer that wrote `x`: the factor is
/// computed from the whole of `x`.) Not into a depthwise convolution, whose
/// kernel has no such prologue.
fn gate_into_next_conv(g: &mut Graph, log: &mut PassLog) {
    let readers = consumers(g);
    let mut dead = vec![false; g.nodes.len()];
    let mut replacement: Vec<NodeId> = (0..g.nodes.len()).collect();
    for id in 0..g.nodes.len() {
        if g.nodes[id].op != Op::Mul {
            continue;
        }
        let (x, factor) = (g.nodes[id].inputs[0], g.nodes[id].inputs[1]);
        if !matches!(g.nodes[factor].shape, Shape::Chw(_, 1, 1)) {
            continue;
        }
        let conv = match readers[id][..] {
            [r] if r != usize::MAX => r,
            _ => {
                log.not_fused.push(format!(
                    "{}: its output is read by {} consumers, so it is computed once, by its own kernel",
                    label(g, id),
                    readers[id].len()
                ));
                continue;
            }
        };
        let c = &g.nodes[conv];
        let reason = match c.op {
            Op::Conv2d {
                in_channels,
                out_channels,
                groups,
                ..
            } if groups > 1 && groups == in_channels && in_channels == out_channels => {
                Some("the depthwise kernel that reads it has no input-scaling prologue")
            }
            Op::Conv2d { .. } if c.fusion.prologue.is_some() => {
                Some("the convolution that reads it has a prologue already")
            }
            Op::Conv2d { .. } if c.inputs[1..].contains(&id) => {
                Some("the convolution that reads it also adds it as a residual")
            }
            Op::Conv2d { .. } => None,
            _ => Some("its reader is not a convolution"),
        };
        let moved = into_prologue(
            g,
            log,
            (id, conv),
            reason,
            "it scales each input channel as it reads it",
            (x, factor),
            |factor| Prologue::ChannelScale { factor },
        );
        if !moved {
            continue;
        }
        dead[id] = true;
        replacement[id] = x;
    }
    remove(g, &dead, &replacement);
}

/// `layer_norm` read only by a convolution without padding and with one
/// group (ConvNeXt's `linear(per_pixel = true)` after its layer norm, and
/// its 2×2 stride-2 downsampling convolutions): the layer norm keeps only
/// its statistics, a [2, H, W] map of each pixel's mean and 1/√(var + eps),
/// and the convolution normalises each value as it reads it with the
/// statistics of the pixel it comes from, the layer norm's weight and bias
/// folded into its own. The normalised map is never written: one write and
/// one read of the whole input saved for a write and read of two values per
/// pixel. Not where the convolution already has a prologue or a folded
/// batch norm or `scale`, pads its input (the zero padding would be
/// normalised) or is grouped (the folded weight is per input channel).
fn layer_norm_into_next_conv(g: &mut Graph, log: &mut PassLog) {
    let readers = consumers(g);
    for (id, read_by) in readers.iter().enumerate() {
        let Op::LayerNorm { eps, .. } = g.nodes[id].op else {
            continue;
        };
        let conv = match read_by[..] {
            [r] if r != usize::MAX => r,
            _ => {
                log.not_fused.push(format!(
                    "{}: its output is read by {} consumers, so it is written once, by its own kernel",
                    label(g, id),
                    read_by.len()
                ));
                continue;
            }
        };
        let c = &g.nodes[conv];
        let reason = match c.op {
            Op::Conv2d { .. } if c.inputs[0] != id || c.inputs[1..].contains(&id) => {
                Some("the convolution that reads it also adds it as a residual")
            }
            Op::Conv2d {
                padding, groups: 1, ..
            } if padding == Padding::symmetric(0, 0) => {
                if c.fusion.prologue.is_some() {
                    Some("the convolution that reads it has a prologue already")
                } else if c.fusion.folded_batchnorm.is_some() || c.fusion.folded_scale.is_some() {
                    Some("the convolution that reads it has a batch norm or scale folded in already")
                } else {
                    None
                }
            }
            Op::Conv2d { .. } => Some(
                "the convolution that reads it pads its input (the padding would be normalised) or is grouped",
            ),
            _ => Some("its reader is not a convolution"),
        };
        let x = g.nodes[id].inputs[0];
        let moved = into_prologue(
            g,
            log,
            (id, conv),
            reason,
            "the layer norm writes only each pixel's mean and inverse deviation, the convolution normalises its input as it reads it (weight and bias folded into its own)",
            (x, id),
            |stats| Prologue::Normalize { stats },
        );
        if !moved {
            continue;
        }
        let (h, w) = match g.nodes[id].shape {
            Shape::Chw(_, h, w) => (h, w),
            Shape::Flat(_) => (1, 1),
        };
        let stats = &mut g.nodes[id];
        stats.op = Op::LayerNormStats { eps };
        stats.shape = Shape::Chw(2, h, w);
        g.nodes[conv].fusion.folded_layernorm = Some(g.nodes[id].name.clone());
    }
}

/// Moves node `id`'s work into the prologue of `conv`, its only reader, or
/// logs `reason` for leaving it: `conv` then reads `x` as its input and
/// `operand` as its last input, and `prologue` is made from that input's
/// index. Returns whether it moved; the caller rewrites or removes `id`.
fn into_prologue(
    g: &mut Graph,
    log: &mut PassLog,
    (id, conv): (NodeId, NodeId),
    reason: Option<&str>,
    how: &str,
    (x, operand): (NodeId, NodeId),
    prologue: impl Fn(usize) -> Prologue,
) -> bool {
    if let Some(r) = reason {
        log.not_fused
            .push(format!("{}: {r}; it runs as its own kernel", label(g, id)));
        return false;
    }
    log.fused.push(format!(
        "{} into the prologue of {}: {how}",
        label(g, id),
        label(g, conv)
    ));
    let m = merged(g, id);
    let c = &mut g.nodes[conv];
    c.inputs[0] = x;
    c.inputs.push(operand);
    c.fusion.prologue = Some(prologue(c.inputs.len() - 1));
    c.fusion.merged.insert(0, m);
    true
}

/// `adaptive_avgpool(1)`, `flatten`, `linear`: the linear layer averages its
/// input maps itself, so the pooled vector never goes through memory.
fn global_pool_into_linear(g: &mut Graph, log: &mut PassLog) {
    let readers = consumers(g);
    let mut dead = vec![false; g.nodes.len()];
    let mut replacement: Vec<NodeId> = (0..g.nodes.len()).collect();
    for id in 0..g.nodes.len() {
        if !matches!(g.nodes[id].op, Op::Linear { .. }) || g.nodes[id].fusion.prologue.is_some() {
            continue;
        }
        let flatten = g.nodes[id].inputs[0];
        if g.nodes[flatten].op != Op::Flatten || readers[flatten].len() != 1 {
            continue;
        }
        let pool = g.nodes[flatten].inputs[0];
        if g.nodes[pool].op != (Op::AdaptiveAvgPool2d { output: (1, 1) }) {
            continue;
        }
        if readers[pool].len() != 1 {
            log.not_fused.push(format!(
                "{}: its output is also read elsewhere",
                label(g, pool)
            ));
            continue;
        }
        let maps = g.nodes[pool].inputs[0];
        log.fused.push(format!(
            "{} and {} into the prologue of {}",
            label(g, pool),
            label(g, flatten),
            label(g, id)
        ));
        let (m1, m2) = (merged(g, pool), merged(g, flatten));
        let l = &mut g.nodes[id];
        l.inputs[0] = maps;
        l.fusion.prologue = Some(Prologue::GlobalAvgPool);
        l.fusion.merged.insert(0, m2);
        l.fusion.merged.insert(0, m1);
        dead[pool] = true;
        dead[flatten] = true;
        replacement[pool] = maps;
        replacement[flatten] = maps;
    }
    remove(g, &dead, &replacement);
}

/// A flatten of a contiguous NCHW tensor is the same memory.
fn flatten_as_view(g: &mut Graph, log: &mut PassLog) {
    for id in 0..g.nodes.len() {
        if g.nodes[id].op == Op::Flatten && !g.nodes[id].fusion.view {
            g.nodes[id].fusion.view = true;
            log.fused
                .push(format!("{} is a view of its input", label(g, id)));
        }
    }
}

/// Each branch of a concat writes its channel slice of the concat's buffer.
fn concat_in_place(g: &mut Graph, log: &mut PassLog) {
    let readers = consumers(g);
    let mut claimed = vec![false; g.nodes.len()];
    for id in 0..g.nodes.len() {
        if g.nodes[id].op != Op::Concat || g.nodes[id].fusion.view {
            continue;
        }
        let inputs = g.nodes[id].inputs.clone();
        let mut reason = None;
        for (k, &i) in inputs.iter().enumerate() {
            let n = &g.nodes[i];
            if i == 0 {
                reason = Some(
                    "a branch is the model input, which cannot be written in place".to_string(),
                );
            } else if n.fusion.view {
                reason = Some(format!("branch {k} ends in a view ({})", label(g, i)));
            } else if readers[i].len() != 1
                || inputs.iter().filter(|&&j| j == i).count() > 1
                || claimed[i]
            {
                reason = Some(format!(
                    "the output of {} is also read elsewhere",
                    label(g, i)
                ));
            } else if !matches!(n.shape, Shape::Chw(..)) {
                reason = Some("a branch is not a feature map".to_string());
            }
            if reason.is_some() {
                break;
            }
        }
        match reason {
            Some(r) => log
                .not_fused
                .push(format!("{}: copies its inputs: {r}", label(g, id))),
            None => {
                for &i in &inputs {
                    claimed[i] = true;
                }
                g.nodes[id].fusion.view = true;
                log.fused.push(format!(
                    "{}: its {} branches write their channel slices in place",
                    label(g, id),
                    inputs.len()
                ));
            }
        }
    }
}

/// Pooling other than a global average before a linear layer is not fused,
/// nor is a multiply by a map-sized factor; say why, so the report accounts for every
/// kernel. (One pass for both keeps the report's pass list as it was.)
fn report_pooling(g: &mut Graph, log: &mut PassLog) {
    for id in 0..g.nodes.len() {
        let reason = match g.nodes[id].op {
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } => {
                "its windows span several output tiles of its producer, so fusing would recompute them; it runs as its own kernel"
            }
            Op::AdaptiveAvgPool2d { .. } | Op::AdaptiveMaxPool2d { .. } => "it does not feed a flatten and linear layer; it runs as its own kernel",
            Op::Mul => match g.nodes[g.nodes[id].inputs[1]].shape {
                // The gate pass said why it stayed.
                Shape::Chw(_, 1, 1) => continue,
                _ => {
                    "a multiply by a map-sized factor could be the epilogue of the factor's last layer, reading the gate's input as a second operand, but that epilogue step is not implemented; it runs as its own kernel"
                }
            },
            Op::ChannelShuffle { .. } => {
                "a permutation of channels; writing the layer before in shuffled order is not implemented; it runs as a copy kernel"
            }
            Op::ChannelSlice { .. } => {
                "a split's chunk is copied out of its input (reading a channel range in place is not implemented)"
            }
            _ => continue,
        };
        log.not_fused.push(format!("{}: {reason}", label(g, id)));
    }
}
