//! The execution plan of a compiled model: every kernel launch in order, where
//! each tensor lives in the activation arena, and how each weight tensor is
//! prepared from the PyTorch `state_dict`. The compiler writes it; the CPU
//! executor and the CUDA driver both run it, so they cannot disagree on
//! buffers or launch order.
//!
//! Addressing: a batch of `b` images; element (n, c, p) of a [`Place`] is
//! `arena[place.offset·b + ((n·channels_total + channel_offset + c)·H·W + p)]`.

/// The activations a step applies (defined beside their CPU kernels).
pub use cnnc_kernels::act::Act;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub model: String,
    /// Per-image input shape [C, H, W].
    pub input_shape: Vec<usize>,
    /// Per-image output shape ([classes] or [C, H, W]).
    pub output_shape: Vec<usize>,
    pub input: Place,
    pub output: Place,
    /// Arena size in floats per image.
    pub arena_per_image: usize,
    /// What one buffer per layer would take, in floats per image.
    pub naive_per_image: usize,
    /// Every `state_dict` entry the weights file must hold, for strict loading.
    pub state_dict: Vec<StateEntry>,
    /// Tensors the kernels read, computed from the `state_dict` at load.
    pub prepared: Vec<Prepared>,
    pub steps: Vec<Step>,
    /// Whether the model ends in softmax (probabilities) or log_softmax.
    pub ends_in: Ending,
    /// What the GPU's convolutions and linear layers compute in. The CPU
    /// executor computes in FP32 whatever it says.
    pub precision: Precision,
}

/// The arithmetic a build asks for (`cnnc build --precision`). Only the GEMMs
/// (convolutions and linear layers) change; every other kernel computes in
/// FP32 whatever the precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// FP32 FMAs on CUDA cores: the strict path.
    Fp32,
    /// Operands rounded to TF32 (10 mantissa bits), products on tensor cores,
    /// FP32 accumulation: what PyTorch does for convolutions by default
    /// (`torch.backends.cudnn.allow_tf32 = True`) and TensorRT by default.
    #[default]
    Tf32,
    /// Each operand split into a big and a small TF32 part, three tensor-core
    /// products: about FP32's accuracy at tensor-core speed.
    Tf32x3,
    /// Weights stored in bfloat16 for the tensor cores and every activation
    /// stored in bfloat16 on the GPU (half the memory and traffic of f32),
    /// products on tensor cores (`mma.m16n8k16`), FP32 arithmetic and
    /// accumulation inside each kernel.
    Bf16,
    /// The same with IEEE half (FP16); a weight or input value beyond FP16's
    /// range is an error at load (an activation computed beyond it becomes
    /// infinity, as under PyTorch's FP16 autocast).
    Fp16,
}

