//! The kernel IR: one kernel per fused node, with its launch configuration,
//! tile sizes and tensor placements as data. Backends print it; they decide nothing.
//!
//! Tensors are NCHW. A tensor reference names the node that owns the memory
//! (views resolved) and, for a concat written in place, the channel slice:
//! element (n, c, p) of a reference lives at `((n·total + offset + c)·P + p)`
//! of its owner's buffer, P = H·W.
//!
//! Convolutions and linear layers are implicit GEMMs: per group, M = output
//! channels, K = input channels·KH·KW, N = batch·OH·OW. Each thread block
//! computes a BM×BN tile of the output through shared-memory tiles of depth
//! BK, and each thread a TM×TN block of registers. Tile sizes come from
//! [`choose_tile`], a small cost model documented there.

use crate::ir::{Activation, Epilogue, Graph, NodeId, Op, PaddingMode, Prologue, Shape};
use crate::source::SourceMap;
use std::fmt::Write;

/// Streaming multiprocessors on the smallest GPU we tune for (A100: 108; H100: 132).
pub const TARGET_SMS: u64 = 108;
/// The batch size tiles are chosen for.
pub const TUNING_BATCH: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorRef {
    /// The node whose buffer holds the values (the graph input is node 0).
    pub owner: NodeId,
    pub channel_offset: i64,
    pub channels_total: i64,
    pub shape: Shape,
}

