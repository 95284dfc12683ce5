//! Lowers kernels and the memory plan to the runtime's execution plan
//! (`cnnc_runtime::plan`), the data both executors run.

use crate::back::kernel_ir::{KernelKind, KernelProgram, TensorRef};
use crate::back::memory::MemoryPlan;
use crate::front::source::SourceMap;
use crate::ir::{Activation, Epilogue, Graph, Op, Shape};
use cnnc_runtime::plan::{self as rt, Plan};

/// The runtime form of an activation (its parameter rounded to f32).
pub fn act(a: Activation) -> rt::Act {
    match a {
        Activation::Relu => rt::Act::Relu,
        Activation::Relu6 => rt::Act::Relu6,
        Activation::LeakyRelu(s) => rt::Act::LeakyRelu(s.0 as f32),
        Activation::Elu(a) => rt::Act::Elu(a.0 as f32),
        Activation::Tanh => rt::Act::Tanh,
        Activation::Sigmoid => rt::Act::Sigmoid,
        Activation::Silu => rt::Act::Silu,
        Activation::Gelu {
            tanh_approximation: false,
        } => rt::Act::Gelu,
        Activation::Gelu {
            tanh_approximation: true,
        } => rt::Act::GeluTanh,
        Activation::Hardsigmoid => rt::Act::Hardsigmoid,
        Activation::Hardswish => rt::Act::Hardswish,
    }
}

fn place(r: &TensorRef, memory: &MemoryPlan) -> Result<rt::Place, String> {
    let offset = memory
        .offset_of(r.owner)
        .ok_or_else(|| format!("node {} has no buffer", r.owner))?;
    let (c, h, w) = match r.shape {
        Shape::Chw(c, h, w) => (c, h, w),
        Shape::Flat(f) => (f, 1, 1),
    };
    Ok(rt::Place {
        offset: offset as usize,
        channel_offset: r.channel_offset as usize,
        channels_total: r.channels_total as usize,
        c: c as usize,
        h: h as usize,
        w: w as usize,
    })
}

