//! Rung 6 of the verification ladder: `cnnc build` makes a working binary.
//! Its CPU path matches PyTorch on the committed fixtures, `--device cuda`
//! without a GPU is a clear error, a failed build keeps the previous binary,
//! and the generated driver is deterministic (snapshot).
//!
//! Building compiles the runtime crate in release mode once (a few minutes
//! on a cold cache); every model after that only compiles its driver. The
//! runtime is the copy embedded in `cnnc`, unpacked into the cache, so these
//! tests also show that a build needs no checkout.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::npy_f32;

fn cnnc() -> Command {
    let mut c = crate::common::cnnc();
    // One cache for every driver crate built by the tests (shared with
    // tests/reliability_build.rs): the runtime and its dependencies compile
    // once, in the cache's own target directory.
    c.env("CNNC_CACHE_DIR", cache())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CNNC_RUNTIME_PATH");
    c
}

fn cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-cache")
}

/// Builds a fixture once per test run (tests run in parallel; two builds into
/// one directory would race).
fn build(fixture: &str) -> (PathBuf, PathBuf) {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf, PathBuf)>> =
        std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, out, bin)) = built.iter().find(|(f, _, _)| f == fixture) {
        return (out.clone(), bin.clone());
    }
    let (out, bin) = build_now(fixture);
    built.push((fixture.to_string(), out.clone(), bin.clone()));
    (out, bin)
}

fn build_now(fixture: &str) -> (PathBuf, PathBuf) {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("builds")
        .join(fixture);
    let model = PathBuf::from("tests/fixtures")
        .join(fixture)
        .join("model.cnn");
    let result = cnnc()
        .arg("build")
        .arg(&model)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let binary = PathBuf::from(String::from_utf8(result.stdout).unwrap().trim());
    assert!(binary.is_file(), "{} missing", binary.display());
    (out, binary)
}

#[test]
fn built_binaries_match_pytorch_on_the_cpu() {
    // kitchen_sink has every op; the other fixtures' plans are covered by tests/plan_cpu.rs.
    for fixture in ["mnist_cnn", "kitchen_sink"] {
        let (out, binary) = build(fixture);
        let dir = PathBuf::from("tests/fixtures").join(fixture);
        let output = out.join("out.npy");
        let run = Command::new(&binary)
            .arg("--weights")
            .arg(dir.join("weights.safetensors"))
            .arg("--input")
            .arg(dir.join("input.npy"))
            .arg("--output")
            .arg(&output)
            .args(["--device", "cpu"])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{fixture}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let (ours, expected) = (npy_f32(&output).1, npy_f32(&dir.join("expected.npy")).1);
        assert_eq!(ours.len(), expected.len());
        let worst = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "{fixture}: max scaled error {worst:e}");

        // No GPU here: `cuda` is an error, `auto` falls back and says so.
        let cuda = Command::new(&binary)
            .arg("--weights")
            .arg(dir.join("weights.safetensors"))
            .arg("--input")
            .arg(dir.join("input.npy"))
            .args(["--device", "cuda"])
            .output()
            .unwrap();
        if cuda.status.success() {
            eprintln!("{fixture}: a GPU is present; skipping the no-GPU checks");
            continue;
        }
        assert_eq!(cuda.status.code(), Some(1));
        let err = String::from_utf8_lossy(&cuda.stderr);
        assert!(
            err.contains("error:") && (err.contains("CUDA") || err.contains("GPU")),
            "{err}"
        );
        let auto = Command::new(&binary)
            .arg("--weights")
            .arg(dir.join("weights.safetensors"))
            .arg("--input")
            .arg(dir.join("input.npy"))
            .output()
            .unwrap();
        assert!(auto.status.success());
        assert!(String::from_utf8_lossy(&auto.stderr).contains("running on the CPU"));
    }
}

