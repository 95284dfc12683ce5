//! The `cnnc` binary on hostile input: it never panics, answers quickly, and
//! exits 0 (fine), 1 (the model has errors) or 2 (bad command line).

use std::path::{Path, PathBuf};
use std::process::Output;

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-robustness-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch directory");
    dir
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path
}

use crate::common::run_cnnc as cnnc;

/// Runs `cnnc` and checks the exit code and that stderr has a message but no panic.
fn expect(args: &[&str], code: i32) -> Output {
    let out = cnnc(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "`cnnc {}` panicked:\n{stderr}",
        args.join(" ")
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "`cnnc {}`\nstdout:\n{}\nstderr:\n{stderr}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    if code != 0 {
        assert!(
            !stderr.trim().is_empty(),
            "`cnnc {}` failed without a message",
            args.join(" ")
        );
    }
    out
}

/// Writes `contents` to a file and runs `cnnc check` on it.
fn check(test: &str, contents: impl AsRef<[u8]>, code: i32) -> String {
    let dir = scratch(test);
    let path = write(&dir, "model.cnn", contents);
    let out = expect(&["check", path.to_str().unwrap()], code);
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `cnnc check` then `cnnc summary` (table and JSON); either may find errors, neither may panic.
fn check_and_summarize(test: &str, contents: &str) -> i32 {
    let dir = scratch(test);
    let path = write(&dir, "model.cnn", contents);
    let path = path.to_str().unwrap();
    let first = cnnc(&["check", path]);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        !stderr.contains("panicked"),
        "`cnnc check` panicked:\n{stderr}"
    );
    let code = first.status.code().expect("exit code");
    assert!(code == 0 || code == 1, "check exits {code}:\n{stderr}");
    assert!(code == 0 || !stderr.trim().is_empty(), "no message");
    for args in [
        vec!["summary", path],
        vec!["summary", "--json", path],
        vec!["summary", "--batch", "1000000", path],
    ] {
        expect(&args, code);
    }
    let _ = std::fs::remove_dir_all(&dir);
    code
}

const VALID: &str = "model tiny {\n  input [3, 32, 32]\n  conv1 = conv(8, k=3, p=1)\n  relu\n  maxpool(2)\n  flatten\n  fc = linear(10)\n}\n";

fn model(body: &str) -> String {
    format!("model m {{\n  input [3, 32, 32]\n{body}\n}}\n")
}

// -- files that are not models ----------------------------------------------

#[test]
fn empty_file() {
    check("empty", "", 1);
}

#[test]
fn only_whitespace_and_comments() {
    check("comments", "# a comment\n\n   # another one\n", 1);
    check("whitespace", " \n\t\r\n", 1);
}

#[test]
fn invalid_utf8() {
    check("utf8", b"model m {\n  input [3, \xff\xfe 32, 32]\n}\n", 1);
    check("utf8-only", [0xc3u8, 0x28, 0xa0, 0xa1, 0xe2, 0x28], 1);
    check("nul", b"\0\0\0model\0", 1);
}

#[test]
fn deeply_nested_brackets() {
    for (open, close) in [("(", ")"), ("{", "}"), ("[", "]")] {
        let text = open.repeat(100_000);
        check("nested-open", &text, 1);
        let balanced = format!("{}{}", open.repeat(100_000), close.repeat(100_000));
        check("nested-balanced", &balanced, 1);
        // Inside an expression and inside a body.
        let expr = model(&format!(
            "  conv1 = conv({}8{}, k=3)",
            open.repeat(100_000),
            close.repeat(100_000)
        ));
        check("nested-expr", &expr, 1);
    }
    let seqs = model(&format!(
        "{}relu{}",
        "seq { ".repeat(50_000),
        " }".repeat(50_000)
    ));
    check("nested-seq", &seqs, 1);
    let negations = model(&format!("  conv1 = conv({}8, k=3)", "-".repeat(100_000)));
    check("negations", &negations, 1);
    let nots = model(&format!("  relu when {}true", "not ".repeat(100_000)));
    check("nots", &nots, 1);
}

