//! Replays the committed fuzz corpora (`fuzz/corpus/*/`) as the fuzz targets
//! do: `check` through the parser, checker and renderers; `weights` through
//! the safetensors reader; `npy`, `image` and `idx` through the input
//! decoders. Every input a fuzzer kept (crashes included) stays fixed
//! without a fuzzer.

use crate::fuzz_checks as checks;

use std::path::Path;

#[test]
fn fuzz_corpus_replays_without_panics() {
    replay_corpus("check", checks::check);
}

#[test]
fn weights_corpus_replays_without_panics() {
    replay_corpus("weights", checks::weights);
}

#[test]
fn npy_corpus_replays_without_panics() {
    replay_corpus("npy", checks::npy);
}

#[test]
fn image_corpus_replays_without_panics() {
    replay_corpus("image", checks::image);
}

#[test]
fn idx_corpus_replays_without_panics() {
    replay_corpus("idx", checks::idx);
}

fn replay_corpus(target: &str, replay: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
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
