//! Writing results: always to a temporary file in the target directory, then
//! renamed, so a failure never leaves a half-written file behind.

use crate::{Error, Result, Tensor};
use std::io::Write;
use std::path::Path;

/// Checks that `path` can be written (its directory exists and it is not a
/// directory itself), so a command can fail before doing any work.
pub fn check_target(path: &Path) -> Result<()> {
    target_dir(path).map(|_| ())
}

fn target_dir(path: &Path) -> Result<std::path::PathBuf> {
    let display = path.display();
    if path.is_dir() {
        return Err(Error(format!(
            "cannot write `{display}`: it is a directory"
        )));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error(format!(
            "cannot write `{display}`: the directory `{}` does not exist",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The first of `inputs` that is the same file as `output` (after following
/// links), if `output` exists; writing there would replace an input.
pub fn same_file_as<'a>(
    output: &Path,
    inputs: impl IntoIterator<Item = &'a std::path::PathBuf>,
) -> Option<&'a std::path::PathBuf> {
    let out = std::fs::canonicalize(output).ok()?;
    inputs
        .into_iter()
        .find(|p| std::fs::canonicalize(p).is_ok_and(|c| c == out))
}

/// Writes bytes to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let display = path.display();
    let dir = target_dir(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    // Unique per process and per call, so two threads never share a temp file.
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error(format!("cannot write `{display}`: {e}")));
    }
    // Make the rename durable too; some file systems cannot sync a directory.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Encodes a tensor as a little-endian f32 `.npy` file.
pub fn npy_bytes(tensor: &Tensor) -> Result<Vec<u8>> {
    use npyz::WriterBuilder;
    let mut bytes = Vec::new();
    let shape: Vec<u64> = tensor.shape.iter().map(|&d| d as u64).collect();
    let mut writer = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape)
        .writer(&mut bytes)
        .begin_nd()
        .map_err(|e| Error(format!("cannot encode .npy: {e}")))?;
    writer
        .extend(tensor.data.iter().copied())
        .map_err(|e| Error(format!("cannot encode .npy: {e}")))?;
    writer
        .finish()
        .map_err(|e| Error(format!("cannot encode .npy: {e}")))?;
    Ok(bytes)
}

pub fn write_npy(path: &Path, tensor: &Tensor) -> Result<()> {
    write_atomic(path, &npy_bytes(tensor)?)
}

/// How a model's outputs relate to probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scores {
    Logits,
    Probabilities,
    LogProbabilities,
}

/// What to print about a batch of class scores.
pub struct Report<'a> {
    pub classes: usize,
    pub scores: Scores,
    pub labels: Option<&'a [String]>,
    /// True class of each input, for accuracy.
    pub targets: Option<&'a [u8]>,
    pub topk: usize,
    /// Print at most this many per-input lines.
    pub show: usize,
}

/// The top-k table (one line per input) and, with targets, the accuracy.
pub fn report(outputs: &[f32], n: usize, r: &Report) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    let mut correct = 0usize;
    for i in 0..n {
        let row = &outputs[i * r.classes..(i + 1) * r.classes];
        let probs: Vec<f64> = match r.scores {
            Scores::Probabilities => row.iter().map(|&v| v as f64).collect(),
            Scores::LogProbabilities => row.iter().map(|&v| (v as f64).exp()).collect(),
            Scores::Logits => {
                let max = row
                    .iter()
                    .map(|&v| v as f64)
                    .fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
                row.iter().map(|&v| (v as f64 - max).exp() / sum).collect()
            }
        };
        let mut order: Vec<usize> = (0..r.classes).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let truth = r.targets.and_then(|t| t.get(i)).map(|&t| t as usize);
        if truth == Some(order[0]) {
            correct += 1;
        }
        if i < r.show {
            let name = |c: usize| match r.labels.and_then(|l| l.get(c)) {
                Some(s) if *s != c.to_string() => format!(" {s}"),
                _ => String::new(),
            };
            let picks: Vec<String> = order
                .iter()
                .take(r.topk.max(1))
                .map(|&c| format!("{c}{} {:.1}%", name(c), probs[c] * 100.0))
                .collect();
            let mark = match truth {
                Some(t) if t == order[0] => format!("  (label {t}: right)"),
                Some(t) => format!("  (label {t}: WRONG)"),
                None => String::new(),
            };
            let _ = writeln!(text, "#{i:<4} {}{mark}", picks.join(" | "));
        }
    }
    if n > r.show {
        let _ = writeln!(text, "… {} more (raise --show to list them)", n - r.show);
    }
    if r.targets.is_some() {
        let _ = writeln!(
            text,
            "accuracy: {correct}/{n} = {:.2}%",
            100.0 * correct as f64 / n.max(1) as f64
        );
    }
    text
}