#[test]
fn long_expressions_and_many_layers() {
    // Each operator nests the expression tree one level deeper.
    let sum = model(&format!("  conv1 = conv(1{}, k=3)", " + 1".repeat(100_000)));
    check("long-sum", &sum, 1);
    let ok = model(&format!("  conv1 = conv(1{}, k=3)", " + 1".repeat(200)));
    check("sum-200", &ok, 0);
    let product = model(&format!(
        "  conv1 = conv(2{}, k=3)",
        " * 1 - 0".repeat(50_000)
    ));
    check("long-product", &product, 1);
    let layers = model(&"  relu\n".repeat(10_000));
    assert_eq!(check_and_summarize("many-layers", &layers), 0);
}

#[test]
fn megabyte_identifier() {
    // Names become state_dict keys, kernel names and table columns; a 1 MB
    // name once made `cnnc summary` panic (a format width over 65535).
    let long = model(&format!("  {} = conv(8, k=3)", "a".repeat(1_000_000)));
    let stderr = check("mb-name", &long, 1);
    assert!(
        stderr.contains("error: name is 1000000 characters long"),
        "{}",
        &stderr[..300]
    );
    assert!(stderr.contains("names may have at most 255 characters"));
    assert_eq!(check_and_summarize("mb-name-summary", &long), 1);
    let unknown = model(&format!("  {}", "b".repeat(1_000_000)));
    check("mb-unknown", &unknown, 1);
    // 255 characters is fine, in comments any length is.
    let ok = model(&format!(
        "  {} = conv(8, k=3)  # {}",
        "c".repeat(255),
        "d".repeat(1_000_000)
    ));
    assert_eq!(check_and_summarize("255-name", &ok), 0);
}

#[test]
fn a_million_layers() {
    // 7 MB: refused by its size before parsing, in bounded time.
    let million = model(&"  relu\n".repeat(1_000_000));
    let started = std::time::Instant::now();
    let stderr = check("million", &million, 1);
    assert!(
        stderr.contains("error: the file is 7000033 bytes long"),
        "{stderr}"
    );
    assert!(started.elapsed().as_secs() < 30);
    // A million layers by nested repetition is refused by the layer limit.
    let repeated = model("  seq { seq { relu } * 1000 } * 1000");
    let stderr = check("million-repeat", &repeated, 1);
    assert!(
        stderr.contains("expands to more than 200000 layers"),
        "{stderr}"
    );
}

// -- numbers ------------------------------------------------------------------

#[test]
fn thirty_digit_integer() {
    let stderr = check(
        "30-digits",
        model("  conv1 = conv(123456789012345678901234567890, k=3)"),
        1,
    );
    assert!(stderr.contains("too large"), "{stderr}");
    check(
        "30-digits-input",
        "model m {\n  input [3, 123456789012345678901234567890, 4]\n  relu\n}\n",
        1,
    );
    check(
        "huge-float",
        model(&format!("  dropout({}.0)", "9".repeat(400))),
        1,
    );
}

#[test]
fn stride_zero() {
    check("stride-zero-conv", model("  conv1 = conv(8, k=3, s=0)"), 1);
    check("stride-zero-pool", model("  maxpool(2, s=0)"), 1);
    check("stride-zero-pair", model("  avgpool(2, s=(1, 0))"), 1);
    check("stride-negative", model("  conv1 = conv(8, k=3, s=-1)"), 1);
    check("kernel-zero", model("  conv1 = conv(8, k=0)"), 1);
    check("dilation-zero", model("  conv1 = conv(8, k=3, d=0)"), 1);
    check("groups-zero", model("  conv1 = conv(8, k=3, g=0)"), 1);
}

#[test]
fn kernel_larger_than_input() {
    let stderr = check(
        "kernel-too-large",
        "model m {\n  input [3, 4, 4]\n  conv1 = conv(8, k=7)\n}\n",
        1,
    );
    assert!(
        stderr.contains("−"),
        "the arithmetic uses a real minus sign:\n{stderr}"
    );
    assert!(stderr.contains("4 + 2·0 − 1·(7 − 1) − 1"), "{stderr}");
    check(
        "pool-too-large",
        "model m {\n  input [3, 4, 4]\n  maxpool(9)\n}\n",
        1,
    );
}

