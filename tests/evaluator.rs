//! Rung 2 of the verification ladder: the reference evaluator reproduces
//! PyTorch's outputs on the committed fixtures (tests/fixtures/, written by
//! tests/fixtures/make_fixtures.py from torch/torchvision), within
//! max |a − b| ≤ 1e-4 · max(1, |b|).

use cnnc_runtime::input::{load, InputOptions};
use cnnc_runtime::weights::WeightFile;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::npy_f32;

/// Runs one fixture; returns (max scaled error, number of outputs).
fn run_fixture(name: &str) -> (f64, usize) {
    let dir = PathBuf::from("tests/fixtures").join(name);
    let compilation = cnnc::compile_file(&dir.join("model.cnn"), &BTreeMap::new()).unwrap();
    assert!(
        !compilation.has_errors(),
        "{}",
        compilation.render_diagnostics()
    );
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let file = WeightFile::load(&dir.join("weights.safetensors")).unwrap();
    let weights = cnnc::ir::weights::bind(graph, &file, &compilation.sources)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let dims = graph.input_shape().dims();
    let chw = [dims[0] as usize, dims[1] as usize, dims[2] as usize];
    let input = load(&[dir.join("input.npy")], chw, &InputOptions::default()).unwrap();
    let n = input.shape[0];
    let out = cnnc::tools::eval::evaluate(graph, &weights, n, &input.data).unwrap();
    let (shape, expected) = npy_f32(&dir.join("expected.npy"));
    assert_eq!(out.dims(), shape, "{name}: output shape");
    let mut worst = 0f64;
    for (a, b) in out.data.iter().zip(&expected) {
        let b = *b as f64;
        worst = worst.max((a - b).abs() / b.abs().max(1.0));
    }
    (worst, expected.len())
}

#[test]
fn evaluator_matches_pytorch_on_every_fixture() {
    for name in crate::common::fixture_names() {
        let (worst, count) = run_fixture(&name);
        assert!(count > 0);
        assert!(worst <= 1e-4, "{name}: max scaled error {worst:e}");
    }
}

#[test]
fn a_wrong_weight_is_noticed() {
    // The comparison can fail: perturb one weight and the fixture no longer matches.
    let dir = Path::new("tests/fixtures/resnet_tiny");
    let compilation = cnnc::compile_file(&dir.join("model.cnn"), &BTreeMap::new()).unwrap();
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let mut file = WeightFile::load(&dir.join("weights.safetensors")).unwrap();
    let t = file.tensors.get_mut("layer1.0.bn1.running_var").unwrap();
    if let cnnc_runtime::weights::Data::F32(v) = &mut t.data {
        v[0] *= 4.0;
    }
    let weights = cnnc::ir::weights::bind(graph, &file, &compilation.sources).unwrap();
    let input = load(
        &[dir.join("input.npy")],
        [3, 32, 32],
        &InputOptions::default(),
    )
    .unwrap();
    let out = cnnc::tools::eval::evaluate(graph, &weights, input.shape[0], &input.data).unwrap();
    let (_, expected) = npy_f32(&dir.join("expected.npy"));
    let worst = out
        .data
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - *b as f64).abs())
        .fold(0.0, f64::max);
    assert!(worst > 1e-3, "perturbation went unnoticed: {worst}");
}

#[test]
fn strict_loading_lists_every_problem() {
    let dir = Path::new("tests/fixtures/mnist_cnn");
    let compilation = cnnc::compile_file(&dir.join("model.cnn"), &BTreeMap::new()).unwrap();
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let mut file = WeightFile::load(&dir.join("weights.safetensors")).unwrap();
    let fc = file.tensors.remove("fc_layer.2.weight").unwrap();
    file.tensors.insert("fc_layer.3.weight".to_string(), fc);
    file.tensors.get_mut("layer.0.bias").unwrap().shape = vec![4, 4];
    let err = cnnc::ir::weights::bind(graph, &file, &compilation.sources).unwrap_err();
    insta::assert_snapshot!(err);
}

#[test]
fn init_weights_load_back() {
    for scheme in [
        cnnc::ir::weights::InitScheme::Pytorch,
        cnnc::ir::weights::InitScheme::Kaiming,
    ] {
        let compilation =
            cnnc::compile_file(Path::new("models/resnet18.cnn"), &BTreeMap::new()).unwrap();
        let graph = compilation.models[0].graph.as_ref().unwrap();
        let file = cnnc::ir::weights::init(graph, scheme, 7).unwrap();
        let reread = WeightFile::from_bytes(&file.to_bytes().unwrap()).unwrap();
        assert_eq!(reread, file);
        cnnc::ir::weights::bind(graph, &reread, &compilation.sources).unwrap();
        // Deterministic for a seed.
        assert_eq!(cnnc::ir::weights::init(graph, scheme, 7).unwrap(), file);
    }
}