/// Builds the execution plan of a fused graph.
pub fn build(
    graph: &Graph,
    program: &KernelProgram,
    memory: &MemoryPlan,
    sources: &SourceMap,
) -> Result<Plan, String> {
    let mut prepared: Vec<rt::Prepared> = Vec::new();
    let mut push = |p: rt::Prepared| {
        prepared.push(p);
        prepared.len() - 1
    };
    let mut steps = Vec::new();
    // Weights whose GEMM runs on 16-bit tensor cores at some batch size:
    // (prepared index, format, rows), given their 16-bit copy below.
    let mut halves: Vec<(usize, rt::HalfFormat, usize)> = Vec::new();
    for k in &program.kernels {
        let node = &graph.nodes[k.node];
        let mut params = Vec::new();
        let op = match &k.kind {
            KernelKind::Gemm(g) => {
                params = conv_params(node, &mut push);
                if let (Some(format), Some(&weight)) = (k.half_weights(), params.first()) {
                    halves.push((weight, format, g.out_channels as usize));
                }
                let mode = match g.padding_mode {
                    crate::ir::PaddingMode::Zeros => 0,
                    crate::ir::PaddingMode::Reflect => 1,
                    crate::ir::PaddingMode::Replicate => 2,
                    crate::ir::PaddingMode::Circular => 3,
                };
                rt::StepOp::Gemm(rt::Gemm {
                    in_channels: g.in_channels as usize,
                    out_channels: g.out_channels as usize,
                    kernel: (g.kernel.0 as usize, g.kernel.1 as usize),
                    stride: (g.stride.0 as usize, g.stride.1 as usize),
                    pad: (g.pad.0 as usize, g.pad.1 as usize),
                    dilation: (g.dilation.0 as usize, g.dilation.1 as usize),
                    groups: g.groups as usize,
                    padding_mode: mode,
                    global_pool: g.global_pool,
                    input_scale: g.input_scale,
                    input_norm: g.input_norm,
                    bias: g.bias,
                })
            }
            KernelKind::Depthwise(d) => {
                // The same function as the grouped GEMM it replaces: the CPU
                // executor runs it on its depthwise kernel.
                params = conv_params(node, &mut push);
                rt::StepOp::Gemm(rt::Gemm {
                    in_channels: d.channels as usize,
                    out_channels: d.channels as usize,
                    kernel: (d.kernel.0 as usize, d.kernel.1 as usize),
                    stride: (d.stride.0 as usize, d.stride.1 as usize),
                    pad: (d.pad.0 as usize, d.pad.1 as usize),
                    dilation: (d.dilation.0 as usize, d.dilation.1 as usize),
                    groups: d.channels as usize,
                    padding_mode: 0,
                    global_pool: false,
                    input_scale: false,
                    input_norm: false,
                    bias: d.bias,
                })
            }
            KernelKind::Pool { op } => match op {
                Op::MaxPool2d {
                    kernel,
                    stride,
                    padding,
                    dilation,
                    ..
                } => rt::StepOp::Pool {
                    max: true,
                    kernel: (kernel.0 as usize, kernel.1 as usize),
                    stride: (stride.0 as usize, stride.1 as usize),
                    pad: (padding.0 as usize, padding.1 as usize),
                    dilation: (dilation.0 as usize, dilation.1 as usize),
                    count_include_pad: true,
                },
                Op::AvgPool2d {
                    kernel,
                    stride,
                    padding,
                    count_include_pad,
                    ..
                } => rt::StepOp::Pool {
                    max: false,
                    kernel: (kernel.0 as usize, kernel.1 as usize),
                    stride: (stride.0 as usize, stride.1 as usize),
                    pad: (padding.0 as usize, padding.1 as usize),
                    dilation: (1, 1),
                    count_include_pad: *count_include_pad,
                },
                other => return Err(format!("{} is not a pool", other.name())),
            },
            KernelKind::AdaptivePool { max, .. } => rt::StepOp::AdaptivePool { max: *max },
            KernelKind::ChannelAffine => {
                let eps = match node.op {
                    Op::BatchNorm { eps, .. } => eps.0,
                    Op::Scale { channels, .. } => {
                        // A `scale`: its parameter as stored, no shift.
                        params.push(push(rt::Prepared::Tensor {
                            key: node.name.clone(),
                        }));
                        params.push(push(rt::Prepared::Zeros {
                            len: channels as usize,
                        }));
                        steps.push(step(k, rt::StepOp::ChannelAffine, params, memory)?);
                        continue;
                    }
                    _ => return Err("channel affine without a batch norm or scale".into()),
                };
                params.push(push(rt::Prepared::BnScale {
                    bn: node.name.clone(),
                    eps,
                }));
                params.push(push(rt::Prepared::BnShift {
                    bn: node.name.clone(),
                    eps,
                }));
                rt::StepOp::ChannelAffine
            }
            KernelKind::Lrn {
                size,
                alpha,
                beta,
                k: kk,
            } => rt::StepOp::Lrn {
                size: *size as usize,
                alpha: *alpha as f32,
                beta: *beta as f32,
                k: *kk as f32,
            },
            KernelKind::Softmax { log } => rt::StepOp::Softmax { log: *log },
            KernelKind::Activation(a) => rt::StepOp::Act(act(*a)),
            KernelKind::Add => rt::StepOp::Add,
            KernelKind::Mul => rt::StepOp::Mul,
            KernelKind::CopySlice => rt::StepOp::Copy,
            KernelKind::LayerNorm { eps } => {
                params.push(push(rt::Prepared::Tensor {
                    key: format!("{}.weight", node.name),
                }));
                params.push(push(rt::Prepared::Tensor {
                    key: format!("{}.bias", node.name),
                }));
                rt::StepOp::LayerNorm { eps: *eps as f32 }
            }
            KernelKind::LayerNormStats { eps } => rt::StepOp::LayerNormStats { eps: *eps as f32 },
            KernelKind::ChannelShuffle { groups } => rt::StepOp::ChannelShuffle {
                groups: *groups as usize,
            },
        };
        steps.push(step(k, op, params, memory)?);
    }
    for (i, format, rows) in halves {
        let weight = Box::new(prepared[i].clone());
        prepared[i] = rt::Prepared::WithHalf {
            weight,
            format,
            rows,
        };
    }
    let state_dict = crate::ir::weights::state_entries(graph, sources);
    let ends_in = match graph.nodes[graph.output].op {
        Op::Softmax => rt::Ending::Probabilities,
        Op::LogSoftmax => rt::Ending::LogProbabilities,
        _ => rt::Ending::Logits,
    };
    Ok(Plan {
        model: graph.name.clone(),
        input_shape: graph
            .input_shape()
            .dims()
            .iter()
            .map(|&d| d as usize)
            .collect(),
        output_shape: graph
            .output_shape()
            .dims()
            .iter()
            .map(|&d| d as usize)
            .collect(),
        input: place(&program.input, memory)?,
        output: place(&program.output, memory)?,
        arena_per_image: memory.arena as usize,
        naive_per_image: memory.naive as usize,
        state_dict,
        prepared,
        steps,
        ends_in,
        precision: program.precision,
    })
}

