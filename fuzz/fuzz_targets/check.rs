//! Arbitrary bytes as a `.cnn` file: parse, check and render diagnostics; nothing may panic.
//!
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run check` (cargo-fuzz needs nightly
//! flags). The corpus in `corpus/check/` is replayed by `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::check(data));
