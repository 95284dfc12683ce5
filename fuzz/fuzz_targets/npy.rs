//! Arbitrary bytes as a `.npy` input for a model taking `[3, 4, 4]`, through
//! the same sniffing and bounded reading as an input file; nothing may panic.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::npy(data));
