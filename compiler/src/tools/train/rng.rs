//! Counter-based random numbers: every draw is a pure function of a key and
//! an index, so a dropout mask or a shuffle depends only on (seed, step,
//! node), not on thread scheduling, and a few lines of Python reproduce it
//! (tests/fixtures/train/make_train_fixtures.py does, for parity tests).

/// SplitMix64's finaliser: a bijective 64-bit mix.
pub fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A key derived from a list of integers (seed, step, node, ...).
pub fn key(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x5EED_u64, |k, &p| splitmix64(k ^ splitmix64(p)))
}

/// Uniform in [0, 1) with 53 random bits: draw `i` under `key`.
pub fn uniform(key: u64, i: u64) -> f64 {
    (splitmix64(key ^ splitmix64(i)) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A permutation of 0..n (Fisher–Yates driven by `uniform`), for shuffling.
pub fn permutation(n: usize, key: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (uniform(key, i as u64) * (i + 1) as f64) as usize;
        p.swap(i, j.min(i));
    }
    p
}

/// Deterministic weights for tests and parity fixtures: entry `i` of the
/// state_dict gets u = `uniform(key([seed, i]), j)` and conv/linear weights
/// and biases (2u−1)/√fan_in, batch-norm weight 1 + 0.2(2u−1), bias
/// 0.1(2u−1), running_mean 0.1(2u−1), running_var 1 + 0.5u,
/// num_batches_tracked 0. tests/fixtures/train/make_train_fixtures.py
/// computes the same values.
pub fn hashed_weights(graph: &crate::ir::Graph, seed: u64) -> cnnc_runtime::weights::WeightFile {
    use crate::ir::ParamKind;
    use cnnc_runtime::weights::{Data, WeightFile, WeightTensor};
    let mut tensors = std::collections::BTreeMap::new();
    for (i, p) in graph.params.iter().enumerate() {
        let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
        let n: usize = shape.iter().product();
        let owner = p.key.rsplit_once('.').map_or("", |(o, _)| o);
        let weight_shape = graph
            .params
            .iter()
            .find(|q| q.key == format!("{owner}.weight"))
            .map(|q| q.shape.clone())
            .unwrap_or_default();
        let k = key(&[seed, i as u64]);
        let value = |j: usize| -> f32 {
            let u = uniform(k, j as u64);
            let v = if weight_shape.len() >= 2 {
                let fan_in: i64 = weight_shape[1..].iter().product();
                (2.0 * u - 1.0) / (fan_in as f64).sqrt()
            } else {
                match p.kind {
                    ParamKind::Weight => 1.0 + 0.2 * (2.0 * u - 1.0),
                    ParamKind::Bias | ParamKind::RunningMean => 0.1 * (2.0 * u - 1.0),
                    _ => 1.0 + 0.5 * u,
                }
            };
            v as f32
        };
        let (dtype, data) = if p.kind == ParamKind::NumBatchesTracked {
            ("I64", Data::I64(vec![0]))
        } else {
            ("F32", Data::F32((0..n).map(value).collect()))
        };
        tensors.insert(
            p.key.clone(),
            WeightTensor {
                dtype: dtype.into(),
                shape,
                data,
            },
        );
    }
    WeightFile { tensors }
}
