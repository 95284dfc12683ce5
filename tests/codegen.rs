//! Code generation, end to end, for every model in `models/` and every fixture:
//!
//! - snapshots of the fusion report, the kernel IR and the CUDA (full text for
//!   the small models; a kernel list with per-kernel digests for the rest; the
//!   device library `cuda::PRELUDE`, the same in every file, once on its own);
//! - determinism: emitting twice, from another working directory, in another
//!   process (another `HashMap` seed), gives the same bytes;
//! - the memory plan is valid and smaller than one buffer per node;
//! - nvcc compiles every model's CUDA for sm_80 and sm_90 with no warnings, and
//!   ptxas reports no spills (skipped without nvcc, unless `CI` is set).
//!
//! Accept changed snapshots with `INSTA_UPDATE=always cargo test --test it codegen::`
//! (or `cargo insta review`), after reading the diff.

use cnnc::back::kernel_ir::{KernelKind, KernelProgram, Precision, Schedule};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

/// Models whose CUDA and kernel IR are snapshotted in full; the rest get
/// per-kernel digests.
const FULL_CUDA: &[&str] = &[
    "mnist_cnn",
    "lenet5",
    "resnet18",
    "kitchen_sink",
    "inception_tiny",
];

/// How CI installs the pinned CUDA compiler (see `.ci/run`).
const NVCC_INSTALL: &str = "export CNNC_NVCC=\"$(bash scripts/cuda-toolkit.sh)\"";

const ARCHS: &[&str] = &["sm_80", "sm_90"];

/// Kernels that no zoo model or fixture generates: a conv with neither bias
/// nor batch norm, batch norm after the input and after a pool (channel
/// affine), a residual add after a pool (elementwise add), an activation after
/// an add, and a concat that must copy (a branch is read twice).
const UNFUSED_OPS: &str = "\
# Every kernel kind that fusion leaves alone, so nvcc sees each wrapper.
model unfused_ops {
  input [3, 10, 12]
  bn0 = batchnorm(eps=0.001)
  conv1 = conv(8, k=3, p=1)
  conv2 = conv(8, k=1, bias=false)
  pool1 = maxpool(3, s=1, p=1)
  bn1 = batchnorm
  res = residual { maxpool(3, s=1, p=1) }
  leaky_relu(0.1)
  cat = concat { identity  conv(4, k=1) }
  cat2 = concat { conv(4, k=1) conv(4, k=3, p=1) }
  softmax
}
";

struct Model {
    /// `zoo_resnet18`, `fixture_kitchen_sink` or `inline_unfused_ops`: unique, used in snapshot names.
    id: String,
    /// The model's own name (`resnet18`).
    name: String,
    /// Relative to the crate root, as the compiler's comments show it; for an
    /// inline model, the name its source is compiled under.
    path: PathBuf,
    /// The source of a model defined in this file.
    inline: Option<&'static str>,
}

/// Every zoo model and every fixture, sorted.
fn models() -> Vec<Model> {
    let mut zoo: Vec<Model> = std::fs::read_dir("models")
        .expect("models/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            Model {
                id: format!("zoo_{name}"),
                name,
                path: PathBuf::from("models").join(p.file_name().unwrap()),
                inline: None,
            }
        })
        .collect();
    let mut fixtures: Vec<Model> = crate::common::fixture_names()
        .into_iter()
        .map(|name| Model {
            id: format!("fixture_{name}"),
            path: PathBuf::from("tests/fixtures")
                .join(&name)
                .join("model.cnn"),
            name,
            inline: None,
        })
        .collect();
    zoo.sort_by(|a, b| a.id.cmp(&b.id));
    fixtures.sort_by(|a, b| a.id.cmp(&b.id));
    assert!(
        zoo.len() >= 22,
        "expected the 22 zoo models, found {}",
        zoo.len()
    );
    assert!(
        fixtures.len() >= 7,
        "expected 7 fixtures, found {}",
        fixtures.len()
    );
    let inline = Model {
        id: "inline_unfused_ops".to_string(),
        name: "unfused_ops".to_string(),
        path: PathBuf::from("unfused_ops.cnn"),
        inline: Some(UNFUSED_OPS),
    };
    zoo.into_iter().chain(fixtures).chain([inline]).collect()
}

/// Every stage's text for one model, from a fresh compilation.
struct Stages {
    fused: String,
    kernels: String,
    cuda: String,
    program: KernelProgram,
    graph: cnnc::ir::Graph,
}

fn stages(model: &Model) -> Stages {
    match model.inline {
        Some(text) => {
            let name = model.path.to_string_lossy();
            stages_of(
                &model.path,
                cnnc::compile_source(&name, text, &BTreeMap::new()),
            )
        }
        None => stages_of_file(&model.path),
    }
}

fn stages_of_file(path: &Path) -> Stages {
    stages_of(
        path,
        cnnc::compile_file(path, &BTreeMap::new()).expect("readable"),
    )
}

fn stages_of(path: &Path, compilation: cnnc::Compilation) -> Stages {
    assert!(
        !compilation.has_errors(),
        "{}:\n{}",
        path.display(),
        compilation.render_diagnostics()
    );
    let graph = compilation.models[0].graph.as_ref().expect("graph");
    let (fused, logs) = cnnc::ir::passes::optimize(graph)
        .unwrap_or_else(|e| panic!("{}: passes: {e}", path.display()));
    let program = cnnc::back::kernel_ir::lower(&fused, &compilation.sources)
        .unwrap_or_else(|e| panic!("{}: lower: {e}", path.display()));
    Stages {
        fused: cnnc::tools::emit::fused(graph, &fused, &logs, &compilation.sources),
        kernels: cnnc::back::kernel_ir::render(&program),
        cuda: cnnc::back::cuda::print(&program)
            .unwrap_or_else(|e| panic!("{}: cuda: {e}", path.display())),
        program,
        graph: fused,
    }
}

