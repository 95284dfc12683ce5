//! Arbitrary bytes as a `.cnn` file: parse, check and render diagnostics; nothing may panic.
//!
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run check` (cargo-fuzz needs nightly
//! flags). The corpus in `corpus/check/` is replayed by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
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
});
