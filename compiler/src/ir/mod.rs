//! The graph IR: one closed enum of ops over per-image tensor shapes, in topological order.
//!
//! # Invariants (checked by [`Graph::verify`])
//!
//! - `nodes[0]` is the only [`Op::Input`]; every other node's inputs are
//!   earlier nodes, so the vector order is a valid execution order.
//! - Shapes are per image (no batch dimension) and every dimension is ≥ 1.
//! - Each node's shape is what its op computes from its inputs' shapes.
//! - `params` lists every `state_dict` entry in PyTorch's registration order,
//!   keys unique; entries of parametric nodes name their node.
//! - `output` is a node index; nodes not reachable from it are allowed (they
//!   are `unused` layers kept for their weights, which have no node).

pub mod passes;
pub mod weights;

use crate::front::source::Span;
use cnnc_kernels::activation::Kind;
use serde::Serialize;
use std::fmt;

/// A per-image tensor shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Shape {
    /// Feature maps: channels, height, width.
    Chw(i64, i64, i64),
    /// A flat feature vector.
    Flat(i64),
}

impl Shape {
    pub fn numel(&self) -> i64 {
        match *self {
            Shape::Chw(c, h, w) => c * h * w,
            Shape::Flat(n) => n,
        }
    }

    pub fn dims(&self) -> Vec<i64> {
        match *self {
            Shape::Chw(c, h, w) => vec![c, h, w],
            Shape::Flat(n) => vec![n],
        }
    }

