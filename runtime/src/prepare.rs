//! Loading weights for a plan: the strict `state_dict` check (every missing,
//! unexpected, wrong-shape or wrong-dtype tensor listed at once, as PyTorch's
//! `load_state_dict` does), then the tensors the kernels read, with batch
//! norms folded in f64 element by element (the results are f32).

use crate::plan::{HalfFormat, Plan, Prepared, StateEntry};
use crate::weights::{Data, WeightFile};
use crate::{shape_text, Error, Result};

/// Most problems listed one per line; the rest are counted.
const MAX_PROBLEMS: usize = 30;

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
    let count = format!(
        "{} problem{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    // When almost nothing matches, the list is noise: say the likely cause first.
    let wanted = entries.iter().filter(|e| !e.integer).count();
    let matching = entries
        .iter()
        .filter(|e| !e.integer && file.tensors.contains_key(&e.key))
        .count();
    let mut message = if wanted > 0 && matching * 2 < wanted {
        format!(
            "the weights do not match model `{model}`: {matching} of its {wanted} keys are in the file ({} tensors); is this the weights file of another model?\n{count}:\n",
            file.tensors.len()
        )
    } else {
        format!("the weights do not match model `{model}` ({count}):\n")
    };
    for p in problems.iter().take(MAX_PROBLEMS) {
        message += &format!("  {p}\n");
    }
    if problems.len() > MAX_PROBLEMS {
        message += &format!("  … and {} more\n", problems.len() - MAX_PROBLEMS);
    }
    Err(Error(message.trim_end().to_string()))
}

/// Checks the weights and computes every prepared tensor of the plan, in order.
pub fn prepare(plan: &Plan, file: &WeightFile) -> Result<Vec<Vec<f32>>> {
    check_state_dict(&plan.model, &plan.state_dict, file)?;
    plan.prepared.iter().map(|p| compute(p, file)).collect()
}

/// [`prepare`], consuming the file: a tensor used as stored is moved out of it
/// (no copy) at its last use, and the rest of the file is freed on return, so
/// the weights are held about once rather than twice.
pub fn prepare_owned(plan: &Plan, mut file: WeightFile) -> Result<Vec<Vec<f32>>> {
    check_state_dict(&plan.model, &plan.state_dict, &file)?;
    let mut out = Vec::with_capacity(plan.prepared.len());
    for (i, p) in plan.prepared.iter().enumerate() {
        let movable = match p {
            Prepared::Tensor { key } if !plan.prepared[i + 1..].iter().any(|q| reads(q, key)) => {
                Some(key)
            }
            _ => None,
        };
        let values = match movable.and_then(|key| file.tensors.remove(key)) {
            Some(t) => match t.data {
                Data::F32(v) => v,
                other => other.to_f32(),
            },
            None => compute(p, &file)?,
        };
        out.push(values);
    }
    Ok(out)
}

/// Whether computing `p` reads `state_dict` entry `key`.
fn reads(p: &Prepared, key: &str) -> bool {
    let bn_reads = |bn: &str| {
        key.strip_prefix(bn)
            .is_some_and(|rest| rest.starts_with('.'))
    };
    match p {
        Prepared::Tensor { key: k } => k == key,
        Prepared::FoldedWeight { weight, bn, .. } => weight == key || bn_reads(bn),
        Prepared::FoldedBias { bias, bn, .. } => bias.as_deref() == Some(key) || bn_reads(bn),
        Prepared::BnScale { bn, .. } | Prepared::BnShift { bn, .. } => bn_reads(bn),
        Prepared::Zeros { .. } => false,
        Prepared::WithHalf { weight, .. } => reads(weight, key),
        Prepared::ScaledWeight { weight: t, scale } | Prepared::ScaledBias { bias: t, scale } => {
            t == key || scale == key
        }
        Prepared::LnWeight { weight, ln } => weight == key || bn_reads(ln),
        Prepared::LnBias { weight, bias, ln } => {
            weight == key || bias.as_deref() == Some(key) || bn_reads(ln)
        }
    }
}

