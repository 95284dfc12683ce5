//! Training on the CPU: reverse-mode differentiation over the graph IR in
//! f32 ([`net`], kernels in [`kernels`]), losses and PyTorch's optimisers
//! ([`optim`]), data ([`data`], [`transforms`]) and the `cnnc train` loop
//! ([`run`]).
//!
//! The forward semantics are those of the reference evaluator
//! (`eval.rs`) in training mode: batch norms normalise with batch
//! statistics and update their running statistics as PyTorch does, dropout
//! zeroes with a seeded counter-based generator ([`rng`]).

pub mod data;
pub mod kernels;
pub mod net;
pub mod optim;
pub mod rng;
pub mod run;
pub mod transforms;
