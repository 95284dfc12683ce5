//! The CPU executor runs the execution plan (placements, arena reuse, concat
//! in place, fused epilogues) and computes what PyTorch and the reference
//! evaluator compute: on every fixture (real PyTorch weights) and on every zoo
//! model (random weights with random batch-norm statistics, reduced input).

use cnnc::front::source::SourceMap;
use cnnc::ir::Graph;
use cnnc_runtime::cpu::CpuExecutor;
use cnnc_runtime::weights::WeightFile;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::common;
use crate::common::{fixture_names, npy_f32, randomize_batchnorm, small_size, Fixture};

/// Input sizes tried, smallest first, for running zoo models quickly.
const SIZES: [i64; 6] = [32, 64, 96, 128, 227, 224];

/// max |a − b| / max(1, |b|).
fn worst_scaled(a: &[f32], b: impl IntoIterator<Item = f64>) -> f64 {
    let b: Vec<f64> = b.into_iter().collect();
    assert_eq!(a.len(), b.len(), "output lengths differ");
    a.iter()
        .zip(&b)
        .map(|(&a, &b)| (a as f64 - b).abs() / b.abs().max(1.0))
        .fold(
            0.0,
            |w, d| if d.is_nan() { f64::INFINITY } else { w.max(d) },
        )
}

/// Compiles `graph` to a plan and loads `file` into a CPU executor.
/// The CPU executor against the f64 evaluator on random inputs in [-2, 2)
/// (drawn from `seed`) at each batch size: within 1e-4, scaled.
fn cpu_matches_evaluator(
    tag: &str,
    graph: &Graph,
    sources: &SourceMap,
    file: &WeightFile,
    batches: &[usize],
    seed: u64,
) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for &batch in batches {
        let per = graph.input_shape().numel() as usize;
        let input: Vec<f32> = (0..batch * per)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        let mut exec = executor(graph, sources, file, batch);
        let out = exec.run(&input, batch).unwrap().to_vec();
        let worst = worst_scaled(&out, reference(graph, sources, file, batch, &input));
        assert!(
            worst <= 1e-4,
            "{tag}: CPU vs evaluator at batch {batch}: max scaled error {worst:e}"
        );
    }
}

fn executor(
    graph: &Graph,
    sources: &SourceMap,
    file: &WeightFile,
    max_batch: usize,
) -> CpuExecutor {
    let (_, _, plan) = cnnc::back::plan::compile(graph, sources).unwrap();
    let prepared = cnnc_runtime::prepare::prepare(&plan, file).unwrap();
    CpuExecutor::new(plan, prepared, max_batch).unwrap()
}

/// The reference evaluator on the checked (unfused) graph.
fn reference(
    graph: &Graph,
    sources: &SourceMap,
    file: &WeightFile,
    n: usize,
    input: &[f32],
) -> Vec<f64> {
    let bound = cnnc::ir::weights::bind(graph, file, sources).unwrap();
    cnnc::tools::eval::evaluate(graph, &bound, n, input)
        .unwrap()
        .data
}

fn fixture(name: &str) -> Fixture {
    Fixture::load(name)
}

#[test]
fn cpu_matches_pytorch_and_the_evaluator_on_every_fixture() {
    for name in fixture_names() {
        let f = fixture(&name);
        let mut exec = executor(f.graph(), &f.compilation.sources, &f.weights, f.batch);
        let out = exec.run(&f.input, f.batch).unwrap().to_vec();
        let (shape, expected) = npy_f32(
            &PathBuf::from("tests/fixtures")
                .join(&name)
                .join("expected.npy"),
        );
        let mut dims = vec![f.batch];
        dims.extend(&exec.plan().output_shape);
        assert_eq!(dims, shape, "{name}: output shape");
        let vs_pytorch = worst_scaled(&out, expected.iter().map(|&v| v as f64));
        assert!(
            vs_pytorch <= 1e-4,
            "{name}: CPU vs PyTorch: max scaled error {vs_pytorch:e}"
        );
        let vs_eval = worst_scaled(
            &out,
            reference(
                f.graph(),
                &f.compilation.sources,
                &f.weights,
                f.batch,
                &f.input,
            ),
        );
        assert!(
            vs_eval <= 1e-4,
            "{name}: CPU vs evaluator: max scaled error {vs_eval:e}"
        );
    }
}

