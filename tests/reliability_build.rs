//! One real `cnnc build` of a hostile model (tests/fixtures/reliability/hostile):
//! layer names that are CUDA C++ and Rust keywords or CUDA built-ins, names of
//! the driver's own items, names that sanitise to the same identifier, and a
//! model named `fn`. The generated CUDA must compile with nvcc (when nvcc is
//! found; otherwise the build embeds the source for NVRTC), the generated Rust
//! driver must compile, and the binary's CPU path must compute what the
//! reference evaluator (`cnnc run`) computes.
//!
//! It shares tests/build.rs's cache (`CNNC_CACHE_DIR`), so the runtime crate
//! and its dependencies are compiled in release mode once for both.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::npy_f32;

const MODEL: &str = "tests/fixtures/reliability/hostile/model.cnn";

fn cnnc() -> Command {
    let mut c = crate::common::cnnc();
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(
            "CNNC_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-cache"),
        )
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CNNC_RUNTIME_PATH");
    c
}

fn ok(command: &mut Command) -> String {
    let out = command.output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{command:?}\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hostile_names_build_and_run() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-hostile");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let arg = |name: &str| dir.join(name).to_str().unwrap().to_string();

    // The kernel names stay unique and valid C identifiers.
    let cuda = ok(cnnc().args(["emit", MODEL, "--stage", "cuda"]));
    let names: Vec<&str> = cuda
        .lines()
        .filter(|l| l.starts_with("extern \"C\" __global__"))
        .map(|l| l.split('(').nth(1).unwrap().split(") ").nth(1).unwrap())
        .collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    // `a.b` and `a_b` both sanitise to `a_b`; the index keeps them apart.
    assert!(
        names.contains(&"k01_conv_a_b") && names.contains(&"k02_conv_a_b"),
        "{names:?}"
    );

    let out = dir.join("build");
    let stdout = ok(cnnc().args(["build", MODEL, "-o"]).arg(&out));
    let binary = PathBuf::from(stdout.trim());
    assert_eq!(binary.file_name().unwrap(), "fn");
    let nvcc_used = std::fs::read_dir(out.join("kernels/sm_90")).is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "cubin")))
    });
    eprintln!("nvcc compiled the kernels: {nvcc_used}");

    ok(cnnc().args(["init", MODEL, "-o", &arg("w.safetensors"), "--seed", "3"]));
    // An input: 4 images of 1×8×8, values from a fixed pattern.
    let values: Vec<f32> = (0..4 * 64)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let mut npy = Vec::new();
    {
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[4, 1, 8, 8])
            .writer(&mut npy)
            .begin_nd()
            .unwrap();
        w.extend(values).unwrap();
        w.finish().unwrap();
    }
    std::fs::write(dir.join("x.npy"), npy).unwrap();

    ok(cnnc().args([
        "run",
        MODEL,
        "--weights",
        &arg("w.safetensors"),
        "--input",
        &arg("x.npy"),
        "--output",
        &arg("reference.npy"),
    ]));
    ok(Command::new(&binary).args([
        "--weights",
        &arg("w.safetensors"),
        "--input",
        &arg("x.npy"),
        "--output",
        &arg("binary.npy"),
        "--device",
        "cpu",
    ]));
    let (reference, built) = (
        npy_f32(&dir.join("reference.npy")).1,
        npy_f32(&dir.join("binary.npy")).1,
    );
    assert_eq!(reference.len(), 4 * 3);
    assert_eq!(reference.len(), built.len());
    for (i, (a, b)) in built.iter().zip(&reference).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "output {i}: binary {a}, reference {b}"
        );
    }
}
