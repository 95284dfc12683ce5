//! The command-line rows of docs/reliability.md: bad weights and inputs
//! through `cnnc run`, output files that cannot or must not be written, a
//! full disk, builds killed midway or run twice at once, and NaN/infinity
//! propagation against PyTorch. Each test runs the real `cnnc` binary and
//! checks the exit code, the message and what is (not) left on disk.
//!
//! The build tests here use stand-in `cargo` and `nvcc` scripts (through the
//! `CARGO` and `CNNC_NVCC` variables `cnnc build` honours), so they test the
//! locking and the atomic replacement in seconds; tests/reliability_build.rs
//! runs one real build.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::npy_f32;

const NAN: &str = "tests/fixtures/reliability/nan";

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("reliability-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cnnc() -> Command {
    let mut c = crate::common::cnnc();
    // `cnnc build` unpacks its runtime into the cache: the tests' own, not the user's.
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env(
        "CNNC_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-cache"),
    );
    c
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and checks the exit code; returns stderr.
fn expect(command: &mut Command, code: i32) -> String {
    let out = command.output().expect("cnnc runs");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(code),
        "{command:?}\n--- stdout\n{stdout}--- stderr\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn run_nan(extra: &[&str]) -> Command {
    let mut c = cnnc();
    c.args(["run", &format!("{NAN}/model.cnn")]);
    c.args(extra);
    c
}

/// Files in `dir` other than `keep`, e.g. temp files a failed write left.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    names.sort();
    names
}

// -- weights ------------------------------------------------------------------

#[test]
fn nan_weights_warn_by_default_and_fail_with_strict_weights() {
    use cnnc_runtime::weights::{Data, WeightFile};
    let dir = scratch("nan-weights");
    let mut weights = WeightFile::load(Path::new(&format!("{NAN}/weights.safetensors"))).unwrap();
    match &mut weights.tensors.get_mut("conv2.weight").unwrap().data {
        Data::F32(v) => {
            v[0] = f32::NAN;
            v[1] = f32::INFINITY;
        }
        other => panic!("{other:?}"),
    }
    let path = dir.join("nan.safetensors");
    std::fs::write(&path, weights.to_bytes().unwrap()).unwrap();
    let weights_arg = path.to_str().unwrap();
    let input = format!("{NAN}/input.npy");
    let stderr = expect(
        &mut run_nan(&["--weights", weights_arg, "--input", &input]),
        0,
    );
    assert!(
        stderr.contains("warning: `")
            && stderr.contains("weights are not all finite: `conv2.weight` (1 NaN, 1 infinite)"),
        "{stderr}"
    );
    let stderr = expect(
        &mut run_nan(&[
            "--weights",
            weights_arg,
            "--input",
            &input,
            "--strict-weights",
        ]),
        1,
    );
    assert!(
        stderr.starts_with("error: `")
            && stderr.contains("weights are not all finite: `conv2.weight` (1 NaN, 1 infinite)"),
        "{stderr}"
    );
}

#[test]
fn bad_weight_files_through_cnnc_run() {
    let dir = scratch("bad-weights");
    let input = format!("{NAN}/input.npy");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "short",
            vec![1, 2, 3],
            "shorter than the 8-byte header length",
        ),
        ("empty", vec![], "it is 0 bytes long"),
        (
            "huge-header",
            u64::MAX.to_le_bytes().to_vec(),
            "is over the 100000000-byte limit",
        ),
        (
            "text",
            b"this is not a weights file".to_vec(),
            "not a safetensors file",
        ),
    ];
    for (name, bytes, message) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let stderr = expect(
            &mut run_nan(&["--weights", path.to_str().unwrap(), "--input", &input]),
            1,
        );
        assert!(stderr.contains(message), "{name}: {stderr}");
    }
    for pickle in ["model.pt", "legacy.pt"] {
        let stderr = expect(
            &mut run_nan(&[
                "--weights",
                &format!("tests/fixtures/reliability/{pickle}"),
                "--input",
                &input,
            ]),
            1,
        );
        assert!(
            stderr.contains("is a pickled PyTorch checkpoint, not safetensors")
                && stderr.contains("convert once with:"),
            "{stderr}"
        );
    }
    // Weights from /dev/zero: refused after 8 bytes.
    let stderr = expect(
        &mut run_nan(&["--weights", "/dev/zero", "--input", &input]),
        1,
    );
    assert!(
        stderr.contains("the header is not a JSON object"),
        "{stderr}"
    );
}

// -- inputs -------------------------------------------------------------------

