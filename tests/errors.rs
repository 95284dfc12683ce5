//! The diagnostics suite: every file in `tests/errors/` is a small model with
//! a mistake a user would plausibly make (the first line says which). Each is
//! compiled, must fail, and its rendered diagnostics (plain text, no colour)
//! are snapshotted with insta, so a change in wording, span or help shows up
//! in review.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn error_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("tests/errors")
        .expect("tests/errors exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_error_file_renders_its_diagnostics() {
    let files = error_files();
    assert!(
        files.len() >= 25,
        "expected at least 25 error files, found {}",
        files.len()
    );
    for path in files {
        // The relative path as given, so snapshots do not depend on the checkout.
        let shown = format!(
            "tests/errors/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        let compilation = cnnc::compile_file(Path::new(&shown), &BTreeMap::new())
            .unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert!(
            compilation.has_errors(),
            "{shown} should have errors, but it checks"
        );
        let rendered = compilation.render_diagnostics();
        assert!(
            !rendered.contains('\u{1b}'),
            "{shown}: rendered diagnostics contain colour codes"
        );
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        insta::with_settings!({ description => shown.clone(), omit_expression => true }, {
            insta::assert_snapshot!(name, rendered);
        });
    }
}

#[test]
fn several_errors_are_reported_in_one_run() {
    for (file, at_least) in [
        ("tests/errors/46_several_errors.cnn", 5),
        ("tests/errors/47_several_errors_in_blocks_and_models.cnn", 5),
    ] {
        let compilation = cnnc::compile_file(Path::new(file), &BTreeMap::new()).expect("readable");
        let errors = compilation
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .count();
        assert!(
            errors >= at_least,
            "{file}: expected at least {at_least} errors, found {errors}:\n{}",
            compilation.render_diagnostics()
        );
    }
}

fn cnnc(args: &[&str]) -> (i32, String, String) {
    let output = crate::common::run_cnnc(args);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_binary_reports_errors_with_locations_and_exit_code_1() {
    for (file, location) in [
        (
            "tests/errors/14_conv_kernel_larger_than_input.cnn",
            "tests/errors/14_conv_kernel_larger_than_input.cnn:4:",
        ),
        (
            "tests/errors/21_linear_on_feature_maps.cnn",
            "tests/errors/21_linear_on_feature_maps.cnn:6:3",
        ),
        (
            "tests/errors/02_colon_instead_of_equals.cnn",
            "tests/errors/02_colon_instead_of_equals.cnn:4:",
        ),
    ] {
        let (code, _, stderr) = cnnc(&["check", file]);
        assert_eq!(code, 1, "{file}: exit code\n{stderr}");
        assert!(
            stderr.contains(location),
            "{file}: stderr lacks `{location}`:\n{stderr}"
        );
        assert!(stderr.contains("error"), "{file}: {stderr}");
        assert!(!stderr.contains('\u{1b}'), "{file}: colour in a pipe");
    }
}

#[test]
fn the_binary_reports_every_error_of_a_file() {
    let (code, _, stderr) = cnnc(&["check", "tests/errors/46_several_errors.cnn"]);
    assert_eq!(code, 1, "{stderr}");
    let errors = stderr.lines().filter(|l| l.starts_with("error")).count();
    assert!(errors >= 5, "expected every error reported:\n{stderr}");
}

#[test]
fn a_missing_file_is_a_command_line_error() {
    let (code, stdout, stderr) = cnnc(&["check", "tests/errors/no_such_file.cnn"]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("no_such_file.cnn"), "{stderr}");
}