impl TensorRef {
    /// Pixels per channel (H·W; 1 for flat vectors).
    pub fn pixels(&self) -> i64 {
        match self.shape {
            Shape::Chw(_, h, w) => h * w,
            Shape::Flat(_) => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmTile {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
}

impl GemmTile {
    pub fn threads(&self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }
}

/// Tile candidates, largest first. All use 256 threads or fewer and at most
/// 32 accumulators per thread, which keeps registers well under the spill point.
pub const TILES: &[GemmTile] = &[
    GemmTile {
        bm: 128,
        bn: 64,
        bk: 8,
        tm: 8,
        tn: 4,
    },
    GemmTile {
        bm: 64,
        bn: 64,
        bk: 8,
        tm: 4,
        tn: 4,
    },
    GemmTile {
        bm: 64,
        bn: 32,
        bk: 8,
        tm: 4,
        tn: 2,
    },
    GemmTile {
        bm: 32,
        bn: 32,
        bk: 8,
        tm: 2,
        tn: 2,
    },
    GemmTile {
        bm: 16,
        bn: 32,
        bk: 16,
        tm: 1,
        tn: 2,
    },
];

/// Picks a tile for an M×N×K GEMM (per group, `groups` of them).
///
/// The rule: take the largest tile that (1) wastes at most a quarter of its
/// work on padding past M and N, and (2) still launches at least two blocks
/// per SM at the tuning batch; if none does, take the one with the most
/// blocks (smallest). Big tiles reuse each loaded value more; enough blocks
/// keep every SM busy. It is deliberately simple: a 1×1 conv on 7×7 maps
/// (N = 49) gets small tiles, a 3×3 conv on 224×224 maps gets the largest.
pub fn choose_tile(m: u64, n: u64, groups: u64) -> GemmTile {
    let blocks = |t: &GemmTile| m.div_ceil(t.bm as u64) * n.div_ceil(t.bn as u64) * groups;
    let waste = |t: &GemmTile| {
        let padded = m.div_ceil(t.bm as u64) * t.bm as u64 * n.div_ceil(t.bn as u64) * t.bn as u64;
        padded as f64 / (m * n).max(1) as f64 - 1.0
    };
    TILES
        .iter()
        .find(|t| waste(t) <= 0.25 && blocks(t) >= 2 * TARGET_SMS)
        .or_else(|| TILES.last())
        .copied()
        .unwrap_or(TILES[0])
}

#[derive(Clone, Debug, PartialEq)]
pub struct Gemm {
    pub in_channels: i64,
    pub in_h: i64,
    pub in_w: i64,
    pub out_channels: i64,
    pub out_h: i64,
    pub out_w: i64,
    pub kernel: (i64, i64),
    pub stride: (i64, i64),
    /// Top and left padding (bottom and right follow from the output size).
    pub pad: (i64, i64),
    pub dilation: (i64, i64),
    pub groups: i64,
    pub padding_mode: PaddingMode,
    /// The input is averaged over its H×W maps before the GEMM (linear only).
    pub global_pool: bool,
    pub bias: bool,
    pub tile: GemmTile,
}

impl Gemm {
    pub fn m(&self) -> i64 {
        self.out_channels / self.groups
    }
    pub fn k(&self) -> i64 {
        if self.global_pool {
            self.in_channels
        } else {
            self.in_channels / self.groups * self.kernel.0 * self.kernel.1
        }
    }
    pub fn pixels(&self) -> i64 {
        self.out_h * self.out_w
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum KernelKind {
    Gemm(Gemm),
    /// Max or average pooling, one thread per output.
    Pool {
        op: Op,
    },
    AdaptivePool {
        max: bool,
        output: (i64, i64),
    },
    /// y = x·scale[c] + shift[c] (a batch norm that could not be folded; scale and shift prepared at load).
    ChannelAffine,
    Lrn {
        size: i64,
        alpha: f64,
        beta: f64,
        k: f64,
    },
    /// Over dimension 1; one thread per (image, pixel).
    Softmax {
        log: bool,
    },
    Activation(Activation),
    Add,
    /// Copies one input into its channel slice of the output (a concat that is not in place).
    CopySlice,
}

/// How many blocks along x: `ceil(batch·per_image / per_block)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub per_image: u64,
    pub per_block: u64,
    pub y: u64,
    pub z: u64,
}

impl Grid {
    pub fn x(&self, batch: u64) -> u64 {
        (batch * self.per_image).div_ceil(self.per_block).max(1)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub index: usize,
    /// A C identifier: `k07_conv_layer1_0_conv1`.
    pub name: String,
    pub node: NodeId,
    /// The layers this kernel computes, with their `.cnn` locations, for comments.
    pub layers: Vec<String>,
    pub kind: KernelKind,
    /// Main input first, then residual operands (for the epilogue) in order.
    pub inputs: Vec<TensorRef>,
    pub output: TensorRef,
    /// Epilogue steps; `AddInput(k)` reads `inputs[k]`.
    pub epilogue: Vec<Epilogue>,
    /// Parameter tensors it reads, by `state_dict` key (prepared: batch norm folded).
    pub params: Vec<String>,
    pub block: u32,
    pub grid: Grid,
}

/// Every kernel of a model, in launch order.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelProgram {
    pub model: String,
    pub source: String,
    pub input: TensorRef,
    pub output: TensorRef,
    pub kernels: Vec<Kernel>,
}

/// Where each node's values live, with views resolved to their owners.
pub fn placements(g: &Graph) -> Vec<TensorRef> {
    let mut refs: Vec<TensorRef> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(id, n)| TensorRef {
            owner: id,
            channel_offset: 0,
            channels_total: n.shape.channels(),
            shape: n.shape,
        })
        .collect();
    // Concats in place: each branch writes a slice of the concat's buffer.
    // (The pass never puts a view inside an in-place concat, so no nesting.)
    for (id, node) in g.nodes.iter().enumerate() {
        if node.op == Op::Concat && node.fusion.view {
            let mut offset = 0;
            for &i in &node.inputs {
                let outer = refs[id];
                refs[i] = TensorRef {
                    owner: outer.owner,
                    channel_offset: outer.channel_offset + offset,
                    channels_total: outer.channels_total,
                    shape: g.nodes[i].shape,
                };
                offset += g.nodes[i].shape.channels();
            }
        }
    }
    // Flatten views share their input's memory (a contiguous NCHW map is already flat).
    for (id, node) in g.nodes.iter().enumerate() {
        if node.op == Op::Flatten && node.fusion.view {
            let input = refs[node.inputs[0]];
            refs[id] = TensorRef {
                shape: node.shape,
                channels_total: node.shape.channels(),
                ..input
            };
        }
    }
    refs
}

/// A C identifier from a user-chosen layer name: letters, digits and `_` only.
pub fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(48)
        .collect();
    while s.contains("__") {
        s = s.replace("__", "_");
    }
    s.trim_matches('_').to_string()
}

fn chw(shape: Shape) -> (i64, i64, i64) {
    match shape {
        Shape::Chw(c, h, w) => (c, h, w),
        Shape::Flat(f) => (f, 1, 1),
    }
}

/// Lowers a fused graph to kernels.
pub fn lower(g: &Graph, sources: &SourceMap) -> Result<KernelProgram, String> {
    let refs = placements(g);
    let mut kernels = Vec::new();
    for (id, node) in g.nodes.iter().enumerate().skip(1) {
        if node.fusion.view {
            continue;
        }
        let output = refs[id];
        let inputs: Vec<TensorRef> = node.inputs.iter().map(|&i| refs[i]).collect();
        let (_, oh, ow) = chw(node.shape);
        let one_per_output = |count: u64| Grid {
            per_image: count,
            per_block: 256,
            y: 1,
            z: 1,
        };
        let mut params = Vec::new();
        let (kind, block, grid) = match &node.op {
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
                let (_, ih, iw) = chw(inputs[0].shape);
                let m = (out_channels / groups) as u64;
                let n = (oh * ow) as u64 * TUNING_BATCH;
                let tile = choose_tile(m, n, *groups as u64);
                let has_bias = *bias || node.fusion.folded_batchnorm.is_some();
                params.push(format!("{}.weight", node.name));
                if has_bias {
                    params.push(format!("{}.bias", node.name));
                }
                let gemm = Gemm {
                    in_channels: *in_channels,
                    in_h: ih,
                    in_w: iw,
                    out_channels: *out_channels,
                    out_h: oh,
                    out_w: ow,
                    kernel: *kernel,
                    stride: *stride,
                    pad: (padding.top, padding.left),
                    dilation: *dilation,
                    groups: *groups,
                    padding_mode: *padding_mode,
                    global_pool: false,
                    bias: has_bias,
                    tile,
                };
                let grid = Grid {
                    per_image: (oh * ow) as u64,
                    per_block: tile.bn as u64,
                    y: m.div_ceil(tile.bm as u64),
                    z: *groups as u64,
                };
                (KernelKind::Gemm(gemm), tile.threads(), grid)
            }
            Op::Linear {
                in_features,
                out_features,
                bias,
            } => {
                let global_pool = node.fusion.prologue == Some(Prologue::GlobalAvgPool);
                let (_, ih, iw) = chw(inputs[0].shape);
                let m = *out_features as u64;
                let tile = choose_tile(m, TUNING_BATCH, 1);
                let has_bias = *bias || node.fusion.folded_batchnorm.is_some();
                params.push(format!("{}.weight", node.name));
                if has_bias {
                    params.push(format!("{}.bias", node.name));
                }
                let gemm = Gemm {
                    in_channels: *in_features,
                    in_h: if global_pool { ih } else { 1 },
                    in_w: if global_pool { iw } else { 1 },
                    out_channels: *out_features,
                    out_h: 1,
                    out_w: 1,
                    kernel: (1, 1),
                    stride: (1, 1),
                    pad: (0, 0),
                    dilation: (1, 1),
                    groups: 1,
                    padding_mode: PaddingMode::Zeros,
                    global_pool,
                    bias: has_bias,
                    tile,
                };
                let grid = Grid {
                    per_image: 1,
                    per_block: tile.bn as u64,
                    y: m.div_ceil(tile.bm as u64),
                    z: 1,
                };
                (KernelKind::Gemm(gemm), tile.threads(), grid)
            }
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } => (
                KernelKind::Pool {
                    op: node.op.clone(),
                },
                256,
                one_per_output(node.shape.numel() as u64),
            ),
            Op::AdaptiveAvgPool2d { output } | Op::AdaptiveMaxPool2d { output } => (
                KernelKind::AdaptivePool {
                    max: matches!(node.op, Op::AdaptiveMaxPool2d { .. }),
                    output: *output,
                },
                256,
                one_per_output(node.shape.numel() as u64),
            ),
            Op::BatchNorm { .. } => {
                // Prepared at load into scale (".weight") and shift (".bias").
                params.push(format!("{}.weight", node.name));
                params.push(format!("{}.bias", node.name));
                (
                    KernelKind::ChannelAffine,
                    256,
                    one_per_output(node.shape.numel() as u64),
                )
            }
            Op::LocalResponseNorm {
                size,
                alpha,
                beta,
                k,
            } => (
                KernelKind::Lrn {
                    size: *size,
                    alpha: alpha.0,
                    beta: beta.0,
                    k: k.0,
                },
                256,
                one_per_output(node.shape.numel() as u64),
            ),
            Op::Softmax | Op::LogSoftmax => (
                KernelKind::Softmax {
                    log: node.op == Op::LogSoftmax,
                },
                256,
                one_per_output((oh * ow) as u64),
            ),
            Op::Activation(a) => (
                KernelKind::Activation(*a),
                256,
                one_per_output(node.shape.numel() as u64),
            ),
            Op::Add => (
                KernelKind::Add,
                256,
                one_per_output(node.shape.numel() as u64),
            ),
            Op::Concat => {
                // Not in place: one copy kernel per input, each into its slice.
                let mut offset = 0;
                for (k, &i) in node.inputs.iter().enumerate() {
                    let part = refs[i];
                    let slice = TensorRef {
                        channel_offset: output.channel_offset + offset,
                        shape: part.shape,
                        ..output
                    };
                    offset += part.shape.channels();
                    let index = kernels.len();
                    kernels.push(Kernel {
                        index,
                        name: format!("k{index:02}_concat_{}_{k}", sanitize(&node.name))
                            .replace("__", "_"),
                        node: id,
                        layers: describe_layers(g, id, sources),
                        kind: KernelKind::CopySlice,
                        inputs: vec![part],
                        output: slice,
                        epilogue: Vec::new(),
                        params: Vec::new(),
                        block: 256,
                        grid: one_per_output(part.shape.numel() as u64),
                    });
                }
                continue;
            }
            Op::Dropout { .. } | Op::Dropout2d { .. } | Op::Identity | Op::Flatten => {
                return Err(format!(
                    "node {id} ({}) should have been removed by the passes",
                    node.op.name()
                ));
            }
            Op::Input => continue,
        };
        let index = kernels.len();
        let label = if node.name.is_empty() {
            String::new()
        } else {
            format!("_{}", sanitize(&node.name))
        };
        kernels.push(Kernel {
            index,
            name: format!("k{index:02}_{}{label}", node.op.name()),
            node: id,
            layers: describe_layers(g, id, sources),
            kind,
            inputs,
            output,
            epilogue: node.fusion.epilogue.clone(),
            params,
            block,
            grid,
        });
    }
    Ok(KernelProgram {
        model: g.name.clone(),
        source: g
            .nodes
            .first()
            .map(|n| sources.name(n.span.file).to_string())
            .unwrap_or_default(),
        input: refs[0],
        output: refs[g.output],
        kernels,
    })
}

