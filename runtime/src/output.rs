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

/// Writes bytes to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let display = path.display();
    let dir = target_dir(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error(format!("cannot write `{display}`: {e}")));
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