impl Precision {
    pub const ALL: [Precision; 5] = [
        Precision::Fp32,
        Precision::Tf32,
        Precision::Tf32x3,
        Precision::Bf16,
        Precision::Fp16,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Tf32x3 => "tf32x3",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    pub fn parse(text: &str) -> Option<Precision> {
        Precision::ALL.into_iter().find(|p| p.name() == text)
    }

    /// Whether GEMMs may run on tensor cores.
    pub fn tensor_cores(self) -> bool {
        !matches!(self, Precision::Fp32)
    }

    /// The 16-bit format of the tensor cores' weights, for bf16 and fp16.
    pub fn half_format(self) -> Option<HalfFormat> {
        match self {
            Precision::Bf16 => Some(HalfFormat::Bf16),
            Precision::Fp16 => Some(HalfFormat::Fp16),
            _ => None,
        }
    }

    /// Bytes of one activation in the GPU's arena: 2 in bf16 and fp16 builds
    /// (the CPU path always computes and stores f32).
    pub fn activation_bytes(self) -> usize {
        if self.half_format().is_some() {
            2
        } else {
            4
        }
    }

    /// One line for reports: what the GPU kernels compute in.
    pub fn describe(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32 (FP32 FMAs on CUDA cores)",
            Precision::Tf32 => {
                "tf32 (convolutions and linear layers on tensor cores: operands rounded to TF32, FP32 accumulation)"
            }
            Precision::Tf32x3 => {
                "tf32x3 (convolutions and linear layers on tensor cores: operands split into two TF32 parts, three products, FP32 accumulation)"
            }
            Precision::Bf16 => {
                "bf16 (activations and weights stored in BF16; convolutions and linear layers on tensor cores, FP32 accumulation)"
            }
            Precision::Fp16 => {
                "fp16 (activations and weights stored in FP16; convolutions and linear layers on tensor cores, FP32 accumulation)"
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    Logits,
    Probabilities,
    LogProbabilities,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateEntry {
    pub key: String,
    pub shape: Vec<usize>,
    /// `num_batches_tracked` holds an integer; everything else floats.
    pub integer: bool,
    /// Where the model declares it (`models/resnet50.cnn:12:5`).
    pub declared_at: String,
}

/// A tensor a kernel reads, and how to compute it from the `state_dict`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Prepared {
    /// Used as stored.
    Tensor { key: String },
    /// A conv/linear weight with a batch norm folded in: w·γ/√(σ² + ε) per output channel.
    FoldedWeight {
        weight: String,
        bn: String,
        eps: f64,
    },
    /// The matching bias: (b − μ)·γ/√(σ² + ε) + β, b = 0 when the layer has no bias.
    FoldedBias {
        bias: Option<String>,
        bn: String,
        eps: f64,
    },
    /// A standalone batch norm as y = x·scale + shift: scale = γ/√(σ² + ε).
    BnScale { bn: String, eps: f64 },
    /// shift = β − μ·scale.
    BnShift { bn: String, eps: f64 },
    /// `len` zeros (the shift of a `scale` layer run as a channel affine).
    Zeros { len: usize },
    /// A conv weight with a `scale` folded in: w·s per output channel.
    ScaledWeight { weight: String, scale: String },
    /// The matching bias: b·s.
    ScaledBias { bias: String, scale: String },
    /// A conv or per-pixel linear weight ([out][in][kh][kw] or [out][in])
    /// with the layer norm `ln` it normalises by folded in:
    /// w[o][i][t]·γ[i], γ = `ln.weight`.
    LnWeight { weight: String, ln: String },
    /// The matching bias: b[o] + Σᵢ Σₜ w[o][i][t]·β[i], β = `ln.bias`, b = 0
    /// when the layer has no bias.
    LnBias {
        weight: String,
        bias: Option<String>,
        ln: String,
    },
    /// `weight` (a [rows][K] GEMM weight: a conv's [out][in/groups·kh·kw] or
    /// a linear layer's [out][in]) as f32 for the CPU, followed by a 16-bit
    /// copy, which the GPU holds alone ([`Plan::device_weights`]) and every
    /// kernel of the layer reads (`cnnc::Weights16`): the f32 values,
    /// zeros up to a multiple of 4 floats (so the copy starts 16-byte
    /// aligned), then the values rounded to `format` (nearest, ties to even)
    /// as [rows][K rounded up to a multiple of 8] with zeros in the padding
    /// (so every row starts 16-byte aligned), two per float, the even column
    /// in the lower 16 bits (a little-endian u16 array). An FP16 value that
    /// would overflow to infinity is an error naming the tensor.
    WithHalf {
        weight: Box<Prepared>,
        format: HalfFormat,
        rows: usize,
    },
}

impl Prepared {
    /// The `state_dict` entry a weight is computed from, for messages.
    pub fn weight_key(&self) -> Option<&str> {
        match self {
            Prepared::Tensor { key } => Some(key),
            Prepared::FoldedWeight { weight, .. }
            | Prepared::ScaledWeight { weight, .. }
            | Prepared::LnWeight { weight, .. } => Some(weight),
            Prepared::WithHalf { weight, .. } => weight.weight_key(),
            _ => None,
        }
    }
}

/// Floats of the f32 part of a [`Prepared::WithHalf`] tensor of `len` weights
/// before its 16-bit copy starts.
pub fn half_offset(len: usize) -> usize {
    len.div_ceil(4) * 4
}

/// A 16-bit floating-point format of the weights the tensor cores read
/// (`--precision bf16` and `fp16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HalfFormat {
    /// 8 exponent bits (FP32's range), 7 stored mantissa bits.
    Bf16,
    /// IEEE binary16: 5 exponent bits (largest finite 65504), 10 mantissa bits.
    Fp16,
}

impl HalfFormat {
    /// `v` rounded to the nearest value of the format (ties to even, as
    /// `cvt.rn` does; FP16 overflows to infinity), as its bits.
    pub fn bits(self, v: f32) -> u16 {
        match self {
            HalfFormat::Bf16 => half::bf16::from_f32(v).to_bits(),
            HalfFormat::Fp16 => half::f16::from_f32(v).to_bits(),
        }
    }

    /// The value of 16 bits of the format (exact).
    pub fn value(self, bits: u16) -> f64 {
        match self {
            HalfFormat::Bf16 => half::bf16::from_bits(bits).to_f64(),
            HalfFormat::Fp16 => half::f16::from_bits(bits).to_f64(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HalfFormat::Bf16 => "bf16",
            HalfFormat::Fp16 => "fp16",
        }
    }
}

/// Where a tensor lives in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// Buffer offset in floats per image.
    pub offset: usize,
    pub channel_offset: usize,
    pub channels_total: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Place {
    pub fn numel(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Arena index of element (n, c, p) for a batch of `batch`.
    #[inline]
    pub fn index(&self, batch: usize, n: usize, c: usize, p: usize) -> usize {
        self.offset * batch
            + (n * self.channels_total + self.channel_offset + c) * self.h * self.w
            + p
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Epi {
    Act(Act),
    /// Add `inputs[k]` at the same (n, c, p).
    AddInput(usize),
}

/// A convolution (a linear layer is a 1×1 conv on 1×1 maps). On the GPU an
/// implicit GEMM, or for a depthwise convolution (groups = in = out channels,
/// zero padding) the depthwise kernel, which takes the same arguments; the
/// CPU executor picks its own kernel from the geometry either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gemm {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
    /// 0 zeros, 1 reflect, 2 replicate, 3 circular.
    pub padding_mode: u8,
    /// Average the input maps first (a linear layer after global average pooling).
    pub global_pool: bool,
    /// Scale each input channel by a per-(image, channel) factor as it is
    /// read: a gate's multiply, fused in. The factor is the step's last
    /// input, [C, 1, 1].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub input_scale: bool,
    /// Normalise each input pixel as it is read: (x − mean)·inv, the
    /// pixel's mean and inverse deviation at channels 0 and 1 of the step's
    /// last input (a [`StepOp::LayerNormStats`] map): a layer norm fused
    /// in, its weight and bias folded into the prepared weight and bias
    /// ([`Prepared::LnWeight`], [`Prepared::LnBias`]). Only on unpadded,
    /// ungrouped convolutions (each value read is an input pixel,
    /// normalised with that pixel's statistics).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub input_norm: bool,
    pub bias: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum StepOp {
    Gemm(Gemm),
    Pool {
        max: bool,
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
        dilation: (usize, usize),
        count_include_pad: bool,
    },
    AdaptivePool {
        max: bool,
    },
    /// y = x·scale[c] + shift[c] (params: scale, shift).
    ChannelAffine,
    Lrn {
        size: usize,
        alpha: f32,
        beta: f32,
        k: f32,
    },
    Softmax {
        log: bool,
    },
    Act(Act),
    Add,
    /// y = x · factor, the factor (`inputs[1]`) one value per (image,
    /// channel) when its map is 1×1, else one per element (a `gate`).
    Mul,
    Copy,
    /// Layer norm over the channels at each (image, pixel) (params: weight, bias).
    LayerNorm {
        eps: f32,
    },
    /// A layer norm's statistics for the convolution that normalises as it
    /// reads ([`Gemm::input_norm`]): per (image, pixel), the mean over the
    /// input's channels at output channel 0 and 1/√(biased var + eps) at 1.
    LayerNormStats {
        eps: f32,
    },
    /// y = (x − mean)·inv per (image, channel, pixel), the pixel's mean and
    /// inverse deviation at channels 0 and 1 of `inputs[1]`: the first half
    /// of a normalising convolution ([`Gemm::input_norm`]) as the CPU
    /// executor runs it, in two steps. The compiler does not emit it; no
    /// CUDA kernel has it.
    Normalize,
    /// Output channel j·groups + i is input channel i·(C / groups) + j.
    ChannelShuffle {
        groups: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The CUDA kernel's name.
    pub kernel: String,
    pub op: StepOp,
    pub inputs: Vec<Place>,
    pub output: Place,
    pub epilogue: Vec<Epi>,
    /// Indices into [`Plan::prepared`], in kernel argument order.
    pub params: Vec<usize>,
    pub block: u32,
    /// Blocks along x: ceil(batch·per_image / per_block).
    pub per_image: u64,
    pub per_block: u64,
    pub grid_y: u32,
    pub grid_z: u32,
    /// The layers it computes, for error messages ("a failed launch names the kernel and its layers").
    pub layers: Vec<String>,
    /// Kernels tuned for larger batches, by increasing `min_batch` (all above 1);
    /// the fields above launch the kernel for batches below the first of them.
    /// Every variant computes the same function with the same arguments.
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// GEMM kernels only: how many ways K is split (1: not split), and the
    /// floats of partial sums each block then writes to the workspace.
    #[serde(default = "one")]
    pub split_k: u32,
    #[serde(default)]
    pub partial_floats: u64,
}

fn one() -> u32 {
    1
}

/// Another kernel for the same step, used from `min_batch` images on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub min_batch: usize,
    pub kernel: String,
    pub block: u32,
    pub per_image: u64,
    pub per_block: u64,
    pub grid_y: u32,
    pub grid_z: u32,
    #[serde(default = "one")]
    pub split_k: u32,
    #[serde(default)]
    pub partial_floats: u64,
}

/// What to launch for one step at one batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch<'a> {
    pub kernel: &'a str,
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub split_k: u32,
    pub partial_floats: u64,
}

/// Scratch memory the GEMM kernels share (one kernel runs at a time): the
/// partial sums of split-K kernels and one arrival counter per output tile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workspace {
    pub floats: usize,
    pub counters: usize,
}

impl Launch<'_> {
    /// What this launch needs: every block writes `partial_floats`; every
    /// output tile (`split_k` blocks) has a counter.
    pub fn workspace(&self) -> Workspace {
        if self.split_k <= 1 {
            return Workspace::default();
        }
        let blocks = self.grid.0 as usize * self.grid.1 as usize * self.grid.2 as usize;
        Workspace {
            floats: blocks * self.partial_floats as usize,
            counters: blocks / self.split_k as usize,
        }
    }
}

impl Gemm {
    /// Terms per output over all groups: in_channels·kh·kw, or in_channels
    /// with a global-pool prologue.
    pub fn k_total(&self) -> usize {
        if self.global_pool {
            self.in_channels
        } else {
            self.in_channels * self.kernel.0 * self.kernel.1
        }
    }

    /// Values of its f32 weight: out_channels rows of K = k_total / groups.
    pub fn weight_len(&self) -> usize {
        self.out_channels * (self.k_total() / self.groups.max(1))
    }
}

impl Plan {
    /// The weight tensors as the GPU holds them: one with a 16-bit copy
    /// ([`Prepared::WithHalf`]) as that copy alone, since every kernel of its
    /// layer reads only the copy; every other tensor whole. The CUDA driver
    /// uploads these, and the emulation harness passes the same.
    pub fn device_weights<'a>(&self, prepared: &'a [Vec<f32>]) -> crate::Result<Vec<&'a [f32]>> {
        let mut out: Vec<&[f32]> = prepared.iter().map(Vec::as_slice).collect();
        for step in &self.steps {
            if let (StepOp::Gemm(g), Some(&i)) = (&step.op, step.params.first()) {
                if let (Some(Prepared::WithHalf { .. }), Some(t)) =
                    (self.prepared.get(i), prepared.get(i))
                {
                    let start = half_offset(g.weight_len());
                    out[i] = t.get(start..).ok_or_else(|| {
                        crate::Error(format!(
                            "weight tensor {i} holds {} floats, fewer than its f32 part ({start})",
                            t.len()
                        ))
                    })?;
                }
            }
        }
        Ok(out)
    }

    /// The plan as the JSON a built binary embeds (`plan.json` of the crate
    /// `cnnc build` writes): data, so rustc has nothing to compile for it.
    /// Field order follows the structs, so the text is deterministic.
    pub fn to_json(&self) -> crate::Result<String> {
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| crate::Error(format!("cannot write the plan as JSON: {e}")))?;
        text.push('\n');
        Ok(text)
    }