#[test]
fn division_by_zero_and_overflow_in_expressions() {
    check("div-zero", model("  conv1 = conv(8 / 0, k=3)"), 1);
    check("rem-zero", model("  conv1 = conv(8 % 0, k=3)"), 1);
    check(
        "add-overflow",
        model("  conv1 = conv(9223372036854775807 + 1, k=3)"),
        1,
    );
    check(
        "mul-overflow",
        model("  conv1 = conv(4294967296 * 4294967296, k=3)"),
        1,
    );
    check(
        "neg-overflow",
        model("  conv1 = conv(-(-9223372036854775807 - 1), k=3)"),
        1,
    );
    check(
        "div-overflow",
        model("  conv1 = conv((-9223372036854775807 - 1) / -1, k=3)"),
        1,
    );
}

// -- huge but possibly valid models --------------------------------------------

#[test]
fn huge_channel_counts() {
    // One layer whose weights and bias together overflow the parameter count.
    let code = check_and_summarize(
        "conv-max",
        "model m {\n  input [1, 1, 1]\n  conv1 = conv(9223372036854775807, k=1)\n}\n",
    );
    assert_eq!(code, 1);
    // 3e9 × 3e9 weights fit in an i64 (9e18); three such layers do not.
    check_and_summarize(
        "linear-3e9",
        "model m {\n  input [3000000000]\n  fc1 = linear(3000000000)\n}\n",
    );
    let code = check_and_summarize(
        "linear-3e9-x3",
        "model m {\n  input [1]\n  fc1 = linear(3000000000)\n  fc2 = linear(3000000000)\n  fc3 = linear(3000000000)\n}\n",
    );
    assert_eq!(code, 1);
    check_and_summarize(
        "conv-3e9",
        "model m {\n  input [3000000000, 1, 1]\n  conv1 = conv(3000000000, k=1)\n}\n",
    );
    check_and_summarize(
        "batchnorm-huge",
        "model m {\n  input [9223372036854775807]\n  bn = batchnorm\n}\n",
    );
    check_and_summarize(
        "vgg-huge",
        "model m {\n  input [2, 8, 8]\n  features = vgg [9223372036854775807, M, 9223372036854775807]\n}\n",
    );
    check_and_summarize(
        "grouped-huge",
        "model m {\n  input [4611686018427387904, 1, 1]\n  conv1 = conv(4611686018427387904, k=1, g=4611686018427387904)\n}\n",
    );
}

#[test]
fn huge_spatial_sizes() {
    // Element counts, MACs and activation memory that overflow.
    for (test, text) in [
        ("relu", "model m {\n  input [3, 3037000499, 3037000499]\n  relu\n}\n"),
        ("conv", "model m {\n  input [1, 3037000499, 3037000499]\n  conv1 = conv(2, k=1)\n}\n"),
        ("macs", "model m {\n  input [1, 100000000, 100000000]\n  conv1 = conv(1000, k=1)\n}\n"),
        ("flatten", "model m {\n  input [3000000000, 3000000000, 3000000000]\n  flatten\n}\n"),
        ("flatten-linear", "model m {\n  input [1, 3037000499, 3037000499]\n  flatten\n  fc = linear(2)\n}\n"),
        ("adaptive", "model m {\n  input [1, 8, 8]\n  adaptive_avgpool(9223372036854775807)\n  flatten\n}\n"),
        ("concat", "model m {\n  input [4611686018427387904, 1, 1]\n  c = concat { relu relu relu }\n}\n"),
        ("residual", "model m {\n  input [1, 9223372036854775807, 1]\n  residual { relu }\n}\n"),
        ("circular", "model m {\n  input [3, 9223372036854775807, 1]\n  conv1 = conv(2, k=1, mode=circular, p=1)\n}\n"),
        ("reflect", "model m {\n  input [3, 9223372036854775807, 9223372036854775807]\n  conv1 = conv(2, k=3, mode=reflect, p=1)\n}\n"),
        ("same", "model m {\n  input [1, 9223372036854775807, 9223372036854775807]\n  conv1 = conv(1, k=9223372036854775807, d=9223372036854775807, padding=same)\n}\n"),
        ("ceil", "model m {\n  input [1, 9223372036854775807, 9223372036854775807]\n  maxpool(9223372036854775807, s=9223372036854775807, ceil=true)\n}\n"),
        ("pool-dilation", "model m {\n  input [1, 8, 8]\n  maxpool(4000000000, d=4000000000, p=1)\n}\n"),
        ("pool-padding", "model m {\n  input [1, 8, 8]\n  maxpool(3, p=9223372036854775807)\n}\n"),
        ("conv-padding", "model m {\n  input [1, 8, 8]\n  conv1 = conv(1, k=3, p=9223372036854775807)\n}\n"),
        ("conv-dilation", "model m {\n  input [1, 8, 8]\n  conv1 = conv(1, k=9223372036854775807, d=9223372036854775807)\n}\n"),
    ] {
        check_and_summarize(test, text);
    }
}