/// One prepared tensor. Batch-norm statistics (one value per channel) are
/// widened to f64; weights are folded element by element, in f64, straight
/// into the f32 result (no f64 copy of a whole tensor).
fn compute(p: &Prepared, file: &WeightFile) -> Result<Vec<f32>> {
    let tensor = |key: &str| -> Result<&Data> {
        file.tensors
            .get(key)
            .map(|t| &t.data)
            .ok_or_else(|| Error(format!("missing `{key}`")))
    };
    let get = |key: &str| -> Result<Vec<f64>> { tensor(key).map(Data::to_f64) };
    let scale = |bn: &str, eps: f64| -> Result<Vec<f64>> {
        let gamma = get(&format!("{bn}.weight"))?;
        let var = get(&format!("{bn}.running_var"))?;
        Ok(gamma
            .iter()
            .zip(&var)
            .map(|(g, v)| g / (v + eps).sqrt())
            .collect())
    };
    let narrow = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    // Filter taps of a conv weight [out][in][kh][kw] (1 for a linear layer's).
    let taps = |key: &str| -> Result<usize> {
        let t = file
            .tensors
            .get(key)
            .ok_or_else(|| Error(format!("missing `{key}`")))?;
        Ok(t.shape.iter().skip(2).product::<usize>().max(1))
    };
    Ok(match p {
        Prepared::WithHalf {
            weight,
            format,
            rows,
        } => with_half(compute(weight, file)?, *format, *rows, weight)?,
        Prepared::Tensor { key } => tensor(key)?.to_f32(),
        Prepared::FoldedWeight { weight, bn, eps } => {
            let s = scale(bn, *eps)?;
            let w = tensor(weight)?;
            let len = match w {
                Data::F32(v) => v.len(),
                Data::F64(v) => v.len(),
                Data::I64(v) => v.len(),
            };
            let per = len / s.len().max(1);
            let fold = |i: usize, v: f64| (v * s[i / per]) as f32;
            match w {
                Data::F32(v) => v
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| fold(i, v as f64))
                    .collect(),
                Data::F64(v) => v.iter().enumerate().map(|(i, &v)| fold(i, v)).collect(),
                Data::I64(v) => v
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| fold(i, v as f64))
                    .collect(),
            }
        }
        Prepared::FoldedBias { bias, bn, eps } => {
            let s = scale(bn, *eps)?;
            let beta = get(&format!("{bn}.bias"))?;
            let mean = get(&format!("{bn}.running_mean"))?;
            let b = match bias {
                Some(key) => get(key)?,
                None => vec![0.0; s.len()],
            };
            narrow(
                (0..s.len())
                    .map(|o| (b[o] - mean[o]) * s[o] + beta[o])
                    .collect(),
            )
        }
        Prepared::BnScale { bn, eps } => narrow(scale(bn, *eps)?),
        Prepared::Zeros { len } => vec![0.0; *len],
        Prepared::ScaledWeight { weight, scale }
        | Prepared::ScaledBias {
            bias: weight,
            scale,
        } => {
            // Element i of a tensor with one row per output channel.
            let s = get(scale)?;
            let w = get(weight)?;
            let per = w.len() / s.len().max(1);
            narrow(
                w.iter()
                    .enumerate()
                    .map(|(i, v)| v * s[i / per.max(1)])
                    .collect(),
            )
        }
        Prepared::BnShift { bn, eps } => {
            let s = scale(bn, *eps)?;
            let beta = get(&format!("{bn}.bias"))?;
            let mean = get(&format!("{bn}.running_mean"))?;
            narrow((0..s.len()).map(|o| beta[o] - mean[o] * s[o]).collect())
        }
        Prepared::LnWeight { weight, ln } => {
            // Element i of an [out][in][taps] tensor is input channel
            // (i / taps) % in.
            let gamma = get(&format!("{ln}.weight"))?;
            let taps = taps(weight)?;
            let w = get(weight)?;
            let inputs = gamma.len().max(1);
            narrow(
                w.iter()
                    .enumerate()
                    .map(|(i, v)| v * gamma[(i / taps) % inputs])
                    .collect(),
            )
        }
        Prepared::LnBias { weight, bias, ln } => {
            // b[o] + the sum over input channels i and taps t of w[o][i][t]·β[i].
            let beta = get(&format!("{ln}.bias"))?;
            let taps = taps(weight)?;
            let w = get(weight)?;
            let row_len = (beta.len() * taps).max(1);
            let outputs = w.len() / row_len;
            let b = match bias {
                Some(key) => get(key)?,
                None => vec![0.0; outputs],
            };
            narrow(
                (0..outputs)
                    .map(|o| {
                        let row = &w[o * row_len..(o + 1) * row_len];
                        b[o] + row
                            .iter()
                            .enumerate()
                            .map(|(i, w)| w * beta[i / taps])
                            .sum::<f64>()
                    })
                    .collect(),
            )
        }
    })
}