    /// Reads a plan written by [`Plan::to_json`].
    pub fn from_json(text: &str) -> crate::Result<Plan> {
        serde_json::from_str(text)
            .map_err(|e| crate::Error(format!("the execution plan does not parse: {e}")))
    }

    /// The workspace every launch for 1 to `max_batch` images fits in.
    pub fn workspace(&self, max_batch: usize) -> Workspace {
        let mut most = Workspace::default();
        for batch in 1..=max_batch.max(1) {
            for step in &self.steps {
                let w = step.launch(batch).workspace();
                most.floats = most.floats.max(w.floats);
                most.counters = most.counters.max(w.counters);
            }
        }
        most
    }
}

/// One argument of a step's kernel, in the order the CUDA printer declares
/// them. The CUDA executor and the emulation harness both pass arguments by
/// this list, so they cannot disagree on the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelArg {
    /// The buffer holding `inputs[i]` (`const float*`); null when the step
    /// has no such input (a GEMM without a residual operand).
    Input(usize),
    /// The `k`-th of the step's prepared tensors (`const float*`); null when
    /// it has fewer (a layer without a bias).
    Param(usize),
    /// The buffer holding the output (`float*`).
    Output,
    /// The batch size (`int`).
    Batch,
    /// The split-K workspace (`float*`) and its tile counters (`unsigned*`).
    Workspace,
    Counters,
    /// A gate's factor (`const float*`): the step's last input.
    Factor,
}

