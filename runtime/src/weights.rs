//! PyTorch weights in safetensors files: `safetensors.torch.save_file(model.state_dict(), path)`.
//!
//! Floating-point tensors (f32, f16, bf16, f64) are read into f32 or f64;
//! integer tensors (`num_batches_tracked` is int64) are kept as integers so a
//! strict loader can tell a buffer from a parameter. Pickled `.pt` files are
//! never read: unpickling runs arbitrary code.

use crate::{shape_text, Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::BTreeMap;
use std::path::Path;

/// The values of one tensor, widened where that is exact.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

impl Data {
    /// Every value as f64 (exact for all the stored types short of huge i64).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F64(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Data::F32(v) => v.clone(),
            Data::F64(v) => v.iter().map(|&x| x as f32).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    pub fn is_float(&self) -> bool {
        !matches!(self, Data::I64(_))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    /// The dtype as stored in the file, e.g. `F16`.
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Data,
}

/// All tensors of one safetensors file, by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightFile {
    pub tensors: BTreeMap<String, WeightTensor>,
}

/// How to make a pickled PyTorch checkpoint into something cnnc reads.
pub const CONVERT_HELP: &str = "cnnc reads safetensors, not pickled PyTorch files (unpickling can run arbitrary code); convert once with:\n    python3 -c \"import torch, safetensors.torch as st; st.save_file(torch.load('model.pt', map_location='cpu', weights_only=True), 'model.safetensors')\"";

impl WeightFile {
    pub fn load(path: &Path) -> Result<WeightFile> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error(format!("cannot read `{}`: {e}", path.display())))?;
        WeightFile::from_bytes(&bytes)
            .map_err(|Error(m)| Error(format!("`{}`: {m}", path.display())))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<WeightFile> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            // A safetensors header length can start with any byte, so only
            // guess "pickle" once the file failed to parse as safetensors.
            if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(&[0x80, 0x02]) {
                Error(format!(
                    "this is a pickled PyTorch checkpoint, not safetensors.\n{CONVERT_HELP}"
                ))
            } else {
                Error(format!("not a valid safetensors file: {e}"))
            }
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.iter() {
            let data = decode(&view).map_err(|m| Error(format!("tensor `{name}`: {m}")))?;
            tensors.insert(
                name.to_string(),
                WeightTensor {
                    dtype: format!("{:?}", view.dtype()),
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(WeightFile { tensors })
    }

    /// Serialises f32 tensors and int64 scalars, as PyTorch's state_dict would hold them.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in &self.tensors {
            let (dtype, bytes) = match &t.data {
                Data::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::I64(v) => (
                    Dtype::I64,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                ),
            };
            buffers.push((name.clone(), dtype, t.shape.clone(), bytes));
        }
        let mut views = Vec::new();
        for (name, dtype, shape, bytes) in &buffers {
            let view = TensorView::new(*dtype, shape.clone(), bytes)
                .map_err(|e| Error(format!("tensor `{name}`: {e}")))?;
            views.push((name.clone(), view));
        }
        safetensors::tensor::serialize(views, None)
            .map_err(|e| Error(format!("cannot encode safetensors: {e}")))
    }
}

fn decode(view: &TensorView) -> std::result::Result<Data, String> {
    let bytes = view.data();
    let chunks = |n: usize| bytes.chunks_exact(n);
    Ok(match view.dtype() {
        Dtype::F32 => Data::F32(
            chunks(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F64 => Data::F64(
            chunks(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        Dtype::F16 => Data::F32(
            chunks(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Data::F32(
            chunks(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::I64 => Data::I64(
            chunks(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        Dtype::I32 => Data::I64(
            chunks(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        other => {
            return Err(format!(
                "dtype {other:?} is not supported (use f32, f16, bf16 or f64)"
            ))
        }
    })
}

impl WeightTensor {
    pub fn describe(&self) -> String {
        format!("{} {}", self.dtype, shape_text(&self.shape))
    }
}