#[test]
fn cpu_matches_the_evaluator_on_every_zoo_model() {
    let mut paths: Vec<_> = std::fs::read_dir("models")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 20);
    let batch = 2;
    for path in paths {
        let size = small_size(&path, &SIZES)
            .unwrap_or_else(|| panic!("{}: no small size checks", path.display()));
        let compilation =
            cnnc::compile_file_at(&path, &BTreeMap::new(), Some((size, size))).unwrap();
        let graph = compilation.models[0].graph.as_ref().unwrap();
        let mut file =
            cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 3).unwrap();
        randomize_batchnorm(&mut file, 5);
        let per = graph.input_shape().numel() as usize;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let input: Vec<f32> = (0..batch * per)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let mut exec = executor(graph, &compilation.sources, &file, batch);
        let out = exec.run(&input, batch).unwrap().to_vec();
        let worst = worst_scaled(
            &out,
            reference(graph, &compilation.sources, &file, batch, &input),
        );
        assert!(
            worst <= 1e-4,
            "{} at {size}×{size}: CPU vs evaluator: max scaled error {worst:e}",
            path.display()
        );
    }
}

/// Kernels that no fixture or zoo model launches on its own: a concat that
/// copies (a branch is the model input), a standalone batch norm (channel
/// affine), an add of two non-GEMM operands, standalone activations (one
/// writing into a concat slice), softmax and log_softmax over the channels
/// of maps, a strided grouped conv with replicate padding.
const ODD_OPS: &str = "
model odd_ops(num_classes = 5) {
  input [3, 11, 13]
  both = concat {
    identity
    conv(4, k=3, p=1, padding_mode=reflect)
  }                                              # copied: [7, 11, 13]
  bn = batchnorm                                 # channel affine
  res = residual { maxpool(3, s=1, p=1) }        # add kernel
  relu
  twice = concat {
    seq { avgpool(3, s=1, p=1, count_include_pad=false) tanh }
    seq { conv(7, k=1) relu }
  }                                              # in place: [14, 11, 13]
  softmax
  mixer = conv(6, k=3, s=2, groups=2, padding_mode=replicate)
  log_softmax
  global_avgpool
  flatten
  fc = linear(num_classes)
}
";

#[test]
fn cpu_gates_match_the_evaluator() {
    let compilation = cnnc::compile_source("gates.cnn", common::GATES, &BTreeMap::new());
    assert!(
        !compilation.has_errors(),
        "{}",
        compilation.render_diagnostics()
    );
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let (_, _, plan) = cnnc::back::plan::compile(graph, &compilation.sources).unwrap();
    use cnnc_runtime::plan::StepOp;
    let muls = plan
        .steps
        .iter()
        .filter(|s| matches!(s.op, StepOp::Mul))
        .count();
    let gated = plan
        .steps
        .iter()
        .filter(|s| matches!(s.op, StepOp::Gemm(g) if g.input_scale))
        .count();
    // Of six gates, two multiply inside the convolution that reads them
    // (`stage.project`, `head`); the CPU executor runs those as a multiply
    // and the plain convolution.
    assert_eq!(
        (muls, gated),
        (4, 2),
        "multiply steps and gated convolutions"
    );
    let file = cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 3).unwrap();
    cpu_matches_evaluator("gates", graph, &compilation.sources, &file, &[1, 3], 12);
    // `--profile` times the steps of the plan (what the table prints next
    // to), not the executor's: a gated convolution's multiply counts in its
    // step. (Indexed by the executor's steps, every time after the first
    // gated convolution was another step's.)
    let mut exec = executor(graph, &compilation.sources, &file, 1);
    assert_eq!(exec.plan().steps.len(), plan.steps.len() + gated);
    exec.profile_steps(true);
    let input = vec![0.5f32; graph.input_shape().numel() as usize];
    for _ in 0..3 {
        exec.run(&input, 1).unwrap();
    }
    let ms = exec.step_ms().unwrap();
    assert_eq!(ms.len(), plan.steps.len());
    assert!(ms.iter().all(|&t| t > 0.0), "every step timed: {ms:?}");
    let compilation = cnnc::compile_source("gated.cnn", common::GATED_CONVS, &BTreeMap::new());
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let file = cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 4).unwrap();
    cpu_matches_evaluator(
        "gated_convs",
        graph,
        &compilation.sources,
        &file,
        &[1, 3],
        13,
    );
}

