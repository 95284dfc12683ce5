//! Runtime support shared by `cnnc` and the binaries it builds: tensors,
//! PyTorch weights (safetensors), inputs (.npy, PNG/JPEG, MNIST IDX), and
//! outputs written atomically.
//!
//! Nothing here knows about `.cnn` files or the graph IR; the compiler crate
//! binds these values to a model.

/// The one table of activations (in the kernels crate, which the trainer shares).
pub use cnnc_kernels::activation;
pub mod app;
pub mod cpu;
pub mod cuda;
pub mod idx;
pub mod input;
pub mod output;
pub mod plan;
pub mod prepare;
pub mod run;
pub mod weights;

use std::fmt;

/// A failure with a message fit to print after `error: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// A dense f32 tensor in row-major (NCHW) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(Error(format!(
                "tensor of shape {shape:?} needs {expected} values, found {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }
}

/// Formats a shape as `[1, 3, 224, 224]`.
pub fn shape_text(shape: &[usize]) -> String {
    format!(
        "[{}]",
        shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
