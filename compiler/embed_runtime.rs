//! Build script of `cnnc`: embeds the runtime crate's sources and the
//! workspace lock file in the binary, so an installed `cnnc build` needs no
//! checkout (compiler/src/back/cache.rs unpacks them into the user's cache).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Every file under `dir`, relative to `base`, sorted so the embedded list
/// (and the digest cnnc computes over it) does not depend on the file system.
fn files(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read `{}`: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot read `{}`: {e}", dir.display()))
            .path();
        if path.is_dir() {
            files(base, &path, out);
        } else if path.is_file() {
            out.push(path.strip_prefix(base).expect("under base").to_path_buf());
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let runtime = root.join("runtime");
    // A directory makes cargo rerun this script when any file under it changes.
    println!("cargo:rerun-if-changed=runtime/Cargo.toml");
    println!("cargo:rerun-if-changed=runtime/src");
    println!("cargo:rerun-if-changed=runtime/kernels/Cargo.toml");
    println!("cargo:rerun-if-changed=runtime/kernels/src");
    println!("cargo:rerun-if-changed=Cargo.lock");
    // The runtime and the kernels crate inside it (a path dependency).
    let mut list = vec![
        PathBuf::from("Cargo.toml"),
        PathBuf::from("kernels").join("Cargo.toml"),
    ];
    files(&runtime, &runtime.join("src"), &mut list);
    files(&runtime, &runtime.join("kernels").join("src"), &mut list);
    list.sort();
    let mut code = String::from(
        "/// The runtime crate's files and its kernels crate's: (path relative to the runtime crate, contents).\n\
         pub static RUNTIME_FILES: &[(&str, &[u8])] = &[\n",
    );
    for relative in &list {
        let name = relative
            .to_str()
            .expect("runtime file names are UTF-8")
            .replace('\\', "/");
        let absolute = runtime.join(relative);
        let absolute = absolute.to_str().expect("the checkout path is UTF-8");
        // `{:?}` of a str is a valid Rust string literal, escapes included.
        let _ = writeln!(code, "    ({name:?}, include_bytes!({absolute:?})),");
    }
    code.push_str("];\n");
    let lock = root.join("Cargo.lock");
    let lock = lock.to_str().expect("the checkout path is UTF-8");
    let _ = writeln!(
        code,
        "/// The workspace lock file: the built drivers use the versions cnnc was tested with.\n\
         pub static LOCK_FILE: &[u8] = include_bytes!({lock:?});"
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("runtime_sources.rs"), code).expect("write runtime_sources.rs");
}