/// The built mnist_cnn binary benchmarked on the CPU at batch 2, with `extra` arguments.
fn bench_mnist(binary: &Path, iters: &str, extra: &[&str]) -> std::process::Output {
    Command::new(binary)
        .args(["--weights", "models/weights/mnist_cnn.safetensors"])
        .args(["--bench", iters, "--batch", "2", "--device", "cpu"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn bench_and_bad_weights() {
    let (_, binary) = build("mnist_cnn");
    let bench = bench_mnist(&binary, "5", &[]);
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    let text = String::from_utf8_lossy(&bench.stdout);
    assert!(text.contains("p50") && text.contains("images/s"), "{text}");
    // --profile: every step (mnist_cnn has 7), slowest first, with its layers.
    let profiled = bench_mnist(&binary, "3", &["--profile"]);
    assert!(profiled.status.success());
    let text = String::from_utf8_lossy(&profiled.stdout);
    assert!(
        text.contains("mnist_cnn: time per step at batch 2"),
        "{text}"
    );
    let rows: Vec<(usize, f64, &str)> = text
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((
                cols.first()?.parse().ok()?,
                cols.get(1)?.parse().ok()?,
                *cols.get(3)?,
            ))
        })
        .collect();
    let mut steps: Vec<usize> = rows.iter().map(|r| r.0).collect();
    steps.sort();
    assert_eq!(steps, (0..7).collect::<Vec<_>>(), "{text}");
    assert!(
        rows.windows(2).all(|w| w[0].1 >= w[1].1),
        "not slowest first:\n{text}"
    );
    assert!(
        rows.iter().any(|r| r.2 == "k00_conv_layer_0") && text.contains("(+1 fused)"),
        "{text}"
    );
    assert!(
        text.contains("total ") && text.contains(" ms over 7 steps"),
        "{text}"
    );
    // --profile alone is a usage error.
    let alone = Command::new(&binary)
        .args([
            "--weights",
            "models/weights/mnist_cnn.safetensors",
            "--profile",
        ])
        .output()
        .unwrap();
    assert_eq!(alone.status.code(), Some(2));
    let wrong = Command::new(&binary)
        .args([
            "--weights",
            "tests/fixtures/resnet_tiny/weights.safetensors",
            "--input",
            "tests/fixtures/mnist_cnn/input.npy",
        ])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("missing"));
}

/// Held while a test deliberately breaks a build directory.
static FAILED_BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_failed_build_keeps_the_previous_binary() {
    let (out, binary) = build("mnist_cnn");
    let _guard = FAILED_BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let before = std::fs::read(&binary).unwrap();
    let result = cnnc()
        .env("CARGO", "false")
        .arg("build")
        .arg("tests/fixtures/mnist_cnn/model.cnn")
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&result.stderr).contains("cargo"));
    assert_eq!(
        std::fs::read(&binary).unwrap(),
        before,
        "the earlier binary changed"
    );
}

#[test]
fn the_driver_is_deterministic() {
    let emit = |stage: &str| {
        let r = cnnc()
            .args(["emit", "models/mnist_cnn.cnn", "--stage", stage])
            .output()
            .unwrap();
        assert!(r.status.success());
        String::from_utf8(r.stdout).unwrap()
    };
    let first = emit("driver");
    assert_eq!(first, emit("driver"));
    insta::assert_snapshot!("driver_mnist_cnn", first);
    let plan = emit("plan");
    assert_eq!(plan, emit("plan"));
    insta::assert_snapshot!("plan_mnist_cnn", plan);
}

