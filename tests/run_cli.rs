//! `cnnc run` and `cnnc init` end to end: the real binary on the committed
//! fixtures, MNIST IDX digits, .npy arrays and PNG/JPEG images written here,
//! and every way an input can be wrong (exit 1, a clear message, nothing written).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::common::npy_f32;

/// A scratch directory of its own for each test, removed afterwards.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("cnnc-run-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The path of `name` in the scratch directory, as an argument.
    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    /// A fresh, empty directory for outputs, to check nothing lands there.
    fn out_dir(&self) -> PathBuf {
        let dir = self.path("out");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Replaces the scratch directory in a message with `[TMP]`.
    fn redact(&self, text: &str) -> String {
        text.replace(self.dir.to_str().unwrap(), "[TMP]")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn cnnc<S: AsRef<OsStr>>(args: &[S]) -> Out {
    let output = crate::common::cnnc()
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("cnnc runs");
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn fixture(name: &str, file: &str) -> String {
    format!("tests/fixtures/{name}/{file}")
}

/// `models/data/mnist-1000-KIND.idx`, or its older name `mnist-test-KIND.idx`.
fn mnist(kind: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in [
        format!("models/data/mnist-1000-{kind}.idx"),
        format!("models/data/mnist-test-{kind}.idx"),
    ] {
        if root.join(&name).is_file() {
            return name;
        }
    }
    panic!("no MNIST {kind} file in models/data/");
}

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) {
    use npyz::WriterBuilder;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut writer = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(shape)
        .writer(&mut file)
        .begin_nd()
        .unwrap();
    writer.extend(data.iter().copied()).unwrap();
    writer.finish().unwrap();
}

/// max |a − b| ≤ 1e-4 · max(1, |b|), elementwise.
fn assert_close(what: &str, actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, b)) in actual.iter().zip(expected).enumerate() {
        let tolerance = 1e-4 * b.abs().max(1.0);
        assert!(
            (a - b).abs() <= tolerance,
            "{what}: value {i} is {a}, expected {b}"
        );
    }
}

/// Lines of the top-k table (`#0    6 11.0% | …`).
fn table_rows(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with('#')).collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn mnist_fixture_output_matches_pytorch() {
    let s = Scratch::new("fixture");
    let out = s.arg("logits.npy");
    let r = cnnc(&[
        "run",
        &fixture("mnist_cnn", "model.cnn"),
        "--weights",
        &fixture("mnist_cnn", "weights.safetensors"),
        "--input",
        &fixture("mnist_cnn", "input.npy"),
        "--output",
        &out,
    ]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(table_rows(&r.stdout).len(), 2, "{r}");
    assert!(r.stdout.contains("wrote "), "{r}");
    let (shape, got) = npy_f32(Path::new(&out));
    let (expected_shape, expected) =
        npy_f32(&Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture("mnist_cnn", "expected.npy")));
    assert_eq!(shape, expected_shape);
    assert_eq!(shape, [2, 10]);
    assert_close("mnist_cnn", &got, &expected);
    // Only the output itself: no temporary file left beside it.
    assert_eq!(entries(&s.dir), ["logits.npy"]);
}

#[test]
fn npy_inputs_in_every_accepted_layout_and_dtype() {
    let s = Scratch::new("npy_kinds");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (shape, pixels) = npy_f32(&root.join(fixture("mnist_cnn", "input.npy")));
    assert_eq!(shape, [2, 1, 28, 28]);
    let (_, expected) = npy_f32(&root.join(fixture("mnist_cnn", "expected.npy")));
    // The fixture's pixels are bytes / 255, so u8 and f64 copies are exact.
    let bytes: Vec<u8> = pixels.iter().map(|&v| (v * 255.0).round() as u8).collect();
    let wide: Vec<f64> = pixels.iter().map(|&v| v as f64).collect();
    write_npy(&s.path("chw.npy"), &[1, 28, 28], &pixels[..784]);
    write_npy(&s.path("u8.npy"), &[2, 1, 28, 28], &bytes);
    write_npy(&s.path("f64.npy"), &[2, 1, 28, 28], &wide);
    for (input, rows) in [("chw.npy", 1), ("u8.npy", 2), ("f64.npy", 2)] {
        let out = s.arg(&format!("{input}.out.npy"));
        let r = cnnc(&[
            "run",
            &fixture("mnist_cnn", "model.cnn"),
            "--weights",
            &fixture("mnist_cnn", "weights.safetensors"),
            "--input",
            &s.arg(input),
            "--output",
            &out,
        ]);
        assert_eq!(r.code, 0, "{input}: {r}");
        let (shape, got) = npy_f32(Path::new(&out));
        assert_eq!(shape, [rows, 10], "{input}");
        assert_close(input, &got, &expected[..rows * 10]);
    }
}

