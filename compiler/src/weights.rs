//! Binding a weight file to a checked model, strictly, as PyTorch's
//! `load_state_dict` does; and making fresh weights (`cnnc init`).

use crate::ir::{Graph, Op, ParamKind};
use crate::source::SourceMap;
use cnnc_runtime::weights::{Data, WeightFile, WeightTensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};
use std::collections::{BTreeMap, HashMap};

/// Weights checked against a graph, widened to f64 for the reference evaluator.
#[derive(Debug, Clone, Default)]
pub struct BoundWeights {
    values: HashMap<String, Vec<f64>>,
}

impl BoundWeights {
    pub fn get(&self, key: &str) -> Option<&[f64]> {
        self.values.get(key).map(|v| v.as_slice())
    }
}

/// Checks every tensor against the model and reports every problem at once.
pub fn bind(graph: &Graph, file: &WeightFile, sources: &SourceMap) -> Result<BoundWeights, String> {
    let mut problems: Vec<String> = Vec::new();
    let mut values = HashMap::new();
    let mut class_hint = None;
    let last_linear = graph
        .nodes
        .iter()
        .rev()
        .find(|n| matches!(n.op, Op::Linear { .. } | Op::Conv2d { .. }))
        .map(|n| n.name.clone());
    for p in &graph.params {
        let (line, col) = sources.line_col(p.span.file, p.span.start);
        let at = format!("{}:{line}:{col}", sources.name(p.span.file));
        let expected: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
        let Some(t) = file.tensors.get(&p.key) else {
            // PyTorch also accepts a state_dict without num_batches_tracked.
            if p.kind != ParamKind::NumBatchesTracked {
                problems.push(format!(
                    "missing      `{}` {} (declared at {at})",
                    p.key,
                    shape(&expected)
                ));
            }
            continue;
        };
        let want_int = p.kind == ParamKind::NumBatchesTracked;
        if t.data.is_float() == want_int {
            problems.push(format!(
                "wrong dtype  `{}` is {}, the model expects {} (declared at {at})",
                p.key,
                t.dtype,
                if want_int {
                    "an integer (I64)"
                } else {
                    "floating point (F32, F16, BF16 or F64)"
                }
            ));
            continue;
        }
        if t.shape != expected {
            problems.push(format!(
                "wrong shape  `{}` is {}, the model expects {} (declared at {at})",
                p.key,
                shape(&t.shape),
                shape(&expected)
            ));
            let owner = p.key.rsplit_once('.').map(|(o, _)| o.to_string());
            if owner == last_linear && !t.shape.is_empty() && t.shape[1..] == expected[1..] {
                class_hint = Some(t.shape[0]);
            }
            continue;
        }
        values.insert(p.key.clone(), t.data.to_f64());
    }
    let known: std::collections::HashSet<&str> =
        graph.params.iter().map(|p| p.key.as_str()).collect();
    for (key, t) in &file.tensors {
        if !known.contains(key.as_str()) {
            problems.push(format!("unexpected   `{key}` {}", t.describe()));
        }
    }
    if problems.is_empty() {
        return Ok(BoundWeights { values });
    }
    let mut message = format!(
        "the weights do not match model `{}` ({} problem{}):\n",
        graph.name,
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems.iter().take(50) {
        message += &format!("  {p}\n");
    }
    if problems.len() > 50 {
        message += &format!("  … and {} more\n", problems.len() - 50);
    }
    if let Some(classes) = class_hint {
        message += &format!(
            "help: the weights have {classes} classes; try `--set num_classes={classes}`\n"
        );
    }
    Err(message.trim_end().to_string())
}

/// Weights as a fused graph uses them: each batch norm folded into the conv or
/// linear layer before it, w' = w·γ/√(σ² + ε) per output channel and
/// b' = (b − μ)·γ/√(σ² + ε) + β. Unfused graphs get the weights unchanged.
pub fn prepare(graph: &Graph, weights: &BoundWeights) -> Result<BoundWeights, String> {
    let mut out = weights.clone();
    for node in &graph.nodes {
        let Some(bn) = &node.fusion.folded_batchnorm else {
            continue;
        };
        let (outputs, has_bias) = match node.op {
            Op::Conv2d {
                out_channels, bias, ..
            } => (out_channels as usize, bias),
            Op::Linear {
                out_features, bias, ..
            } => (out_features as usize, bias),
            _ => {
                return Err(format!(
                    "batch norm `{}` is folded into a {}",
                    bn.name,
                    node.op.name()
                ))
            }
        };
        let get = |key: String| weights.get(&key).ok_or_else(|| format!("missing `{key}`"));
        let gamma = get(format!("{}.weight", bn.name))?;
        let beta = get(format!("{}.bias", bn.name))?;
        let mean = get(format!("{}.running_mean", bn.name))?;
        let var = get(format!("{}.running_var", bn.name))?;
        let w = get(format!("{}.weight", node.name))?;
        let per = w.len() / outputs;
        let scale: Vec<f64> = (0..outputs)
            .map(|o| gamma[o] / (var[o] + bn.eps.0).sqrt())
            .collect();
        let folded_w: Vec<f64> = w
            .iter()
            .enumerate()
            .map(|(i, v)| v * scale[i / per])
            .collect();
        let b = if has_bias {
            get(format!("{}.bias", node.name))?.to_vec()
        } else {
            vec![0.0; outputs]
        };
        let folded_b: Vec<f64> = (0..outputs)
            .map(|o| (b[o] - mean[o]) * scale[o] + beta[o])
            .collect();
        out.values.insert(format!("{}.weight", node.name), folded_w);
        out.values.insert(format!("{}.bias", node.name), folded_b);
    }
    Ok(out)
}

fn shape(s: &[usize]) -> String {
    cnnc_runtime::shape_text(s)
}

/// How `cnnc init` draws weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InitScheme {
    /// PyTorch's defaults: U(−1/√fan_in, 1/√fan_in) for conv and linear weights and biases.
    Pytorch,
    /// torchvision's VGG/ResNet recipe: kaiming-normal (fan_out, relu) convs, N(0, 0.01) linears, zero biases.
    Kaiming,
}