#[test]
fn cpu_shuffle_and_norm_match_the_evaluator() {
    let compilation =
        cnnc::compile_source("shuffle_norm.cnn", common::SHUFFLE_NORM, &BTreeMap::new());
    assert!(
        !compilation.has_errors(),
        "{}",
        compilation.render_diagnostics()
    );
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let (_, _, plan) = cnnc::back::plan::compile(graph, &compilation.sources).unwrap();
    use cnnc_runtime::plan::StepOp;
    let count = |f: &dyn Fn(&StepOp) -> bool| plan.steps.iter().filter(|s| f(&s.op)).count();
    // `pre`, `ln` and `down_norm` run inside the convolutions that read
    // them: their steps write statistics only, and those convolutions
    // normalise as they read, the layer norms' weights and biases folded
    // into theirs.
    assert_eq!(
        count(&|o| matches!(o, StepOp::LayerNorm { .. })),
        2,
        "two layer norms of their own"
    );
    assert_eq!(
        count(&|o| matches!(o, StepOp::LayerNormStats { .. })),
        3,
        "three layer norms' statistics"
    );
    assert_eq!(
        count(&|o| matches!(o, StepOp::Gemm(g) if g.input_norm)),
        3,
        "three normalising convolutions"
    );
    let ln_biases: Vec<_> = plan
        .prepared
        .iter()
        .filter_map(|p| match p {
            cnnc_runtime::plan::Prepared::LnBias { bias, .. } => Some(bias.is_some()),
            _ => None,
        })
        .collect();
    assert_eq!(
        ln_biases,
        [false, true, true],
        "`mix` has no bias of its own, `pw1` and `down` have"
    );
    assert_eq!(
        count(&|o| matches!(o, StepOp::ChannelShuffle { .. })),
        2,
        "two shuffles"
    );
    // The scale after a layer norm runs as a channel affine; the one after
    // the per-pixel linear is folded into its weights (with the residual add
    // in its epilogue).
    assert_eq!(
        count(&|o| matches!(o, StepOp::ChannelAffine)),
        1,
        "one scale kernel"
    );
    let folded = plan
        .prepared
        .iter()
        .filter(|p| matches!(p, cnnc_runtime::plan::Prepared::ScaledWeight { .. }))
        .count();
    assert_eq!(folded, 1, "one scale folded into a convolution");
    let mut file =
        cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 3).unwrap();
    common::randomize_batchnorm(&mut file, 4);
    common::randomize_scales(&mut file, 5);
    cpu_matches_evaluator(
        "shuffle_norm",
        graph,
        &compilation.sources,
        &file,
        &[1, 3],
        12,
    );
    // A map of 23×17 = 391 pixels: the layer norm's tiles of 256 pixels,
    // one whole and one partial, per image.
    let larger = common::SHUFFLE_NORM.replace("input [6, 9, 7]", "input [6, 23, 17]");
    assert_ne!(larger, common::SHUFFLE_NORM);
    let compilation = cnnc::compile_source("shuffle_norm_391.cnn", &larger, &BTreeMap::new());
    let graph = compilation.models[0].graph.as_ref().unwrap();
    cpu_matches_evaluator(
        "shuffle_norm_391",
        graph,
        &compilation.sources,
        &file,
        &[1, 2],
        13,
    );
}

