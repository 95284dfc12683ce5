//! Rung 3 of the verification ladder: every pass keeps the numbers. The
//! reference evaluator on the optimised graph (batch norm folded into weights,
//! fused epilogues, views) matches it on the checked graph, for every
//! fixture (real PyTorch weights) and every zoo model (random weights with
//! random batch-norm statistics, at a reduced input size).

use cnnc::front::source::SourceMap;
use cnnc::ir::Graph;
use cnnc_runtime::weights::WeightFile;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;

use crate::common::{randomize_batchnorm, small_size};

/// Input sizes tried, smallest first, for running zoo models quickly.
const SIZES: [i64; 6] = [32, 64, 96, 128, 227, 224];

/// Runs `graph` unfused and fused on the same weights; returns the worst scaled difference.
fn fused_vs_unfused(graph: &Graph, file: &WeightFile, sources: &SourceMap, n: usize) -> f64 {
    let (fused, _) = cnnc::ir::passes::optimize(graph).unwrap();
    assert!(fused.nodes.len() <= graph.nodes.len());
    let bound = cnnc::ir::weights::bind(graph, file, sources).unwrap();
    let fused_bound = cnnc::ir::weights::bind(&fused, file, sources).unwrap();
    let prepared = cnnc::ir::weights::prepare(&fused, &fused_bound).unwrap();
    let per = graph.input_shape().numel() as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let input: Vec<f32> = (0..n * per).map(|_| rng.random_range(-1.0..1.0)).collect();
    let a = cnnc::tools::eval::evaluate(graph, &bound, n, &input).unwrap();
    let b = cnnc::tools::eval::evaluate(&fused, &prepared, n, &input).unwrap();
    assert_eq!(a.dims(), b.dims());
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
        .fold(0.0, f64::max)
}

#[test]
fn fused_equals_unfused_on_fixtures() {
    for name in crate::common::fixture_names() {
        let f = crate::common::Fixture::load(&name);
        let worst = fused_vs_unfused(f.graph(), &f.weights, &f.compilation.sources, 2);
        assert!(worst <= 1e-5, "{name}: fused differs by {worst:e}");
    }
}

#[test]
fn fused_equals_unfused_on_every_zoo_model() {
    let mut names: Vec<_> = std::fs::read_dir("models")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .collect();
    names.sort();
    for path in names {
        let size = small_size(&path, &SIZES)
            .unwrap_or_else(|| panic!("{}: no small size checks", path.display()));
        let compilation =
            cnnc::compile_file_at(&path, &BTreeMap::new(), Some((size, size))).unwrap();
        let graph = compilation.models[0].graph.as_ref().unwrap();
        // Big classifiers dominate the time and test nothing new; keep them, at batch 1.
        let mut file =
            cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 3).unwrap();
        randomize_batchnorm(&mut file, 5);
        let worst = fused_vs_unfused(graph, &file, &compilation.sources, 1);
        assert!(
            worst <= 1e-5,
            "{} at {size}×{size}: fused differs by {worst:e}",
            path.display()
        );
    }
}

#[test]
fn the_pipeline_fuses_what_it_should() {
    let compilation =
        cnnc::compile_file(Path::new("models/resnet18.cnn"), &BTreeMap::new()).unwrap();
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let (fused, logs) = cnnc::ir::passes::optimize(graph).unwrap();
    use cnnc::ir::Op;
    // No batch norm, no standalone relu or add remains in resnet18.
    assert!(!fused
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::BatchNorm { .. } | Op::Add | Op::Activation(_))));
    // 20 convolutions and the classifier are the only GEMM kernels.
    let gemms = fused
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv2d { .. } | Op::Linear { .. }))
        .count();
    assert_eq!(gemms, 21);
    assert!(logs.iter().all(|l| !l.pass.is_empty()));
}

#[test]
fn every_squeeze_excitation_multiply_runs_inside_the_projection_that_reads_it() {
    use cnnc::ir::{Op, Prologue};
    // efficientnet_b0 has 16 MBConv blocks, mobilenet_v3_large 8 with SE;
    // each SE gate's map is read only by the block's 1x1 projection.
    for (model, gates) in [("efficientnet_b0", 16), ("mobilenet_v3_large", 8)] {
        let path = format!("models/{model}.cnn");
        let compilation = cnnc::compile_file(Path::new(&path), &BTreeMap::new()).unwrap();
        let graph = compilation.models[0].graph.as_ref().unwrap();
        let muls = |g: &cnnc::ir::Graph| g.nodes.iter().filter(|n| n.op == Op::Mul).count();
        assert_eq!(muls(graph), gates, "{model}: gates before the passes");
        let (fused, _) = cnnc::ir::passes::optimize(graph).unwrap();
        let scaled: Vec<_> = fused
            .nodes
            .iter()
            .filter(|n| matches!(n.fusion.prologue, Some(Prologue::ChannelScale { .. })))
            .collect();
        assert_eq!((muls(&fused), scaled.len()), (0, gates), "{model}");
        for n in scaled {
            assert!(
                matches!(
                    n.op,
                    Op::Conv2d {
                        kernel: (1, 1),
                        groups: 1,
                        ..
                    }
                ),
                "{model}: {} is not a 1x1 projection",
                n.name
            );
        }
    }
}