/// The parameter lists of the kernels: one per kind of step. The CUDA
/// printer writes each kernel's signature from [`Signature::args`] (types
/// and order; the names are the kernel body's), the CUDA executor and the
/// emulation harness launch with the same list ([`Step::kernel_args`]), so
/// the two cannot disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signature {
    /// x, weights, bias, residual, y, batch, split-K workspace and counters
    /// (GEMMs, GEMVs, depthwise convolutions).
    Gemm,
    /// A GEMM's arguments, then the factor its input is scaled by.
    GatedGemm,
    /// x, two per-channel tensors (scale and shift, or weight and bias), y, batch.
    Affine,
    /// x, a second operand, y, batch.
    Binary,
    /// x, y, batch.
    Unary,
}

impl Signature {
    /// The kernel's arguments in order: x, then by kind the weights, bias and
    /// residual, or scale and shift, or the second operand; y; the batch
    /// size; for convolutions the split-K workspace and counters (which a
    /// depthwise kernel and an unsplit GEMM leave alone). Activation
    /// pointers are buffer bases (`arena + place.offset·batch`): channel
    /// offsets are compiled into the kernels.
    pub fn args(self) -> &'static [KernelArg] {
        use KernelArg::*;
        match self {
            Signature::Gemm => &[
                Input(0),
                Param(0),
                Param(1),
                Input(1),
                Output,
                Batch,
                Workspace,
                Counters,
            ],
            Signature::GatedGemm => &[
                Input(0),
                Param(0),
                Param(1),
                Input(1),
                Output,
                Batch,
                Workspace,
                Counters,
                Factor,
            ],
            Signature::Affine => &[Input(0), Param(0), Param(1), Output, Batch],
            Signature::Binary => &[Input(0), Input(1), Output, Batch],
            Signature::Unary => &[Input(0), Output, Batch],
        }
    }
}

