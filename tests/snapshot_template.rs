//! A template to copy: snapshot tests of a model's generated code, so a
//! change to the model, or a new cnnc, shows up as a diff to review
//! (docs/snapshot-testing.md). Here it checks `models/mnist_cnn.cnn`.

use cnnc::tools::emit::Stage;
use std::path::Path;

/// The model under test, relative to the crate root (where `cargo test` runs).
const MODEL: &str = "models/mnist_cnn.cnn";

/// `emit_stage` is `cnnc emit --stage … --stable`: files are named relative
/// to the model's folder, so the snapshots are the same on every machine.
fn stage(stage: Stage) -> String {
    cnnc::emit_stage(Path::new(MODEL), stage).unwrap_or_else(|e| panic!("{MODEL}:\n{e}"))
}

#[test]
fn fusion_report() {
    insta::assert_snapshot!("mnist_cnn_fused", stage(Stage::Fused));
}

#[test]
fn kernels() {
    insta::assert_snapshot!("mnist_cnn_kernels", stage(Stage::Kernels));
}

#[test]
fn cuda() {
    insta::assert_snapshot!("mnist_cnn_cuda", stage(Stage::Cuda));
}