#[test]
fn huge_but_valid_summaries() {
    // Sizes that fit, summarised with the largest batch.
    let code = check_and_summarize(
        "big-valid",
        "model m {\n  input [1, 100000, 100000]\n  conv1 = conv(16, k=3, p=1)\n  relu\n  adaptive_avgpool(1)\n  flatten\n  fc = linear(1000000)\n}\n",
    );
    assert_eq!(code, 0);
    // 2e18 weights: 8e18 bytes of parameters, just under the 64-bit limit.
    let code = check_and_summarize(
        "big-linear",
        "model m {\n  input [2000000000]\n  fc1 = linear(1000000000)\n}\n",
    );
    assert_eq!(code, 0);
}

// -- expansion ------------------------------------------------------------------

#[test]
fn huge_repetition() {
    check("repeat-1e9", model("  relu * 1000000000"), 1);
    check("repeat-max", model("  relu * 9223372036854775807"), 1);
    check("repeat-negative", model("  relu * -1"), 1);
    // Allowed counts that multiply to billions of layers.
    check(
        "repeat-nested",
        model("  seq { seq { seq { relu * 10000 } * 10000 } * 10000 }"),
        1,
    );
    check(
        "repeat-named",
        model("  layers = seq { conv(3, k=1) * 10000 } * 10000"),
        1,
    );
}

#[test]
fn recursive_and_deep_blocks() {
    check(
        "self-recursive",
        "block a() {\n  a\n}\nmodel m {\n  input [3, 8, 8]\n  a\n}\n",
        1,
    );
    check(
        "mutually-recursive",
        "block a() {\n  b\n}\nblock b() {\n  a\n}\nmodel m {\n  input [3, 8, 8]\n  a\n}\n",
        1,
    );
    // A chain of 1000 blocks, each calling the next.
    let mut chain = String::new();
    for i in 0..1000 {
        chain += &format!("block b{i}() {{\n  b{}\n}}\n", i + 1);
    }
    chain += "block b1000() {\n  relu\n}\nmodel m {\n  input [3, 8, 8]\n  b0\n}\n";
    check("chain", &chain, 1);
    // Each block uses the one below twice: 2^40 layers if expanded.
    let mut doubling = String::from("block d0() {\n  relu\n}\n");
    for i in 1..=40 {
        doubling += &format!("block d{i}() {{\n  d{} d{}\n}}\n", i - 1, i - 1);
    }
    doubling += "model m {\n  input [3, 8, 8]\n  d40\n}\n";
    check("doubling", &doubling, 1);
}

