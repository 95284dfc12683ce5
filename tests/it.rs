//! Every integration test of cnnc, as one test binary: one link instead of
//! twenty, and one process in which the slow rungs (the CUDA emulation, nvcc,
//! real builds) run beside each other instead of one after another.
//!
//! Each module is one file of `tests/`, named as before; run one with
//! `cargo test --test it emulation::` (a module path prefix filters).
//! The verification ladder (docs/testing.md) by rung:
//!
//! 1. [`zoo`]: every zoo model checks, keys and counts as PyTorch's.
//! 2. [`evaluator`]: the reference evaluator against PyTorch's outputs.
//! 3. [`passes`]: every pass keeps the numbers.
//! 4. [`plan_cpu`], [`codegen`]: the execution plan on the CPU; the generated
//!    code (snapshots, determinism, nvcc and ptxas).
//! 5. [`emulation`], [`activations`]: the generated CUDA run as C++ on the CPU.
//! 6. [`build`], [`reliability_build`]: `cnnc build` makes a working binary.
//!
//! Beside the ladder: the language and its diagnostics ([`language`],
//! [`shape_rule`], [`errors`], [`docs_examples`]), the command line and its
//! failure modes ([`run_cli`], [`reliability`], [`robustness`],
//! [`fuzz_corpus`]), [`graph`] pictures, [`train`]ing, and the user-facing
//! [`snapshot_template`].

mod common;
#[path = "../fuzz/checks.rs"]
mod fuzz_checks;
#[path = "emulation/harness.rs"]
mod harness;

mod activations;
mod build;
mod codegen;
mod docs_examples;
mod emulation;
mod errors;
mod evaluator;
mod fuzz_corpus;
mod graph;
mod language;
mod passes;
mod plan_cpu;
mod reliability;
mod reliability_build;
mod robustness;
mod run_cli;
mod shape_rule;
mod snapshot_template;
mod train;
mod zoo;
