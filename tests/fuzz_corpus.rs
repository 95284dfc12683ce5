//! Replays the committed fuzz corpus (`fuzz/corpus/check/`) through the
//! parser, checker and renderers, as the `check` fuzz target does, so every
//! input the fuzzer ever kept (crashes included) stays fixed without a fuzzer.

use std::collections::BTreeMap;
use std::path::Path;

fn replay(data: &[u8]) {
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
}

#[test]
fn fuzz_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/check");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| replay(&data));
        assert!(outcome.is_ok(), "{} panics", path.display());
    }
}