#[test]
fn includes() {
    let dir = scratch("includes");
    let own = write(
        &dir,
        "self.cnn",
        "include \"self.cnn\"\nmodel m {\n  input [3, 8, 8]\n  relu\n}\n",
    );
    expect(&["check", own.to_str().unwrap()], 0);
    let a = write(
        &dir,
        "a.cnn",
        "include \"b.cnn\"\nmodel m {\n  input [3, 8, 8]\n  relu\n}\n",
    );
    write(&dir, "b.cnn", "include \"a.cnn\"\nblock x() {\n  relu\n}\n");
    expect(&["check", a.to_str().unwrap()], 0);
    let missing = write(
        &dir,
        "missing.cnn",
        "include \"nope.cnn\"\nmodel m {\n  input [3, 8, 8]\n  relu\n}\n",
    );
    expect(&["check", missing.to_str().unwrap()], 1);
    let directory = write(
        &dir,
        "dir.cnn",
        "include \".\"\nmodel m {\n  input [3, 8, 8]\n  relu\n}\n",
    );
    expect(&["check", directory.to_str().unwrap()], 1);
    write(&dir, "bad.cnn", b"block \xff() {}\n");
    let bad = write(
        &dir,
        "bad-utf8.cnn",
        "include \"bad.cnn\"\nmodel m {\n  input [3, 8, 8]\n  relu\n}\n",
    );
    expect(&["check", bad.to_str().unwrap()], 1);
    if Path::new("/dev/zero").exists() {
        // A device reports length 0 but never ends: read no more than the limit.
        let zero = write(
            &dir,
            "zero.cnn",
            "include \"/dev/zero\"\nmodel m {\n  input [3, 8, 8]\n  relu\n}\n",
        );
        expect(&["check", zero.to_str().unwrap()], 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn includes_are_read_only_inside_the_model_folder_and_include_paths() {
    let dir = scratch("include_roots");
    let model = "model m {\n  input [3, 8, 8]\n  b\n}\n";
    let secret = write(&dir, "secret.cnn", "block b() {\n  relu\n}\n# my secret\n");
    let zoo = dir.join("zoo");
    std::fs::create_dir_all(zoo.join("blocks")).unwrap();
    write(&zoo, "blocks/b.cnn", "block b() {\n  relu\n}\n");
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    write(&lib, "shared.cnn", "block b() {\n  relu\n}\n");
    let stderr = |out: Output| String::from_utf8_lossy(&out.stderr).into_owned();
    // A subfolder of the model's folder is fine.
    let ok = write(&zoo, "ok.cnn", format!("include \"blocks/b.cnn\"\n{model}"));
    expect(&["check", ok.to_str().unwrap()], 0);
    // Outside the model's folder, by `..`, an absolute path or a missing file:
    // refused the same way, without reading it.
    for (name, path) in [
        ("up.cnn", "../secret.cnn".to_string()),
        ("absolute.cnn", secret.to_str().unwrap().to_string()),
        ("passwd.cnn", "/etc/passwd".to_string()),
        ("absent.cnn", "../no-such-file.cnn".to_string()),
    ] {
        let file = write(&zoo, name, format!("include \"{path}\"\n{model}"));
        let text = stderr(expect(&["check", file.to_str().unwrap()], 1));
        assert!(
            text.contains(&format!(
                "cannot include `{path}`: it is outside the model's folder"
            )),
            "{name}: {text}"
        );
        assert!(text.contains("-I DIR"), "{name}: {text}");
        assert!(
            !text.contains("secret") || path.contains("secret"),
            "{text}"
        );
        assert!(!text.contains("root:"), "{name} quoted the file: {text}");
        assert!(!text.contains("no such file"), "{name}: {text}");
        // The include's block is then not reported as unknown (a consequence).
        assert!(!text.contains("unknown layer or block"), "{name}: {text}");
    }
    // A symbolic link inside the folder that points outside is refused too.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&secret, zoo.join("link.cnn")).unwrap();
        let file = write(&zoo, "linked.cnn", format!("include \"link.cnn\"\n{model}"));
        let text = stderr(expect(&["check", file.to_str().unwrap()], 1));
        assert!(text.contains("outside the model's folder"), "{text}");
    }
    // `-I DIR` names another folder to search and read from, on every command.
    let uses = write(&zoo, "uses.cnn", format!("include \"shared.cnn\"\n{model}"));
    let uses = uses.to_str().unwrap();
    let lib = lib.to_str().unwrap();
    let text = stderr(expect(&["check", uses], 1));
    assert!(text.contains("no such file"), "{text}");
    expect(&["check", "-I", lib, uses], 0);
    expect(&["summary", "--include-dir", lib, uses], 0);
    expect(&["emit", uses, "--stage", "ir", "-I", lib], 0);
    expect(&["graph", uses, "-I", lib], 0);
    expect(
        &["check", "-I", dir.join("nope").to_str().unwrap(), uses],
        2,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_syntax_error_in_an_included_block_is_reported_once() {
    let dir = scratch("include_cascade");
    write(
        &dir,
        "blocks.cnn",
        "block good() {\n  relu\n}\nblock broken(c) {\n  conv(c, 3 p=1)\n}\n",
    );
    let file = write(
        &dir,
        "m.cnn",
        "include \"blocks.cnn\"\nmodel m {\n  input [3, 8, 8]\n  broken(4)\n  good\n  broken(4)\n}\nmodel n {\n  input [3, 8, 8]\n  broken(8)\n}\n",
    );
    let out = expect(&["check", file.to_str().unwrap()], 1);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("blocks.cnn:5"), "{text}");
    assert!(!text.contains("unknown layer or block"), "{text}");
    assert!(text.contains("1 error"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

// -- the command line -------------------------------------------------------------

#[test]
fn directory_as_input() {
    let dir = scratch("directory");
    expect(&["check", dir.to_str().unwrap()], 2);
    expect(&["summary", dir.to_str().unwrap()], 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_file() {
    let dir = scratch("missing");
    let path = dir.join("does-not-exist.cnn");
    let out = expect(&["check", path.to_str().unwrap()], 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does-not-exist.cnn"));
    expect(&["summary", path.to_str().unwrap()], 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_settings() {
    let dir = scratch("settings");
    let path = write(
        &dir,
        "p.cnn",
        "model m(classes = 10) {\n  input [3, 8, 8]\n  flatten\n  fc = linear(classes)\n}\n",
    );
    let path = path.to_str().unwrap();
    expect(&["check", path], 0);
    expect(&["check", "--set", "classes=4", path], 0);
    expect(&["check", "--set", "classes", path], 2);
    expect(&["check", "--set", "=4", path], 2);
    expect(&["check", "--set", "a b=4", path], 2);
    expect(&["check", "--set", "nope=4", path], 2);
    expect(&["summary", "--set", "nope=4", path], 2);
    // A known name with a bad value is the model's error.
    expect(&["check", "--set", "classes=0", path], 1);
    expect(
        &[
            "check",
            "--set",
            "classes=123456789012345678901234567890",
            path,
        ],
        1,
    );
    expect(&["check", "--set", "classes=-9223372036854775808", path], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_command_lines() {
    let dir = scratch("cli");
    let path = write(&dir, "ok.cnn", VALID);
    let path = path.to_str().unwrap();
    expect(&["summary", "--batch", "0", path], 2);
    expect(&["summary", "--batch", "-1", path], 2);
    expect(&["summary", "--batch", "99999999999999999999", path], 2);
    expect(&["summary", "--model", "nope", path], 2);
    expect(&["frobnicate", path], 2);
    expect(&["check"], 2);
    expect(&[], 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn valid_model() {
    let dir = scratch("valid");
    let path = write(&dir, "ok.cnn", VALID);
    let path = path.to_str().unwrap();
    let out = expect(&["check", path], 0);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: tiny"));
    expect(&["summary", path], 0);
    expect(&["summary", "--json", path], 0);
    expect(&["summary", "--batch", "1000000", path], 0);
    // Several files: one bad one makes the run fail.
    let bad = write(&dir, "bad.cnn", "");
    expect(&["check", path, bad.to_str().unwrap()], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_misspelt_setting_gets_a_did_you_mean() {
    let dir = scratch("settings_typo");
    let path = write(
        &dir,
        "p.cnn",
        "model m(num_classes = 10, width = 8) {\n  input [3, 8, 8]\n  c = conv(width, k=1)\n  flatten\n  fc = linear(num_classes)\n}\n",
    );
    let path = path.to_str().unwrap();
    for command in ["check", "summary"] {
        let out = expect(&[command, "--set", "num_class=10", path], 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("has a parameter `num_class`")
                && stderr.contains("help: `num_class`: did you mean `num_classes`?"),
            "{command}: {stderr}"
        );
    }
    // Nothing close: the parameters that can be set are listed.
    let out = expect(&["check", "--set", "zzz=1", path], 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("note: the parameters that can be set are `num_classes`, `width`"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