/// FNV-1a, 64 bits: a stable digest with no dependency.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A `.cu` file cut at the prelude: (header before it, one chunk per kernel).
fn split_cuda<'a>(cuda: &'a str, program: &'a KernelProgram) -> (&'a str, Vec<(&'a str, &'a str)>) {
    let prelude = cnnc::back::cuda::PRELUDE;
    assert_eq!(
        cuda.matches(prelude).count(),
        1,
        "{}: the prelude appears once",
        program.model
    );
    let at = cuda.find(prelude).unwrap();
    let header = &cuda[..at];
    let body = &cuda[at + prelude.len()..];
    let mut starts = Vec::new();
    let mut from = 0;
    for k in &program.kernels {
        let marker = format!("\n// {}\n", k.name);
        let pos = body[from..]
            .find(&marker)
            .map(|p| p + from)
            .unwrap_or_else(|| panic!("{}: no CUDA for kernel {}", program.model, k.name));
        starts.push(pos);
        from = pos + marker.len();
    }
    assert_eq!(
        starts.first().copied().unwrap_or(body.len()),
        0,
        "{}: text between the prelude and the first kernel",
        program.model
    );
    let chunks = program
        .kernels
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let end = starts.get(i + 1).copied().unwrap_or(body.len());
            (k.name.as_str(), &body[starts[i]..end])
        })
        .collect();
    (header, chunks)
}

/// The CUDA snapshot: full text with the prelude replaced by a pointer to its snapshot.
fn cuda_full(cuda: &str, program: &KernelProgram) -> String {
    let (header, chunks) = split_cuda(cuda, program);
    let mut out = header.to_string();
    out.push_str(
        "// [cnnc::back::cuda::PRELUDE here: see snapshot it__codegen__cuda_prelude.snap]\n",
    );
    for (_, text) in chunks {
        out.push_str(text);
    }
    out
}

/// The CUDA snapshot for big models: header, kernel count, one digest per kernel.
fn cuda_digests(cuda: &str, program: &KernelProgram) -> String {
    let (header, chunks) = split_cuda(cuda, program);
    let mut out = header.to_string();
    out.push_str(
        "// [cnnc::back::cuda::PRELUDE here: see snapshot it__codegen__cuda_prelude.snap]\n\n",
    );
    out.push_str(&format!(
        "{} kernels; whole file fnv1a64 {:016x}\n\n",
        chunks.len(),
        fnv1a64(cuda.as_bytes())
    ));
    let width = chunks.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, text) in chunks {
        out.push_str(&format!(
            "{name:width$}  {:016x}  {:3} lines\n",
            fnv1a64(text.as_bytes()),
            text.trim_matches('\n').lines().count()
        ));
    }
    out
}

/// Runs `check` for every model, then fails once, naming every model that failed.
fn for_every_model(check: impl Fn(&Model)) {
    let mut failed = Vec::new();
    for model in models() {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&model)));
        if result.is_err() {
            failed.push(model.id);
        }
    }
    assert!(failed.is_empty(), "failed for: {}", failed.join(", "));
}

/// The command a snapshot shows the output of.
fn describe(m: &Model, stage: &str) -> String {
    let mut s = format!("cnnc emit {} --stage {stage}", m.path.display());
    if m.inline.is_some() {
        s.push_str(" (the source is UNFUSED_OPS in tests/codegen.rs)");
    }
    s
}