#[test]
fn the_crate_links_the_runtime_unpacked_in_the_cache() {
    let (out, _) = build("mnist_cnn");
    // The runtime is the copy embedded in cnnc, not the checkout's runtime/.
    let manifest = std::fs::read_to_string(out.join("Cargo.toml")).unwrap();
    let runtime = manifest
        .lines()
        .find_map(|l| l.strip_prefix("cnnc-runtime = { path = \""))
        .and_then(|l| l.strip_suffix("\" }"))
        .unwrap_or_else(|| panic!("no runtime path in:\n{manifest}"));
    let runtime = Path::new(runtime);
    assert!(runtime.starts_with(cache()), "{}", runtime.display());
    for file in ["Cargo.toml", "src/lib.rs", "src/app.rs", "src/plan.rs"] {
        assert_eq!(
            std::fs::read(runtime.join(file)).unwrap(),
            std::fs::read(Path::new("runtime").join(file)).unwrap(),
            "{file}"
        );
    }
    // The dependencies were compiled into the cache's target directory.
    let versioned = runtime.parent().unwrap();
    assert!(versioned.join("target").join("release").is_dir());
    // The plan is data next to the driver: what `emit --stage plan` prints.
    let emitted = cnnc()
        .args([
            "emit",
            "tests/fixtures/mnist_cnn/model.cnn",
            "--stage",
            "plan",
        ])
        .output()
        .unwrap();
    assert!(emitted.status.success());
    assert_eq!(
        std::fs::read(out.join("plan.json")).unwrap(),
        emitted.stdout
    );
}

#[test]
fn a_runtime_path_without_a_crate_is_a_clear_error() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-runtime-here");
    std::fs::create_dir_all(&dir).unwrap();
    let result = cnnc()
        .env("CNNC_RUNTIME_PATH", &dir)
        .args(["build", "tests/fixtures/mnist_cnn/model.cnn", "-o"])
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(1));
    let err = String::from_utf8_lossy(&result.stderr);
    assert!(
        err.contains("`CNNC_RUNTIME_PATH` is `") && err.contains("help: "),
        "{err}"
    );
    // Nothing was built or written.
    assert!(!dir.join("out").exists());
}

/// `emit --stable` prints the same text from any working directory, names
/// files relative to the model's folder, and is what `cnnc::emit_stage` returns.
#[test]
fn emit_stable_is_the_same_from_anywhere() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let emit = |dir: &Path, file: &Path, stable: bool| {
        let mut c = cnnc();
        c.current_dir(dir)
            .args(["emit", "--stage", "cuda"])
            .arg(file);
        if stable {
            c.arg("--stable");
        }
        let r = c.output().unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8(r.stdout).unwrap()
    };
    let from_root = emit(root, Path::new("models/resnet18.cnn"), true);
    let from_models = emit(&root.join("models"), Path::new("resnet18.cnn"), true);
    let absolute = emit(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &root.join("models/resnet18.cnn"),
        true,
    );
    assert_eq!(from_root, from_models);
    assert_eq!(from_root, absolute);
    // resnet18 includes blocks/resnet.cnn: both files are named from models/.
    assert!(
        from_root.contains("from resnet18.cnn ") && from_root.contains("(blocks/resnet.cnn:"),
        "{}",
        &from_root[..200]
    );
    assert!(!from_root.contains("models/"));
    // Without --stable, files are named as typed.
    assert!(
        emit(root, Path::new("models/resnet18.cnn"), false).contains("from models/resnet18.cnn ")
    );
    let library = cnnc::emit_stage(
        &root.join("models/resnet18.cnn"),
        cnnc::tools::emit::Stage::Cuda,
    )
    .unwrap();
    assert_eq!(library, from_root);
}

