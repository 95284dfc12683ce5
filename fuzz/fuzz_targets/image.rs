//! Arbitrary bytes as a PNG or JPEG input, decoded with cnnc's decoder limits
//! and resized for a 3-channel `[3, 8, 8]` and a 1-channel `[1, 8, 8]` model;
//! nothing may panic, and decompression bombs must stop at the limits.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::image(data));