#[test]
fn idx_digits_with_targets_and_labels() {
    let r = cnnc(&[
        "run",
        &fixture("mnist_cnn", "model.cnn"),
        "--weights",
        &fixture("mnist_cnn", "weights.safetensors"),
        "--input",
        &mnist("images"),
        "--index",
        "0..20",
        "--targets",
        &mnist("labels"),
        "--labels",
        "models/labels/digits.txt",
        "--topk",
        "3",
    ]);
    assert_eq!(r.code, 0, "{r}");
    let rows = table_rows(&r.stdout);
    assert_eq!(rows.len(), 20, "{r}");
    // The digits are interleaved: sample i is an i % 10.
    assert!(rows[0].contains("(label 0: "), "{r}");
    assert!(rows[13].contains("(label 3: "), "{r}");
    assert_eq!(rows[0].matches('%').count(), 3, "--topk 3: {r}");
    let accuracy = r
        .stdout
        .lines()
        .find(|l| l.starts_with("accuracy: "))
        .unwrap_or_else(|| panic!("no accuracy line: {r}"));
    assert!(accuracy.contains("/20 = "), "{accuracy}");

    // One sample, with label names from a file.
    let s = Scratch::new("idx_labels");
    let names = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    std::fs::write(s.path("names.txt"), names.join("\n") + "\n").unwrap();
    let r = cnnc(&[
        "run",
        &fixture("mnist_cnn", "model.cnn"),
        "--weights",
        &fixture("mnist_cnn", "weights.safetensors"),
        "--input",
        &mnist("images"),
        "--index",
        "5",
        "--labels",
        &s.arg("names.txt"),
        "--topk",
        "10",
    ]);
    assert_eq!(r.code, 0, "{r}");
    let rows = table_rows(&r.stdout);
    assert_eq!(rows.len(), 1, "{r}");
    for name in names {
        assert!(rows[0].contains(&format!(" {name} ")), "`{name}`: {r}");
    }
    assert!(!r.stdout.contains("accuracy"), "{r}");

    // Past the end of the 1000 digits.
    let r = cnnc(&[
        "run",
        &fixture("mnist_cnn", "model.cnn"),
        "--weights",
        &fixture("mnist_cnn", "weights.safetensors"),
        "--input",
        &mnist("images"),
        "--index",
        "2000..3000",
    ]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("out of range"), "{r}");
    assert!(r.stderr.contains("1000"), "{r}");
    assert!(r.stdout.is_empty(), "{r}");
}

