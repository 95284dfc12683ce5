//! Arbitrary bytes as an MNIST IDX image file (for a `[1, 4, 4]` model, with
//! and without `--pad 1` for `[1, 6, 6]`) and as an IDX label file; nothing may panic.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::idx(data));