/// "conv layer1.0.conv1 — models/resnet50.cnn:14" lines: the node and everything merged into it.
fn describe_layers(g: &Graph, id: NodeId, sources: &SourceMap) -> Vec<String> {
    let node = &g.nodes[id];
    let line = |span: crate::source::Span| {
        let (l, _) = sources.line_col(span.file, span.start);
        format!("{}:{l}", sources.name(span.file))
    };
    let mut out = vec![format!(
        "{} {} ({})",
        node.op.describe(),
        if node.name.is_empty() {
            "·"
        } else {
            &node.name
        },
        line(node.span)
    )];
    for m in &node.fusion.merged {
        out.push(format!(
            "+ {} {} ({})",
            m.op,
            if m.name.is_empty() { "·" } else { &m.name },
            line(m.span)
        ));
    }
    out
}

/// The `--stage kernels` listing: one block per kernel.
pub fn render(program: &KernelProgram) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "model {} ({} kernels)",
        program.model,
        program.kernels.len()
    );
    for k in &program.kernels {
        let _ = writeln!(
            out,
            "\n{}  block {} grid [ceil(batch·{}/{}), {}, {}]",
            k.name, k.block, k.grid.per_image, k.grid.per_block, k.grid.y, k.grid.z
        );
        for l in &k.layers {
            let _ = writeln!(out, "  {}", clean(l));
        }
        match &k.kind {
            KernelKind::Gemm(gm) => {
                let t = gm.tile;
                let _ = writeln!(
                    out,
                    "  implicit GEMM per group: M={} N=batch·{} K={}  tile BM={} BN={} BK={} TM={} TN={} ({} threads)",
                    gm.m(),
                    gm.pixels(),
                    gm.k(),
                    t.bm,
                    t.bn,
                    t.bk,
                    t.tm,
                    t.tn,
                    t.threads()
                );
                let _ = writeln!(out, "  loop nest: for k0 in 0..K step {}: load A[{}×{}], B[{}×{}] to shared; for k in 0..{}: acc[{}×{}] += a·b", t.bk, t.bm, t.bk, t.bk, t.bn, t.bk, t.tm, t.tn);
            }
            other => {
                let _ = writeln!(out, "  {}", describe_kind(other));
            }
        }
        for e in &k.epilogue {
            let _ = match e {
                Epilogue::Activation(a) => {
                    writeln!(out, "  epilogue: {}", Op::Activation(*a).describe())
                }
                Epilogue::AddInput(i) => writeln!(
                    out,
                    "  epilogue: add input {i} (node {})",
                    k.inputs[*i].owner
                ),
            };
        }
        let place = |r: &TensorRef| {
            format!(
                "buf{}[c {}+{} of {}] {}",
                r.owner,
                r.channel_offset,
                r.shape.channels(),
                r.channels_total,
                r.shape
            )
        };
        for (i, r) in k.inputs.iter().enumerate() {
            let _ = writeln!(out, "  in{i}:  {}", place(r));
        }
        let _ = writeln!(out, "  out:  {}", place(&k.output));
    }
    out
}

