//! The reference evaluator: runs a checked graph on the CPU with plain loops in
//! f64, following PyTorch's `eval()` semantics (batch norm with running
//! statistics, dropout off).
//!
//! It is the oracle every faster backend is compared with, so each op is
//! written the way its definition reads; the only concessions to speed are
//! f64 accumulation in contiguous inner loops and running independent
//! (image, channel) planes in parallel.

use crate::ir::weights::BoundWeights;
use crate::ir::{Activation, Epilogue, Graph, Node, Op, PaddingMode, Prologue, Shape};
use rayon::prelude::*;

/// A batch of values: `n` images of `shape`, NCHW, in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub n: usize,
    pub shape: Shape,
    pub data: Vec<f64>,
}

impl Batch {
    pub fn dims(&self) -> Vec<usize> {
        let mut d = vec![self.n];
        d.extend(self.shape.dims().iter().map(|&v| v as usize));
        d
    }
}

/// Runs the graph on `n` images given as NCHW f32 values.
pub fn evaluate(
    graph: &Graph,
    weights: &BoundWeights,
    n: usize,
    input: &[f32],
) -> Result<Batch, String> {
    let in_shape = graph.input_shape();
    let per = in_shape.numel() as usize;
    if input.len() != n * per {
        return Err(format!(
            "input has {} values; {n} images of {in_shape} need {}",
            input.len(),
            n * per
        ));
    }
    let last = graph.last_uses();
    let mut values: Vec<Option<Vec<f64>>> = vec![None; graph.nodes.len()];
    values[0] = Some(input.iter().map(|&v| v as f64).collect());
    for (id, node) in graph.nodes.iter().enumerate().skip(1) {
        let inputs: Vec<&[f64]> = node
            .inputs
            .iter()
            .map(|&i| {
                values[i]
                    .as_deref()
                    .ok_or_else(|| format!("node {i} was freed too early"))
            })
            .collect::<Result<_, _>>()?;
        let in_shapes: Vec<Shape> = node.inputs.iter().map(|&i| graph.nodes[i].shape).collect();
        let mut out = match node.fusion.prologue {
            Some(Prologue::GlobalAvgPool) => {
                let pooled = global_average(inputs[0], n, in_shapes[0]);
                let flat = Shape::Flat(in_shapes[0].channels());
                run_node(&node.op, node, weights, n, &[&pooled], &[flat], node.shape)?
            }
            Some(Prologue::ChannelScale { factor }) => {
                // Each (image, channel) map times its factor, as the unfused multiply.
                let plane = in_shapes[0].numel() as usize / in_shapes[0].channels() as usize;
                let scaled: Vec<f64> = inputs[0]
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * inputs[factor][i / plane])
                    .collect();
                let mut scaled_inputs = inputs.clone();
                scaled_inputs[0] = &scaled;
                run_node(
                    &node.op,
                    node,
                    weights,
                    n,
                    &scaled_inputs,
                    &in_shapes,
                    node.shape,
                )?
            }
            Some(Prologue::Normalize { stats }) => {
                // The layer norm as it was: each pixel's values minus the
                // mean, times the inverse deviation, then weight and bias.
                let ln = node
                    .fusion
                    .folded_layernorm
                    .as_deref()
                    .ok_or("a normalising prologue without its layer norm")?;
                let get = |suffix: &str| {
                    weights
                        .get(&format!("{ln}.{suffix}"))
                        .ok_or_else(|| format!("missing {suffix} of `{ln}`"))
                };
                let (gamma, beta) = (get("weight")?, get("bias")?);
                let (c, h, w) = chw(in_shapes[0]);
                let hw = h * w;
                let s = inputs[stats];
                let normed: Vec<f64> = inputs[0]
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let (image, ch, p) = (i / (c * hw), (i / hw) % c, i % hw);
                        let (mean, inv) = (s[image * 2 * hw + p], s[(image * 2 + 1) * hw + p]);
                        (v - mean) * inv * gamma[ch] + beta[ch]
                    })
                    .collect();
                let mut normed_inputs = inputs.clone();
                normed_inputs[0] = &normed;
                run_node(
                    &node.op,
                    node,
                    weights,
                    n,
                    &normed_inputs,
                    &in_shapes,
                    node.shape,
                )?
            }
            None => run_node(&node.op, node, weights, n, &inputs, &in_shapes, node.shape)?,
        };
        for e in &node.fusion.epilogue {
            match *e {
                Epilogue::Activation(a) => out.iter_mut().for_each(|v| *v = activate(a, *v)),
                Epilogue::AddInput(k) => out.iter_mut().zip(inputs[k]).for_each(|(v, r)| *v += r),
            }
        }
        debug_assert_eq!(out.len(), n * node.shape.numel() as usize);
        values[id] = Some(out);
        for &i in &node.inputs {
            if last[i] == id {
                values[i] = None;
            }
        }
    }
    let data = values[graph.output]
        .take()
        .ok_or("the output was not computed")?;
    Ok(Batch {
        n,
        shape: graph.output_shape(),
        data,
    })
}