/// `values` ([rows][K] f32) followed by its 16-bit copy, as
/// [`Prepared::WithHalf`] lays it out.
fn with_half(
    mut values: Vec<f32>,
    format: HalfFormat,
    rows: usize,
    weight: &Prepared,
) -> Result<Vec<f32>> {
    let len = values.len();
    let k = len / rows.max(1);
    let padded_k = k.div_ceil(8) * 8;
    let mut half = vec![0u16; rows * padded_k];
    for (r, row) in values.chunks(k.max(1)).enumerate().take(rows) {
        for (c, &v) in row.iter().enumerate() {
            let bits = format.bits(v);
            if format == HalfFormat::Fp16 && v.is_finite() && format.value(bits).is_infinite() {
                let key = weight.weight_key().unwrap_or("a weight");
                let folded = match weight {
                    Prepared::FoldedWeight { bn, .. } => {
                        format!(" (with batch norm `{bn}` folded in)")
                    }
                    Prepared::ScaledWeight { scale, .. } => format!(" (scaled by `{scale}`)"),
                    Prepared::LnWeight { ln, .. } => {
                        format!(" (with layer norm `{ln}`'s weight folded in)")
                    }
                    _ => String::new(),
                };
                return Err(Error(format!(
                    "`{key}`{folded} holds {v:e} at [{r}][{c}], beyond FP16's largest value 65504: --precision fp16 would compute with an infinity\nhelp: build with --precision bf16 (FP32's range) or tf32"
                )));
            }
            half[r * padded_k + c] = bits;
        }
    }
    values.resize(crate::plan::half_offset(len), 0.0);
    values.extend(half.chunks(2).map(|pair| {
        f32::from_bits(pair[0] as u32 | (pair.get(1).copied().unwrap_or(0) as u32) << 16)
    }));
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Ending, Place, StateEntry};
    use crate::weights::WeightTensor;

    fn entry(key: &str, shape: &[usize]) -> StateEntry {
        StateEntry {
            key: key.into(),
            shape: shape.to_vec(),
            integer: false,
            declared_at: "test".into(),
        }
    }

    fn f32_tensor(shape: &[usize], v: Vec<f32>) -> WeightTensor {
        WeightTensor {
            dtype: "F32".into(),
            shape: shape.to_vec(),
            data: Data::F32(v),
        }
    }

    #[test]
    fn a_16_bit_copy_follows_the_f32_weights_and_fp16_overflow_is_an_error() {
        // A [2][3] weight: f32 values, two floats of padding (to 8), then rows
        // of 8 halves (3 values, 5 zeros), two halves per float.
        let w = vec![1.0f32, -2.0, 1.0 + 2f32.powi(-9), 0.25, 1e-3, -7.0];
        let mut file = WeightFile::default();
        file.tensors
            .insert("w".into(), f32_tensor(&[2, 3], w.clone()));
        let with_half = |format| Prepared::WithHalf {
            weight: Box::new(Prepared::Tensor { key: "w".into() }),
            format,
            rows: 2,
        };
        for format in [HalfFormat::Bf16, HalfFormat::Fp16] {
            let v = compute(&with_half(format), &file).unwrap();
            assert_eq!(v.len(), 8 + 2 * 8 / 2);
            assert_eq!(&v[6..8], &[0.0, 0.0]);
            assert_eq!(&v[..6], &w[..]);
            let halves: Vec<u16> = v[8..]
                .iter()
                .flat_map(|f| [f.to_bits() as u16, (f.to_bits() >> 16) as u16])
                .collect();
            for r in 0..2 {
                for c in 0..8 {
                    let want = if c < 3 { format.bits(w[r * 3 + c]) } else { 0 };
                    assert_eq!(halves[r * 8 + c], want, "{} [{r}][{c}]", format.name());
                }
            }
        }
        // 1 + 2^-9 is a tie in bf16 (rounds to 1) but exact in fp16.
        assert_eq!(HalfFormat::Bf16.value(HalfFormat::Bf16.bits(w[2])), 1.0);
        assert_eq!(
            HalfFormat::Fp16.value(HalfFormat::Fp16.bits(w[2])),
            w[2] as f64
        );
        // 70000 is beyond FP16: an error naming the tensor and the element;
        // bf16 holds it.
        let mut big = w.clone();
        big[4] = 70000.0;
        file.tensors.insert("w".into(), f32_tensor(&[2, 3], big));
        let error = compute(&with_half(HalfFormat::Fp16), &file).unwrap_err().0;
        assert!(
            error.starts_with("`w` holds 7e4 at [1][1], beyond FP16's largest value 65504")
                && error.contains("help: build with --precision bf16"),
            "{error}"
        );
        assert!(compute(&with_half(HalfFormat::Bf16), &file).is_ok());
    }

    #[test]
    fn owned_and_borrowed_preparation_agree_and_fold_in_f64() {
        let place = Place {
            offset: 0,
            channel_offset: 0,
            channels_total: 1,
            c: 1,
            h: 1,
            w: 1,
        };
        let bn = |k: &str| format!("bn.{k}");
        let mut entries = vec![entry("w", &[2, 3]), entry("fc", &[4])];
        for k in ["weight", "bias", "running_mean", "running_var"] {
            entries.push(entry(&bn(k), &[2]));
        }
        let plan = Plan {
            model: "t".into(),
            input_shape: vec![1, 1, 1],
            output_shape: vec![1],
            input: place,
            output: place,
            arena_per_image: 1,
            naive_per_image: 1,
            state_dict: entries,
            prepared: vec![
                Prepared::Tensor { key: "fc".into() },
                Prepared::FoldedWeight {
                    weight: "w".into(),
                    bn: "bn".into(),
                    eps: 1e-5,
                },
                Prepared::FoldedBias {
                    bias: None,
                    bn: "bn".into(),
                    eps: 1e-5,
                },
                // Read twice: the first use must not move it away.
                Prepared::Tensor { key: "w".into() },
                Prepared::BnScale {
                    bn: "bn".into(),
                    eps: 1e-5,
                },
                Prepared::BnShift {
                    bn: "bn".into(),
                    eps: 1e-5,
                },
            ],
            steps: vec![],
            ends_in: Ending::Logits,
            precision: Default::default(),
        };
        let mut file = WeightFile::default();
        let w = vec![1.0, -2.0, 3.5, 0.25, 1e-3, -7.0];
        file.tensors
            .insert("w".into(), f32_tensor(&[2, 3], w.clone()));
        file.tensors
            .insert("fc".into(), f32_tensor(&[4], vec![1.0, 2.0, 3.0, 4.0]));
        let (gamma, beta, mean, var) = (
            [0.5f32, 2.0],
            [0.1f32, -0.3],
            [0.2f32, -1.5],
            [4.0f32, 0.01],
        );
        for (k, v) in [
            ("weight", gamma),
            ("bias", beta),
            ("running_mean", mean),
            ("running_var", var),
        ] {
            file.tensors.insert(bn(k), f32_tensor(&[2], v.to_vec()));
        }
        let borrowed = prepare(&plan, &file).unwrap();
        let owned = prepare_owned(&plan, file).unwrap();
        assert_eq!(borrowed, owned);
        // Independent f64 arithmetic.
        let s: Vec<f64> = (0..2)
            .map(|o| gamma[o] as f64 / (var[o] as f64 + 1e-5).sqrt())
            .collect();
        let folded: Vec<f32> = (0..6).map(|i| (w[i] as f64 * s[i / 3]) as f32).collect();
        assert_eq!(owned[1], folded);
        let bias: Vec<f32> = (0..2)
            .map(|o| ((0.0 - mean[o] as f64) * s[o] + beta[o] as f64) as f32)
            .collect();
        assert_eq!(owned[2], bias);
        assert_eq!(owned[3], w);
        assert_eq!(owned[0], vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(owned[4], s.iter().map(|&v| v as f32).collect::<Vec<_>>());
        let shift: Vec<f32> = (0..2)
            .map(|o| (beta[o] as f64 - mean[o] as f64 * s[o]) as f32)
            .collect();
        assert_eq!(owned[5], shift);
    }
}