/// PyTorch propagates NaN through relu (relu(NaN) = NaN), max pooling and
/// convolutions, and turns inf − inf into NaN; `cnnc run` must give the same
/// NaN and infinity positions and the same finite values.
#[test]
fn nan_and_infinity_propagate_as_in_pytorch() {
    let dir = scratch("nan-propagation");
    let out = dir.join("out.npy");
    expect(
        &mut run_nan(&[
            "--weights",
            &format!("{NAN}/weights.safetensors"),
            "--input",
            &format!("{NAN}/input.npy"),
            "--output",
            out.to_str().unwrap(),
        ]),
        0,
    );
    let ours = npy_f32(&out).1;
    let expected = npy_f32(&Path::new(NAN).join("expected.npy")).1;
    assert_eq!(ours.len(), expected.len());
    for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
        let same = (a.is_nan() && b.is_nan())
            || (a.is_infinite() && a == b)
            || (a.is_finite() && b.is_finite() && (a - b).abs() <= 1e-4 * b.abs().max(1.0));
        assert!(same, "output {i}: cnnc {a}, PyTorch {b}");
    }
}

#[test]
fn endless_and_special_inputs() {
    let weights = format!("{NAN}/weights.safetensors");
    let stderr = expect(
        &mut run_nan(&["--weights", &weights, "--input", "/dev/zero"]),
        1,
    );
    assert!(
        stderr.contains("`/dev/zero`: unknown input format"),
        "{stderr}"
    );
    let stderr = expect(
        &mut run_nan(&["--weights", &weights, "--input", "/dev/null"]),
        1,
    );
    assert!(stderr.contains("`/dev/null` is empty"), "{stderr}");
}

// -- output files ---------------------------------------------------------------