    /// Channels for feature maps, features for flat vectors.
    pub fn channels(&self) -> i64 {
        match *self {
            Shape::Chw(c, _, _) => c,
            Shape::Flat(n) => n,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Chw(c, h, w) => write!(f, "[{c}, {h}, {w}]"),
            Shape::Flat(n) => write!(f, "[{n}]"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PaddingMode {
    Zeros,
    Reflect,
    Replicate,
    Circular,
}

impl PaddingMode {
    pub fn name(self) -> &'static str {
        match self {
            PaddingMode::Zeros => "zeros",
            PaddingMode::Reflect => "reflect",
            PaddingMode::Replicate => "replicate",
            PaddingMode::Circular => "circular",
        }
    }
}

/// Padding on each side: top, bottom, left, right (`same` with an even kernel is asymmetric).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Padding {
    pub top: i64,
    pub bottom: i64,
    pub left: i64,
    pub right: i64,
}

impl Padding {
    pub fn symmetric(h: i64, w: i64) -> Padding {
        Padding {
            top: h,
            bottom: h,
            left: w,
            right: w,
        }
    }
    pub fn is_symmetric(&self) -> bool {
        self.top == self.bottom && self.left == self.right
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Activation {
    Relu,
    Relu6,
    /// Negative slope, stored as f64 bits so the op stays `Eq`.
    LeakyRelu(F64),
    Elu(F64),
    Tanh,
    Sigmoid,
    Silu,
    Gelu {
        tanh_approximation: bool,
    },
    Hardsigmoid,
    Hardswish,
}

impl Activation {
    pub fn name(&self) -> &'static str {
        self.kind().0.entry().name
    }

    /// Its row in the table of activations (`cnnc_kernels::activation`),
    /// which holds every backend's formula, and its parameter (0 for none).
    pub fn kind(&self) -> (Kind, f64) {
        match *self {
            Activation::Relu => (Kind::Relu, 0.0),
            Activation::Relu6 => (Kind::Relu6, 0.0),
            Activation::LeakyRelu(s) => (Kind::LeakyRelu, s.0),
            Activation::Elu(a) => (Kind::Elu, a.0),
            Activation::Tanh => (Kind::Tanh, 0.0),
            Activation::Sigmoid => (Kind::Sigmoid, 0.0),
            Activation::Silu => (Kind::Silu, 0.0),
            Activation::Gelu {
                tanh_approximation: false,
            } => (Kind::Gelu, 0.0),
            Activation::Gelu {
                tanh_approximation: true,
            } => (Kind::GeluTanh, 0.0),
            Activation::Hardsigmoid => (Kind::Hardsigmoid, 0.0),
            Activation::Hardswish => (Kind::Hardswish, 0.0),
        }
    }
}

/// An `f64` with bitwise equality, so ops can derive `Eq` and hash deterministically.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct F64(pub f64);

impl PartialEq for F64 {
    fn eq(&self, other: &F64) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for F64 {}

impl fmt::Display for F64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The closed set of operations. Sizes are the resolved ones: input channels
/// are inferred, defaults applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Op {
    Input,
    Conv2d {
        in_channels: i64,
        out_channels: i64,
        kernel: (i64, i64),
        stride: (i64, i64),
        padding: Padding,
        dilation: (i64, i64),
        groups: i64,
        bias: bool,
        padding_mode: PaddingMode,
    },
    MaxPool2d {
        kernel: (i64, i64),
        stride: (i64, i64),
        padding: (i64, i64),
        dilation: (i64, i64),
        ceil_mode: bool,
    },
    AvgPool2d {
        kernel: (i64, i64),
        stride: (i64, i64),
        padding: (i64, i64),
        ceil_mode: bool,
        count_include_pad: bool,
    },
    AdaptiveAvgPool2d {
        output: (i64, i64),
    },
    AdaptiveMaxPool2d {
        output: (i64, i64),
    },
    /// BatchNorm2d on feature maps, BatchNorm1d on flat vectors (same `state_dict` entries).
    BatchNorm {
        features: i64,
        eps: F64,
        momentum: F64,
    },
    LocalResponseNorm {
        size: i64,
        alpha: F64,
        beta: F64,
        k: F64,
    },
    Dropout {
        p: F64,
    },
    Dropout2d {
        p: F64,
    },
    /// torchvision's `StochasticDepth(p, mode)`: identity at inference; in
    /// training, zero with probability `p` a whole image (`row`) or the whole
    /// batch (`batch`), else scale by 1/(1 − p). No `state_dict` entries.
    StochasticDepth {
        p: F64,
        row: bool,
    },
    Flatten,
    Linear {
        in_features: i64,
        out_features: i64,
        bias: bool,
    },
    Softmax,
    LogSoftmax,
    Activation(Activation),
    Identity,
    /// Elementwise sum of two equal shapes (a residual connection).
    Add,
    /// Concatenation along channels of inputs with equal spatial size.
    Concat,
    /// `inputs[0] · inputs[1]`: feature maps [C, H, W] times a factor of
    /// [C, 1, 1] (one per image and channel, broadcast over the map) or of
    /// [C, H, W] (a `gate`, torchvision's `SqueezeExcitation`).
    Mul,
    /// Layer norm over the channels at each pixel (torchvision's
    /// `LayerNorm2d`, or `nn.LayerNorm(C)` after a permute to channels-last;
    /// on a flat input over its features): `state_dict` `weight`, `bias` [C].
    LayerNorm {
        features: i64,
        eps: F64,
    },
    /// The statistics half of a layer norm whose normalisation moved into
    /// the convolution that reads it (see [`Prologue::Normalize`]): per
    /// pixel, channel 0 the mean over the input's channels and channel 1
    /// 1/√(variance + eps), so the output is [2, H, W]. Only the fusion
    /// passes make it; the node keeps the layer norm's name and parameters.
    LayerNormStats {
        eps: F64,
    },
    /// A learned per-channel factor held as a bare parameter (ConvNeXt's
    /// `layer_scale`): y = x · s[c], the key the layer's own path, shape [C, 1, 1].
    Scale {
        channels: i64,
        /// What `cnnc init` fills it with (torchvision: 1e-6).
        init: F64,
    },
    /// ShuffleNet's `channel_shuffle(x, groups)`: output channel j·groups + i
    /// is input channel i·(C / groups) + j.
    ChannelShuffle {
        groups: i64,
    },
    /// Channels `offset .. offset + channels` of the input (one chunk of a
    /// `split`, `x.chunk(n, dim=1)[i]`).
    ChannelSlice {
        offset: i64,
        channels: i64,
    },
}

impl Op {
    /// Short lowercase name, as written in `.cnn` files.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv2d { .. } => "conv",
            Op::MaxPool2d { .. } => "maxpool",
            Op::AvgPool2d { .. } => "avgpool",
            Op::AdaptiveAvgPool2d { .. } => "adaptive_avgpool",
            Op::AdaptiveMaxPool2d { .. } => "adaptive_maxpool",
            Op::BatchNorm { .. } => "batchnorm",
            Op::LocalResponseNorm { .. } => "lrn",
            Op::Dropout { .. } => "dropout",
            Op::Dropout2d { .. } => "dropout2d",
            Op::StochasticDepth { .. } => "stochastic_depth",
            Op::Flatten => "flatten",
            Op::Linear { .. } => "linear",
            Op::Softmax => "softmax",
            Op::LogSoftmax => "log_softmax",
            Op::Activation(a) => a.name(),
            Op::Identity => "identity",
            Op::Add => "add",
            Op::Concat => "concat",
            Op::Mul => "mul",
            Op::LayerNorm { .. } => "layer_norm",
            Op::LayerNormStats { .. } => "layer_norm_stats",
            Op::Scale { .. } => "scale",
            Op::ChannelShuffle { .. } => "channel_shuffle",
            Op::ChannelSlice { .. } => "chunk",
        }
    }

    /// Multiply–accumulates per image, counted as PyTorch forward hooks count
    /// them: conv and linear only, bias excluded.
    pub fn macs(&self, output: &Shape) -> i64 {
        match *self {
            Op::Conv2d {
                in_channels,
                kernel,
                groups,
                ..
            } => output.numel() * (in_channels / groups) * kernel.0 * kernel.1,
            Op::Linear {
                in_features,
                out_features,
                ..
            } => in_features * out_features,
            _ => 0,
        }
    }

    /// A compact description with the resolved arguments, for tables.
    pub fn describe(&self) -> String {
        fn pair(p: (i64, i64)) -> String {
            if p.0 == p.1 {
                p.0.to_string()
            } else {
                format!("({}, {})", p.0, p.1)
            }
        }
        match self {
            Op::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                dilation,
                groups,
                bias,
                padding_mode,
            } => {
                let mut s = format!("conv {in_channels}→{out_channels} k={}", pair(*kernel));
                if *stride != (1, 1) {
                    s += &format!(" s={}", pair(*stride));
                }
                if padding.is_symmetric() {
                    if (padding.top, padding.left) != (0, 0) {
                        s += &format!(" p={}", pair((padding.top, padding.left)));
                    }
                } else {
                    s += &format!(
                        " p=({}, {}, {}, {})",
                        padding.top, padding.bottom, padding.left, padding.right
                    );
                }
                if *dilation != (1, 1) {
                    s += &format!(" d={}", pair(*dilation));
                }
                if *groups != 1 {
                    s += &format!(" groups={groups}");
                }
                if !bias {
                    s += " bias=false";
                }
                if *padding_mode != PaddingMode::Zeros {
                    s += &format!(" mode={}", padding_mode.name());
                }
                s
            }
            Op::MaxPool2d {
                kernel,
                stride,
                padding,
                dilation,
                ceil_mode,
            } => {
                let mut s = format!("maxpool k={} s={}", pair(*kernel), pair(*stride));
                if *padding != (0, 0) {
                    s += &format!(" p={}", pair(*padding));
                }
                if *dilation != (1, 1) {
                    s += &format!(" d={}", pair(*dilation));
                }
                if *ceil_mode {
                    s += " ceil";
                }
                s
            }
            Op::AvgPool2d {
                kernel,
                stride,
                padding,
                ceil_mode,
                count_include_pad,
            } => {
                let mut s = format!("avgpool k={} s={}", pair(*kernel), pair(*stride));
                if *padding != (0, 0) {
                    s += &format!(" p={}", pair(*padding));
                }
                if *ceil_mode {
                    s += " ceil";
                }
                if !count_include_pad {
                    s += " exclude_pad";
                }
                s
            }
            Op::AdaptiveAvgPool2d { output } => format!("adaptive_avgpool {}", pair(*output)),
            Op::AdaptiveMaxPool2d { output } => format!("adaptive_maxpool {}", pair(*output)),
            Op::BatchNorm { features, eps, .. } => {
                if eps.0 == 1e-5 {
                    format!("batchnorm {features}")
                } else {
                    format!("batchnorm {features} eps={eps}")
                }
            }
            Op::LocalResponseNorm {
                size,
                alpha,
                beta,
                k,
            } => format!("lrn size={size} alpha={alpha} beta={beta} k={k}"),
            Op::LayerNorm { features, eps } => {
                if eps.0 == 1e-5 {
                    format!("layer_norm {features}")
                } else {
                    format!("layer_norm {features} eps={eps}")
                }
            }
            Op::LayerNormStats { eps } => format!("layer_norm_stats eps={eps}"),
            Op::Scale { channels, .. } => format!("scale {channels}"),
            Op::ChannelShuffle { groups } => format!("channel_shuffle groups={groups}"),
            Op::ChannelSlice { offset, channels } => {
                format!("chunk channels {offset}..{}", offset + channels)
            }
            Op::Dropout { p } => format!("dropout p={p}"),
            Op::Dropout2d { p } => format!("dropout2d p={p}"),
            Op::StochasticDepth { p, row } => {
                format!(
                    "stochastic_depth p={p} {}",
                    if *row { "row" } else { "batch" }
                )
            }
            Op::Linear {
                in_features,
                out_features,
                bias,
            } => {
                if *bias {
                    format!("linear {in_features}→{out_features}")
                } else {
                    format!("linear {in_features}→{out_features} bias=false")
                }
            }
            Op::Activation(Activation::LeakyRelu(slope)) => format!("leaky_relu {slope}"),
            Op::Activation(Activation::Elu(alpha)) => format!("elu {alpha}"),
            Op::Activation(Activation::Gelu {
                tanh_approximation: true,
            }) => "gelu tanh".to_string(),
            other => other.name().to_string(),
        }
    }
}