/// The mean over the `c` channels of pixel `p` of image `i` and
/// 1/√(biased variance + eps), as nn.LayerNorm computes them.
fn pixel_stats(x: &[f64], c: usize, hw: usize, i: usize, p: usize, eps: f64) -> (f64, f64) {
    let at = |ch: usize| x[(i * c + ch) * hw + p];
    let mean = (0..c).map(at).sum::<f64>() / c as f64;
    let var = (0..c).map(|ch| (at(ch) - mean).powi(2)).sum::<f64>() / c as f64;
    (mean, 1.0 / (var + eps).sqrt())
}

fn chw(shape: Shape) -> (usize, usize, usize) {
    match shape {
        Shape::Chw(c, h, w) => (c as usize, h as usize, w as usize),
        Shape::Flat(f) => (f as usize, 1, 1),
    }
}

fn run_node(
    op: &Op,
    node: &Node,
    weights: &BoundWeights,
    n: usize,
    inputs: &[&[f64]],
    in_shapes: &[Shape],
    out_shape: Shape,
) -> Result<Vec<f64>, String> {
    let x = inputs[0];
    let name = node.name.as_str();
    let get = |suffix: &str| weights.get(&format!("{name}.{suffix}"));
    // A folded batch norm leaves a bias even where the layer had none.
    let has_bias = |bias: bool| bias || node.fusion.folded_batchnorm.is_some();
    Ok(match *op {
        Op::Input => x.to_vec(),
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
            let w = get("weight").ok_or_else(|| format!("missing weight of `{name}`"))?;
            let b = if has_bias(bias) {
                Some(get("bias").ok_or_else(|| format!("missing bias of `{name}`"))?)
            } else {
                None
            };
            let (c, h, wd) = chw(in_shapes[0]);
            debug_assert_eq!(c as i64, in_channels);
            let (oc, oh, ow) = chw(out_shape);
            debug_assert_eq!(oc as i64, out_channels);
            let pads =
                [padding.top, padding.bottom, padding.left, padding.right].map(|p| p as usize);
            let padded = pad_planes(x, n * c, h, wd, pads, padding_mode);
            let (hp, wp) = (h + pads[0] + pads[1], wd + pads[2] + pads[3]);
            let (kh, kw) = (kernel.0 as usize, kernel.1 as usize);
            let (sh, sw) = (stride.0 as usize, stride.1 as usize);
            let (dh, dw) = (dilation.0 as usize, dilation.1 as usize);
            let groups = groups as usize;
            let cpg = c / groups;
            let opg = oc / groups;
            let mut out = vec![0f64; n * oc * oh * ow];
            out.par_chunks_mut(oh * ow)
                .enumerate()
                .for_each(|(plane_index, plane)| {
                    let image = plane_index / oc;
                    let o = plane_index % oc;
                    let g = o / opg;
                    plane.fill(b.map_or(0.0, |b| b[o]));
                    for ci in 0..cpg {
                        let ic = g * cpg + ci;
                        let src =
                            &padded[(image * c + ic) * hp * wp..(image * c + ic + 1) * hp * wp];
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let wv = w[((o * cpg + ci) * kh + ky) * kw + kx];
                                for y in 0..oh {
                                    let row = &src[(y * sh + ky * dh) * wp + kx * dw..];
                                    let dst = &mut plane[y * ow..(y + 1) * ow];
                                    for (xo, d) in dst.iter_mut().enumerate() {
                                        *d += wv * row[xo * sw];
                                    }
                                }
                            }
                        }
                    }
                });
            out
        }
        Op::MaxPool2d {
            kernel,
            stride,
            padding,
            dilation,
            ..
        } => {
            let (c, h, w) = chw(in_shapes[0]);
            let (_, oh, ow) = chw(out_shape);
            per_plane(x, n * c, h * w, oh * ow, |src, dst| {
                for y in 0..oh {
                    for xo in 0..ow {
                        // Padding never wins a max: PyTorch pads with −∞.
                        let mut best = f64::NEG_INFINITY;
                        for ky in 0..kernel.0 {
                            let iy = (y as i64) * stride.0 - padding.0 + ky * dilation.0;
                            if iy < 0 || iy >= h as i64 {
                                continue;
                            }
                            for kx in 0..kernel.1 {
                                let ix = (xo as i64) * stride.1 - padding.1 + kx * dilation.1;
                                if ix < 0 || ix >= w as i64 {
                                    continue;
                                }
                                let v = src[iy as usize * w + ix as usize];
                                if v > best || v.is_nan() {
                                    best = v;
                                }
                            }
                        }
                        dst[y * ow + xo] = best;
                    }
                }
            })
        }
        Op::AvgPool2d {
            kernel,
            stride,
            padding,
            count_include_pad,
            ..
        } => {
            let (c, h, w) = chw(in_shapes[0]);
            let (_, oh, ow) = chw(out_shape);
            per_plane(x, n * c, h * w, oh * ow, |src, dst| {
                for y in 0..oh {
                    for xo in 0..ow {
                        // PyTorch: the window is clipped to the padded input for
                        // the divisor, and to the input for the sum.
                        let (h, w) = (h as i64, w as i64);
                        let mut y0 = y as i64 * stride.0 - padding.0;
                        let mut x0 = xo as i64 * stride.1 - padding.1;
                        let mut y1 = (y0 + kernel.0).min(h + padding.0);
                        let mut x1 = (x0 + kernel.1).min(w + padding.1);
                        let padded_area = (y1 - y0) * (x1 - x0);
                        y0 = y0.max(0);
                        x0 = x0.max(0);
                        y1 = y1.min(h);
                        x1 = x1.min(w);
                        let mut sum = 0.0;
                        for iy in y0..y1 {
                            for ix in x0..x1 {
                                sum += src[(iy * w + ix) as usize];
                            }
                        }
                        let divisor = if count_include_pad {
                            padded_area
                        } else {
                            (y1 - y0) * (x1 - x0)
                        };
                        dst[y * ow + xo] = sum / divisor as f64;
                    }
                }
            })
        }
        Op::AdaptiveAvgPool2d { .. } | Op::AdaptiveMaxPool2d { .. } => {
            let max = matches!(op, Op::AdaptiveMaxPool2d { .. });
            let (c, h, w) = chw(in_shapes[0]);
            let (_, oh, ow) = chw(out_shape);
            per_plane(x, n * c, h * w, oh * ow, |src, dst| {
                for y in 0..oh {
                    // PyTorch: start = floor(i·I/O), end = ceil((i+1)·I/O).
                    let (y0, y1) = (y * h / oh, ((y + 1) * h).div_ceil(oh));
                    for xo in 0..ow {
                        let (x0, x1) = (xo * w / ow, ((xo + 1) * w).div_ceil(ow));
                        let mut acc = if max { f64::NEG_INFINITY } else { 0.0 };
                        for iy in y0..y1 {
                            for ix in x0..x1 {
                                let v = src[iy * w + ix];
                                if max {
                                    if v > acc || v.is_nan() {
                                        acc = v;
                                    }
                                } else {
                                    acc += v;
                                }
                            }
                        }
                        dst[y * ow + xo] = if max {
                            acc
                        } else {
                            acc / ((y1 - y0) * (x1 - x0)) as f64
                        };
                    }
                }
            })
        }
        Op::BatchNorm { eps, .. } => {
            let gamma = get("weight").ok_or_else(|| format!("missing weight of `{name}`"))?;
            let beta = get("bias").ok_or_else(|| format!("missing bias of `{name}`"))?;
            let mean =
                get("running_mean").ok_or_else(|| format!("missing running_mean of `{name}`"))?;
            let var =
                get("running_var").ok_or_else(|| format!("missing running_var of `{name}`"))?;
            let (c, h, w) = chw(in_shapes[0]);
            let hw = h * w;
            x.iter()
                .enumerate()
                .map(|(i, &v)| {
                    let ch = (i / hw) % c;
                    (v - mean[ch]) / (var[ch] + eps.0).sqrt() * gamma[ch] + beta[ch]
                })
                .collect()
        }
        Op::LayerNorm { eps, .. } => {
            // Over the C channels of each (image, pixel): biased variance,
            // as nn.LayerNorm; then weight and bias per channel.
            let gamma = get("weight").ok_or_else(|| format!("missing weight of `{name}`"))?;
            let beta = get("bias").ok_or_else(|| format!("missing bias of `{name}`"))?;
            let (c, h, w) = chw(in_shapes[0]);
            let hw = h * w;
            let mut y = vec![0.0; x.len()];
            for i in 0..n {
                for p in 0..hw {
                    let at = |ch: usize| (i * c + ch) * hw + p;
                    let (mean, inv) = pixel_stats(x, c, hw, i, p, eps.0);
                    for ch in 0..c {
                        y[at(ch)] = (x[at(ch)] - mean) * inv * gamma[ch] + beta[ch];
                    }
                }
            }
            y
        }
        Op::LayerNormStats { eps } => {
            // Per (image, pixel): the mean over channels, then 1/√(var + eps)
            // with the biased variance, as the layer norm computes them.
            let (c, h, w) = chw(in_shapes[0]);
            let hw = h * w;
            let mut y = vec![0.0; n * 2 * hw];
            for i in 0..n {
                for p in 0..hw {
                    let (mean, inv) = pixel_stats(x, c, hw, i, p, eps.0);
                    y[i * 2 * hw + p] = mean;
                    y[(i * 2 + 1) * hw + p] = inv;
                }
            }
            y
        }
        Op::Scale { .. } => {
            let s = weights
                .get(name)
                .ok_or_else(|| format!("missing `{name}`"))?;
            let (c, h, w) = chw(in_shapes[0]);
            let hw = h * w;
            x.iter()
                .enumerate()
                .map(|(i, &v)| v * s[(i / hw) % c])
                .collect()
        }
        Op::ChannelShuffle { groups } => {
            // x.view(n, g, c / g, h, w).transpose(1, 2): output channel
            // j·g + i is input channel i·(c / g) + j.
            let (c, h, w) = chw(in_shapes[0]);
            let hw = h * w;
            let g = groups as usize;
            let per = c / g;
            let mut y = vec![0.0; x.len()];
            for img in 0..n {
                for i in 0..g {
                    for j in 0..per {
                        let from = (img * c + i * per + j) * hw;
                        let to = (img * c + j * g + i) * hw;
                        y[to..to + hw].copy_from_slice(&x[from..from + hw]);
                    }
                }
            }
            y
        }
        Op::ChannelSlice { offset, channels } => {
            let (c, h, w) = chw(in_shapes[0]);
            let hw = h * w;
            let (offset, channels) = (offset as usize, channels as usize);
            let mut y = Vec::with_capacity(n * channels * hw);
            for img in 0..n {
                let from = (img * c + offset) * hw;
                y.extend_from_slice(&x[from..from + channels * hw]);
            }
            y
        }
        Op::LocalResponseNorm {
            size,
            alpha,
            beta,
            k,
        } => {
            // PyTorch: b_c = a_c / (k + α/n · Σ a_j²)^β over channels j in
            // [c − n/2, c + (n − 1)/2], clipped to the valid channels.
            let (c, h, w) = chw(in_shapes[0]);
            let hw = h * w;
            let size = size as usize;
            let mut out = vec![0f64; x.len()];
            out.par_chunks_mut(c * hw)
                .zip(x.par_chunks(c * hw))
                .for_each(|(dst, src)| {
                    for ch in 0..c {
                        let lo = ch.saturating_sub(size / 2);
                        let hi = (ch + (size - 1) / 2).min(c - 1);
                        for p in 0..hw {
                            let mut sum = 0.0;
                            for j in lo..=hi {
                                sum += src[j * hw + p] * src[j * hw + p];
                            }
                            dst[ch * hw + p] =
                                src[ch * hw + p] / (k.0 + alpha.0 * sum / size as f64).powf(beta.0);
                        }
                    }
                });
            out
        }
        Op::Dropout { .. }
        | Op::Dropout2d { .. }
        | Op::StochasticDepth { .. }
        | Op::Identity
        | Op::Flatten => x.to_vec(),
        Op::Linear {
            in_features,
            out_features,
            bias,
        } => {
            let w = get("weight").ok_or_else(|| format!("missing weight of `{name}`"))?;
            let b = if has_bias(bias) {
                Some(get("bias").ok_or_else(|| format!("missing bias of `{name}`"))?)
            } else {
                None
            };
            let (fi, fo) = (in_features as usize, out_features as usize);
            let mut out = vec![0f64; n * fo];
            out.par_iter_mut().enumerate().for_each(|(i, y)| {
                let (image, o) = (i / fo, i % fo);
                let row = &w[o * fi..(o + 1) * fi];
                let input = &x[image * fi..(image + 1) * fi];
                let dot: f64 = row.iter().zip(input).map(|(a, b)| a * b).sum();
                *y = dot + b.map_or(0.0, |b| b[o]);
            });
            out
        }
        Op::Softmax | Op::LogSoftmax => {
            // Over dimension 1 (features, or channels at each position).
            let (c, h, w) = chw(in_shapes[0]);
            let hw = h * w;
            let log = matches!(op, Op::LogSoftmax);
            let mut out = vec![0f64; x.len()];
            for image in 0..n {
                for p in 0..hw {
                    let at = |ch: usize| image * c * hw + ch * hw + p;
                    let max = (0..c).map(|ch| x[at(ch)]).fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = (0..c).map(|ch| (x[at(ch)] - max).exp()).sum();
                    for ch in 0..c {
                        let shifted = x[at(ch)] - max;
                        out[at(ch)] = if log {
                            shifted - sum.ln()
                        } else {
                            shifted.exp() / sum
                        };
                    }
                }
            }
            out
        }
        Op::Activation(a) => x.iter().map(|&v| activate(a, v)).collect(),
        Op::Add => x.iter().zip(inputs[1]).map(|(a, b)| a + b).collect(),
        Op::Mul => {
            // Element i of the output is in plane i / (H·W); a [C, 1, 1]
            // factor has one value per plane, a [C, H, W] one per element.
            let (_, h, w) = chw(in_shapes[0]);
            let hw = h * w;
            let f = inputs[1];
            let broadcast = chw(in_shapes[1]).1 * chw(in_shapes[1]).2 == 1;
            x.iter()
                .enumerate()
                .map(|(i, v)| v * if broadcast { f[i / hw] } else { f[i] })
                .collect()
        }
        Op::Concat => {
            let (_, h, w) = chw(out_shape);
            let hw = h * w;
            let mut out = Vec::with_capacity(n * out_shape.numel() as usize);
            for image in 0..n {
                for (part, shape) in inputs.iter().zip(in_shapes) {
                    let c = chw(*shape).0;
                    out.extend_from_slice(&part[image * c * hw..(image + 1) * c * hw]);
                }
            }
            out
        }
    })
}