fn snapshot(name: &str, description: &str, text: &str) {
    insta::with_settings!({ omit_expression => true, description => description }, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn fusion_report_snapshots() {
    for_every_model(|m| {
        let s = stages(m);
        snapshot(&format!("{}_fused", m.id), &describe(m, "fused"), &s.fused);
    });
}

#[test]
fn roofline_snapshot() {
    // ResNet-50 as `cnnc build` compiles it by default (tf32): per kernel its
    // work, traffic and bound at batch 1 and 64, so a schedule or cost-model
    // change shows here.
    let c = cnnc::compile_file(Path::new("models/resnet50.cnn"), &BTreeMap::new()).unwrap();
    let graph = c.models[0].graph.as_ref().unwrap();
    let text = cnnc::tools::emit::stage_text(
        graph,
        &c.sources,
        cnnc::tools::emit::Stage::Roofline,
        cnnc::back::kernel_ir::Precision::Tf32,
    )
    .unwrap();
    snapshot(
        "zoo_resnet50_roofline",
        "cnnc emit models/resnet50.cnn --stage roofline",
        &text,
    );
}

/// The kernel IR snapshot for big models: the listing's header, then per
/// kernel its name, what it computes (its first op line), and a digest of
/// its whole block, so a schedule change shows as the kernels it changed.
fn kernel_digests(listing: &str) -> String {
    let mut blocks = listing.split("\n\n");
    let mut out = blocks.next().unwrap_or("").to_string();
    out.push_str("\n(per kernel: name, FNV-1a 64 of its block, lines, first op)\n\n");
    let blocks: Vec<&str> = blocks.filter(|b| !b.trim().is_empty()).collect();
    let name = |b: &str| b.split_whitespace().next().unwrap_or("").to_string();
    let width = blocks.iter().map(|b| name(b).len()).max().unwrap_or(0);
    for b in blocks {
        let mut lines = b.trim_matches('\n').lines();
        let first = lines.next().unwrap_or("");
        let op = lines.next().unwrap_or("").trim();
        out.push_str(&format!(
            "{:width$}  {:016x}  {:3} lines  {op}\n",
            name(first),
            fnv1a64(b.trim_matches('\n').as_bytes()),
            b.trim_matches('\n').lines().count()
        ));
    }
    out
}

#[test]
fn kernel_ir_snapshots() {
    for_every_model(|m| {
        let s = stages(m);
        if FULL_CUDA.contains(&m.name.as_str()) {
            snapshot(
                &format!("{}_kernels", m.id),
                &describe(m, "kernels"),
                &s.kernels,
            );
        } else {
            snapshot(
                &format!("{}_kernels_digests", m.id),
                &format!(
                    "{} (per kernel: its first op line and an FNV-1a 64 digest of its listing)",
                    describe(m, "kernels")
                ),
                &kernel_digests(&s.kernels),
            );
        }
    });
}

#[test]
fn cuda_prelude_snapshot() {
    snapshot(
        "cuda_prelude",
        "cnnc::back::cuda::PRELUDE, the device library at the top of every generated .cu file",
        cnnc::back::cuda::PRELUDE,
    );
}

#[test]
fn cuda_snapshots() {
    for_every_model(|m| {
        let s = stages(m);
        let command = describe(m, "cuda");
        if FULL_CUDA.contains(&m.name.as_str()) {
            snapshot(
                &format!("{}_cuda", m.id),
                &command,
                &cuda_full(&s.cuda, &s.program),
            );
        } else {
            snapshot(
                &format!("{}_cuda_digests", m.id),
                &format!("{command} (kernel list with FNV-1a 64 digests of each kernel's text)"),
                &cuda_digests(&s.cuda, &s.program),
            );
        }
    });
}

#[test]
fn a_16_bit_build_snapshot() {
    // resnet_tiny built with --precision bf16: the activation type defined
    // before the device library, every activation pointer a `cnnc::act*`,
    // the batch-8 variants on gemm_tc16 (its residual adds read 16-bit
    // activations too).
    let path = Path::new("tests/fixtures/resnet_tiny/model.cnn");
    let compilation = cnnc::compile_file(path, &BTreeMap::new()).expect("readable");
    let graph = compilation.models[0].graph.as_ref().expect("graph");
    let (fused, _) = cnnc::ir::passes::optimize(graph).expect("passes");
    let program = cnnc::back::kernel_ir::lower_with(&fused, &compilation.sources, Precision::Bf16)
        .expect("lowering");
    let cuda = cnnc::back::cuda::print(&program).expect("printing");
    assert!(cuda.contains("#define CNNC_ACT16 1"));
    assert!(cuda.contains("cnnc::gemm_tc16<"), "no tensor-core variant");
    assert!(!cuda.contains("const float* __restrict__ x,"));
    // The kernel report says which layers keep only 16-bit weights.
    let report = cnnc::back::kernel_ir::render(&program);
    let sixteen = program
        .kernels
        .iter()
        .filter(|k| k.half_weights().is_some())
        .count();
    assert!(sixteen > 0);
    assert_eq!(
        report
            .matches("weights: only their bf16 copy on the GPU")
            .count(),
        sixteen,
        "{report}"
    );
    snapshot(
        "fixture_resnet_tiny_bf16_cuda",
        "cnnc emit tests/fixtures/resnet_tiny/model.cnn --stage cuda --precision bf16",
        &cuda_full(&cuda, &program),
    );
}

/// What a kernel exercises in the CUDA printer and the prelude.
fn features(k: &cnnc::back::kernel_ir::Kernel) -> Vec<String> {
    use cnnc::back::kernel_ir::KernelKind;
    use cnnc::ir::{Epilogue, Op};
    let mut f = vec![match &k.kind {
        KernelKind::Gemm(g) => format!(
            "gemm {:?} padding{}{}{}{}",
            g.padding_mode,
            if g.global_pool {
                ", global pool prologue"
            } else {
                ""
            },
            if g.input_norm {
                ", layer norm prologue"
            } else {
                ""
            },
            if g.groups > 1 { ", grouped" } else { "" },
            if g.bias { "" } else { ", no bias" }
        ),
        KernelKind::Depthwise(d) => format!(
            "depthwise{}{}",
            if d.tile.ch > 1 {
                ", several channels a block"
            } else {
                ""
            },
            if d.bias { "" } else { ", no bias" }
        ),
        KernelKind::Pool {
            op: Op::MaxPool2d { .. },
        } => "maxpool".into(),
        KernelKind::Pool { .. } => "avgpool".into(),
        KernelKind::AdaptivePool { max, .. } => format!("adaptive pool max={max}"),
        KernelKind::ChannelAffine => "channel affine".into(),
        KernelKind::Lrn { .. } => "lrn".into(),
        KernelKind::Softmax { log } => format!("softmax log={log}"),
        KernelKind::Activation(_) => "activation kernel".into(),
        KernelKind::Add => "add kernel".into(),
        KernelKind::Mul => "gate multiply kernel".into(),
        KernelKind::CopySlice => "copy into slice".into(),
        KernelKind::LayerNorm { .. } => "layer norm".into(),
        KernelKind::LayerNormStats { .. } => "layer norm statistics".into(),
        KernelKind::ChannelShuffle { .. } => "channel shuffle".into(),
    }];
    if k.epilogue
        .iter()
        .any(|e| matches!(e, Epilogue::AddInput(_)))
    {
        f.push("residual epilogue".into());
    }
    if k.output.channels_total != k.output.shape.channels() {
        f.push("writes a channel slice".into());
    }
    f
}

#[test]
fn every_kernel_kind_is_generated_somewhere() {
    // So the nvcc test compiles every wrapper the printer can write.
    let mut seen = std::collections::BTreeSet::new();
    for m in models() {
        for k in &stages(&m).program.kernels {
            seen.extend(features(k));
        }
    }
    let want = [
        "gemm Zeros padding",
        "gemm Reflect padding",
        "gemm Replicate padding",
        "gemm Circular padding",
        "gemm Zeros padding, grouped",
        "gemm Zeros padding, global pool prologue",
        "gemm Zeros padding, no bias",
        "depthwise",
        "depthwise, several channels a block",
        "maxpool",
        "avgpool",
        "adaptive pool max=true",
        "adaptive pool max=false",
        "channel affine",
        "lrn",
        "softmax log=true",
        "softmax log=false",
        "activation kernel",
        "add kernel",
        "copy into slice",
        "layer norm",
        "layer norm statistics",
        "gemm Zeros padding, layer norm prologue",
        "channel shuffle",
        "residual epilogue",
        "writes a channel slice",
    ];
    let missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|w| !seen.contains(*w))
        .collect();
    assert!(
        missing.is_empty(),
        "no model generates: {missing:?}\nseen: {seen:?}"
    );
}

#[test]
fn digests_are_stable() {
    // The published FNV-1a 64 test vectors: the digests in snapshots mean the same everywhere.
    assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
    assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
}

#[test]
fn emitting_twice_gives_identical_text() {
    for_every_model(|m| {
        let a = stages(m);
        let b = stages(m);
        assert_eq!(a.fused, b.fused, "{}: fused report differs", m.id);
        assert_eq!(a.kernels, b.kernels, "{}: kernel IR differs", m.id);
        assert_eq!(a.cuda, b.cuda, "{}: CUDA differs", m.id);
        // Printing the same program twice, too.
        assert_eq!(
            cnnc::back::cuda::print(&a.program).unwrap(),
            a.cuda,
            "{}: print twice",
            m.id
        );
        assert_eq!(cnnc::back::kernel_ir::render(&a.program), a.kernels);
    });
}

/// `cnnc emit FILE --stage STAGE [-o OUT]` run in `cwd`; its standard output (or `OUT`).
fn emit_in(cwd: &Path, file: &Path, stage: &str, out: Option<&Path>) -> Vec<u8> {
    let mut cmd = crate::common::cnnc();
    cmd.current_dir(cwd)
        .arg("emit")
        .arg(file)
        // The library's stages here are strict FP32 (`kernels::lower`).
        .args(["--stage", stage, "--precision", "fp32"]);
    if let Some(out) = out {
        cmd.arg("-o").arg(out);
    }
    let run = cmd.output().expect("run cnnc");
    assert!(
        run.status.success(),
        "cnnc emit {} --stage {stage} in {}: {}\n{}",
        file.display(),
        cwd.display(),
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    match out {
        Some(path) => {
            assert!(run.stdout.is_empty(), "-o also printed to stdout");
            std::fs::read(path).expect("emitted file")
        }
        None => run.stdout,
    }
}

#[test]
fn binary_output_is_independent_of_directory_and_process() {
    // Each process seeds its HashMaps differently; the two working directories
    // differ; the absolute path keeps the file names in the comments equal.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let elsewhere = Path::new(env!("CARGO_TARGET_TMPDIR")).join("codegen_cwd");
    std::fs::create_dir_all(&elsewhere).unwrap();
    for_every_model(|m| {
        let file = match m.inline {
            Some(text) => {
                let file = elsewhere.join(&m.path);
                std::fs::write(&file, text).unwrap();
                file
            }
            None => root.join(&m.path),
        };
        let library = stages_of_file(&file);
        for (stage, expected) in [
            ("fused", &library.fused),
            ("kernels", &library.kernels),
            ("cuda", &library.cuda),
        ] {
            let here = emit_in(root, &file, stage, None);
            let there = emit_in(&elsewhere, &file, stage, None);
            assert!(
                here == there,
                "{}: --stage {stage} differs between working directories",
                m.id
            );
            assert!(
                here == expected.as_bytes(),
                "{}: --stage {stage} from the binary differs from the library",
                m.id
            );
        }
        let out = elsewhere.join(format!("{}.cu", m.id));
        let written = emit_in(&elsewhere, &file, "cuda", Some(&out));
        assert!(
            written == library.cuda.as_bytes(),
            "{}: `-o` wrote other bytes than standard output",
            m.id
        );
    });
}

#[test]
fn memory_plans_are_valid_and_save_memory() {
    let mut table =
        String::from("model                          buffers      arena      naive  arena/naive\n");
    let mut failures = Vec::new();
    for m in models() {
        let s = stages(&m);
        let refs = cnnc::back::kernel_ir::placements(&s.graph);
        let plan = cnnc::back::memory::plan(&s.graph, &refs);
        if let Err(e) = cnnc::back::memory::verify(&plan) {
            failures.push(format!("{}: invalid plan: {e}", m.id));
        }
        if plan.arena > plan.naive {
            failures.push(format!(
                "{}: arena {} floats/image > naive {}",
                m.id, plan.arena, plan.naive
            ));
        }
        // Every tensor a kernel touches lives in a planned buffer, inside it.
        for k in &s.program.kernels {
            for r in k.inputs.iter().chain([&k.output]) {
                match plan.buffers.iter().find(|b| b.owner == r.owner) {
                    None => failures.push(format!(
                        "{}: {}: node {} has no buffer",
                        m.id, k.name, r.owner
                    )),
                    Some(b) => {
                        let end =
                            (r.channel_offset + r.shape.channels()) as u64 * r.pixels() as u64;
                        let total = r.channels_total as u64 * r.pixels() as u64;
                        if end > total || total != b.size {
                            failures.push(format!(
                                "{}: {}: node {} slice ends at {end}, buffer holds {} (placement says {total})",
                                m.id, k.name, r.owner, b.size
                            ));
                        }
                        if !(b.first <= k.node && k.node <= b.last) {
                            failures.push(format!(
                                "{}: {} (node {}) uses buffer of node {} outside its life {}..={}",
                                m.id, k.name, k.node, r.owner, b.first, b.last
                            ));
                        }
                    }
                }
            }
        }
        if m.id == "zoo_resnet50" && plan.arena * 2 >= plan.naive {
            failures.push(format!(
                "resnet50: arena {} floats/image is not under half the naive {} floats/image",
                plan.arena, plan.naive
            ));
        }
        // verify() is not vacuous: everything at offset 0 must be rejected.
        let mut broken = plan.clone();
        broken.buffers.iter_mut().for_each(|b| b.offset = 0);
        if broken.buffers.len() > 1 && cnnc::back::memory::verify(&broken).is_ok() {
            failures.push(format!("{}: verify accepted overlapping buffers", m.id));
        }
        table.push_str(&format!(
            "{:30} {:7} {:10} {:10}  {:.3}\n",
            m.id,
            plan.buffers.len(),
            plan.arena,
            plan.naive,
            plan.arena as f64 / plan.naive as f64
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    snapshot(
        "memory_plans",
        "memory::plan for every model: floats per image in the arena vs one buffer per node",
        &table,
    );
}

// ---------------------------------------------------------------------------
// nvcc and ptxas
// ---------------------------------------------------------------------------

fn is_file(p: &Path) -> bool {
    p.is_file()
}

/// nvcc from `CNNC_NVCC`, else `PATH`, else the `nvidia-cuda-nvcc` pip package.
fn find_nvcc() -> Result<Option<PathBuf>, String> {
    if let Some(p) = std::env::var_os("CNNC_NVCC").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if is_file(&p) {
            Ok(Some(p))
        } else {
            Err(format!("CNNC_NVCC={} is not a file", p.display()))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join("nvcc"))
            .find(|p| is_file(p))
        {
            return Ok(Some(p));
        }
    }
    let py = Command::new("python3")
        .args([
            "-c",
            // `nvidia` is a namespace package spread over several folders;
            // the first one that has nvcc wins.
            "import nvidia, os; print(next((f for f in (os.path.join(p, 'cu13', 'bin', 'nvcc') \
             for p in nvidia.__path__) if os.path.isfile(f)), ''))",
        ])
        .output();
    if let Ok(py) = py {
        let p = PathBuf::from(String::from_utf8_lossy(&py.stdout).trim());
        if py.status.success() && is_file(&p) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The program reduced to the kernels whose compile unit (as `cnnc build`
/// compiles them: `cnnc::back::cuda::compile_units`, named by a digest of their
/// code) is not in `seen`, which gains them, renamed as in their cubins;
/// and one CUDA file holding the device library once and those units' code.
fn only_new_kernels(
    program: KernelProgram,
    seen: &mut std::collections::HashSet<String>,
) -> (KernelProgram, String) {
    let (units, table) = cnnc::back::cuda::compile_units(&program).unwrap();
    let library = cnnc::back::cuda::library(program.precision);
    let mut out = library.clone();
    let mut kept = program.clone();
    kept.kernels.clear();
    for mut k in program.kernels {
        let (_, unit, symbol) = table
            .iter()
            .find(|(name, _, _)| *name == k.name)
            .unwrap_or_else(|| panic!("{}: not in the symbol table", k.name));
        if !seen.insert(symbol.clone()) {
            continue;
        }
        let code = units[*unit]
            .text
            .strip_prefix(library.as_str())
            .expect("a unit starts with the device library");
        out.push_str(code);
        for v in &mut k.variants {
            let (_, _, variant) = table.iter().find(|(name, _, _)| *name == v.name).unwrap();
            v.name = variant.clone();
        }
        k.name = symbol.clone();
        kept.kernels.push(k);
    }
    (kept, out)
}

#[test]
fn identical_kernels_are_compiled_once() {
    // resnet50's repeated bottlenecks: each distinct kernel once, and a
    // second model of the same kernels adds none.
    let m = models()
        .into_iter()
        .find(|m| m.id == "zoo_resnet50")
        .unwrap();
    let program = program_in(&m, Precision::default());
    let mut seen = std::collections::HashSet::new();
    let (first, text) = only_new_kernels(program.clone(), &mut seen);
    assert!(first.kernels.len() < program.kernels.len() * 2 / 3);
    assert!(first.kernels.len() > 10);
    // What is left is one whole file: the device library once, and every
    // kept kernel's launch function under its cubin name, none under the
    // plan's names.
    assert_eq!(text.matches(cnnc::back::cuda::PRELUDE).count(), 1);
    for k in &first.kernels {
        assert!(text.contains(&format!(" {}(", k.name)), "{}", k.name);
        for v in &k.variants {
            assert!(text.contains(&format!(" {}(", v.name)), "{}", v.name);
        }
    }
    for k in &program.kernels {
        assert!(!text.contains(&format!(" {}(", k.name)), "{}", k.name);
    }
    // The units' code is model.cu's code: comments and names aside, each
    // kernel's section is its unit.
    let cuda = cnnc::back::cuda::print(&program).unwrap();
    let (_, chunks) = split_cuda(&cuda, &program);
    let (units, table) = cnnc::back::cuda::compile_units(&program).unwrap();
    for (name, section) in chunks {
        let (_, unit, symbol) = table.iter().find(|(n, _, _)| n == name).unwrap();
        let code: String = section
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| format!("{}\n", l.replace(name, symbol)))
            .collect();
        assert_eq!(
            units[*unit].text,
            format!("{}\n{code}", cnnc::back::cuda::PRELUDE),
            "{name}"
        );
    }
    let (again, _) = only_new_kernels(program, &mut seen);
    assert!(again.kernels.is_empty());
}

/// Any model's kernels (an inline source's too) with the GEMMs in `precision`.
fn any_program_in(model: &Model, precision: Precision) -> KernelProgram {
    let compilation = match model.inline {
        Some(text) => cnnc::compile_source(&model.path.to_string_lossy(), text, &BTreeMap::new()),
        None => cnnc::compile_file(&model.path, &BTreeMap::new()).expect("readable"),
    };
    let graph = compilation.models[0].graph.as_ref().expect("graph");
    let (fused, _) = cnnc::ir::passes::optimize(graph).expect("passes");
    cnnc::back::kernel_ir::lower_with(&fused, &compilation.sources, precision).expect("lowering")
}

/// A model's kernels with the GEMMs in `precision`.
fn program_in(model: &Model, precision: Precision) -> KernelProgram {
    let compilation = cnnc::compile_file(&model.path, &BTreeMap::new()).expect("readable");
    let graph = compilation.models[0].graph.as_ref().expect("graph");
    let (fused, _) = cnnc::ir::passes::optimize(graph).expect("passes");
    cnnc::back::kernel_ir::lower_with(&fused, &compilation.sources, precision).expect("lowering")
}

/// Every kernel (and batch variant) the kernel IR puts on tensor cores has
/// TF32 MMAs (`HMMA.1688.F32.TF32`) in its SASS, and no other kernel has any
/// MMA. Writes each kernel's instruction mix next to the cubin.
fn check_sass(
    tool: &Path,
    cubin: &Path,
    model: &str,
    arch: &str,
    program: &KernelProgram,
) -> Vec<String> {
    let out = match Command::new(tool).arg("-sass").arg(cubin).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            return vec![format!(
                "{model} {arch}: cuobjdump failed: {}",
                String::from_utf8_lossy(&o.stderr)
            )]
        }
        Err(e) => {
            return vec![format!(
                "{model} {arch}: cannot run {}: {e}",
                tool.display()
            )]
        }
    };
    let mix = cnnc::back::resources::sass_mix(&out);
    let mut problems = Vec::new();
    let mut report = String::new();
    for k in &program.kernels {
        let mut functions = vec![(k.name.clone(), None)];
        if let KernelKind::Gemm(g) = &k.kind {
            functions[0].1 = Some(&g.schedule);
            for v in &k.variants {
                functions.push((v.name.clone(), Some(&v.schedule)));
            }
        }
        for (name, schedule) in functions {
            let Some(counts) = mix.get(&name) else {
                problems.push(format!("{model} {arch} {name}: not in the cubin's SASS"));
                continue;
            };
            let hmma: usize = counts
                .iter()
                .filter(|(m, _)| m.starts_with("HMMA"))
                .map(|(_, n)| n)
                .sum();
            // The MMA each precision's tiles must contain (mnemonics as
            // cuobjdump 13 prints them: m16n8k8 TF32, m16n8k16 BF16 and FP16,
            // all with FP32 accumulation).
            let want = match schedule {
                Some(Schedule::Tensor { half: None, .. }) => Some("HMMA.1688.F32.TF32"),
                Some(Schedule::Tensor {
                    half: Some(cnnc::back::kernel_ir::HalfFormat::Bf16),
                    ..
                }) => Some("HMMA.16816.F32.BF16"),
                Some(Schedule::Tensor {
                    half: Some(cnnc::back::kernel_ir::HalfFormat::Fp16),
                    ..
                }) => Some("HMMA.16816.F32"),
                _ => None,
            };
            let tensor = want.is_some();
            if let Some(want) = want {
                let found = counts.get(want).copied().unwrap_or(0);
                let others = hmma - found;
                if found == 0 || others != 0 {
                    problems.push(format!(
                        "{model} {arch} {name}: on tensor cores in the kernel IR, but {found} {want} and {others} other HMMA in its SASS"
                    ));
                }
            }
            if !tensor && hmma != 0 {
                problems.push(format!(
                    "{model} {arch} {name}: on CUDA cores in the kernel IR, but {hmma} HMMA in its SASS"
                ));
            }
            let _ = std::fmt::Write::write_fmt(
                &mut report,
                format_args!("{name}: {}\n", cnnc::back::resources::mix_line(counts)),
            );
        }
    }
    let _ = std::fs::write(cubin.with_extension("sass-mix.txt"), report);
    problems
}

/// Every kernel of `program` compiled, without local memory, and resident
/// on an SM of its architecture (`cnnc::back::resources`: ptxas's registers
/// and shared memory against the occupancy calculator's limits; a kernel
/// that does not fit is refused at launch).
fn check_ptxas(model: &str, arch: &str, log: &str, program: &KernelProgram) -> Vec<String> {
    use cnnc::back::resources::{launches, parse_ptxas, problems, SM80, SM90};
    let functions = parse_ptxas(log);
    let number: u32 = arch.trim_start_matches("sm_").parse().unwrap();
    let mut found = Vec::new();
    for k in &program.kernels {
        match functions.iter().find(|f| f.name == k.name) {
            None => found.push(format!(
                "{model} {arch} {}: ptxas did not compile it",
                k.name
            )),
            Some(f) if f.arch != Some(number) || f.registers.is_none() => found.push(format!(
                "{model} {arch} {}: no entry or no `Used … registers` from ptxas -v: {f:?}",
                k.name
            )),
            Some(_) => {}
        }
    }
    for f in &functions {
        if f.spill_stores != 0 || f.spill_loads != 0 {
            found.push(format!(
                "{model} {arch} {}: {} bytes spill stores, {} bytes spill loads",
                f.name, f.spill_stores, f.spill_loads
            ));
        }
        if f.stack != 0 {
            found.push(format!(
                "{model} {arch} {}: {} bytes stack frame (local memory)",
                f.name, f.stack
            ));
        }
    }
    // The program's kernels are named as in the cubin already.
    let sm = if number == 80 { SM80 } else { SM90 };
    let all = launches(program, &BTreeMap::new());
    found.extend(
        problems(&all, &functions, &sm)
            .into_iter()
            .map(|p| format!("{model} {arch}: {p}")),
    );
    found
}

#[test]
fn nvcc_compiles_every_model_without_spills() {
    let nvcc = match find_nvcc() {
        Ok(Some(p)) => p,
        Ok(None) if std::env::var_os("CI").is_some() => panic!(
            "nvcc not found, and CI is set: CI must compile the generated CUDA.\n\
             Install it with `{NVCC_INSTALL}`\n\
             and set CNNC_NVCC to its nvcc (or put it on PATH); .ci/run does both."
        ),
        Ok(None) => {
            eprintln!(
                "notice: nvcc not found; skipping the CUDA compile check.\n\
                 Install it with `{NVCC_INSTALL}`, or set CNNC_NVCC."
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("codegen_nvcc");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // Jobs are (model, arch), biggest file first so the two workers finish together.
    struct Job {
        id: String,
        arch: &'static str,
        cu: PathBuf,
        size: usize,
        program: KernelProgram,
    }
    // The zoo is compiled as `cnnc build` compiles it by default (TF32:
    // tensor-core tiles where they pay), the fixtures in strict FP32, so
    // both kinds of GEMM tile go through ptxas on every commit.
    let cuobjdump = nvcc.with_file_name("cuobjdump");
    let cuobjdump = is_file(&cuobjdump).then_some(cuobjdump);
    if cuobjdump.is_none() && std::env::var_os("CI").is_some() {
        panic!(
            "cuobjdump not found beside {}, and CI is set: CI must check the SASS of the \
             tensor-core kernels. scripts/cuda-toolkit.sh installs it.",
            nvcc.display()
        );
    }
    let mut jobs = Vec::new();
    // The kernels are compiled as `cnnc build` compiles them: as compile
    // units named by a digest of their code, so a kernel whose code equals
    // one already compiled (the repeated blocks of a ResNet, the layers
    // models share) goes through ptxas once, in the first model that has
    // it, and a model with none new is not compiled again. A model's new
    // units share one nvcc run (one process per unit costs ~0.3 s each).
    let mut seen = std::collections::HashSet::new();
    let (mut kernels, mut distinct) = (0, 0);
    for m in models() {
        let program = if m.id.starts_with("zoo_") {
            program_in(&m, Precision::default())
        } else {
            stages(&m).program
        };
        kernels += program.kernels.len();
        let (program, cuda) = only_new_kernels(program, &mut seen);
        if program.kernels.is_empty() {
            continue;
        }
        distinct += program.kernels.len();
        let cu = dir.join(format!("{}.cu", m.id));
        std::fs::write(&cu, &cuda).unwrap();
        for &arch in ARCHS {
            jobs.push(Job {
                id: m.id.clone(),
                arch,
                cu: cu.clone(),
                size: cuda.len(),
                program: program.clone(),
            });
        }
    }
    // --precision bf16 and fp16, whose kernels store activations in 16 bits
    // (every kernel differs from the TF32 build's): in each, the first
    // kernel of the zoo and fixtures that exercises something no kernel
    // chosen before did (a kernel kind or epilogue of `features`, a gated
    // input, a 16-bit tensor-core variant at a warp tile, with a residual,
    // a gate or a layer norm), through ptxas and the SASS check.
    for precision in [Precision::Bf16, Precision::Fp16] {
        let mut covered = std::collections::BTreeSet::new();
        let mut chosen = Vec::new();
        let mut template = None;
        // A linear layer wide enough for 16-bit tensor cores at batch 64,
        // whose GEMV for small batches then reads 16-bit weights (no zoo
        // model has one).
        let wide = Model {
            id: "inline_wide_linear".into(),
            name: "wide".into(),
            path: PathBuf::from("wide.cnn"),
            inline: Some("model wide {\n  input [64]\n  fc = linear(8192)\n  relu\n}\n"),
        };
        for m in models().into_iter().chain([wide]) {
            let program = any_program_in(&m, precision);
            for k in &program.kernels {
                let mut keys = features(k);
                if let KernelKind::Gemm(g) = &k.kind {
                    if g.input_scale {
                        keys.push("gated input".into());
                    }
                    if k.half_weights().is_some() && matches!(g.schedule, Schedule::Gemv(_)) {
                        keys.push("GEMV on 16-bit weights".into());
                    }
                    for s in
                        std::iter::once(&g.schedule).chain(k.variants.iter().map(|v| &v.schedule))
                    {
                        if let Schedule::Tensor {
                            half: Some(_),
                            tile,
                            ..
                        } = s
                        {
                            keys.push(format!("gemm_tc16 warp tile {}x{}", tile.wm, tile.wn));
                            keys.push(format!("gemm_tc16 with {}", keys[0]));
                            if g.input_scale {
                                keys.push("gemm_tc16 gated".into());
                            }
                        }
                    }
                }
                if keys
                    .into_iter()
                    .fold(false, |new, key| covered.insert(key) | new)
                {
                    chosen.push(k.clone());
                }
            }
            template.get_or_insert(program);
        }
        let mut program = template.expect("models");
        let (kernels_before, chosen_count) = (chosen.len(), chosen.len());
        program.kernels = chosen;
        let (program, cuda) = only_new_kernels(program, &mut seen);
        assert_eq!(
            program.kernels.len(),
            kernels_before,
            "every chosen 16-bit kernel is new"
        );
        eprintln!("nvcc: {chosen_count} kernels in {}", precision.name());
        let id = format!("every_kind_{}", precision.name());
        let cu = dir.join(format!("{id}.cu"));
        std::fs::write(&cu, &cuda).unwrap();
        for &arch in ARCHS {
            jobs.push(Job {
                id: id.clone(),
                arch,
                cu: cu.clone(),
                size: cuda.len(),
                program: program.clone(),
            });
        }
    }
    eprintln!("nvcc: {distinct} distinct kernels of {kernels}");
    jobs.sort_by_key(|j| j.size); // popped from the end: largest first
    let workers: usize = std::env::var("CNNC_NVCC_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .max(1);
    let total = jobs.len();
    let jobs = Mutex::new(jobs);
    let problems = Mutex::new(Vec::<String>::new());
    let timings = Mutex::new(Vec::<(f64, String)>::new());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Some(job) = jobs.lock().unwrap().pop() else {
                    break;
                };
                let cubin = job.cu.with_extension(format!("{}.cubin", job.arch));
                let began = Instant::now();
                let run = Command::new(&nvcc)
                    .arg("-cubin")
                    .arg(format!("-arch={}", job.arch))
                    .arg("-O3") // as `cnnc build` compiles its cubins
                    .args(["-Xptxas", "-v,-warn-spills,-warn-lmem-usage,-Werror"])
                    .args(["-Werror", "all-warnings"])
                    .arg("-o")
                    .arg(&cubin)
                    .arg(&job.cu)
                    .output();
                let seconds = began.elapsed().as_secs_f64();
                timings
                    .lock()
                    .unwrap()
                    .push((seconds, format!("{} {}", job.id, job.arch)));
                let mut found = Vec::new();
                match run {
                    Err(e) => found.push(format!(
                        "{} {}: cannot run {}: {e}",
                        job.id,
                        job.arch,
                        nvcc.display()
                    )),
                    Ok(run) => {
                        let log = format!(
                            "{}{}",
                            String::from_utf8_lossy(&run.stdout),
                            String::from_utf8_lossy(&run.stderr)
                        );
                        if !run.status.success() {
                            found.push(format!(
                                "{} {}: nvcc failed ({}) on {}:\n{}",
                                job.id,
                                job.arch,
                                run.status,
                                job.cu.display(),
                                log.lines()
                                    .filter(|l| !l.starts_with("ptxas info")
                                        && !l.contains("bytes stack frame"))
                                    .take(40)
                                    .collect::<Vec<_>>()
                                    .join("\n")
                            ));
                        }
                        let warnings: Vec<&str> =
                            log.lines().filter(|l| l.contains("warning")).collect();
                        if !warnings.is_empty() {
                            found.push(format!(
                                "{} {}: warnings:\n{}",
                                job.id,
                                job.arch,
                                warnings.join("\n")
                            ));
                        }
                        found.extend(check_ptxas(&job.id, job.arch, &log, &job.program));
                        if std::fs::metadata(&cubin).map(|m| m.len()).unwrap_or(0) == 0 {
                            found.push(format!("{} {}: no cubin written", job.id, job.arch));
                        } else if let Some(tool) = &cuobjdump {
                            found.extend(check_sass(tool, &cubin, &job.id, job.arch, &job.program));
                        }
                    }
                }
                problems.lock().unwrap().extend(found);
            });
        }
    });
    let mut timings = timings.into_inner().unwrap();
    timings.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!(
        "nvcc ({}): {total} compiles, {workers} at a time, {:.1} s; slowest: {}",
        nvcc.display(),
        start.elapsed().as_secs_f64(),
        timings
            .iter()
            .take(4)
            .map(|(s, what)| format!("{what} {s:.1} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let problems = problems.into_inner().unwrap();
    assert!(
        problems.is_empty(),
        "{} problem(s) compiling the generated CUDA (files in {}):\n{}",
        problems.len(),
        dir.display(),
        problems.join("\n")
    );
}