/// Index of a node in [`Graph::nodes`]; a node has exactly one output value.
pub type NodeId = usize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub shape: Shape,
    /// The PyTorch module path (`layer1.0.conv1`), empty for functional ops.
    pub name: String,
    /// The `.cnn` text this node came from.
    #[serde(skip)]
    pub span: Span,
    /// Block call sites, outermost first, through which this node was reached.
    #[serde(skip)]
    pub call_stack: Vec<Span>,
    /// The block instances this node belongs to, outermost first (parallel
    /// to `call_stack`); `cnnc graph` collapses repeated instances.
    #[serde(skip)]
    pub blocks: Vec<BlockInstance>,
    /// What fusion passes merged into this node; empty in a checked graph.
    pub fusion: Fusion,
}

/// One call of a `block`: which block, and where its instance lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockInstance {
    /// The block's name (`bottleneck`).
    pub block: String,
    /// The instance's module path (`layer3.7`; empty for an unnamed call at the top).
    pub path: String,
    /// Numbers the calls of one model in elaboration order, so two unnamed
    /// calls that share a path are still told apart.
    pub id: usize,
}

/// Work a fused node does besides its op. The passes in `passes.rs` fill it;
/// every backend must honour it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Fusion {
    /// A batch norm folded into this conv/linear's weights and bias (its module path).
    pub folded_batchnorm: Option<FoldedBatchNorm>,
    /// A `scale` folded into this conv's weights and bias: the key of its
    /// per-channel parameter (w·s and b·s per output channel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folded_scale: Option<String>,
    /// Work on the input as the op reads it: global average pooling before
    /// `linear`, a gate's per-channel factor or a layer norm's
    /// normalisation before a convolution.
    pub prologue: Option<Prologue>,
    /// The layer norm (its module path) whose normalisation this
    /// convolution applies to its input ([`Prologue::Normalize`]); its
    /// weight and bias are folded into this layer's weights and bias.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folded_layernorm: Option<String>,
    /// Applied in order to each output element after the op (and bias).
    pub epilogue: Vec<Epilogue>,
    /// The output aliases memory that other nodes write: a flatten (a
    /// reshape of a contiguous tensor) or a concat whose inputs write their
    /// channel slices in place. No kernel runs for a view.
    pub view: bool,
    /// The layers merged into this node, for reports and kernel comments.
    pub merged: Vec<MergedLayer>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FoldedBatchNorm {
    pub name: String,
    pub eps: F64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Prologue {
    /// Mean over each channel's H×W map of the input (adaptive_avgpool(1) then flatten).
    GlobalAvgPool,
    /// Each input channel times `inputs[factor]`, one value per (image,
    /// channel): a gate's multiply moved into the convolution that reads
    /// the gated map, which scales its input as it reads it.
    ChannelScale { factor: usize },
    /// A layer norm over the input's channels, applied as the convolution
    /// reads its input: each pixel's values minus the mean, times
    /// 1/√(var + eps), both read from `inputs[stats]` (a
    /// [`Op::LayerNormStats`] node), then the layer norm's weight and bias
    /// per channel (`fusion.folded_layernorm`). Only on convolutions with
    /// no padding and one group, so every value read is a pixel of the
    /// input, normalised with that pixel's statistics.
    Normalize { stats: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Epilogue {
    Activation(Activation),
    /// Add the value of `inputs[index]` elementwise (a residual connection).
    AddInput(usize),
}

/// A layer of the checked graph that a fused node now carries.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MergedLayer {
    pub op: String,
    pub name: String,
    #[serde(skip)]
    pub span: Span,
}

/// What a `state_dict` entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ParamKind {
    Weight,
    Bias,
    RunningMean,
    RunningVar,
    /// An int64 scalar counter; not a parameter, but in the `state_dict`.
    NumBatchesTracked,
    /// A bare `nn.Parameter` (ConvNeXt's `layer_scale`): its key is the
    /// layer's path itself, with no suffix.
    Bare,
}

impl ParamKind {
    pub fn suffix(self) -> &'static str {
        match self {
            ParamKind::Weight => "weight",
            ParamKind::Bias => "bias",
            ParamKind::RunningMean => "running_mean",
            ParamKind::RunningVar => "running_var",
            ParamKind::NumBatchesTracked => "num_batches_tracked",
            ParamKind::Bare => "",
        }
    }

    /// Whether PyTorch counts it in `model.parameters()` (buffers are not).
    pub fn is_parameter(self) -> bool {
        matches!(self, ParamKind::Weight | ParamKind::Bias | ParamKind::Bare)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamEntry {
    pub key: String,
    pub shape: Vec<i64>,
    pub kind: ParamKind,
    /// The node that uses it; `None` for `unused` layers.
    pub node: Option<NodeId>,
    #[serde(skip)]
    pub span: Span,
}

impl ParamEntry {
    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }
}

/// One checked model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Graph {
    pub name: String,
    pub nodes: Vec<Node>,
    pub output: NodeId,
    pub params: Vec<ParamEntry>,
}