/// Mean of each H×W map: `[n, C, H, W]` → `[n, C]`.
fn global_average(x: &[f64], n: usize, shape: Shape) -> Vec<f64> {
    let (c, h, w) = chw(shape);
    (0..n * c)
        .map(|i| x[i * h * w..(i + 1) * h * w].iter().sum::<f64>() / (h * w) as f64)
        .collect()
}

/// One elementwise activation, as PyTorch defines it: the table's formula in f64.
pub fn activate(a: Activation, v: f64) -> f64 {
    let (kind, p) = a.kind();
    kind.forward(p, v)
}

/// Applies `f(src_plane, dst_plane)` to each of `planes` planes, in parallel.
fn per_plane(
    x: &[f64],
    planes: usize,
    in_size: usize,
    out_size: usize,
    f: impl Fn(&[f64], &mut [f64]) + Sync,
) -> Vec<f64> {
    let mut out = vec![0f64; planes * out_size];
    out.par_chunks_mut(out_size)
        .zip(x.par_chunks(in_size))
        .for_each(|(dst, src)| f(src, dst));
    out
}

/// Where padded coordinate `i` (may be out of range) reads from, per padding mode.
pub fn source_index(i: i64, size: i64, mode: PaddingMode) -> Option<usize> {
    let j = match mode {
        PaddingMode::Zeros => {
            if i < 0 || i >= size {
                return None;
            }
            i
        }
        PaddingMode::Reflect => {
            // Mirror without repeating the edge: −1 → 1, size → size − 2.
            let period = 2 * (size - 1);
            if period == 0 {
                0
            } else {
                let m = i.rem_euclid(period);
                if m < size {
                    m
                } else {
                    period - m
                }
            }
        }
        PaddingMode::Replicate => i.clamp(0, size - 1),
        PaddingMode::Circular => i.rem_euclid(size),
    };
    Some(j as usize)
}

/// Copies each h×w plane into a padded plane (top, bottom, left, right).
fn pad_planes(
    x: &[f64],
    planes: usize,
    h: usize,
    w: usize,
    pads: [usize; 4],
    mode: PaddingMode,
) -> Vec<f64> {
    let (hp, wp) = (h + pads[0] + pads[1], w + pads[2] + pads[3]);
    let mut out = vec![0f64; planes * hp * wp];
    out.par_chunks_mut(hp * wp)
        .zip(x.par_chunks(h * w))
        .for_each(|(dst, src)| {
            for y in 0..hp {
                let Some(sy) = source_index(y as i64 - pads[0] as i64, h as i64, mode) else {
                    continue;
                };
                for xo in 0..wp {
                    if let Some(sx) = source_index(xo as i64 - pads[2] as i64, w as i64, mode) {
                        dst[y * wp + xo] = src[sy * w + sx];
                    }
                }
            }
        });
    out
}
