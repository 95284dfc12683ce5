//! Binding a weight file to a checked model, strictly, as PyTorch's
//! `load_state_dict` does; and making fresh weights (`cnnc init`).

use crate::front::source::SourceMap;
use crate::ir::{Graph, Op, ParamKind};
use cnnc_runtime::plan::StateEntry;
use cnnc_runtime::prepare::check_state_dict;
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

/// The `state_dict` entries a graph declares, with their `.cnn` locations.
pub fn state_entries(graph: &Graph, sources: &SourceMap) -> Vec<StateEntry> {
    graph
        .params
        .iter()
        .map(|p| {
            let (line, col) = sources.line_col(p.span.file, p.span.start);
            StateEntry {
                key: p.key.clone(),
                shape: p.shape.iter().map(|&d| d as usize).collect(),
                integer: p.kind == ParamKind::NumBatchesTracked,
                declared_at: format!("{}:{line}:{col}", sources.name(p.span.file)),
            }
        })
        .collect()
}

/// Checks every tensor against the model (the runtime's strict check, shared
/// with built binaries) and widens the weights to f64.
pub fn bind(graph: &Graph, file: &WeightFile, sources: &SourceMap) -> Result<BoundWeights, String> {
    if let Err(e) = check_state_dict(&graph.name, &state_entries(graph, sources), file) {
        return Err(match class_hint(graph, file) {
            Some(classes) => format!(
                "{}\nhelp: the weights have {classes} classes; try `--set num_classes={classes}`",
                e.0
            ),
            None => e.0,
        });
    }
    let values = graph
        .params
        .iter()
        .filter_map(|p| {
            file.tensors
                .get(&p.key)
                .map(|t| (p.key.clone(), t.data.to_f64()))
        })
        .collect();
    Ok(BoundWeights { values })
}

/// The class count of the weights when only the classifier's rows differ.
fn class_hint(graph: &Graph, file: &WeightFile) -> Option<usize> {
    let last = graph
        .nodes
        .iter()
        .rev()
        .find(|n| matches!(n.op, Op::Linear { .. } | Op::Conv2d { .. }))?;
    let p = graph
        .params
        .iter()
        .find(|p| p.key == format!("{}.weight", last.name))?;
    let t = file.tensors.get(&p.key)?;
    let expected: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
    (t.shape.len() == expected.len()
        && !t.shape.is_empty()
        && t.shape[1..] == expected[1..]
        && t.shape[0] != expected[0])
        .then_some(t.shape[0])
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
    // A folded `scale` multiplies each output channel's weights and bias.
    for node in &graph.nodes {
        let Some(key) = &node.fusion.folded_scale else {
            continue;
        };
        let Op::Conv2d {
            out_channels, bias, ..
        } = node.op
        else {
            return Err(format!("scale `{key}` is folded into a {}", node.op.name()));
        };
        let s = weights.get(key).ok_or_else(|| format!("missing `{key}`"))?;
        let wkey = format!("{}.weight", node.name);
        let w = out.get(&wkey).ok_or_else(|| format!("missing `{wkey}`"))?;
        let per = w.len() / out_channels as usize;
        let scaled: Vec<f64> = w.iter().enumerate().map(|(i, v)| v * s[i / per]).collect();
        out.values.insert(wkey, scaled);
        if bias {
            let bkey = format!("{}.bias", node.name);
            let b = out.get(&bkey).ok_or_else(|| format!("missing `{bkey}`"))?;
            let scaled: Vec<f64> = b.iter().zip(s).map(|(v, s)| v * s).collect();
            out.values.insert(bkey, scaled);
        }
    }
    Ok(out)
}

/// How `cnnc init` (and `cnnc train`, for fresh weights) draws weights.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    /// PyTorch's defaults: U(−1/√fan_in, 1/√fan_in) for conv and linear weights and biases.
    #[default]
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
            ParamKind::Bare => {
                let init = match p.node.map(|n| &graph.nodes[n].op) {
                    Some(Op::Scale { init, .. }) => init.0 as f32,
                    _ => 1.0,
                };
                Data::F32(vec![init; count])
            }
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