#[test]
fn cpu_matches_the_evaluator_on_standalone_kernels() {
    let compilation = cnnc::compile_source("odd_ops.cnn", ODD_OPS, &BTreeMap::new());
    assert!(
        !compilation.has_errors(),
        "{}",
        compilation.render_diagnostics()
    );
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let (_, _, plan) = cnnc::back::plan::compile(graph, &compilation.sources).unwrap();
    use cnnc_runtime::plan::StepOp;
    let has = |f: fn(&StepOp) -> bool| plan.steps.iter().any(|s| f(&s.op));
    assert!(has(|o| matches!(o, StepOp::Copy)) && has(|o| matches!(o, StepOp::ChannelAffine)));
    assert!(has(|o| matches!(o, StepOp::Add)) && has(|o| matches!(o, StepOp::Act(_))));
    assert!(
        has(|o| matches!(o, StepOp::Softmax { log: false }))
            && has(|o| matches!(o, StepOp::Softmax { log: true }))
    );
    let mut file =
        cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 3).unwrap();
    randomize_batchnorm(&mut file, 5);
    cpu_matches_evaluator("odd_ops", graph, &compilation.sources, &file, &[3], 11);
}

#[test]
fn the_arena_is_reused_across_batch_sizes() {
    // Concats in place, residual epilogues, every layer kind.
    for name in ["inception_tiny", "kitchen_sink", "resnet_tiny"] {
        let f = fixture(name);
        let per = f.input.len() / f.batch;
        let mut exec = executor(f.graph(), &f.compilation.sources, &f.weights, 3);
        let out_per = exec.plan().output_shape.iter().product::<usize>();
        let first = exec.run(&f.input[..per], 1).unwrap().to_vec();
        // Image 0 between two others; the arena now holds stale values of batch 1.
        let mut three = f.input[per..2 * per].to_vec();
        three.extend_from_slice(&f.input[..per]);
        three.extend(f.input[..per].iter().map(|v| -v));
        let batch3 = exec.run(&three, 3).unwrap().to_vec();
        assert_eq!(batch3.len(), 3 * out_per);
        let middle = worst_scaled(
            &batch3[out_per..2 * out_per],
            first.iter().map(|&v| v as f64),
        );
        assert!(
            middle <= 1e-5,
            "{}: image 0 in a batch of 3 differs by {middle:e}",
            f.name
        );
        let second = worst_scaled(
            &batch3[..out_per],
            exec.run(&f.input[per..2 * per], 1)
                .unwrap()
                .iter()
                .map(|&v| v as f64),
        );
        assert!(
            second <= 1e-5,
            "{}: image 1 in a batch of 3 differs by {second:e}",
            f.name
        );
        // Back to batch 1 after batch 3: the same numbers as the first run.
        let again = exec.run(&f.input[..per], 1).unwrap().to_vec();
        assert_eq!(again, first, "{}: batch 1 after batch 3", f.name);
    }
}

#[test]
fn batch_and_input_errors_are_clear() {
    let f = fixture("mnist_cnn");
    let per = f.input.len() / f.batch;
    let mut exec = executor(f.graph(), &f.compilation.sources, &f.weights, 2);
    let three: Vec<f32> = f.input.iter().chain(&f.input[..per]).copied().collect();
    let err = exec.run(&three, 3).unwrap_err().to_string();
    assert!(err.contains("batch 3") && err.contains("1..=2"), "{err}");
    let err = exec.run(&[], 0).unwrap_err().to_string();
    assert!(err.contains("batch 0"), "{err}");
    let err = exec.run(&f.input[..per], 2).unwrap_err().to_string();
    assert!(err.contains("input has 784 values"), "{err}");
    // Still usable after the errors.
    exec.run(&f.input, 2).unwrap();
    let (_, _, plan) = cnnc::back::plan::compile(f.graph(), &f.compilation.sources).unwrap();
    let prepared = cnnc_runtime::prepare::prepare(&plan, &f.weights).unwrap();
    assert!(CpuExecutor::new(plan.clone(), prepared.clone(), 0).is_err());
    assert!(CpuExecutor::new(plan.clone(), prepared[1..].to_vec(), 1).is_err());
}

#[test]
fn a_plan_that_writes_what_it_reads_is_refused() {
    // The executor shares the arena between parallel tasks on the strength of
    // this check: no step's output may overlap its inputs.
    let f = fixture("resnet_tiny");
    let (_, _, mut plan) = cnnc::back::plan::compile(f.graph(), &f.compilation.sources).unwrap();
    let prepared = cnnc_runtime::prepare::prepare(&plan, &f.weights).unwrap();
    let step = plan
        .steps
        .iter_mut()
        .find(|s| s.inputs.len() > 1)
        .expect("resnet_tiny has a residual epilogue");
    step.inputs[1] = step.output;
    let err = CpuExecutor::new(plan.clone(), prepared.clone(), 1)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("overlaps its input 1"), "{err}");
    // And a place outside the arena.
    let (_, _, mut plan) = cnnc::back::plan::compile(f.graph(), &f.compilation.sources).unwrap();
    plan.steps[0].output.offset = plan.arena_per_image;
    let err = CpuExecutor::new(plan, prepared, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("outside the arena"), "{err}");
}

