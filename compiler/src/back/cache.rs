//! The cache `cnnc build` keeps once per machine and cnnc version: the
//! runtime crate's sources (embedded in the `cnnc` binary, unpacked on first
//! use) and the cargo target directory every built driver shares, so the
//! runtime's dependencies are compiled once, not once per model.
//!
//! Layout, under [`cache_dir`]:
//!
//! ```text
//! <cache>/cnnc/<version>/runtime-<digest>/   the runtime crate, content-addressed
//! <cache>/cnnc/<version>/target/             CARGO_TARGET_DIR of every driver build
//! ```

use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/runtime_sources.rs"));

/// Overrides the cache folder (`<version>` is still appended).
pub const CACHE_DIR_ENV: &str = "CNNC_CACHE_DIR";

/// Points `cnnc build` at a runtime crate instead of the embedded one.
pub const RUNTIME_PATH_ENV: &str = "CNNC_RUNTIME_PATH";

/// The help line every cache failure ends with.
const HELP: &str = "help: set `CNNC_CACHE_DIR` to a writable folder";

/// FNV-1a with 128 bits: a stable digest with no dependency (the published
/// parameters), wide enough to name cache entries by their contents.
pub fn fnv1a128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut hash = OFFSET;
    for &b in bytes {
        hash ^= u128::from(b);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// `$CNNC_CACHE_DIR/<version>`, else `base/cnnc/<version>`, where `base` is
/// `XDG_CACHE_HOME`, else `~/.cache` (`~/Library/Caches` on macOS,
/// `%LOCALAPPDATA%` on Windows). Relative XDG paths are ignored, as the
/// XDG specification says.
pub fn cache_dir() -> Result<PathBuf, String> {
    let version = env!("CARGO_PKG_VERSION");
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join(version));
    }
    let base = if cfg!(windows) {
        std::env::var_os("LOCALAPPDATA").map(PathBuf::from)
    } else if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        Some(xdg)
    } else {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|home| {
                if cfg!(target_os = "macos") {
                    PathBuf::from(home).join("Library").join("Caches")
                } else {
                    PathBuf::from(home).join(".cache")
                }
            })
    };
    match base {
        Some(base) => Ok(base.join("cnnc").join(version)),
        None => Err(format!(
            "cannot find a cache folder: neither `XDG_CACHE_HOME` nor `HOME` is set\n{HELP}"
        )),
    }
}

/// The digest of the embedded runtime sources: every path and its contents.
pub fn runtime_digest() -> u128 {
    let mut all = Vec::new();
    for (path, bytes) in RUNTIME_FILES {
        all.extend_from_slice(path.as_bytes());
        all.push(0);
        all.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        all.extend_from_slice(bytes);
    }
    fnv1a128(&all)
}

/// Whether `dir` holds every embedded runtime file with the same contents.
fn holds_runtime(dir: &Path) -> bool {
    RUNTIME_FILES.iter().all(|(path, bytes)| {
        std::fs::read(dir.join(path)).is_ok_and(|on_disk| on_disk.as_slice() == *bytes)
    })
}

fn write_runtime(dir: &Path) -> Result<(), String> {
    for (path, bytes) in RUNTIME_FILES {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create `{}`: {e}\n{HELP}", parent.display()))?;
        }
        std::fs::write(&file, bytes)
            .map_err(|e| format!("cannot write `{}`: {e}\n{HELP}", file.display()))?;
    }
    Ok(())
}

/// The runtime crate's sources under `cache`, unpacked from the binary if
/// they are not there yet (or were changed since). They are written into a
/// temporary folder and renamed into place, so a folder with the final name
/// is always complete, also when builds run at the same time.
pub fn unpack_runtime(cache: &Path) -> Result<PathBuf, String> {
    let name = format!("runtime-{:016x}", runtime_digest() >> 64);
    let dir = cache.join(&name);
    if holds_runtime(&dir) {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache).map_err(|e| {
        format!(
            "cannot create the cache folder `{}`: {e}\n{HELP}",
            cache.display()
        )
    })?;
    let pid = std::process::id();
    let tmp = cache.join(format!(".{name}.tmp-{pid}"));
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = write_runtime(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // A folder with the final name that fails the check was changed by hand
    // or damaged: move it aside first (rename does not replace a folder).
    if dir.exists() {
        let stale = cache.join(format!(".{name}.stale-{pid}"));
        if std::fs::rename(&dir, &stale).is_ok() {
            let _ = std::fs::remove_dir_all(&stale);
        }
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another build unpacked the same sources first: use theirs.
        Err(_) if holds_runtime(&dir) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(format!(
                "cannot move the runtime sources into `{}`: {e}\n{HELP}",
                dir.display()
            ))
        }
    }
}

/// The runtime crate a driver links: `CNNC_RUNTIME_PATH` if set, otherwise
/// the embedded sources unpacked under `cache`.
pub fn runtime_crate(cache: &Path) -> Result<PathBuf, String> {
    match std::env::var_os(RUNTIME_PATH_ENV).filter(|p| !p.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            if path.join("Cargo.toml").is_file() {
                Ok(path)
            } else {
                Err(format!(
                    "`CNNC_RUNTIME_PATH` is `{}`, which holds no `Cargo.toml`\nhelp: point it at the `runtime/` folder of a cnnc checkout, or unset it to use the runtime built into cnnc",
                    path.display()
                ))
            }
        }
        None => unpack_runtime(cache),
    }
}

/// The cargo target directory of driver builds: `CARGO_TARGET_DIR` if set,
/// otherwise `target/` in the cache.
pub fn target_dir(cache: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("target"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a128_matches_the_published_parameters() {
        // The empty input hashes to the offset basis; "a" was computed
        // independently with Python's integers.
        assert_eq!(fnv1a128(b""), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(fnv1a128(b"a"), 0xd228cb696f1a8caf78912b704e4a8964);
    }

    #[test]
    fn the_embedded_runtime_is_the_checkout_s() {
        let runtime = Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime");
        let mut on_disk = Vec::new();
        let mut stack = vec![runtime.join("src"), runtime.join("kernels").join("src")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("readable") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    on_disk.push(path);
                }
            }
        }
        on_disk.push(runtime.join("Cargo.toml"));
        on_disk.push(runtime.join("kernels").join("Cargo.toml"));
        assert_eq!(on_disk.len(), RUNTIME_FILES.len(), "files added or removed");
        for (path, bytes) in RUNTIME_FILES {
            let actual = std::fs::read(runtime.join(path)).expect("embedded file exists");
            assert!(actual.as_slice() == *bytes, "{path} differs");
        }
        let lock = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"));
        assert!(lock.expect("Cargo.lock").as_slice() == LOCK_FILE);
    }

    #[test]
    fn unpacking_is_complete_and_repairs_a_changed_copy() {
        let cache = std::env::temp_dir().join(format!("cnnc-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        let dir = unpack_runtime(&cache).expect("unpacks");
        assert!(holds_runtime(&dir));
        // Unpacking again reuses the folder.
        assert_eq!(unpack_runtime(&cache).expect("reuses"), dir);
        // A file edited by hand is put back.
        std::fs::write(dir.join("src").join("lib.rs"), "broken").expect("write");
        assert!(!holds_runtime(&dir));
        assert_eq!(unpack_runtime(&cache).expect("repairs"), dir);
        assert!(holds_runtime(&dir));
        // No temporary folders are left behind.
        let names: Vec<String> = std::fs::read_dir(&cache)
            .expect("cache")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let _ = std::fs::remove_dir_all(&cache);
    }
}