#[test]
fn output_paths_that_cannot_be_written() {
    let dir = scratch("outputs");
    let weights = format!("{NAN}/weights.safetensors");
    let input = format!("{NAN}/input.npy");
    let run_to = |output: &Path| {
        expect(
            &mut run_nan(&[
                "--weights",
                &weights,
                "--input",
                &input,
                "--output",
                output.to_str().unwrap(),
            ]),
            1,
        )
    };
    let stderr = run_to(&dir);
    assert!(stderr.contains("it is a directory"), "{stderr}");
    let stderr = run_to(&dir.join("missing").join("out.npy"));
    assert!(stderr.contains("/missing` does not exist"), "{stderr}");
    // A directory nobody may write, even root: /proc.
    let stderr = run_to(Path::new("/proc/cnnc-out.npy"));
    assert!(
        stderr.contains("error: cannot write `/proc/cnnc-out.npy`"),
        "{stderr}"
    );
    // Writing over an input is refused, and the input is untouched.
    let copy = dir.join("input.npy");
    std::fs::copy(&input, &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    let stderr = expect(
        &mut run_nan(&[
            "--weights",
            &weights,
            "--input",
            copy.to_str().unwrap(),
            "--output",
            copy.to_str().unwrap(),
        ]),
        1,
    );
    assert!(
        stderr.contains("is the input `") && stderr.contains("write the outputs to another file"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&copy).unwrap(), before);
    // `cnnc init -o model.cnn` would replace the model with weights.
    let model = dir.join("model.cnn");
    std::fs::copy(format!("{NAN}/model.cnn"), &model).unwrap();
    let stderr = expect(
        cnnc().args([
            "init",
            model.to_str().unwrap(),
            "-o",
            model.to_str().unwrap(),
        ]),
        1,
    );
    assert!(stderr.contains("is the model file"), "{stderr}");
    assert_eq!(
        std::fs::read(&model).unwrap(),
        std::fs::read(format!("{NAN}/model.cnn")).unwrap()
    );
    assert_eq!(
        leftovers(&dir, &["input.npy", "model.cnn"]),
        Vec::<String>::new()
    );
}

/// A full disk, simulated with RLIMIT_FSIZE (`ulimit -f`): the write fails
/// with EFBIG, cnnc says so and exits 1, the previous file is intact and no
/// temporary file is left behind.
#[test]
fn disk_full_keeps_the_previous_file() {
    let dir = scratch("disk-full");
    let target = dir.join("weights.safetensors");
    std::fs::write(&target, b"previous contents").unwrap();
    let script = format!(
        "trap '' XFSZ; ulimit -f 4; exec '{}' init models/mnist_cnn.cnn -o '{}'",
        env!("CARGO_BIN_EXE_cnnc"),
        target.display()
    );
    let stderr = expect(
        Command::new("bash")
            .args(["-c", &script])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
        1,
    );
    assert!(
        stderr.contains("cannot write `") && stderr.contains("File too large"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"previous contents");
    assert_eq!(
        leftovers(&dir, &["weights.safetensors"]),
        Vec::<String>::new()
    );
}

// -- cnnc build: kill midway, concurrent builds ------------------------------------

/// Stand-ins for cargo and nvcc: the fake cargo logs when it starts and ends,
/// sleeps, then leaves a "binary" where cargo would.
fn fake_tools(dir: &Path, sleep: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let cargo = dir.join("fake-cargo");
    std::fs::write(
        &cargo,
        format!(
            "#!/bin/sh\necho \"start $$\" >> '{log}'\nsleep {sleep}\nmkdir -p \"$CARGO_TARGET_DIR/release\"\necho \"binary from $$\" > \"$CARGO_TARGET_DIR/release/fn\"\necho \"end $$\" >> '{log}'\n",
            log = dir.join("log").display()
        ),
    )
    .unwrap();
    let nvcc = dir.join("fake-nvcc");
    // The last-but-one argument is `-o`'s value: write an empty "cubin" there.
    std::fs::write(
        &nvcc,
        "#!/bin/sh\nwhile [ $# -gt 2 ]; do shift; done\n: > \"$1\"\n",
    )
    .unwrap();
    for p in [&cargo, &nvcc] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (cargo, nvcc)
}

fn build_command(out: &Path, cargo: &Path, nvcc: &Path, target: &Path) -> Command {
    let mut c = cnnc();
    c.args([
        "build",
        "tests/fixtures/reliability/hostile/model.cnn",
        "-o",
    ])
    .arg(out)
    .env("CARGO", cargo)
    .env("CNNC_NVCC", nvcc)
    .env("CARGO_TARGET_DIR", target);
    c
}

#[test]
fn killed_build_keeps_the_previous_binary() {
    use std::os::unix::process::CommandExt;
    let dir = scratch("killed-build");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("fn"), b"previous binary").unwrap();
    let (cargo, nvcc) = fake_tools(&dir, "30");
    let mut child = build_command(&out, &cargo, &nvcc, &dir.join("target"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the build is inside "cargo", then kill cnnc and its children.
    let log = dir.join("log");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("start")) {
        assert!(
            started.elapsed().as_secs() < 60,
            "the fake cargo never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let group = format!("-{}", child.id());
    Command::new("kill")
        .args(["-KILL", "--", &group])
        .status()
        .unwrap();
    let _ = child.wait();
    assert_eq!(std::fs::read(out.join("fn")).unwrap(), b"previous binary");
    // The generated sources are complete files (written atomically), and a
    // rerun of the build takes over the directory (the lock died with the process).
    let driver = std::fs::read_to_string(out.join("src/main.rs")).unwrap();
    assert!(driver.trim_end().ends_with('}'), "{driver}");
    let (cargo, _) = fake_tools(&dir, "0");
    expect(
        &mut build_command(&out, &cargo, &nvcc, &dir.join("target")),
        0,
    );
    assert!(std::fs::read_to_string(out.join("fn"))
        .unwrap()
        .starts_with("binary from "));
}

#[test]
fn concurrent_builds_into_one_directory_take_turns() {
    let dir = scratch("concurrent-builds");
    let out = dir.join("out");
    let (cargo, nvcc) = fake_tools(&dir, "1");
    let spawn = || {
        build_command(&out, &cargo, &nvcc, &dir.join("target"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outputs: Vec<Output> = [a, b]
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outputs {
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    // start/end pairs never interleave.
    let log = std::fs::read_to_string(dir.join("log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert!(
        lines[0].starts_with("start")
            && lines[1].starts_with("end")
            && lines[2].starts_with("start")
            && lines[3].starts_with("end")
            && lines[0][6..] == lines[1][4..]
            && lines[2][6..] == lines[3][4..],
        "{log}"
    );
    let waited = outputs
        .iter()
        .filter(|o| text(&o.stderr).contains("waiting for another cnnc build into"))
        .count();
    assert_eq!(waited, 1);
    assert!(std::fs::read_to_string(out.join("fn"))
        .unwrap()
        .starts_with("binary from "));
}

#[test]
fn build_into_a_file_or_an_unwritable_place() {
    let dir = scratch("build-targets");
    let file = dir.join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let (cargo, nvcc) = fake_tools(&dir, "0");
    let stderr = expect(
        &mut build_command(&file, &cargo, &nvcc, &dir.join("target")),
        1,
    );
    assert!(stderr.contains("it is a file, not a directory"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
    let stderr = expect(
        &mut build_command(
            Path::new("/proc/cnnc-build"),
            &cargo,
            &nvcc,
            &dir.join("target"),
        ),
        1,
    );
    assert!(
        stderr.contains("error: cannot create `/proc/cnnc-build`"),
        "{stderr}"
    );
    // nvcc failing: no partial cubin is left.
    let out = dir.join("out");
    let stderr = expect(
        &mut build_command(&out, &cargo, Path::new("/bin/false"), &dir.join("target")),
        1,
    );
    assert!(stderr.contains("nvcc failed for sm_80"), "{stderr}");
    assert!(stderr.contains("(kernel k00_"), "{stderr}");
    assert!(
        stderr.contains("the kernel sources are kept in"),
        "{stderr}"
    );
    // No cubin, partial or whole: only the source, the scratch sources the
    // message points to, and the (empty) per-architecture folders.
    assert_eq!(
        leftovers(&out.join("kernels"), &["model.cu"]),
        vec![".nvcc", "sm_80", "sm_90"]
    );
    for arch in ["sm_80", "sm_90"] {
        assert_eq!(
            leftovers(&out.join("kernels").join(arch), &[]),
            Vec::<String>::new()
        );
    }
    assert!(leftovers(&out.join("kernels/.nvcc"), &[])
        .iter()
        .all(|f| f.ends_with(".cu")));
}

// -- activation memory budget -------------------------------------------------------

/// `cnnc check --memory-budget` compares the arena a built binary would plan
/// (the figure `cnnc summary` prints: 89.1 KiB for mnist_cnn at batch 1)
/// with the budget; over it is exit 1 naming the model and both sizes,
/// a huge batch does not overflow, and a malformed size is a usage error.
#[test]
fn activation_memory_over_a_budget() {
    let summary = cnnc()
        .args(["summary", "models/mnist_cnn.cnn"])
        .output()
        .unwrap();
    assert!(
        text(&summary.stdout).contains("activations, planned arena: 89.1 KiB"),
        "{}",
        text(&summary.stdout)
    );
    let ok = cnnc()
        .args(["check", "models/mnist_cnn.cnn", "--memory-budget", "100KiB"])
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let stderr = expect(
        cnnc().args(["check", "models/mnist_cnn.cnn", "--memory-budget", "80KiB"]),
        1,
    );
    assert!(
        stderr.contains("model `mnist_cnn` needs 89.1 KiB of activations at batch 1 (planned arena), over the --memory-budget of 80.0 KiB"),
        "{stderr}"
    );
    let stderr = expect(
        cnnc().args([
            "check",
            "models/resnet152.cnn",
            "--memory-budget",
            "1GiB",
            "--batch",
            "1000000",
        ]),
        1,
    );
    assert!(stderr.contains("at batch 1000000"), "{stderr}");
    let stderr = expect(
        cnnc().args(["check", "models/mnist_cnn.cnn", "--memory-budget", "12XB"]),
        2,
    );
    assert!(stderr.contains("unknown unit `xb`"), "{stderr}");
}

// -- training killed midway ------------------------------------------------------

/// `cnnc train` killed (SIGKILL) in the middle of a later epoch leaves the
/// last complete epoch's weights and checkpoint whole: both still load, the
/// weights bind in `cnnc run`, and the checkpoint resumes.
#[test]
fn training_killed_midway_keeps_the_last_complete_epoch() {
    use cnnc_runtime::weights::WeightFile;
    let dir = scratch("train-killed");
    let out = dir.join("w.safetensors");
    let ckpt = dir.join("w.ckpt");
    let mut child = cnnc()
        .args([
            "train",
            "models/mnist_cnn.cnn",
            "--data",
            "models/data/mnist-1000-images.idx",
            "--holdout",
            "200",
            "--batch",
            "32",
            "--epochs",
            "1000",
            "-o",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first epoch's files, then for a later write to be under
    // way or just done, and kill at that moment.
    let started = std::time::Instant::now();
    while !(out.exists() && ckpt.exists()) {
        assert!(
            started.elapsed().as_secs() < 300,
            "no checkpoint after 300 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "cnnc train exited early"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let first = std::fs::metadata(&out).unwrap().modified().unwrap();
    while std::fs::metadata(&out).unwrap().modified().unwrap() == first
        && started.elapsed().as_secs() < 300
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(150));
    child.kill().unwrap();
    child.wait().unwrap();
    for path in [&out, &ckpt] {
        WeightFile::load(path).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
    }
    expect(
        cnnc().args([
            "run",
            "models/mnist_cnn.cnn",
            "--weights",
            out.to_str().unwrap(),
            "--input",
            "models/data/mnist-1000-images.idx",
            "--index",
            "0..4",
        ]),
        0,
    );
    // The checkpoint resumes (one more step is enough to show it).
    let o = cnnc()
        .args([
            "train",
            "models/mnist_cnn.cnn",
            "--data",
            "models/data/mnist-1000-images.idx",
            "--resume",
            ckpt.to_str().unwrap(),
            "--max-steps",
            "1",
            "-o",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}