/// The prepared weight (and bias, when there is one) of a convolution or
/// linear layer `node`, with a folded batch norm, `scale` or layer norm
/// applied.
fn conv_params(node: &crate::ir::Node, push: &mut impl FnMut(rt::Prepared) -> usize) -> Vec<usize> {
    let mut params = Vec::new();
    let weight = format!("{}.weight", node.name);
    let own_bias = match node.op {
        Op::Conv2d { bias, .. } | Op::Linear { bias, .. } => bias,
        _ => false,
    };
    let bias_key = own_bias.then(|| format!("{}.bias", node.name));
    if let Some(ln) = &node.fusion.folded_layernorm {
        // The fusion pass folds a layer norm only into a layer with nothing
        // else folded in; the IR verifier holds it to that.
        params.push(push(rt::Prepared::LnWeight {
            weight: weight.clone(),
            ln: ln.clone(),
        }));
        params.push(push(rt::Prepared::LnBias {
            weight,
            bias: bias_key,
            ln: ln.clone(),
        }));
        return params;
    }
    match &node.fusion.folded_batchnorm {
        None if node.fusion.folded_scale.is_some() => {
            let scale = node.fusion.folded_scale.clone().unwrap_or_default();
            params.push(push(rt::Prepared::ScaledWeight {
                weight,
                scale: scale.clone(),
            }));
            if let Some(bias) = bias_key {
                params.push(push(rt::Prepared::ScaledBias { bias, scale }));
            }
        }
        Some(bn) => {
            params.push(push(rt::Prepared::FoldedWeight {
                weight,
                bn: bn.name.clone(),
                eps: bn.eps.0,
            }));
            params.push(push(rt::Prepared::FoldedBias {
                bias: bias_key,
                bn: bn.name.clone(),
                eps: bn.eps.0,
            }));
        }
        None => {
            params.push(push(rt::Prepared::Tensor { key: weight }));
            if let Some(key) = bias_key {
                params.push(push(rt::Prepared::Tensor { key }));
            }
        }
    }
    params
}

/// One step of the plan: kernel `k` running `op` with prepared tensors `params`.
fn step(
    k: &crate::back::kernel_ir::Kernel,
    op: rt::StepOp,
    params: Vec<usize>,
    memory: &MemoryPlan,
) -> Result<rt::Step, String> {
    // The kernel was printed with the parameter list of its kind; the step
    // will be launched with its op's.
    if op.signature() != crate::back::cuda::signature(&k.kind) {
        return Err(format!(
            "{}: printed with the {:?} parameter list, launched as {:?} (internal error)",
            k.name,
            crate::back::cuda::signature(&k.kind),
            op.signature()
        ));
    }
    let epilogue = k
        .epilogue
        .iter()
        .map(|e| match e {
            Epilogue::Activation(a) => rt::Epi::Act(act(*a)),
            Epilogue::AddInput(i) => rt::Epi::AddInput(*i),
        })
        .collect();
    let schedule = match &k.kind {
        KernelKind::Gemm(g) => Some(g.schedule),
        _ => None,
    };
    Ok(rt::Step {
        kernel: k.name.clone(),
        op,
        inputs: k
            .inputs
            .iter()
            .map(|r| place(r, memory))
            .collect::<Result<_, _>>()?,
        output: place(&k.output, memory)?,
        epilogue,
        params,
        block: k.block,
        per_image: k.grid.per_image,
        per_block: k.grid.per_block,
        grid_y: k.grid.y as u32,
        grid_z: k.grid.z as u32,
        layers: k.layers.clone(),
        variants: k
            .variants
            .iter()
            .map(|v| rt::Variant {
                min_batch: v.min_batch as usize,
                kernel: v.name.clone(),
                block: v.block,
                per_image: v.grid.per_image,
                per_block: v.grid.per_block,
                grid_y: v.grid.y as u32,
                grid_z: v.grid.z as u32,
                split_k: v.schedule.split(),
                partial_floats: v.schedule.partial_floats(),
            })
            .collect(),
        split_k: schedule.map_or(1, |s| s.split()),
        partial_floats: schedule.map_or(0, |s| s.partial_floats()),
    })
}

/// The whole back half of the pipeline: optimise, lower, plan memory, build the plan
/// (strict FP32 kernels).
pub fn compile(graph: &Graph, sources: &SourceMap) -> Result<(Graph, KernelProgram, Plan), String> {
    compile_with(graph, sources, crate::back::kernel_ir::Precision::Fp32)
}

/// [`compile`] with the GEMMs in `precision` (`cnnc build --precision`).
pub fn compile_with(
    graph: &Graph,
    sources: &SourceMap,
    precision: crate::back::kernel_ir::Precision,
) -> Result<(Graph, KernelProgram, Plan), String> {
    let (fused, _) = crate::ir::passes::optimize(graph)?;
    let program = crate::back::kernel_ir::lower_with(&fused, sources, precision)?;
    let refs = crate::back::kernel_ir::placements(&fused);
    let memory = crate::back::memory::plan(&fused, &refs);
    crate::back::memory::verify(&memory)?;
    let plan = build(&fused, &program, &memory, sources)?;
    Ok((fused, program, plan))
}
