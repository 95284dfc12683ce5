//! Replays the committed fuzz corpora (`fuzz/corpus/*/`) as the fuzz targets
//! do: `check` through the parser, checker and renderers; `weights` through
//! the safetensors reader; `npy`, `image` and `idx` through the input
//! decoders. Every input a fuzzer kept (crashes included) stays fixed
//! without a fuzzer.

use std::collections::BTreeMap;
use std::path::Path;

fn replay(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let compilation = cnnc::compile_source("fuzz.cnn", &text, &BTreeMap::new());
    let _ = compilation.render_diagnostics();
    if let Some(graphs) = compilation.graphs() {
        for graph in graphs {
            if let Err(e) = graph.verify() {
                panic!("a checked graph breaks an IR invariant: {e}");
            }
            let _ = cnnc::summary::table(graph, 1);
            let _ = cnnc::summary::summary(graph);
            let _ = cnnc::summary::check_line(graph);
        }
    }
}

fn replay_weights(data: &[u8]) {
    use cnnc_runtime::weights::WeightFile;
    let whole = WeightFile::from_bytes(data);
    let streamed = WeightFile::read_from(data, None);
    assert_eq!(whole.is_ok(), streamed.is_ok(), "{whole:?} vs {streamed:?}");
    if let Ok(file) = whole {
        let _ = file.check_finite(true);
        for t in file.tensors.values() {
            assert_eq!(t.shape.iter().product::<usize>(), t.data.to_f64().len());
        }
        if let Ok(bytes) = file.to_bytes() {
            assert!(WeightFile::from_bytes(&bytes).is_ok());
        }
    }
}

fn replay_npy(data: &[u8]) {
    use cnnc_runtime::input::{from_bytes, IndexRange, InputOptions};
    if let Ok(t) = from_bytes(data, [3, 4, 4], &InputOptions::default()) {
        assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
    }
    let options = InputOptions {
        index: Some(IndexRange { start: 1, end: 2 }),
        ..InputOptions::default()
    };
    let _ = from_bytes(data, [3, 4, 4], &options);
}

fn replay_image(data: &[u8]) {
    use cnnc_runtime::input::{from_bytes, InputOptions};
    for chw in [[3, 8, 8], [1, 8, 8]] {
        if let Ok(t) = from_bytes(data, chw, &InputOptions::default()) {
            assert_eq!(t.shape, vec![1, chw[0], 8, 8]);
        }
    }
}

fn replay_idx(data: &[u8]) {
    use cnnc_runtime::input::{from_bytes, idx_labels_from_bytes, InputOptions};
    if let Ok(t) = from_bytes(data, [1, 4, 4], &InputOptions::default()) {
        assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
    }
    let padded = InputOptions {
        pad: 1,
        ..InputOptions::default()
    };
    let _ = from_bytes(data, [1, 6, 6], &padded);
    if let Ok(labels) = idx_labels_from_bytes(data) {
        assert_eq!(labels.len() + 8, data.len());
    }
}

#[test]
fn fuzz_corpus_replays_without_panics() {
    replay_corpus("check", replay);
}

#[test]
fn weights_corpus_replays_without_panics() {
    replay_corpus("weights", replay_weights);
}

#[test]
fn npy_corpus_replays_without_panics() {
    replay_corpus("npy", replay_npy);
}

#[test]
fn image_corpus_replays_without_panics() {
    replay_corpus("image", replay_image);
}

#[test]
fn idx_corpus_replays_without_panics() {
    replay_corpus("idx", replay_idx);
}

fn replay_corpus(target: &str, replay: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| replay(&data));
        assert!(outcome.is_ok(), "{} panics", path.display());
    }
}