/// Fresh weights for every `state_dict` entry, deterministic for a seed.
pub fn init(graph: &Graph, scheme: InitScheme, seed: u64) -> Result<WeightFile, String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut tensors = BTreeMap::new();
    // Fan-in/out come from the weight tensor of the same layer.
    let weight_shapes: HashMap<String, Vec<i64>> = graph
        .params
        .iter()
        .filter(|p| p.kind == ParamKind::Weight)
        .map(|p| {
            (
                p.key.trim_end_matches(".weight").to_string(),
                p.shape.clone(),
            )
        })
        .collect();
    for p in &graph.params {
        let count = p.numel() as usize;
        let owner = p.key.rsplit_once('.').map(|(o, _)| o).unwrap_or("");
        let ws = weight_shapes.get(owner).cloned().unwrap_or_default();
        let is_norm = ws.len() == 1; // batch norm weights are vectors
        let receptive: i64 = ws.iter().skip(2).product();
        let fan_in = ws.get(1).copied().unwrap_or(1) * receptive.max(1);
        let fan_out = ws.first().copied().unwrap_or(1) * receptive.max(1);
        let data = match p.kind {
            ParamKind::NumBatchesTracked => Data::I64(vec![0; count.max(1)]),
            ParamKind::RunningMean => Data::F32(vec![0.0; count]),
            ParamKind::RunningVar => Data::F32(vec![1.0; count]),
            ParamKind::Weight if is_norm => Data::F32(vec![1.0; count]),
            ParamKind::Bias if is_norm => Data::F32(vec![0.0; count]),
            ParamKind::Weight | ParamKind::Bias => match scheme {
                InitScheme::Pytorch => {
                    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                    let dist = Uniform::new_inclusive(-bound, bound).map_err(|e| e.to_string())?;
                    Data::F32((0..count).map(|_| dist.sample(&mut rng) as f32).collect())
                }
                InitScheme::Kaiming => {
                    if p.kind == ParamKind::Bias {
                        Data::F32(vec![0.0; count])
                    } else {
                        let std = if ws.len() == 4 {
                            (2.0 / fan_out.max(1) as f64).sqrt()
                        } else {
                            0.01
                        };
                        let dist = Normal::new(0.0, std).map_err(|e| e.to_string())?;
                        Data::F32((0..count).map(|_| dist.sample(&mut rng) as f32).collect())
                    }
                }
            },
        };
        let dtype = if matches!(data, Data::I64(_)) {
            "I64"
        } else {
            "F32"
        };
        tensors.insert(
            p.key.clone(),
            WeightTensor {
                dtype: dtype.to_string(),
                shape: p.shape.iter().map(|&d| d as usize).collect(),
                data,
            },
        );
    }
    Ok(WeightFile { tensors })
}
