//! Arbitrary bytes as a PNG or JPEG input, decoded with cnnc's decoder limits
//! and resized for a 3-channel `[3, 8, 8]` and a 1-channel `[1, 8, 8]` model;
//! nothing may panic, and decompression bombs must stop at the limits.
#![no_main]

use cnnc_runtime::input::{from_bytes, InputOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for chw in [[3, 8, 8], [1, 8, 8]] {
        if let Ok(t) = from_bytes(data, chw, &InputOptions::default()) {
            assert_eq!(t.shape, vec![1, chw[0], 8, 8]);
        }
    }
});