impl KernelArg {
    /// The argument's CUDA C type in a kernel's parameter list.
    pub fn cuda_type(self) -> &'static str {
        match self {
            KernelArg::Input(_) | KernelArg::Factor => "const cnnc::act* __restrict__",
            KernelArg::Param(_) => "const float* __restrict__",
            KernelArg::Output => "cnnc::act* __restrict__",
            KernelArg::Workspace => "float* __restrict__",
            KernelArg::Batch => "int",
            KernelArg::Counters => "unsigned* __restrict__",
        }
    }
}

impl StepOp {
    /// The parameter list of this step's kernel.
    pub fn signature(&self) -> Signature {
        match self {
            StepOp::Gemm(g) if g.input_scale || g.input_norm => Signature::GatedGemm,
            StepOp::Gemm(_) => Signature::Gemm,
            StepOp::ChannelAffine | StepOp::LayerNorm { .. } => Signature::Affine,
            StepOp::Add | StepOp::Mul => Signature::Binary,
            _ => Signature::Unary,
        }
    }
}

impl Step {
    /// The kernel's arguments in order ([`Signature::args`]).
    pub fn kernel_args(&self) -> &'static [KernelArg] {
        self.op.signature().args()
    }

    /// Blocks along x of the batch-1 kernel.
    pub fn grid_x(&self, batch: usize) -> u32 {
        ((batch as u64 * self.per_image).div_ceil(self.per_block)).max(1) as u32
    }

    /// The kernel, grid and block for `batch` images: the variant with the
    /// largest `min_batch` not above `batch`, else the batch-1 kernel.
    pub fn launch(&self, batch: usize) -> Launch<'_> {
        let x = |per_image: u64, per_block: u64| {
            ((batch as u64 * per_image).div_ceil(per_block)).max(1) as u32
        };
        match self.variants.iter().rev().find(|v| v.min_batch <= batch) {
            Some(v) => Launch {
                kernel: &v.kernel,
                grid: (x(v.per_image, v.per_block), v.grid_y, v.grid_z),
                block: v.block,
                split_k: v.split_k,
                partial_floats: v.partial_floats,
            },
            None => Launch {
                kernel: &self.kernel,
                grid: (x(self.per_image, self.per_block), self.grid_y, self.grid_z),
                block: self.block,
                split_k: self.split_k,
                partial_floats: self.partial_floats,
            },
        }
    }

    /// Every kernel this step may launch: the batch-1 kernel, then the variants.
    pub fn kernels(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.kernel.as_str()).chain(self.variants.iter().map(|v| v.kernel.as_str()))
    }
}
