//! Arbitrary bytes as an MNIST IDX image file (for a `[1, 4, 4]` model, with
//! and without `--pad 1` for `[1, 6, 6]`) and as an IDX label file; nothing may panic.
#![no_main]

use cnnc_runtime::input::{from_bytes, idx_labels_from_bytes, InputOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
