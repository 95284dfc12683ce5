//! What each fuzz target does with its input, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and the corpus replay in `tests/fuzz_corpus.rs`,
//! so a replayed input is checked exactly as the fuzzer checked it.
//! Each function must not panic on any input.

// Each fuzz target binary uses one of these functions.
#![allow(dead_code)]

use cnnc_runtime::input::{from_bytes, idx_labels_from_bytes, IndexRange, InputOptions};
use cnnc_runtime::weights::WeightFile;
use std::collections::BTreeMap;

/// Arbitrary bytes as a `.cnn` file: parse, check, render diagnostics and summaries.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let compilation = cnnc::compile_source("fuzz.cnn", &text, &BTreeMap::new());
    let _ = compilation.render_diagnostics();
    if let Some(graphs) = compilation.graphs() {
        for graph in graphs {
            if let Err(e) = graph.verify() {
                panic!("a checked graph breaks an IR invariant: {e}");
            }
            let _ = cnnc::tools::summary::table(graph, &compilation.sources, 1);
            let _ = cnnc::tools::summary::summary(graph);
            let _ = cnnc::tools::summary::check_line(graph);
        }
    }
}

/// The safetensors reader: whole, streamed with and without a known length.
pub fn weights(data: &[u8]) {
    let whole = WeightFile::from_bytes(data);
    let streamed = WeightFile::read_from(data, Some(data.len() as u64));
    assert_eq!(whole.is_ok(), streamed.is_ok(), "{whole:?} vs {streamed:?}");
    let unsized_stream = WeightFile::read_from(data, None);
    assert_eq!(streamed.is_ok(), unsized_stream.is_ok());
    if let Ok(file) = whole {
        // Debug text, because NaN != NaN.
        assert_eq!(format!("Ok({file:?})"), format!("{unsized_stream:?}"));
        let _ = file.check_finite(true);
        for t in file.tensors.values() {
            let numel: usize = t.shape.iter().product();
            assert_eq!(numel, t.data.to_f64().len());
        }
        // What we read, we can write back and read again.
        if let Ok(bytes) = file.to_bytes() {
            let again = WeightFile::from_bytes(&bytes);
            assert!(again.is_ok(), "{again:?}");
        }
    }
}

/// `.npy` through the input decoder, whole and with an index range.
pub fn npy(data: &[u8]) {
    let chw = [3, 4, 4];
    if let Ok(t) = from_bytes(data, chw, &InputOptions::default()) {
        assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
        assert_eq!(&t.shape[1..], &chw);
    }
    let options = InputOptions {
        index: Some(IndexRange { start: 1, end: 2 }),
        ..InputOptions::default()
    };
    let _ = from_bytes(data, chw, &options);
}

/// PNG/JPEG through the input decoder (limits, resize, crop), colour and grey.
pub fn image(data: &[u8]) {
    for chw in [[3, 8, 8], [1, 8, 8]] {
        if let Ok(t) = from_bytes(data, chw, &InputOptions::default()) {
            assert_eq!(t.shape, vec![1, chw[0], 8, 8]);
        }
    }
}

/// MNIST IDX images (plain and padded) and labels.
pub fn idx(data: &[u8]) {
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
