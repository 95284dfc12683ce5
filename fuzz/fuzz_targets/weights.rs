//! Arbitrary bytes as a safetensors file: parse, check, decode; nothing may panic.
//!
//! Both entry points are fuzzed: `from_bytes` (the whole file in memory) and
//! `read_from` (the streaming reader `cnnc run` and built binaries use), and
//! they must agree on whether the file is valid.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::weights(data));
