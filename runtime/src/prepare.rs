//! Loading weights for a plan: the strict `state_dict` check (every missing,
//! unexpected, wrong-shape or wrong-dtype tensor listed at once, as PyTorch's
//! `load_state_dict` does), then the tensors the kernels read, with batch
//! norms folded in f64.

use crate::plan::{Plan, Prepared, StateEntry};
use crate::weights::WeightFile;
use crate::{shape_text, Error, Result};

/// Checks a weight file against the entries a model declares.
pub fn check_state_dict(model: &str, entries: &[StateEntry], file: &WeightFile) -> Result<()> {
    let mut problems = Vec::new();
    for e in entries {
        let Some(t) = file.tensors.get(&e.key) else {
            // PyTorch also accepts a state_dict without num_batches_tracked.
            if !e.integer {
                problems.push(format!(
                    "missing      `{}` {} (declared at {})",
                    e.key,
                    shape_text(&e.shape),
                    e.declared_at
                ));
            }
            continue;
        };
        if t.data.is_float() == e.integer {
            problems.push(format!(
                "wrong dtype  `{}` is {}, the model expects {} (declared at {})",
                e.key,
                t.dtype,
                if e.integer {
                    "an integer (I64)"
                } else {
                    "floating point (F32, F16, BF16 or F64)"
                },
                e.declared_at
            ));
        } else if t.shape != e.shape {
            problems.push(format!(
                "wrong shape  `{}` is {}, the model expects {} (declared at {})",
                e.key,
                shape_text(&t.shape),
                shape_text(&e.shape),
                e.declared_at
            ));
        }
    }
    for (key, t) in &file.tensors {
        if !entries.iter().any(|e| &e.key == key) {
            problems.push(format!("unexpected   `{key}` {}", t.describe()));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let mut message = format!(
        "the weights do not match model `{model}` ({} problem{}):\n",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems.iter().take(50) {
        message += &format!("  {p}\n");
    }
    if problems.len() > 50 {
        message += &format!("  … and {} more\n", problems.len() - 50);
    }
    Err(Error(message.trim_end().to_string()))
}

/// Checks the weights and computes every prepared tensor of the plan, in order.
pub fn prepare(plan: &Plan, file: &WeightFile) -> Result<Vec<Vec<f32>>> {
    check_state_dict(&plan.model, &plan.state_dict, file)?;
    let get = |key: &str| -> Result<Vec<f64>> {
        file.tensors
            .get(key)
            .map(|t| t.data.to_f64())
            .ok_or_else(|| Error(format!("missing `{key}`")))
    };
    let scale = |bn: &str, eps: f64| -> Result<Vec<f64>> {
        let gamma = get(&format!("{bn}.weight"))?;
        let var = get(&format!("{bn}.running_var"))?;
        Ok(gamma
            .iter()
            .zip(&var)
            .map(|(g, v)| g / (v + eps).sqrt())
            .collect())
    };
    let mut out = Vec::with_capacity(plan.prepared.len());
    for p in &plan.prepared {
        let values: Vec<f64> = match p {
            Prepared::Tensor { key } => get(key)?,
            Prepared::FoldedWeight { weight, bn, eps } => {
                let w = get(weight)?;
                let s = scale(bn, *eps)?;
                let per = w.len() / s.len().max(1);
                w.iter().enumerate().map(|(i, v)| v * s[i / per]).collect()
            }
            Prepared::FoldedBias { bias, bn, eps } => {
                let s = scale(bn, *eps)?;
                let beta = get(&format!("{bn}.bias"))?;
                let mean = get(&format!("{bn}.running_mean"))?;
                let b = match bias {
                    Some(key) => get(key)?,
                    None => vec![0.0; s.len()],
                };
                (0..s.len())
                    .map(|o| (b[o] - mean[o]) * s[o] + beta[o])
                    .collect()
            }
            Prepared::BnScale { bn, eps } => scale(bn, *eps)?,
            Prepared::BnShift { bn, eps } => {
                let s = scale(bn, *eps)?;
                let beta = get(&format!("{bn}.bias"))?;
                let mean = get(&format!("{bn}.running_mean"))?;
                (0..s.len()).map(|o| beta[o] - mean[o] * s[o]).collect()
            }
        };
        out.push(values.into_iter().map(|v| v as f32).collect());
    }
    Ok(out)
}