impl Graph {
    pub fn input_shape(&self) -> Shape {
        self.nodes[0].shape
    }

    pub fn output_shape(&self) -> Shape {
        self.nodes[self.output].shape
    }

    /// Parameters as PyTorch counts them (`sum(p.numel() for p in model.parameters())`).
    pub fn total_params(&self) -> i64 {
        self.params
            .iter()
            .filter(|p| p.kind.is_parameter())
            .map(|p| p.numel())
            .sum()
    }

    pub fn total_macs(&self) -> i64 {
        self.nodes.iter().map(|n| n.op.macs(&n.shape)).sum()
    }

    /// What, if anything, is too large to count in an `i64`: a tensor or
    /// parameter size, a layer's MACs, or a total (with f32 bytes for memory).
    /// The checker rejects such models, so the counts above need no checks.
    pub fn count_overflow(&self) -> Option<&'static str> {
        use crate::front::shape::checked_product;
        const F32: i64 = 4;
        let (mut activations, mut macs, mut params) = (0i64, 0i64, 0i64);
        for node in &self.nodes {
            let Some(numel) = checked_product(&node.shape.dims()) else {
                return Some("the size of a tensor");
            };
            let layer = match node.op {
                Op::Conv2d {
                    in_channels,
                    kernel,
                    groups,
                    ..
                } => in_channels
                    .checked_div(groups)
                    .and_then(|c| checked_product(&[numel, c, kernel.0, kernel.1])),
                Op::Linear {
                    in_features,
                    out_features,
                    ..
                } => in_features.checked_mul(out_features),
                _ => Some(0),
            };
            macs = match layer.and_then(|m| macs.checked_add(m)) {
                Some(m) => m,
                None => return Some("the number of multiply-accumulates"),
            };
            activations = match activations.checked_add(numel) {
                Some(a) => a,
                None => return Some("the activation memory"),
            };
        }
        for p in &self.params {
            params = match checked_product(&p.shape).and_then(|n| params.checked_add(n)) {
                Some(n) => n,
                None => return Some("the number of parameters"),
            };
        }
        if activations.checked_mul(F32).is_none() {
            return Some("the activation memory");
        }
        if params.checked_mul(F32).is_none() {
            return Some("the parameter memory");
        }
        None
    }

    /// Whether node `id` is a `linear(per_pixel = true)`: a 1×1 convolution
    /// whose weight keeps `nn.Linear`'s [out, in] shape.
    pub fn is_pixel_linear(&self, id: NodeId) -> bool {
        matches!(self.nodes[id].op, Op::Conv2d { .. })
            && self
                .params
                .iter()
                .any(|p| p.node == Some(id) && p.kind == ParamKind::Weight && p.shape.len() == 2)
    }

    /// How tables describe node `id`: [`Op::describe`], except that a
    /// per-pixel linear layer says so rather than `conv … k=1`.
    pub fn describe_node(&self, id: NodeId) -> String {
        match self.nodes[id].op {
            Op::Conv2d {
                in_channels,
                out_channels,
                bias,
                ..
            } if self.is_pixel_linear(id) => format!(
                "linear {in_channels}→{out_channels} per pixel{}",
                if bias { "" } else { " bias=false" }
            ),
            ref op => op.describe(),
        }
    }

    /// Parameters owned by one node (what its row in a summary counts).
    pub fn node_params(&self, id: NodeId) -> i64 {
        self.params
            .iter()
            .filter(|p| p.node == Some(id) && p.kind.is_parameter())
            .map(|p| p.numel())
            .sum()
    }

    /// For each node, the index of the last node that reads it (itself if none).
    pub fn last_uses(&self) -> Vec<NodeId> {
        let mut last: Vec<NodeId> = (0..self.nodes.len()).collect();
        for (id, node) in self.nodes.iter().enumerate() {
            for &input in &node.inputs {
                last[input] = last[input].max(id);
            }
        }
        last[self.output] = self.nodes.len();
        last
    }

    /// Largest total size, in elements per image, of the tensors alive at once
    /// when nodes run in order and each output is freed after its last reader.
    pub fn peak_live_elements(&self) -> i64 {
        let last = self.last_uses();
        let mut live: i64 = 0;
        let mut peak: i64 = 0;
        for (id, node) in self.nodes.iter().enumerate() {
            live += node.shape.numel();
            peak = peak.max(live);
            for (other, &l) in last.iter().enumerate().take(id + 1) {
                if l == id && other != self.output {
                    live -= self.nodes[other].shape.numel();
                }
            }
        }
        peak
    }

    /// Checks the invariants listed at the top of this module.
    pub fn verify(&self) -> Result<(), String> {
        if self.nodes.first().map(|n| &n.op) != Some(&Op::Input) {
            return Err("node 0 is not the input".into());
        }
        for (id, node) in self.nodes.iter().enumerate() {
            if id > 0 && node.op == Op::Input {
                return Err(format!("node {id} is a second input"));
            }
            if node.inputs.iter().any(|&i| i >= id) {
                return Err(format!("node {id} reads a later node"));
            }
            if node.shape.dims().iter().any(|&d| d < 1) {
                return Err(format!("node {id} has an empty shape {}", node.shape));
            }
            let adds = node
                .fusion
                .epilogue
                .iter()
                .filter(|e| matches!(e, Epilogue::AddInput(_)))
                .count()
                + usize::from(matches!(
                    node.fusion.prologue,
                    Some(Prologue::ChannelScale { .. } | Prologue::Normalize { .. })
                ));
            let expected_inputs = match node.op {
                Op::Input => 0..=0,
                Op::Add | Op::Mul => 2..=2,
                Op::Concat => 1..=usize::MAX,
                _ => 1 + adds..=1 + adds,
            };
            let gemm = matches!(node.op, Op::Conv2d { .. } | Op::Linear { .. });
            if !gemm
                && (node.fusion.folded_batchnorm.is_some()
                    || node.fusion.folded_scale.is_some()
                    || !node.fusion.epilogue.is_empty()
                    || node.fusion.prologue.is_some())
            {
                return Err(format!(
                    "node {id} ({}) carries fused work but is not a conv or linear layer",
                    node.op.name()
                ));
            }
            if node.fusion.view && !matches!(node.op, Op::Flatten | Op::Concat) {
                return Err(format!(
                    "node {id} ({}) is marked as a view",
                    node.op.name()
                ));
            }
            for e in &node.fusion.epilogue {
                if let Epilogue::AddInput(k) = *e {
                    if k == 0
                        || k >= node.inputs.len()
                        || self.nodes[node.inputs[k]].shape != node.shape
                    {
                        return Err(format!("node {id} adds an input of the wrong shape"));
                    }
                }
            }
            let input_shape_ok = match (&node.op, node.inputs.first().map(|&i| self.nodes[i].shape))
            {
                (Op::Linear { in_features, .. }, Some(Shape::Flat(f))) => {
                    node.fusion.prologue.is_none() && f == *in_features
                }
                (Op::Linear { in_features, .. }, Some(Shape::Chw(c, _, _))) => {
                    node.fusion.prologue == Some(Prologue::GlobalAvgPool) && c == *in_features
                }
                (Op::Conv2d { in_channels, .. }, Some(Shape::Chw(c, _, _))) => c == *in_channels,
                (Op::Conv2d { .. }, _) => false,
                _ => true,
            };
            if let Some(Prologue::ChannelScale { factor }) = node.fusion.prologue {
                let scales = matches!(node.op, Op::Conv2d { .. })
                    && factor >= 1
                    && factor < node.inputs.len()
                    && !node.fusion.epilogue.contains(&Epilogue::AddInput(factor))
                    && matches!(
                        (self.nodes[node.inputs[0]].shape, self.nodes[node.inputs[factor]].shape),
                        (Shape::Chw(c, _, _), Shape::Chw(fc, 1, 1)) if fc == c
                    );
                if !scales {
                    return Err(format!(
                        "node {id} ({}) scales its input by a factor that is not one value per input channel",
                        node.op.name()
                    ));
                }
            }
            if let Some(Prologue::Normalize { stats }) = node.fusion.prologue {
                let unpadded = matches!(
                    node.op,
                    Op::Conv2d { padding, groups: 1, .. } if padding == Padding::symmetric(0, 0)
                );
                let normalizes = unpadded
                    && node.fusion.folded_layernorm.is_some()
                    && stats >= 1
                    && stats < node.inputs.len()
                    && !node.fusion.epilogue.contains(&Epilogue::AddInput(stats))
                    && matches!(self.nodes[node.inputs[stats]].op, Op::LayerNormStats { .. })
                    && matches!(
                        (self.nodes[node.inputs[0]].shape, self.nodes[node.inputs[stats]].shape),
                        (Shape::Chw(_, h, w), Shape::Chw(2, sh, sw)) if (h, w) == (sh, sw)
                    );
                if !normalizes {
                    return Err(format!(
                        "node {id} ({}) normalises its input but is not an unpadded convolution reading that input's statistics",
                        node.op.name()
                    ));
                }
                if node.fusion.folded_batchnorm.is_some() || node.fusion.folded_scale.is_some() {
                    return Err(format!(
                        "node {id} ({}) folds a layer norm and a batch norm or scale",
                        node.op.name()
                    ));
                }
            } else if node.fusion.folded_layernorm.is_some() {
                return Err(format!(
                    "node {id} ({}) folds a layer norm without normalising its input",
                    node.op.name()
                ));
            }
            if node.op == Op::Mul {
                let (x, f) = (
                    self.nodes[node.inputs[0]].shape,
                    self.nodes[node.inputs[1]].shape,
                );
                let broadcasts = match (x, f) {
                    (Shape::Chw(c, h, w), Shape::Chw(fc, fh, fw)) => {
                        fc == c && ((fh, fw) == (1, 1) || (fh, fw) == (h, w))
                    }
                    _ => false,
                };
                if !broadcasts || node.shape != x {
                    return Err(format!("node {id} multiplies {x} by a factor of {f}"));
                }
            }
            match (&node.op, node.inputs.first().map(|&i| self.nodes[i].shape)) {
                (Op::ChannelSlice { offset, channels }, Some(x)) => {
                    let fits = matches!(x, Shape::Chw(c, h, w)
                        if *offset >= 0 && offset + channels <= c
                            && node.shape == Shape::Chw(*channels, h, w));
                    if !fits {
                        return Err(format!(
                            "node {id} takes channels {offset}..{} of {x}",
                            offset + channels
                        ));
                    }
                }
                (Op::ChannelShuffle { groups }, Some(x))
                    if *groups < 1 || x.channels() % groups != 0 || node.shape != x =>
                {
                    return Err(format!("node {id} shuffles {x} in {groups} groups"));
                }
                (Op::LayerNorm { .. } | Op::Scale { .. }, Some(x)) if node.shape != x => {
                    return Err(format!("node {id} changes the shape {x}"));
                }
                (Op::LayerNormStats { .. }, Some(x)) if !matches!((x, node.shape), (Shape::Chw(_, h, w), Shape::Chw(2, sh, sw)) if (h, w) == (sh, sw)) =>
                {
                    return Err(format!(
                        "node {id} holds statistics of {x} as {}",
                        node.shape
                    ));
                }
                _ => {}
            }
            if !input_shape_ok {
                return Err(format!(
                    "node {id} ({}) reads an input of the wrong shape",
                    node.op.name()
                ));
            }
            if !expected_inputs.contains(&node.inputs.len()) {
                return Err(format!(
                    "node {id} ({}) has {} inputs",
                    node.op.name(),
                    node.inputs.len()
                ));
            }
        }
        if self.output >= self.nodes.len() {
            return Err("output is not a node".into());
        }
        let mut keys = std::collections::HashSet::new();
        for p in &self.params {
            if !keys.insert(&p.key) {
                return Err(format!("duplicate key {}", p.key));
            }
            if let Some(n) = p.node {
                if n >= self.nodes.len() {
                    return Err(format!("{} names a missing node", p.key));
                }
            }
        }
        Ok(())
    }
}