/// The CPU executor's GEMM and pool paths, one small model each so an error
/// is not damped by later layers: a map cut into several pixel ranges (its
/// im2col matrix exceeds one task's budget), a pointwise conv read in place
/// with a residual epilogue, strided 1×1 convs over small maps (several
/// images per GEMM) and large ones (pixel ranges), strided padded convs,
/// dilation with groups and circular padding, reflect padding at stride 2,
/// ceil-mode and padded pools, a pointwise conv over small maps, a conv whose
/// kernel covers its whole input and a linear layer (both read in place), and
/// vectorised sigmoid, SiLU, tanh and tanh-GELU epilogues.
const CPU_PATHS: &[(&str, &str)] = &[
    ("tiles", "input [96, 26, 24]\n big = conv(16, k=3, p=1) sigmoid"),
    (
        "pointwise_residual",
        "input [16, 26, 24]\n res = residual { pconv = conv(16, k=1) silu }",
    ),
    ("strided_1x1_small", "input [8, 13, 12]\n down = conv(24, k=1, s=2) tanh"),
    ("strided_1x1_large", "input [8, 40, 30]\n down = conv(8, k=1, s=2)"),
    ("strided_padded_small", "input [4, 30, 30]\n c = conv(8, k=5, s=2, p=2) relu"),
    ("strided_padded_large", "input [4, 50, 50]\n c = conv(8, k=3, s=2, p=1) relu"),
    (
        "dilated_grouped_circular",
        "input [6, 13, 12]\n circ = conv(24, k=3, p=2, d=2, groups=3, mode=circular)",
    ),
    (
        "reflect_strided",
        "input [6, 13, 12]\n refl = conv(24, k=3, p=1, s=2, mode=reflect) gelu(approximate=tanh)",
    ),
    (
        "pools",
        "input [5, 18, 16]\n maxpool(2)\n maxpool(3, s=2, ceil=true)\n avgpool(3, s=1, p=1)\n maxpool(3, s=2, p=1)",
    ),
    ("avgpool_2x2", "input [5, 10, 8]\n avgpool(2)\n avgpool(2, s=1)"),
    ("pointwise_small", "input [24, 3, 3]\n pw = conv(32, k=1) relu"),
    (
        "full_window_and_linear",
        "input [24, 3, 3]\n full = conv(40, k=3) relu\n flatten\n fc = linear(6) tanh",
    ),
];

/// Every case of [`CPU_PATHS`] at batch sizes that do and do not divide the
/// images per task, on pools of 1, 2 and 3 threads (so the serial,
/// parallel-task and parallel-GEMM schedules all run).
#[test]
fn cpu_gemm_and_pool_paths_match_the_evaluator_at_any_batch_and_thread_count() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    for (name, body) in CPU_PATHS {
        let source = format!("model {name} {{\n {body}\n}}\n");
        let compilation = cnnc::compile_source(&format!("{name}.cnn"), &source, &BTreeMap::new());
        assert!(
            !compilation.has_errors(),
            "{}",
            compilation.render_diagnostics()
        );
        let graph = compilation.models[0].graph.as_ref().unwrap();
        let file =
            cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 7).unwrap();
        let per = graph.input_shape().numel() as usize;
        for batch in [1usize, 2, 7] {
            let input: Vec<f32> = (0..batch * per)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect();
            let expected = reference(graph, &compilation.sources, &file, batch, &input);
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let out = pool.install(|| {
                    // Made for a larger batch than it runs: the tasks of a smaller one must fit.
                    let mut exec = executor(graph, &compilation.sources, &file, 8);
                    exec.run(&input, batch).unwrap().to_vec()
                });
                let worst = worst_scaled(&out, expected.iter().copied());
                assert!(
                    worst <= 1e-5,
                    "{name}, batch {batch}, {threads} threads: CPU vs evaluator: max scaled error {worst:e}"
                );
            }
        }
    }
}

