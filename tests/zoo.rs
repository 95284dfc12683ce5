//! Rung 1 of the verification ladder: every model in `models/` checks, and its
//! `state_dict` (keys, order, shapes), parameter count, MACs and per-layer
//! conv/linear shapes equal what PyTorch reports (tests/reference/models.json,
//! written by tests/reference/make_reference.py from torch/torchvision).

use cnnc::ir::Op;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::Path;

fn reference() -> BTreeMap<String, Json> {
    let text = std::fs::read_to_string("tests/reference/models.json").expect("reference file");
    serde_json::from_str(&text).expect("reference JSON")
}

fn dims(v: &Json) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|d| d.as_i64().expect("int"))
        .collect()
}

#[test]
fn every_model_matches_pytorch() {
    let reference = reference();
    let mut checked = 0;
    for (name, expected) in &reference {
        let path = format!("models/{name}.cnn");
        let compilation = cnnc::compile_file(Path::new(&path), &BTreeMap::new()).expect("readable");
        assert!(
            !compilation.has_errors(),
            "{path}:\n{}",
            compilation.render_diagnostics()
        );
        let graph = compilation.models[0].graph.as_ref().expect("graph");
        graph
            .verify()
            .unwrap_or_else(|e| panic!("{name}: IR invalid: {e}"));
        assert_eq!(graph.name, *name);
        assert_eq!(
            graph.input_shape().dims(),
            dims(&expected["input"]),
            "{name} input"
        );
        assert_eq!(
            graph.output_shape().dims(),
            dims(&expected["output"]),
            "{name} output"
        );
        assert_eq!(
            graph.total_params(),
            expected["total_params"].as_i64().unwrap(),
            "{name} params"
        );
        assert_eq!(
            graph.total_macs(),
            expected["total_macs"].as_i64().unwrap(),
            "{name} MACs"
        );

        let ours: Vec<(String, Vec<i64>)> = graph
            .params
            .iter()
            .map(|p| (p.key.clone(), p.shape.clone()))
            .collect();
        let theirs: Vec<(String, Vec<i64>)> = expected["state_dict"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e[0].as_str().unwrap().to_string(), dims(&e[1])))
            .collect();
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a, b, "{name}: state_dict entry {i} differs");
        }
        assert_eq!(ours.len(), theirs.len(), "{name}: state_dict sizes differ");

        // Every conv/linear call, in forward order, with PyTorch's module path, MACs and output shape.
        // A per-pixel linear layer (a 1×1 conv with nn.Linear's [out, in]
        // weight) runs in PyTorch after a permute to channels-last, so its
        // output there is [H, W, C].
        let per_pixel = |name: &str| {
            graph
                .params
                .iter()
                .any(|p| p.key == format!("{name}.weight") && p.shape.len() == 2)
        };
        let layers: Vec<(String, i64, Vec<i64>)> = graph
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Conv2d { .. } | Op::Linear { .. }))
            .map(|n| {
                let mut dims = n.shape.dims();
                if matches!(n.op, Op::Conv2d { .. }) && per_pixel(&n.name) {
                    dims.rotate_left(1);
                }
                (n.name.clone(), n.op.macs(&n.shape), dims)
            })
            .collect();
        let expected_layers: Vec<(String, i64, Vec<i64>)> = expected["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l[0].as_str().unwrap().to_string(),
                    l[2].as_i64().unwrap(),
                    dims(&l[3]),
                )
            })
            .collect();
        assert_eq!(layers, expected_layers, "{name}: conv/linear layers differ");
        checked += 1;
    }
    assert_eq!(checked, 37);
}

#[test]
fn every_model_file_is_in_the_reference() {
    let reference = reference();
    for entry in std::fs::read_dir("models").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cnn") {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            assert!(
                reference.contains_key(&stem),
                "{} has no PyTorch reference",
                path.display()
            );
        }
    }
}

#[test]
fn overrides_change_the_classifier() {
    let mut set = BTreeMap::new();
    set.insert(
        "num_classes".to_string(),
        cnnc::front::check::Value::Int(10),
    );
    let compilation = cnnc::compile_file(Path::new("models/resnet18.cnn"), &set).unwrap();
    let graph = compilation.models[0].graph.as_ref().unwrap();
    assert_eq!(graph.output_shape().dims(), vec![10]);
    // 512·10 + 10 instead of 512·1000 + 1000.
    assert_eq!(graph.total_params(), 11_689_512 - 513_000 + 5_130);
}

#[test]
fn summaries_are_stable() {
    let reference = reference();
    for name in reference.keys() {
        let path = format!("models/{name}.cnn");
        let compilation = cnnc::compile_file(Path::new(&path), &BTreeMap::new()).unwrap();
        let graph = compilation.models[0].graph.as_ref().unwrap();
        insta::assert_snapshot!(
            format!("summary_{name}"),
            cnnc::tools::summary::table(graph, &compilation.sources, 1)
        );
    }
}
