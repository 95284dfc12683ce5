//! Arbitrary bytes as a `.npy` input for a model taking `[3, 4, 4]`, through
//! the same sniffing and bounded reading as an input file; nothing may panic.
#![no_main]

use cnnc_runtime::input::{from_bytes, IndexRange, InputOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