/// Each distinct kernel is compiled to a cubin of its own and kept in the
/// cache by the digest of its code, architecture and nvcc: building an
/// unchanged model again runs no nvcc, a one-layer edit compiles the one
/// kernel it changed, and cubins the model no longer uses leave `kernels/`.
/// A stand-in nvcc logs its runs; `CARGO=false` stops each build after the
/// kernels and the driver's `main.rs`, so no driver is compiled.
#[test]
fn unchanged_kernels_are_not_compiled_again() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cubin-cache");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("nvcc.log");
    let nvcc = dir.join("fake-nvcc");
    // The last two arguments are `-o`'s value and the source; the "cubin"
    // names the source it came from. Like `nvcc -Xptxas -v`, it reports
    // each entry function of the source (half the architecture's number of
    // registers, 2 KiB of shared memory) on standard error.
    std::fs::write(
        &nvcc,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\narch=$(echo \"$*\" | sed -n 's/.*-arch=sm_\\([0-9]*\\).*/\\1/p')\nwhile [ $# -gt 2 ]; do shift; done\nbasename \"$2\" > \"$1\"\n\
             sed -n -E 's/.*__global__ void (__launch_bounds__\\([0-9, ]*\\) )?([A-Za-z0-9_]+)\\(.*/\\2/p' \"$2\" | while read f; do\n\
             printf \"ptxas info    : Compiling entry function '%s' for 'sm_%s'\\nptxas info    : Used %s registers, 2048 bytes smem\\n\" \"$f\" \"$arch\" $((arch / 2)) >&2\ndone\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&nvcc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let runs = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let build = |model: &Path, out: &str| {
        let result = cnnc()
            .env("CNNC_CACHE_DIR", dir.join("cache"))
            .env("CNNC_NVCC", &nvcc)
            .env("CARGO", "false")
            .arg("build")
            .arg(model)
            .arg("-o")
            .arg(dir.join(out))
            .output()
            .unwrap();
        // cargo "fails", after the kernels were compiled.
        assert_eq!(result.status.code(), Some(1));
        String::from_utf8_lossy(&result.stderr).into_owned()
    };
    // The cubins the driver embeds, as written in its main.rs.
    let embedded = |out: &str| -> Vec<String> {
        std::fs::read_to_string(dir.join(out).join("src/main.rs"))
            .unwrap()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("include_bytes!(\"../kernels/"))
            .map(|l| l.trim_end_matches("\"),").to_string())
            .collect()
    };
    let mnist = Path::new("tests/fixtures/mnist_cnn/model.cnn");
    let first = build(mnist, "a");
    let cubins = embedded("a");
    // mnist_cnn: 7 kernels, all different, for two architectures.
    assert_eq!(cubins.len(), 14, "{cubins:?}");
    assert_eq!(runs(), 14, "{first}");
    assert!(
        first.contains(
            "compiling 14 of 14 kernels (7 distinct, for sm_80 and sm_90; 0 taken from the cache) into 14 cubins"
        ),
        "{first}"
    );
    for c in &cubins {
        // Each cubin came from its own kernel's source, named as the cubin.
        let symbol = c.split('/').nth(1).unwrap().trim_end_matches(".cubin");
        assert_eq!(
            std::fs::read_to_string(dir.join("a/kernels").join(c)).unwrap(),
            format!("{symbol}.cu\n")
        );
    }
    // The scratch sources are gone once every compile succeeded.
    assert!(!dir.join("a/kernels/.nvcc").exists());
    // ptxas's figures for every launched function, per architecture.
    let resources =
        |out: &str| std::fs::read_to_string(dir.join(out).join("kernels/resources.txt")).unwrap();
    let report = resources("a");
    assert!(!report.contains("not reported"), "{report}");
    let rows = |arch: &str| -> Vec<String> {
        report
            .split("\nsm_")
            .find(|section| section.starts_with(arch))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with('k'))
            .map(|l| l.split_whitespace().nth(3).unwrap().to_string())
            .collect()
    };
    // 7 kernels and 5 batch variants, with the registers of their architecture.
    assert_eq!(rows("80"), vec!["40"; 12], "{report}");
    assert_eq!(rows("90"), vec!["45"; 12], "{report}");
    assert!(
        first.contains("sm_90: 45–45 registers, no local memory"),
        "{first}"
    );

    // The same model into another folder: every cubin from the cache.
    let again = build(mnist, "b");
    assert_eq!(runs(), 14, "{again}");
    assert!(
        again.contains("kernels: all 14 (7 distinct, for sm_80 and sm_90) taken from the cache"),
        "{again}"
    );
    assert_eq!(embedded("b"), cubins);
    // The figures came from the cache with the cubins.
    assert_eq!(resources("b"), report);

    // One layer edited (the first linear layer's activation): one kernel
    // compiles again, for both architectures; its old cubins leave `a`.
    let edited = dir.join("edited.cnn");
    let text = std::fs::read_to_string(mnist).unwrap();
    assert!(text.contains("linear(100) relu "));
    std::fs::write(
        &edited,
        text.replace("linear(100) relu ", "linear(100) relu6 "),
    )
    .unwrap();
    let after_edit = build(&edited, "a");
    assert_eq!(runs(), 16, "{after_edit}");
    assert!(
        after_edit.contains(
            "compiling 2 of 14 kernels (7 distinct, for sm_80 and sm_90; 12 taken from the cache) into 2 cubins"
        ),
        "{after_edit}"
    );
    let new_cubins = embedded("a");
    let changed: Vec<&String> = new_cubins.iter().filter(|c| !cubins.contains(c)).collect();
    assert_eq!(changed.len(), 2, "{new_cubins:?}");
    assert!(
        changed.iter().all(|c| c.contains("/linear_")),
        "{changed:?}"
    );
    let mut on_disk: Vec<String> = ["sm_80", "sm_90"]
        .iter()
        .flat_map(|arch| {
            std::fs::read_dir(dir.join("a/kernels").join(arch))
                .unwrap()
                .map(move |e| format!("{arch}/{}", e.unwrap().file_name().to_string_lossy()))
        })
        .collect();
    on_disk.sort();
    let mut expected = new_cubins.clone();
    expected.sort();
    assert_eq!(on_disk, expected);

    // A model whose blocks repeat compiles each distinct kernel once.
    let resnet = Path::new("tests/fixtures/resnet_tiny/model.cnn");
    build(resnet, "c");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("c/plan.json")).unwrap()).unwrap();
    let kernels = plan["steps"].as_array().unwrap().len();
    let distinct = embedded("c").len() / 2;
    // resnet_tiny's two stages share kernels that differ only in name.
    assert!(
        distinct < kernels,
        "{distinct} cubins for {kernels} kernels"
    );
    assert_eq!(runs(), 16 + 2 * distinct);

    // Many kernels compile several to a cubin (one nvcc process each), and
    // the cache still knows each kernel: a model that differs in one layer
    // takes its other kernels from those grouped cubins.
    let units = |out: &str| -> usize {
        let main = std::fs::read_to_string(dir.join(out).join("src/main.rs")).unwrap();
        main.lines()
            .filter_map(|l| l.trim().strip_prefix("(\"k"))
            .map(|l| l.split(", ").nth(1).unwrap().parse::<usize>().unwrap())
            .max()
            .unwrap()
            + 1
    };
    let before = runs();
    build(Path::new("models/densenet121.cnn"), "d");
    let (grouped, distinct) = (embedded("d"), units("d"));
    assert_eq!(runs() - before, grouped.len());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if distinct / (4 * threads) >= 2 {
        assert!(
            grouped.len() < distinct,
            "{} cubins for {distinct} kernels",
            grouped.len()
        );
        assert!(grouped.iter().any(|f| f.contains("/group_")), "{grouped:?}");
    }
    std::fs::create_dir_all(dir.join("blocks")).unwrap();
    std::fs::copy(
        "models/blocks/densenet.cnn",
        dir.join("blocks/densenet.cnn"),
    )
    .unwrap();
    let ten = dir.join("densenet10.cnn");
    let text = std::fs::read_to_string("models/densenet121.cnn").unwrap();
    std::fs::write(&ten, text.replace("num_classes = 1000", "num_classes = 10")).unwrap();
    let before = runs();
    let log = build(&ten, "e");
    // The classifier alone is new.
    assert_eq!(runs() - before, 2, "{log}");
    let reused = embedded("e");
    let new: Vec<&String> = reused.iter().filter(|f| !grouped.contains(f)).collect();
    assert_eq!(new.len(), 2, "{new:?}");
    assert!(new.iter().all(|f| f.contains("/linear_")), "{new:?}");
}