fn describe_kind(kind: &KernelKind) -> String {
    match kind {
        KernelKind::Gemm(_) => "gemm".to_string(),
        KernelKind::Pool { op } => format!("{}, one thread per output", op.describe()),
        KernelKind::AdaptivePool { max, output } => {
            format!(
                "adaptive {} pool to {}×{}, one thread per output",
                if *max { "max" } else { "average" },
                output.0,
                output.1
            )
        }
        KernelKind::ChannelAffine => {
            "per-channel scale and shift (batch norm), one thread per output".to_string()
        }
        KernelKind::Lrn { size, .. } => {
            format!("local response norm over {size} channels, one thread per output")
        }
        KernelKind::Softmax { log } => format!(
            "{} over channels, one thread per (image, pixel)",
            if *log { "log_softmax" } else { "softmax" }
        ),
        KernelKind::Activation(a) => {
            format!("{}, one thread per element", Op::Activation(*a).describe())
        }
        KernelKind::Add => "elementwise add, one thread per element".to_string(),
        KernelKind::CopySlice => "copy into a channel slice, one thread per element".to_string(),
    }
}

/// Text from user files made safe for a `//` comment: no control characters,
/// no trailing backslash (which would continue the comment onto the next line).
pub fn clean(text: &str) -> String {
    let s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.trim_end_matches('\\').to_string()
}