#[test]
fn the_split_k_workspace_fits_every_batch() {
    // mnist_cnn's batch-1 kernels split conv2 (M = 32, N = batch·400) 5 ways
    // and conv3 (M = 64, N = batch·36) 10 ways on the 16×32 tile; each block
    // writes 16·32 = 512 partial sums, each tile has a counter. By hand, at
    // batch 2: conv2 launches ceil(800/32)·2·5 = 250 blocks (128,000 floats,
    // 50 tiles), conv3 ceil(72/32)·4·10 = 120 (61,440 floats, 12 tiles).
    let f = fixture("mnist_cnn");
    let (_, _, plan) = cnnc::back::plan::compile(f.graph(), &f.compilation.sources).unwrap();
    let splits: Vec<u32> = plan.steps.iter().map(|s| s.split_k).collect();
    assert_eq!(splits, [1, 5, 1, 10, 1, 1, 1]);
    let two = plan.workspace(2);
    assert_eq!((two.floats, two.counters), (128_000, 50));
    // From batch 8 conv2 splits 2 ways (its `_b8` kernel); the largest need
    // up to 63 images is conv2 at 63: ceil(25200/32)·2·2 = 3,152 blocks.
    assert_eq!(plan.workspace(63).floats, 3_152 * 512);
    // Never less for a larger maximum batch, and every launch fits.
    let mut last = 0;
    for max_batch in 1..=70 {
        let w = plan.workspace(max_batch);
        assert!(w.floats >= last);
        last = w.floats;
        for batch in 1..=max_batch {
            for step in &plan.steps {
                let need = step.launch(batch).workspace();
                assert!(need.floats <= w.floats && need.counters <= w.counters);
            }
        }
    }
}

/// Convolutions whose padding is wider than the map, so some kernel taps read
/// only padding for every output pixel (MNASNet's 5×5 depthwise convolutions
/// on the 1×1 maps of a 32×32 input). The im2col gather once computed a
/// source offset of -1 for such a tap and panicked.
#[test]
fn cpu_matches_the_evaluator_when_padding_is_wider_than_the_map() {
    let source = "
model wide_padding {
  input [8, 1, 1]
  dw5 = conv(8, k=5, p=2, g=8, bias=false)       # depthwise 5×5 on 1×1
  full5 = conv(6, k=5, p=2)                      # dense 5×5 on 1×1
  strided = conv(6, k=5, s=2, p=2, g=2)          # strided: the general gather
  wide = conv(4, k=(1, 7), p=(0, 3))             # 1×7 on 1×1
  dil = conv(4, k=3, d=2, p=2)                   # dilated taps outside the map
  flatten
}
";
    let compilation = cnnc::compile_source("wide_padding.cnn", source, &BTreeMap::new());
    assert!(
        !compilation.has_errors(),
        "{}",
        compilation.render_diagnostics()
    );
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let file = cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 3).unwrap();
    cpu_matches_evaluator("wide_padding", graph, &compilation.sources, &file, &[2], 5);
}

/// Full-size parity of the CPU executor with PyTorch, by hand: for each
/// folder of `CNNC_PARITY_DIR` (default /tmp/cnnc-parity, written by
/// `tests/fixtures/make_full_parity.py`) named after a zoo model, runs
/// `weights.safetensors` on `input.npy` and prints the largest difference
/// from `expected.npy`.
/// `CNNC_PARITY_DIR=/tmp/cnnc-parity cargo test --test it plan_cpu::full_size -- --ignored --nocapture`
#[test]
#[ignore]
fn full_size_parity_with_pytorch() {
    let dir = std::env::var("CNNC_PARITY_DIR").unwrap_or_else(|_| "/tmp/cnnc-parity".into());
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.npy").exists())
        .collect();
    names.sort();
    for folder in names {
        let name = folder.file_name().unwrap().to_string_lossy().into_owned();
        let compilation = cnnc::compile_file(
            std::path::Path::new(&format!("models/{name}.cnn")),
            &BTreeMap::new(),
        )
        .unwrap();
        let graph = compilation.models[0].graph.as_ref().unwrap();
        let file = WeightFile::load(&folder.join("weights.safetensors")).unwrap();
        let (_, input) = npy_f32(&folder.join("input.npy"));
        let (_, expected) = npy_f32(&folder.join("expected.npy"));
        let mut exec = executor(graph, &compilation.sources, &file, 1);
        let out = exec.run(&input, 1).unwrap().to_vec();
        let worst = out
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let largest = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        println!(
            "{name}: CPU executor vs PyTorch max abs error {worst:.3e} (max |y| {largest:.3})"
        );
        assert!(worst <= 1e-4 * largest.max(1.0), "{name}: {worst:e}");
    }
}