#[test]
fn lenet_needs_padded_digits() {
    let s = Scratch::new("lenet_pad");
    let images = mnist("images");
    let base = |extra: &[&str]| {
        let mut args = vec![
            "run".to_string(),
            fixture("lenet5", "model.cnn"),
            "--weights".to_string(),
            fixture("lenet5", "weights.safetensors"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        cnnc(&args)
    };
    let r = base(&["--input", &images, "--index", "0..2"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("--pad 2"), "{r}");
    assert!(r.stderr.contains("28×28"), "{r}");

    let padded = s.arg("padded.npy");
    let r = base(&[
        "--input", &images, "--index", "0..2", "--pad", "2", "--output", &padded,
    ]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(table_rows(&r.stdout).len(), 2, "{r}");

    // The same digits padded by hand give the same outputs.
    let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(&images)).unwrap();
    let mut manual = vec![0f32; 2 * 32 * 32];
    for k in 0..2 {
        for y in 0..28 {
            for x in 0..28 {
                manual[k * 1024 + (y + 2) * 32 + x + 2] =
                    bytes[16 + k * 784 + y * 28 + x] as f32 / 255.0;
            }
        }
    }
    write_npy(&s.path("manual.npy"), &[2, 1, 32, 32], &manual);
    let by_hand = s.arg("by_hand.npy");
    let r = base(&["--input", &s.arg("manual.npy"), "--output", &by_hand]);
    assert_eq!(r.code, 0, "{r}");
    let (shape, a) = npy_f32(Path::new(&padded));
    let (_, b) = npy_f32(Path::new(&by_hand));
    assert_eq!(shape, [2, 10]);
    assert_eq!(a, b);
}

/// Runs mnist_cnn on `input` with `--output` into an empty directory;
/// expects exit 1 and that directory still empty.
fn rejected(s: &Scratch, model: &str, input: &str, extra: &[&str]) -> String {
    let out_dir = s.out_dir();
    let out = out_dir.join("logits.npy");
    let mut args = vec![
        "run".to_string(),
        fixture(model, "model.cnn"),
        "--weights".to_string(),
        fixture(model, "weights.safetensors"),
        "--input".to_string(),
        input.to_string(),
        "--output".to_string(),
        out.to_str().unwrap().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let r = cnnc(&args);
    assert_eq!(r.code, 1, "{input}: {r}");
    assert!(r.stderr.starts_with("error: "), "{input}: {r}");
    assert!(!r.stdout.contains("wrote"), "{input}: {r}");
    assert!(!out.exists(), "{input}: {} was written", out.display());
    assert!(
        entries(&out_dir).is_empty(),
        "{input}: left {:?}",
        entries(&out_dir)
    );
    s.redact(&r.stderr)
}

#[test]
fn bad_inputs_are_refused_and_nothing_is_written() {
    let s = Scratch::new("bad_inputs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    write_npy(
        &s.path("rgb.npy"),
        &[2, 3, 28, 28],
        &vec![0.5f32; 2 * 3 * 784],
    );
    write_npy(&s.path("big.npy"), &[1, 1, 32, 32], &vec![0.5f32; 1024]);
    write_npy(&s.path("flat.npy"), &[784], &vec![0.5f32; 784]);
    write_npy(&s.path("i32.npy"), &[1, 1, 28, 28], &vec![1i32; 784]);
    let whole = std::fs::read(root.join(fixture("mnist_cnn", "input.npy"))).unwrap();
    std::fs::write(s.path("truncated.npy"), &whole[..whole.len() / 2]).unwrap();
    std::fs::write(s.path("header_only.npy"), &whole[..40]).unwrap();
    std::fs::write(s.path("notes.txt"), "these are not pixels\n").unwrap();
    std::fs::write(s.path("empty.npy"), b"").unwrap();
    std::fs::create_dir(s.path("a_directory")).unwrap();
    let idx = std::fs::read(root.join(mnist("images"))).unwrap();
    std::fs::write(s.path("truncated.idx"), &idx[..16 + 784 * 3 + 100]).unwrap();
    let png = png_bytes();
    std::fs::write(s.path("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(s.path("whole.png"), &png).unwrap();

    let cases: Vec<(&str, &str, String, Vec<&str>)> = vec![
        ("wrong channel count", "mnist_cnn", s.arg("rgb.npy"), vec![]),
        ("wrong spatial size", "mnist_cnn", s.arg("big.npy"), vec![]),
        (
            "one-dimensional array",
            "mnist_cnn",
            s.arg("flat.npy"),
            vec![],
        ),
        ("int32 array", "mnist_cnn", s.arg("i32.npy"), vec![]),
        ("truncated npy", "mnist_cnn", s.arg("truncated.npy"), vec![]),
        (
            "npy header cut",
            "mnist_cnn",
            s.arg("header_only.npy"),
            vec![],
        ),
        ("unknown format", "mnist_cnn", s.arg("notes.txt"), vec![]),
        ("empty file", "mnist_cnn", s.arg("empty.npy"), vec![]),
        ("directory", "mnist_cnn", s.arg("a_directory"), vec![]),
        ("missing file", "mnist_cnn", s.arg("no_such.npy"), vec![]),
        ("truncated idx", "mnist_cnn", s.arg("truncated.idx"), vec![]),
        ("truncated png", "mnist_cnn", s.arg("truncated.png"), vec![]),
        (
            "image on a 4-channel model",
            "kitchen_sink",
            s.arg("whole.png"),
            vec![],
        ),
        (
            "--index with an image",
            "mnist_cnn",
            s.arg("whole.png"),
            vec!["--index", "0"],
        ),
        (
            "--resize below the input size",
            "resnet_tiny",
            s.arg("whole.png"),
            vec!["--resize", "20"],
        ),
        (
            "idx on a 3-channel model",
            "resnet_tiny",
            mnist("images"),
            vec!["--index", "0"],
        ),
        (
            "npy index out of range",
            "mnist_cnn",
            fixture("mnist_cnn", "input.npy"),
            vec!["--index", "1..3"],
        ),
    ];
    let mut report = String::new();
    for (what, model, input, extra) in &cases {
        let stderr = rejected(&s, model, input, extra);
        let stderr = stderr.replace(&mnist("images"), "[MNIST]");
        report += &format!("## {what}\n{stderr}\n");
    }
    insta::assert_snapshot!("bad_inputs", report);

    // A failed run leaves an existing output file as it was.
    let existing = s.path("existing.npy");
    std::fs::write(&existing, b"keep me").unwrap();
    let r = cnnc(&[
        "run",
        &fixture("mnist_cnn", "model.cnn"),
        "--weights",
        &fixture("mnist_cnn", "weights.safetensors"),
        "--input",
        &s.arg("truncated.npy"),
        "--output",
        existing.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
}

/// A 50×40 RGB PNG with a gradient.
fn png_bytes() -> Vec<u8> {
    let img = image::RgbImage::from_fn(50, 40, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x + y) * 2) as u8])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

#[test]
fn png_and_jpeg_images() {
    let s = Scratch::new("images");
    std::fs::write(s.path("rgb.png"), png_bytes()).unwrap();
    let grey = image::GrayImage::from_fn(30, 30, |x, y| image::Luma([((x * y) % 256) as u8]));
    grey.save(s.path("grey.png")).unwrap();
    let photo = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 128])
    });
    photo.save(s.path("photo.jpg")).unwrap();
    assert!(std::fs::read(s.path("photo.jpg"))
        .unwrap()
        .starts_with(&[0xff, 0xd8, 0xff]));

    let run = |model: &str, inputs: &[String], extra: &[&str]| {
        let mut args = vec![
            "run".to_string(),
            fixture(model, "model.cnn"),
            "--weights".to_string(),
            fixture(model, "weights.safetensors"),
            "--input".to_string(),
        ];
        args.extend(inputs.iter().cloned());
        args.extend(extra.iter().map(|a| a.to_string()));
        cnnc(&args)
    };
    for (model, input) in [
        ("resnet_tiny", "rgb.png"),
        ("resnet_tiny", "photo.jpg"),
        ("mnist_cnn", "grey.png"),
        // Colour images become greyscale for 1-channel models and vice versa.
        ("mnist_cnn", "rgb.png"),
        ("resnet_tiny", "grey.png"),
    ] {
        let r = run(model, &[s.arg(input)], &["--topk", "3"]);
        assert_eq!(r.code, 0, "{model} on {input}: {r}");
        let rows = table_rows(&r.stdout);
        assert_eq!(rows.len(), 1, "{model} on {input}: {r}");
        assert_eq!(rows[0].matches('%').count(), 3, "{r}");
    }

    // Two images make a batch of two, written in order.
    let out = s.arg("two.npy");
    let r = run(
        "resnet_tiny",
        &[s.arg("rgb.png"), s.arg("photo.jpg")],
        &["--output", &out],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(table_rows(&r.stdout).len(), 2, "{r}");
    let (shape, both) = npy_f32(Path::new(&out));
    assert_eq!(shape, [2, 10]);
    let single = s.arg("one.npy");
    let r = run("resnet_tiny", &[s.arg("photo.jpg")], &["--output", &single]);
    assert_eq!(r.code, 0, "{r}");
    let (_, one) = npy_f32(Path::new(&single));
    assert_close("second image of the batch", &both[10..], &one);

    // --no-normalize changes the result for a 3-channel model.
    let raw = s.arg("raw.npy");
    let r = run(
        "resnet_tiny",
        &[s.arg("photo.jpg")],
        &["--no-normalize", "--output", &raw],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_ne!(npy_f32(Path::new(&raw)).1, one);

    let r = run("resnet_tiny", &[s.arg("rgb.png")], &["--index", "0..2"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("--index"), "{r}");
}

#[test]
fn pickled_checkpoints_are_never_read() {
    let s = Scratch::new("pickle");
    let mut fake = b"PK\x03\x04".to_vec();
    fake.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    std::fs::write(s.path("model.pt"), &fake).unwrap();
    let out_dir = s.out_dir();
    let out = out_dir.join("logits.npy");
    let r = cnnc(&[
        "run",
        &fixture("mnist_cnn", "model.cnn"),
        "--weights",
        &s.arg("model.pt"),
        "--input",
        &fixture("mnist_cnn", "input.npy"),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("safetensors"), "{r}");
    assert!(r.stderr.contains("pickle"), "{r}");
    assert!(r.stderr.contains("st.save_file("), "{r}");
    assert!(r.stderr.contains("weights_only=True"), "{r}");
    assert!(entries(&out_dir).is_empty());
    insta::assert_snapshot!("pickled_weights", s.redact(&r.stderr));
}

#[test]
fn weights_for_another_model_list_missing_and_unexpected_keys() {
    let r = cnnc(&[
        "run",
        &fixture("mnist_cnn", "model.cnn"),
        "--weights",
        &fixture("resnet_tiny", "weights.safetensors"),
        "--input",
        &fixture("mnist_cnn", "input.npy"),
    ]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("do not match model `mnist_cnn`"), "{r}");
    // Almost nothing matches: the likely cause comes before the list.
    let first = r.stderr.lines().next().unwrap_or("");
    assert!(
        first.contains("0 of its 10 keys are in the file")
            && first.ends_with("is this the weights file of another model?"),
        "{r}"
    );
    assert!(r.stderr.contains("missing      `layer.0.weight`"), "{r}");
    assert!(r.stderr.contains("unexpected   `conv1.weight`"), "{r}");
    assert!(r.stdout.is_empty(), "{r}");
}

#[test]
fn a_different_class_count_suggests_set() {
    let s = Scratch::new("num_classes");
    let weights = s.arg("r18_10.safetensors");
    let r = cnnc(&[
        "init",
        "models/resnet18.cnn",
        "--set",
        "num_classes=10",
        "-o",
        &weights,
    ]);
    assert_eq!(r.code, 0, "{r}");
    let pixels: Vec<f32> = (0..3 * 224 * 224)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    write_npy(&s.path("x.npy"), &[3, 224, 224], &pixels);
    let r = cnnc(&[
        "run",
        "models/resnet18.cnn",
        "--weights",
        &weights,
        "--input",
        &s.arg("x.npy"),
    ]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("`--set num_classes=10`"), "{r}");
    assert!(r.stderr.contains("`fc.weight` is [10, 512]"), "{r}");
    insta::assert_snapshot!("num_classes_hint", s.redact(&r.stderr));
}

#[test]
fn init_is_deterministic_and_writes_loadable_weights() {
    let s = Scratch::new("init");
    let model = fixture("mnist_cnn", "model.cnn");
    let init = |name: &str, extra: &[&str]| {
        let mut args = vec!["init", model.as_str(), "-o"];
        let path = s.arg(name);
        args.push(&path);
        args.extend_from_slice(extra);
        let r = cnnc(&args);
        assert_eq!(r.code, 0, "{name}: {r}");
        assert!(r.stdout.contains("123,222 params"), "{r}");
        std::fs::read(s.path(name)).unwrap()
    };
    let a = init("a.safetensors", &["--seed", "7"]);
    let b = init("b.safetensors", &["--seed", "7"]);
    let c = init("c.safetensors", &["--seed", "8"]);
    let k = init("k.safetensors", &["--seed", "7", "--scheme", "kaiming"]);
    let default = init("d.safetensors", &[]);
    assert_eq!(a, b, "same seed, same bytes");
    assert_ne!(a, c, "another seed");
    assert_ne!(a, k, "another scheme");
    assert_ne!(a, default);
    assert_eq!(default, init("e.safetensors", &["--seed", "0"]));
    for weights in ["a.safetensors", "k.safetensors"] {
        let r = cnnc(&[
            "run",
            &model,
            "--weights",
            &s.arg(weights),
            "--input",
            &fixture("mnist_cnn", "input.npy"),
        ]);
        assert_eq!(r.code, 0, "{weights}: {r}");
        assert_eq!(table_rows(&r.stdout).len(), 2, "{r}");
    }

    // Into a directory that does not exist: nothing is created.
    let missing = s.path("missing");
    let r = cnnc(&[
        "init",
        &model,
        "-o",
        missing.join("w.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("does not exist"), "{r}");
    assert!(!missing.exists());

    let r = cnnc(&[
        "init",
        &model,
        "-o",
        &s.arg("x.safetensors"),
        "--scheme",
        "xavier",
    ]);
    assert_eq!(r.code, 2, "{r}");
    assert!(!s.path("x.safetensors").exists());
}

#[test]
fn output_into_a_missing_directory_fails_before_any_work() {
    let s = Scratch::new("missing_out");
    let missing = s.path("missing");
    let out = missing.join("logits.npy");
    // Even with an input that would fail later, the output is checked first.
    std::fs::write(s.path("notes.txt"), "not an input\n").unwrap();
    for input in [fixture("mnist_cnn", "input.npy"), s.arg("notes.txt")] {
        let r = cnnc(&[
            "run",
            &fixture("mnist_cnn", "model.cnn"),
            "--weights",
            &fixture("mnist_cnn", "weights.safetensors"),
            "--input",
            &input,
            "--output",
            out.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 1, "{input}: {r}");
        assert!(r.stderr.contains("does not exist"), "{input}: {r}");
        assert!(r.stdout.is_empty(), "{input}: evaluated anyway: {r}");
        assert!(!missing.exists());
    }
    // A directory as the output.
    let r = cnnc(&[
        "run",
        &fixture("mnist_cnn", "model.cnn"),
        "--weights",
        &fixture("mnist_cnn", "weights.safetensors"),
        "--input",
        &fixture("mnist_cnn", "input.npy"),
        "--output",
        s.dir.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("is a directory"), "{r}");
    assert!(r.stdout.is_empty(), "{r}");
}

#[test]
fn bad_command_lines_exit_2() {
    let s = Scratch::new("usage");
    let out = s.arg("logits.npy");
    let model = fixture("mnist_cnn", "model.cnn");
    let weights = fixture("mnist_cnn", "weights.safetensors");
    let input = fixture("mnist_cnn", "input.npy");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("missing --weights", vec!["run", &model, "--input", &input]),
        (
            "missing --input",
            vec!["run", &model, "--weights", &weights],
        ),
        (
            "--index abc",
            vec![
                "run",
                &model,
                "--weights",
                &weights,
                "--input",
                &input,
                "--index",
                "abc",
            ],
        ),
        (
            "--index 5..5",
            vec![
                "run",
                &model,
                "--weights",
                &weights,
                "--input",
                &input,
                "--index",
                "5..5",
            ],
        ),
        (
            "--batch 0",
            vec![
                "run",
                &model,
                "--weights",
                &weights,
                "--input",
                &input,
                "--batch",
                "0",
            ],
        ),
        (
            "--mean without --std",
            vec![
                "run",
                &model,
                "--weights",
                &weights,
                "--input",
                &input,
                "--mean",
                "0.5",
            ],
        ),
        (
            "--set of an unknown parameter",
            vec![
                "run",
                &model,
                "--weights",
                &weights,
                "--input",
                &input,
                "--set",
                "depth=3",
            ],
        ),
    ];
    for (what, mut args) in cases {
        args.extend(["--output", out.as_str()]);
        let r = cnnc(&args);
        assert_eq!(r.code, 2, "{what}: {r}");
        assert!(r.stderr.contains("error"), "{what}: {r}");
        assert!(r.stdout.is_empty(), "{what}: {r}");
        assert!(!Path::new(&out).exists(), "{what}: wrote {out}");
    }
}

/// The long flags of a `--help` text: the option lines' own flags, not
/// flags named in descriptions.
fn long_flags(help: &str) -> std::collections::BTreeSet<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-') && !l.starts_with("- "))
        .filter_map(|l| l.split("  ").next())
        .flat_map(|spec| spec.split([' ', ',']))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

#[test]
fn cnnc_run_and_a_built_binary_take_the_same_flags() {
    use clap::{CommandFactory, Parser};
    let r = cnnc(&["run", "--help"]);
    assert_eq!(r.code, 0, "{r}");
    let mut run = long_flags(&r.stdout);
    for own in ["--set", "--model", "--include-dir"] {
        assert!(run.remove(own), "{own} missing from `cnnc run --help`");
    }
    let mut binary = long_flags(&cnnc_runtime::app::Args::command().render_help().to_string());
    for own in ["--device", "--bench", "--profile"] {
        assert!(binary.remove(own), "{own} missing from the binary's --help");
    }
    assert_eq!(run, binary, "`cnnc run` and a built binary differ");
    for flag in [
        "--mean",
        "--std",
        "--strict-input",
        "--strict-weights",
        "--index",
    ] {
        assert!(run.contains(flag), "{flag}");
    }
    // The binary's --mean/--std reach the image options as `cnnc run`'s do.
    let args = cnnc_runtime::app::Args::try_parse_from([
        "model",
        "--weights",
        "w.safetensors",
        "--bench",
        "1",
        "--mean",
        "0.5",
        "--std",
        "0.25",
    ])
    .unwrap();
    assert_eq!(
        args.run.input_options().image.normalize,
        Some((vec![0.5], vec![0.25]))
    );
    // Values are checked by the command line in both: a usage error.
    let bad = cnnc_runtime::app::Args::try_parse_from([
        "model",
        "--weights",
        "w.safetensors",
        "--bench",
        "1",
        "--index",
        "abc",
    ]);
    assert!(bad.is_err());
}

#[test]
fn converted_images_are_noted_and_strict_input_refuses_them() {
    let s = Scratch::new("conversions");
    // The case: a 320×240 RGB photo given to a 28×28 greyscale model.
    let photo = image::RgbImage::from_fn(320, 240, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    });
    photo.save(s.path("photo.png")).unwrap();
    let digit = image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 9 + y) % 256) as u8]));
    digit.save(s.path("digit.png")).unwrap();
    let run = |input: &str, extra: &[&str]| {
        let mut args = vec![
            "run".to_string(),
            fixture("mnist_cnn", "model.cnn"),
            "--weights".to_string(),
            fixture("mnist_cnn", "weights.safetensors"),
            "--input".to_string(),
            s.arg(input),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        cnnc(&args)
    };
    let r = run("photo.png", &[]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(table_rows(&r.stdout).len(), 1, "{r}");
    insta::assert_snapshot!("image_conversion_note", s.redact(&r.stderr));

    let r = run("photo.png", &["--strict-input"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.is_empty(), "{r}");
    insta::assert_snapshot!("image_strict_input", s.redact(&r.stderr));

    // An image that already fits is used as it is, without a note, either way.
    for extra in [&[][..], &["--strict-input"][..]] {
        let r = run("digit.png", extra);
        assert_eq!(r.code, 0, "{r}");
        assert!(r.stderr.is_empty(), "{r}");
    }
}

#[test]
fn every_flag_of_every_command_is_described() {
    let top = cnnc(&["--help"]);
    assert_eq!(top.code, 0, "{top}");
    assert!(top.stdout.contains("driver"), "the emit stages: {top}");
    for sub in [
        "check", "summary", "emit", "graph", "build", "run", "train", "init",
    ] {
        let r = cnnc(&[sub, "--help"]);
        assert_eq!(r.code, 0, "{sub}: {r}");
        let lines: Vec<&str> = r.stdout.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let text = line.trim_start();
            // Option lines, not the `- value: meaning` lines of possible values.
            if !text.starts_with('-') || text.starts_with("- ") {
                continue;
            }
            // `--flag <VALUE>  what it does`, or the description on the next,
            // further indented line when the flag is long.
            let same_line = text.split("  ").filter(|p| !p.trim().is_empty()).count() > 1;
            let next_line = lines
                .get(i + 1)
                .is_some_and(|n| !n.trim().is_empty() && !n.trim_start().starts_with('-'));
            assert!(
                same_line || next_line,
                "`cnnc {sub}`: `{text}` has no description"
            );
        }
        if sub != "train" {
            assert!(r.stdout.contains("-I, --include-dir <DIR>"), "{sub}: {r}");
        }
    }
    let train = cnnc(&["train", "--help"]);
    let lines: Vec<&str> = train.stdout.lines().collect();
    for flag in ["--epochs", "--batch", "--lr", "--optimizer", "--seed"] {
        let i = lines
            .iter()
            .position(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing: {train}"));
        // On the flag's line, or the next when clap wraps a long description.
        let text = lines[i..(i + 3).min(lines.len())].join(" ");
        assert!(text.contains("[default: "), "`{text}`");
    }
}

#[test]
fn precision_defaults_to_tf32_is_carried_by_the_plan_and_rejects_what_is_not_built() {
    // The plan a build embeds names the precision: TF32 by default, as
    // PyTorch's convolutions; `--precision fp32` is the strict path.
    let default = cnnc(&["emit", "models/resnet50.cnn", "--stage", "plan"]);
    assert_eq!(default.code, 0, "{default}");
    assert!(
        default.stdout.contains("\"precision\": \"tf32\""),
        "{default}"
    );
    let strict = cnnc(&[
        "emit",
        "models/resnet50.cnn",
        "--stage",
        "plan",
        "--precision",
        "fp32",
    ]);
    assert!(
        strict.stdout.contains("\"precision\": \"fp32\""),
        "{strict}"
    );
    // The kernel listing shows where tensor cores are used, and only then.
    let tc = cnnc(&[
        "emit",
        "models/resnet50.cnn",
        "--stage",
        "kernels",
        "--precision",
        "tf32x3",
    ]);
    assert!(tc.stdout.contains("3xTF32"), "{tc}");
    let fp32 = cnnc(&[
        "emit",
        "models/resnet50.cnn",
        "--stage",
        "kernels",
        "--precision",
        "fp32",
    ]);
    assert!(!fp32.stdout.contains("tensor core"), "{fp32}");
    let out = cnnc(&["build", "models/mnist_cnn.cnn", "--precision", "f32"]);
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr
            .contains("expected one of fp32, tf32, tf32x3, bf16, fp16"),
        "{out}"
    );
    let help = cnnc(&["build", "--help"]);
    assert!(help.stdout.contains("--precision"), "{help}");
    assert!(help.stdout.contains("tf32x3"), "{help}");
    assert!(help.stdout.contains("bf16 or fp16"), "{help}");
    // bf16 and fp16 say so in the kernel listing.
    for (precision, says) in [("bf16", "tensor cores BF16"), ("fp16", "tensor cores FP16")] {
        let out = cnnc(&[
            "emit",
            "models/resnet50.cnn",
            "--stage",
            "kernels",
            "--precision",
            precision,
        ]);
        assert!(
            out.stdout.contains(says) && out.stdout.contains("mma.m16n8k16"),
            "{out}"
        );
    }
    // `cnnc summary --precision` describes that build: its arithmetic, and
    // for bf16 the GPU's arena of 16-bit activations, half the f32 one.
    let f32_arena = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("activations, planned arena: "))
            .and_then(|l| l.split(" (").next())
            .map(str::to_string)
    };
    let tf32 = cnnc(&["summary", "models/resnet18.cnn", "--batch", "2"]);
    let bf16 = cnnc(&[
        "summary",
        "models/resnet18.cnn",
        "--batch",
        "2",
        "--precision",
        "bf16",
    ]);
    let one = cnnc(&["summary", "models/resnet18.cnn", "--batch", "1"]);
    assert_eq!(f32_arena(&tf32.stdout), f32_arena(&bf16.stdout), "{bf16}");
    assert!(!tf32.stdout.contains("on the GPU in"), "{tf32}");
    let half = f32_arena(&one.stdout).unwrap();
    assert!(
        bf16.stdout.contains(&format!(
            "  on the GPU in bf16: {half} (16-bit activations; the CPU path keeps f32)"
        )),
        "{bf16}\n{one}"
    );
    assert!(bf16.stdout.contains("GPU arithmetic:     bf16:"), "{bf16}");
}

#[test]
fn a_reader_that_stops_early_ends_the_output_quietly() {
    // `cnnc emit … | head -1`: the closed pipe is not a panic.
    for args in [
        "emit models/resnet50.cnn --stage cuda",
        "summary models/resnet50.cnn",
    ] {
        let mut child = crate::common::cnnc()
            .args(args.split(' '))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 16];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{args}: {:?} {stderr}",
            output.status
        );
        assert!(!stderr.contains("panicked"), "{args}: {stderr}");
    }
}