/// Depthwise convolutions (groups = channels) of every geometry the CPU's
/// depthwise kernel handles: 3×3 and 5×5, strides 1 and 2 (and 3 by 1),
/// padding, dilation, odd sizes, tiny maps (2×2, 1×1), with bias, folded
/// batch norm, activations and a residual add in their epilogues.
const DEPTHWISE: &str = "
model depthwise {
  input [16, 41, 38]
  a = seq { conv(16, k=3, p=1, g=16, bias=false) batchnorm relu6 }       # 41×38, parallel planes
  b = seq { conv(16, k=5, s=2, p=2, g=16, bias=false) batchnorm hardswish } # 21×19
  c = residual { seq { conv(16, k=3, p=2, d=2, g=16, bias=false) batchnorm } } # dilated, add in the epilogue
  d = seq { conv(16, k=3, s=2, g=16) silu }                              # no padding: 10×9
  e = conv(16, k=5, p=2, g=16)                                           # 5×5, stride 1
  f = seq { conv(16, k=3, s=(3, 1), p=(0, 1), g=16) sigmoid }            # 3×9
  g = conv(16, k=(3, 5), s=2, p=1, d=(1, 2), g=16)                       # 2×2
  h = conv(16, k=3, p=1, g=16) relu                                      # 2×2
  i = conv(16, k=3, s=2, p=1, g=16)                                      # 1×1
  j = conv(16, k=5, p=2, g=16)                                           # 5×5 on 1×1
  k = conv(16, k=1, g=16)                                                # 1×1 on 1×1
  l = residual { seq { conv(16, k=5, p=2, g=16, bias=false) batchnorm relu6 } } # 5×5 on 1×1
  flatten
}
";

/// The depthwise convolutions run on the depthwise kernel, and match the
/// evaluator at batches 1 and 3, on pools of 1 and 3 threads.
#[test]
fn cpu_depthwise_convolutions_match_the_evaluator() {
    let compilation = cnnc::compile_source("depthwise.cnn", DEPTHWISE, &BTreeMap::new());
    assert!(
        !compilation.has_errors(),
        "{}",
        compilation.render_diagnostics()
    );
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let mut file =
        cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 3).unwrap();
    randomize_batchnorm(&mut file, 4);
    let exec = executor(graph, &compilation.sources, &file, 1);
    use cnnc_runtime::cpu::CpuPath;
    use cnnc_runtime::plan::{Epi, StepOp};
    let steps = &exec.plan().steps;
    let depthwise: Vec<usize> = (0..steps.len())
        .filter(|&i| exec.step_path(i) == CpuPath::Depthwise)
        .collect();
    assert_eq!(
        depthwise.len(),
        12,
        "every convolution on the depthwise kernel"
    );
    assert!(depthwise
        .iter()
        .all(|&i| matches!(steps[i].op, StepOp::Gemm(g) if g.groups == 16)));
    let epilogues: Vec<&[Epi]> = depthwise.iter().map(|&i| &steps[i].epilogue[..]).collect();
    assert!(
        epilogues
            .iter()
            .filter(|e| e.iter().any(|e| matches!(e, Epi::AddInput(_))))
            .count()
            == 2,
        "two residual adds fused: {epilogues:?}"
    );
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            cpu_matches_evaluator(
                &format!("depthwise, {threads} threads"),
                graph,
                &compilation.sources,
                &file,
                &[1, 3],
                17,
            )
        });
    }
}
