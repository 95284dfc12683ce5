//! Rung 5 of the verification ladder: the generated CUDA kernels compute the
//! right numbers, checked without a GPU. Each model's printed `.cu` is
//! compiled as C++20 with tests/emulation/cuda_emulation.h, run through the
//! execution plan exactly as the CUDA driver runs it, and compared with the
//! reference evaluator: max |a − b| ≤ 1e-4 · max(1, |b|). See docs/testing.md.

use crate::harness;

use crate::harness::{check, Arg, Case, Module, TOLERANCE};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use crate::common;
use crate::common::{fixture_names, randomize_batchnorm, small_model, Fixture};

/// Input sizes tried, smallest first, for running zoo models quickly.
const SIZES: [i64; 8] = [32, 64, 96, 128, 160, 193, 224, 227];

/// Runs `jobs` on every CPU, largest first; returns the failures.
fn in_parallel<T: Sync>(jobs: &[T], run: impl Fn(&T) -> Result<(), String> + Sync) -> Vec<String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers.min(jobs.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                if let Err(e) = run(job) {
                    failures.lock().unwrap().push(e);
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

fn report(tag: &str, batch: usize, c: &harness::Checked) {
    println!(
        "{tag:<28} batch {batch}  {:>3} kernels  worst {:.1e}  compile {:>5.1}s  emulate {:>5.1}s  evaluate {:>5.1}s",
        c.kernels,
        c.worst,
        c.compile.as_secs_f64(),
        c.emulate.as_secs_f64(),
        c.evaluate.as_secs_f64()
    );
}

impl Fixture {
    fn case(&self) -> Case<'_> {
        Case {
            tag: self.name.clone(),
            graph: self.graph(),
            sources: &self.compilation.sources,
            weights: &self.weights,
            input: self.input.clone(),
            batch: self.batch,
            both_orders: true,
            tile: None,
            batch1_kernels_only: false,
            precision: cnnc::back::kernel_ir::Precision::Fp32,
            tensor_tile: None,
        }
    }
}

#[test]
fn every_fixture_matches_the_evaluator_and_pytorch() {
    let names = fixture_names();
    let failures = in_parallel(&names, |name| {
        let f = Fixture::load(name);
        let checked = check(&f.case(), &|cuda| cuda)?;
        report(&f.name, f.batch, &checked);
        // And against PyTorch's own output.
        let (shape, expected) = &f.expected;
        let mut dims = vec![f.batch];
        dims.extend(f.graph().output_shape().dims().iter().map(|&d| d as usize));
        if *shape != dims {
            return Err(format!(
                "{}: expected.npy is {shape:?}, the model gives {dims:?}",
                f.name
            ));
        }
        let want: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
        let (worst, mismatch) = harness::compare(&checked.output, &want);
        if let Some(m) = mismatch {
            return Err(format!(
                "{}: the emulated kernels differ from PyTorch (expected.npy): worst scaled error {worst:.3e}, first at output {}: {} vs {}",
                f.name, m.index, m.got, m.want
            ));
        }
        Ok(())
    });
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// The zoo models at their smallest checked size, largest first (so the
/// long ones do not finish last), with their multiply-adds: those named in
/// `CNNC_EMU_MODELS` (comma-separated stems; `all` for every model) if set,
/// else `default`'s, else every model in `models/`.
fn zoo_models(default: Option<&[&str]>) -> Vec<(PathBuf, common::SmallModel, i64)> {
    let only: Option<Vec<String>> = match std::env::var("CNNC_EMU_MODELS") {
        Ok(v) if v == "all" => None,
        Ok(v) => Some(v.split(',').map(|m| m.trim().to_string()).collect()),
        Err(_) => default.map(|d| d.iter().map(|m| m.to_string()).collect()),
    };
    let mut models: Vec<(PathBuf, common::SmallModel, i64)> = std::fs::read_dir("models")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .filter(|p| {
            only.as_ref().is_none_or(|only| {
                only.iter()
                    .any(|m| p.file_stem().is_some_and(|s| s == m.as_str()))
            })
        })
        .map(|path| {
            let small = small_model(&path, &SIZES)
                .unwrap_or_else(|| panic!("{}: no small size checks", path.display()));
            let c = cnnc::compile_file_at(&path, &small.settings, small.input_hw).unwrap();
            let macs = c.models[0].graph.as_ref().unwrap().total_macs();
            (path, small, macs)
        })
        .collect();
    if let Some(only) = &only {
        assert_eq!(models.len(), only.len(), "models named: {only:?}");
    }
    models.sort_by_key(|m| std::cmp::Reverse(m.2));
    models
}

/// Emulates one zoo model (random weights, randomised batch-norm
/// statistics) with its GEMMs in `precision`, on the tensor-core `tile` if
/// given, against the evaluator. `heavy` makes the models with big
/// classifiers (the VGGs: 130M parameters, 2 GB while checked) take turns,
/// so that the test fits in the memory of a small CI machine.
fn check_zoo_model(
    (path, small, macs): &(PathBuf, common::SmallModel, i64),
    precision: cnnc::back::kernel_ir::Precision,
    tile: Option<cnnc::back::kernel_ir::TcTile>,
    heavy: &Mutex<()>,
) -> Result<(), String> {
    let compilation = cnnc::compile_file_at(path, &small.settings, small.input_hw).unwrap();
    let size = small.size;
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let _turn = (graph.total_params() > 50_000_000)
        .then(|| heavy.lock().unwrap_or_else(|e| e.into_inner()));
    let mut weights =
        cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 3).unwrap();
    randomize_batchnorm(&mut weights, 5);
    // Batch 2 exercises the image index; the largest models run one image.
    let batch = if *macs > 200_000_000 { 1 } else { 2 };
    let per = graph.input_shape().numel() as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let input: Vec<f32> = (0..batch * per)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let stem = path.file_stem().unwrap().to_string_lossy();
    let tag = match tile {
        None => format!("{stem}@{size}"),
        Some(t) => format!("{stem}@{size}-tc{}x{}-{}", t.bm, t.bn, precision.name()),
    };
    let case = Case {
        tag,
        graph,
        sources: &compilation.sources,
        weights: &weights,
        input,
        batch,
        // The race check doubles the emulation; the small models carry it.
        both_orders: batch == 2 && tile.is_none(),
        tile: None,
        batch1_kernels_only: false,
        precision,
        tensor_tile: tile,
    };
    let checked = check(&case, &|cuda| cuda)?;
    report(&case.tag, batch, &checked);
    Ok(())
}

#[test]
fn every_zoo_model_matches_the_evaluator() {
    let start = Instant::now();
    let models = zoo_models(None);
    if std::env::var("CNNC_EMU_MODELS").map_or(true, |v| v == "all") {
        assert!(models.len() >= 22, "expected the 22 zoo models");
    }
    let heavy = Mutex::new(());
    let failures = in_parallel(&models, |m| {
        check_zoo_model(m, cnnc::back::kernel_ir::Precision::Fp32, None, &heavy)
    });
    println!("zoo: {:.1}s", start.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// The zoo in every reduced precision on tensor cores: every GEMM that can
/// run there forced onto the smallest tensor-core tile (at these sizes the
/// compiler would keep them on CUDA cores), in TF32, 3xTF32, BF16 and FP16,
/// against the evaluator within each precision's tolerance. On every commit:
/// EfficientNet-B0 in all four (gated projections, depthwise, SiLU) and
/// ConvNeXt-Tiny in BF16 (per-pixel linear layers between layer norms), the
/// layers the fixtures lack, within about 25 s of two cores.
/// `CNNC_EMU_MODELS=all` (or a list of stems) runs those models in all four
/// precisions, or in those `CNNC_EMU_PRECISIONS` lists (the whole zoo by
/// hand: docs/testing.md).
#[test]
fn the_zoo_matches_the_evaluator_on_tensor_cores_in_every_precision() {
    use cnnc::back::kernel_ir::Precision;
    let start = Instant::now();
    let every = [
        Precision::Tf32,
        Precision::Tf32x3,
        Precision::Bf16,
        Precision::Fp16,
    ];
    let by_hand = std::env::var_os("CNNC_EMU_MODELS").is_some();
    // CNNC_EMU_PRECISIONS=bf16,fp16 narrows a run by hand to those precisions.
    let chosen: Vec<Precision> = std::env::var("CNNC_EMU_PRECISIONS")
        .map(|list| list.split(',').filter_map(Precision::parse).collect())
        .unwrap_or_else(|_| every.to_vec());
    let models = zoo_models(Some(&["efficientnet_b0", "convnext_tiny"]));
    let tile = *cnnc::back::kernel_ir::TC_TILES.last().unwrap();
    let mut jobs = Vec::new();
    for m in &models {
        let stem = m.0.file_stem().unwrap().to_string_lossy();
        let precisions: &[Precision] = if by_hand {
            &chosen
        } else if stem == "efficientnet_b0" {
            &every
        } else {
            &[Precision::Bf16]
        };
        jobs.extend(precisions.iter().map(|p| (m, *p)));
    }
    let heavy = Mutex::new(());
    let failures = in_parallel(&jobs, |(m, precision)| {
        check_zoo_model(m, *precision, Some(tile), &heavy)
    });
    println!(
        "zoo on tensor cores: {} models, {} runs, {:.1}s",
        models.len(),
        jobs.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn every_gemm_tile_computes_the_same_numbers() {
    // At test sizes the compiler picks the small tiles; the big ones (8×4 and
    // 4×4 registers per thread) only at full size. Force each in turn on two
    // fixtures with every conv variant (groups, dilation, padding modes,
    // strides, residual epilogues, linear layers with global pooling), with
    // K whole and split 3 ways (a split's K range then ends inside a filter
    // or a group's channels), and the smallest tile with K split as far as
    // its slices allow (up to 16 ways; splits of one slice).
    let mut jobs = Vec::new();
    for name in ["resnet_tiny", "kitchen_sink"] {
        for tile in cnnc::back::kernel_ir::TILES {
            jobs.push((name, *tile, 1));
            jobs.push((name, *tile, 3));
        }
        jobs.push((name, *cnnc::back::kernel_ir::TILES.last().unwrap(), 16));
    }
    let failures = in_parallel(&jobs, |(name, tile, split)| {
        let f = Fixture::load(name);
        let mut case = f.case();
        case.tag = format!(
            "{name}-tile{}x{}x{}-{}x{}-split{split}",
            tile.bm, tile.bn, tile.bk, tile.tm, tile.tn
        );
        case.tile = Some((*tile, *split));
        let checked = check(&case, &|cuda| cuda)?;
        report(&case.tag, f.batch, &checked);
        Ok(())
    });
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// Kernel kinds no zoo model or fixture produces (every batch norm there
/// folds, every add fuses, every concat is written in place, every
/// activation joins an epilogue), on odd sizes, batch 3.
const KERNEL_COVERAGE: &str = "
model kernel_coverage {
  input [3, 13, 11]
  bn0 = batchnorm                           # nothing to fold into: channel affine
  both = concat {                           # the input branch cannot be written in
    identity                                # place: two slice copies
    maxpool(3, s=1, p=1)
  }
  tanh                                      # after a concat: a standalone activation
  res = residual { avgpool(3, s=1, p=1) }   # no GEMM to fuse into: a standalone add
  c = conv(4, k=3, p=1)
  relu
  global_avgpool
  flatten
  fc = linear(5)
  softmax
}
";

#[test]
fn the_kernel_kinds_no_model_uses_match_the_evaluator() {
    let compilation = compiled("kernel_coverage.cnn", KERNEL_COVERAGE);
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let (_, program, _) = cnnc::back::plan::compile(graph, &compilation.sources).unwrap();
    let kinds: Vec<String> = program
        .kernels
        .iter()
        .map(|k| {
            format!("{:?}", k.kind)
                .split(['(', ' '])
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    for kind in [
        "ChannelAffine",
        "CopySlice",
        "Activation",
        "Add",
        "Pool",
        "Gemm",
        "Softmax",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} kernel: {kinds:?}"
        );
    }
    let mut weights =
        cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 3).unwrap();
    randomize_batchnorm(&mut weights, 5);
    check_on_random_input(
        "kernel_coverage",
        graph,
        &compilation.sources,
        &weights,
        (3, 11, 1.0),
    );
}

/// Emulates `graph` at `batch` on inputs drawn uniformly from ±`range` with
/// `seed`, image i shifted by i·`range`/2 (so per-image values such as a
/// gate's factor differ between images), in both thread orders, against the
/// evaluator; panics on a failure.
fn check_on_random_input(
    tag: &str,
    graph: &cnnc::ir::Graph,
    sources: &cnnc::front::source::SourceMap,
    weights: &cnnc_runtime::weights::WeightFile,
    (batch, seed, range): (usize, u64, f32),
) {
    let per = graph.input_shape().numel() as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let input: Vec<f32> = (0..batch * per)
        .map(|i| rng.random_range(-range..range) + (i / per) as f32 * range / 2.0)
        .collect();
    let case = Case {
        tag: tag.into(),
        graph,
        sources,
        weights,
        input,
        batch,
        both_orders: true,
        tile: None,
        batch1_kernels_only: false,
        precision: cnnc::back::kernel_ir::Precision::Fp32,
        tensor_tile: None,
    };
    let checked = check(&case, &|cuda| cuda).unwrap_or_else(|e| panic!("{e}"));
    report(&case.tag, batch, &checked);
}

/// `source` compiled as file `name`, which must have no errors.
fn compiled(name: &str, source: &str) -> cnnc::Compilation {
    let compilation = cnnc::compile_source(name, source, &BTreeMap::new());
    assert!(
        !compilation.has_errors(),
        "{}",
        compilation.render_diagnostics()
    );
    compilation
}

#[test]
fn gates_match_the_evaluator() {
    let compilation = compiled("gates.cnn", common::GATES);
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let weights =
        cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 3).unwrap();
    check_on_random_input("gates", graph, &compilation.sources, &weights, (3, 12, 2.0));
    // Two gated convolutions (one with a residual add) straight after the
    // input, whose factors differ by image.
    let compilation = cnnc::compile_source("gated.cnn", common::GATED_CONVS, &BTreeMap::new());
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let weights =
        cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 4).unwrap();
    check_on_random_input(
        "gated_convs",
        graph,
        &compilation.sources,
        &weights,
        (3, 13, 2.0),
    );
    // The same on the smallest tensor-core tile (the 1x1 projection; the
    // grouped conv stays on CUDA cores), which scales B in shared memory,
    // with TF32 and 16-bit operands.
    use cnnc::back::kernel_ir::Precision;
    check_on_tensor_cores(
        "gated_convs",
        graph,
        &compilation.sources,
        &weights,
        &[Precision::Tf32, Precision::Bf16, Precision::Fp16],
        (13, "batch, s);"),
    );
}

/// `graph` on 3 images, every GEMM that can forced onto the smallest
/// tensor-core tile, in each of `precisions`, against the evaluator; the
/// printed CUDA must call a tensor-core GEMM and contain `expect`. Each
/// image's inputs are shifted by its index, so kernels that mix images up
/// fail.
fn check_on_tensor_cores(
    tag: &str,
    graph: &cnnc::ir::Graph,
    sources: &cnnc::front::source::SourceMap,
    weights: &cnnc_runtime::weights::WeightFile,
    precisions: &[cnnc::back::kernel_ir::Precision],
    (seed, expect): (u64, &str),
) {
    for &precision in precisions {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let per = graph.input_shape().numel() as usize;
        let case = Case {
            tag: format!("{tag}-tc-{}", precision.name()),
            graph,
            sources,
            weights,
            input: (0..3 * per)
                .map(|i| rng.random_range(-2.0..2.0) + (i / per) as f32)
                .collect(),
            batch: 3,
            both_orders: true,
            tile: None,
            batch1_kernels_only: false,
            precision,
            tensor_tile: Some(*cnnc::back::kernel_ir::TC_TILES.last().unwrap()),
        };
        let checked = check(&case, &|cuda| {
            assert!(cuda.contains("cnnc::gemm_tc") && cuda.contains(expect));
            cuda
        })
        .unwrap_or_else(|e| panic!("{e}"));
        report(&case.tag, 3, &checked);
    }
}

#[test]
fn shuffle_and_norm_kernels_match_the_evaluator() {
    // split chunks (copies from a channel range), channel_shuffle,
    // layer_norm (per pixel, and on a 1×1 map), scale (channel affine),
    // per-pixel linear layers (1×1 GEMMs) and gelu.
    let compilation = compiled("shuffle_norm.cnn", common::SHUFFLE_NORM);
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let mut weights =
        cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 5).unwrap();
    randomize_batchnorm(&mut weights, 6);
    common::randomize_scales(&mut weights, 7);
    check_on_random_input(
        "shuffle_norm",
        graph,
        &compilation.sources,
        &weights,
        (3, 13, 2.0),
    );
    // The layer norms that run inside their pointwise convolutions (`pre`
    // into `mix`, `ln` into `pw1`) on the smallest tensor-core tile, which
    // normalises B in shared memory, with TF32 and 16-bit operands.
    use cnnc::back::kernel_ir::Precision;
    check_on_tensor_cores(
        "shuffle_norm",
        graph,
        &compilation.sources,
        &weights,
        &[Precision::Tf32, Precision::Bf16],
        (14, "cnnc::Normed<"),
    );
}

/// resnet_tiny with a bug planted in its printed CUDA: the error must name the kernel.
fn planted(edit: &dyn Fn(String) -> String) -> String {
    planted_with(None, edit)
}

/// [`planted`], every GEMM on `schedule` (a tile and a K split) when given.
fn planted_with(
    schedule: Option<(cnnc::back::kernel_ir::GemmTile, u32)>,
    edit: &dyn Fn(String) -> String,
) -> String {
    let f = Fixture::load("resnet_tiny");
    assert_eq!(f.batch, 2);
    let mut case = f.case();
    case.tile = schedule;
    match check(&case, edit) {
        Ok(c) => panic!(
            "the planted bug went unnoticed (worst scaled error {:e})",
            c.worst
        ),
        Err(e) => {
            println!("the planted bug is reported as:\n{e}\n");
            e
        }
    }
}

fn resnet_tiny_program() -> cnnc::back::kernel_ir::KernelProgram {
    let f = Fixture::load("resnet_tiny");
    cnnc::back::plan::compile(f.graph(), &f.compilation.sources)
        .unwrap()
        .1
}

#[test]
fn a_planted_bound_error_is_reported_with_its_kernel_and_element() {
    // Off by one in a bound: each GEMM's epilogue skips the last output pixel.
    let error = planted(&|cuda| {
        // Plant it in the CUDA-core GEMM this FP32 program runs; the
        // tensor-core tile (`gemm_tc`) has the same bound and stays right.
        let right = "if (n >= n_total) continue;";
        let fp32_gemm = cuda.find(" void gemm(").expect("the CUDA-core GEMM");
        let at = fp32_gemm + cuda[fp32_gemm..].find(right).expect("the GEMM's bound");
        format!(
            "{}if (n >= n_total - 1) continue;{}",
            &cuda[..at],
            &cuda[at + right.len()..]
        )
    });
    // The first kernel is the first GEMM; its last element (image 1, every
    // channel, the last of 32×32 pixels) was never written.
    let first = &resnet_tiny_program().kernels[0].name;
    assert!(
        error.contains(&format!("first wrong kernel: step 0, `{first}`")),
        "{error}"
    );
    assert!(
        error.contains(
            "first wrong element image 1, channel 0, pixel 1023 (y 31, x 31): emulated NaN"
        ),
        "{error}"
    );
}

#[test]
fn a_planted_index_error_is_reported_with_its_kernel_and_element() {
    // Off by one in an index, in one kernel only: the first residual add reads
    // the next pixel of the shortcut.
    let program = resnet_tiny_program();
    let victim = program
        .kernels
        .iter()
        .find(|k| {
            k.epilogue
                .iter()
                .any(|e| matches!(e, cnnc::ir::Epilogue::AddInput(_)))
        })
        .expect("resnet_tiny has a residual add in an epilogue");
    let (index, name) = (victim.index, victim.name.clone());
    assert!(index > 0, "the victim is not the first kernel");
    let epilogue = format!("struct {name}_epilogue {{");
    let error = planted(&|cuda| {
        let at = cuda.find(&epilogue).expect("the victim's epilogue");
        let end = at + cuda[at..].find("};").unwrap();
        let body = &cuda[at..end];
        assert_eq!(body.matches(" + p];  // residual add").count(), 1);
        let bad = body.replace(" + p];  // residual add", " + p + 1];  // residual add");
        format!("{}{bad}{}", &cuda[..at], &cuda[end..])
    });
    assert!(
        error.contains(&format!("first wrong kernel: step {index}, `{name}`")),
        "{error}"
    );
    assert!(
        error.contains("first wrong element image 0, channel 0, pixel 0 (y 0, x 0)"),
        "{error}"
    );
    // The end-to-end summary comes first.
    assert!(
        error.starts_with("resnet_tiny: the emulated kernels differ from the reference evaluator"),
        "{error}"
    );
}

#[test]
fn a_missing_barrier_is_reported() {
    // Without the barrier that ends each K step, a thread that finishes early
    // reads the other buffer before the others have filled it (and fills it
    // while they may still read it).
    let error = planted(&|cuda| {
        let right = "    if (more) store(buf ^ 1);\n    __syncthreads();\n";
        assert_eq!(cuda.matches(right).count(), 1);
        cuda.replace(right, "    if (more) store(buf ^ 1);\n")
    });
    // The first GEMM has two K steps (K = 3·3·3 = 27, BK = 16), so it is the first to go wrong.
    let first = &resnet_tiny_program().kernels[0].name;
    assert!(
        error.contains(&format!("step 0, kernel `{first}`"))
            && error.contains("gives different results when its threads run in another order"),
        "{error}"
    );
}

/// [`planted`] with every GEMM on the smallest tile with K split 3 ways
/// (resnet_tiny's first GEMM, K = 27 in two slices, gets 2 splits), and the
/// one occurrence of `right` in the printed CUDA replaced by `wrong`.
fn planted_in_split_k(right: &str, wrong: &str) -> String {
    let split = Some((*cnnc::back::kernel_ir::TILES.last().unwrap(), 3));
    planted_with(split, &|cuda| {
        assert_eq!(cuda.matches(right).count(), 1, "{right}");
        cuda.replace(right, wrong)
    })
}

#[test]
fn a_split_k_sum_that_skips_a_split_is_reported() {
    // The last block adds every split's partials but the first.
    let error = planted_in_split_k(
        "for (int s = 0; s < SPLIT; ++s) {",
        "for (int s = 1; s < SPLIT; ++s) {",
    );
    let first = &resnet_tiny_program().kernels[0].name;
    assert!(
        error.contains(&format!("first wrong kernel: step 0, `{first}`")),
        "{error}"
    );
}

#[test]
fn a_split_k_counter_left_set_is_reported() {
    // Without the reset, the next launch of a kernel with the same tiles would
    // count from the wrong number (a CUDA graph replays every launch).
    let error = planted_in_split_k("if (last) counters[tile] = 0u;", "");
    let first = &resnet_tiny_program().kernels[0].name;
    assert!(
        error.contains(&format!("step 0, kernel `{first}`"))
            && error.contains("left split-K counter 0 at 2 (every launch must leave them at zero)"),
        "{error}"
    );
}

#[test]
fn a_split_k_partial_written_past_the_workspace_is_reported() {
    // Partials one tile too far: the last tile's land past the workspace.
    let error = planted_in_split_k(
        "float* mine = ws + ((long)split * tiles + tile) * (BM * BN) + tid;",
        "float* mine = ws + ((long)split * tiles + tile + 1) * (BM * BN) + tid;",
    );
    assert!(
        error.contains("wrote outside the split-K workspace"),
        "{error}"
    );
}

#[test]
fn a_write_outside_the_output_place_is_reported() {
    // An epilogue that writes one image too far lands in another buffer (or
    // the guard zone): the harness stops at that kernel.
    let name = resnet_tiny_program().kernels[0].name.clone();
    let error = planted(&|cuda| {
        let at = cuda.find(&format!(") {name}(")).unwrap();
        let end = at + cuda[at..].find("\n}").unwrap();
        let body = cuda[at..end].replace(
            "(x, w, bias, r0, y, batch, ws, counters)",
            "(x, w, bias, r0, y + 1, batch, ws, counters)",
        );
        format!("{}{body}{}", &cuda[..at], &cuda[end..])
    });
    assert!(
        error.contains(&format!("step 0, kernel `{name}`"))
            && error.contains("wrote outside its output place"),
        "{error}"
    );
}

#[test]
fn the_emulator_keeps_cuda_semantics() {
    let source = std::fs::read_to_string("tests/emulation/selftest.cu").unwrap();
    let module = Module::build("selftest", &source).unwrap();

    // A block reduction over 3 blocks of 256 (the last partly empty).
    let n = 700;
    let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
    let mut y = vec![f32::NAN; 3];
    module
        .launch(
            "block_sum",
            (3, 1, 1),
            (256, 1, 1),
            0,
            &[Arg::In(x.as_ptr()), Arg::Out(y.as_mut_ptr()), Arg::Int(n)],
        )
        .unwrap();
    for b in 0..3 {
        let want: f32 = x[b * 256..((b + 1) * 256).min(n as usize)].iter().sum();
        assert_eq!(y[b], want, "block {b}");
    }

    // A race: right in one scheduling order, wrong (uninitialised shared
    // memory) in the other. The harness compares both orders.
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let mut forward = vec![0.0f32; 64];
    let mut reverse = vec![0.0f32; 64];
    let args = |y: &mut Vec<f32>| [Arg::In(x.as_ptr()), Arg::Out(y.as_mut_ptr())];
    module
        .launch("racy_shift", (1, 1, 1), (64, 1, 1), 0, &args(&mut forward))
        .unwrap();
    module
        .launch_in(
            harness::Order::Reverse,
            "racy_shift",
            (1, 1, 1),
            (64, 1, 1),
            0,
            &args(&mut reverse),
        )
        .unwrap();
    assert_eq!(forward[1..], x[..63]);
    assert!(reverse[1..].iter().all(|v| v.is_nan()), "{reverse:?}");

    // Dynamic shared memory: each block of 64 reverses its slice.
    let x: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let mut y = vec![0.0f32; 256];
    module
        .launch(
            "reverse_dynamic",
            (4, 1, 1),
            (64, 1, 1),
            64 * 4,
            &[Arg::In(x.as_ptr()), Arg::Out(y.as_mut_ptr())],
        )
        .unwrap();
    for i in 0..256 {
        assert_eq!(y[i], x[(i / 64) * 64 + 63 - i % 64]);
    }

    // Warp shuffles, ballots and atomics across blocks.
    let x: Vec<f32> = (0..1000).map(|i| (i % 5) as f32).collect();
    let mut y = vec![0.0f32; 1];
    module
        .launch(
            "warp_sum",
            (8, 1, 1),
            (128, 1, 1),
            0,
            &[
                Arg::In(x.as_ptr()),
                Arg::Out(y.as_mut_ptr()),
                Arg::Int(1000),
            ],
        )
        .unwrap();
    assert_eq!(y[0], x.iter().sum::<f32>());

    // Built-in variables in 2-D blocks and a 3-D grid.
    let (gx, gy, gz, bx, by) = (3u32, 2u32, 2u32, 8u32, 4u32);
    let count = (gx * gy * gz * bx * by) as usize;
    let mut y = vec![f32::NAN; 4 * count];
    module
        .launch(
            "coordinates",
            (gx, gy, gz),
            (bx, by, 1),
            0,
            &[Arg::Out(y.as_mut_ptr())],
        )
        .unwrap();
    let mut i = 0;
    for z in 0..gz {
        for yb in 0..gy {
            for xb in 0..gx {
                for ty in 0..by {
                    for tx in 0..bx {
                        let want = [
                            tx as f32 + 100.0 * ty as f32,
                            xb as f32,
                            yb as f32,
                            z as f32,
                        ];
                        assert_eq!(y[4 * i..4 * i + 4], want, "thread {i}");
                        i += 1;
                    }
                }
            }
        }
    }

    // Errors a GPU would hang on or leave undefined are reported, not hung on.
    let mut y = vec![0.0f32; 64];
    let e = module
        .launch(
            "divergent_barrier",
            (1, 1, 1),
            (64, 1, 1),
            0,
            &[Arg::Out(y.as_mut_ptr())],
        )
        .unwrap_err();
    assert!(
        e.contains("divergent __syncthreads(): 32 of 64 threads wait"),
        "{e}"
    );
    let e = module
        .launch(
            "shuffle_after_exit",
            (1, 1, 1),
            (32, 1, 1),
            0,
            &[Arg::Out(y.as_mut_ptr())],
        )
        .unwrap_err();
    assert!(
        e.contains("names lanes 0xffff0000 of warp 0 that have exited"),
        "{e}"
    );
    // CUDA's launch limits, and the kernel's own __launch_bounds__.
    let e = module
        .launch(
            "coordinates",
            (1, 1, 1),
            (2048, 1, 1),
            0,
            &[Arg::Out(y.as_mut_ptr())],
        )
        .unwrap_err();
    assert!(e.contains("invalid launch configuration"), "{e}");
    let e = module
        .launch(
            "block_sum",
            (1, 1, 1),
            (512, 1, 1),
            0,
            &[Arg::In(x.as_ptr()), Arg::Out(y.as_mut_ptr()), Arg::Int(1)],
        )
        .unwrap_err();
    assert!(e.contains("__launch_bounds__(256)"), "{e}");
    // Arguments are checked against the printed signature.
    let e = module
        .launch(
            "coordinates",
            (1, 1, 1),
            (1, 1, 1),
            0,
            &[Arg::In(x.as_ptr())],
        )
        .unwrap_err();
    assert!(e.contains("argument 0 (`y`) is `float*`"), "{e}");

    // The math library: the C library's float functions, as CUDA's are specified.
    let mut y = vec![0.0f32; 10];
    module
        .launch("math", (1, 1, 1), (1, 1, 1), 0, &[Arg::Out(y.as_mut_ptr())])
        .unwrap();
    let v = 0.75f64;
    let want = [
        2.5,
        v.exp(),
        v.exp_m1(),
        v.tanh(),
        0.7111556336535151,
        v.ln(),
        v.powf(1.5),
        0.0,
        1.0,
        7.0,
    ];
    for (i, (&g, w)) in y.iter().zip(want).enumerate() {
        assert!(
            harness::scaled_error(g as f64, w) <= TOLERANCE,
            "math[{i}]: {g} vs {w}"
        );
    }
}

/// Run by `a_crash_in_a_kernel_names_it` in a child process: a kernel writes
/// through a wild pointer.
#[test]
#[ignore = "crashes on purpose; run by a_crash_in_a_kernel_names_it"]
fn crash_in_a_kernel() {
    let source = std::fs::read_to_string("tests/emulation/selftest.cu").unwrap();
    let module = Module::build("selftest", &source).unwrap();
    let wild = 16 as *mut f32;
    let _ = module.launch("coordinates", (1, 1, 1), (4, 1, 1), 0, &[Arg::Out(wild)]);
    unreachable!("the launch should have crashed");
}

#[test]
fn a_crash_in_a_kernel_names_it() {
    // Build first, so the child finds the library in the cache.
    let source = std::fs::read_to_string("tests/emulation/selftest.cu").unwrap();
    Module::build("selftest", &source).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "emulation::crash_in_a_kernel",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cnnc CUDA emulation: kernel `coordinates` crashed (SIGSEGV at address 0x10) in block (0,0,0), thread (0,0,0)"),
        "{stderr}"
    );
}

#[test]
fn the_source_parser_reads_printed_signatures() {
    let k = harness::kernels_in(
        "extern \"C\" __global__ void __launch_bounds__(128) k00_conv(const float* __restrict__ x, float* __restrict__ y, int batch) {",
    )
    .unwrap();
    assert_eq!(k.len(), 1);
    assert_eq!(k[0].name, "k00_conv");
    assert_eq!(k[0].launch_bounds, Some(128));
    let types: Vec<&str> = k[0].params.iter().map(|p| p.ty.as_str()).collect();
    assert_eq!(types, ["const float*", "float*", "int"]);
    assert_eq!(
        harness::rewrite_shared("void f() {\n  extern __shared__ __align__(16) float tile[];\n}"),
        "void f() {\n  float* const tile = static_cast<float*>(::cnnc_emu::dynamic_shared());\n}"
    );
    // Static shared arrays in functions are poisoned per block; comments and
    // namespaces are not functions.
    assert_eq!(
        harness::rewrite_shared(
            "namespace a {\n// __shared__ x;\ntemplate <int N> void g() {\n  __shared__ float As[N][4];\n}\n}"
        ),
        "namespace a {\n// __shared__ x;\ntemplate <int N> void g() {\n  __shared__ float As[N][4]; ::cnnc_emu::shared_declared(&As, sizeof(As));\n}\n}"
    );
}

/// A fixture's input, repeated (with noise, so images differ) to `batch` images.
fn batch_of(f: &Fixture, batch: usize, seed: u64) -> Vec<f32> {
    let per = f.input.len() / f.batch;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..batch * per)
        .map(|i| f.input[i % f.input.len()] + rng.random_range(-0.5..0.5))
        .collect()
}

#[test]
fn every_batch_bucket_variant_matches_the_evaluator() {
    // Batch 9 launches the variants for 8 and up, batch 64 those for 64 and
    // up (tuned for large batches); with the variants dropped, batch 9 runs
    // the batch-1 kernels, so a linear layer's GEMV covers 9 images with two
    // blocks. Batch 9 also runs in reverse thread order (the race check).
    // (About 30 s on two cores: batch 64 only on the fixtures that run it quickly.)
    let mut jobs = Vec::new();
    for name in fixture_names() {
        if name == "kitchen_sink_softmax" {
            continue;
        }
        jobs.push((name.clone(), 9, false));
        if matches!(
            name.as_str(),
            "mnist_cnn" | "lenet5" | "kitchen_sink" | "inception_tiny"
        ) {
            jobs.push((name.clone(), 64, false));
        }
        if matches!(name.as_str(), "mnist_cnn" | "lenet5" | "kitchen_sink") {
            jobs.push((name, 9, true));
        }
    }
    let launched = Mutex::new(std::collections::BTreeSet::new());
    let failures = in_parallel(&jobs, |(name, batch, batch1_only)| {
        let f = Fixture::load(name);
        let mut case = f.case();
        case.tag = format!(
            "{}-b{batch}{}",
            f.name,
            if *batch1_only { "-batch1-kernels" } else { "" }
        );
        case.batch = *batch;
        case.input = batch_of(&f, *batch, 17);
        case.both_orders = *batch == 9;
        case.batch1_kernels_only = *batch1_only;
        // Which schedules ran: a GEMV past one block, a variant per bucket.
        let (_, program, _) = cnnc::back::plan::compile(f.graph(), &f.compilation.sources)?;
        for k in &program.kernels {
            if let cnnc::back::kernel_ir::KernelKind::Gemm(g) = &k.kind {
                let chosen = k
                    .variants
                    .iter()
                    .rev()
                    .find(|v| v.min_batch <= *batch as u64);
                let mut l = launched.lock().unwrap();
                match (chosen, batch1_only) {
                    (Some(v), false) => {
                        l.insert(format!("variant b{}", v.min_batch));
                    }
                    _ if matches!(g.schedule, cnnc::back::kernel_ir::Schedule::Gemv(_))
                        && *batch > 7 =>
                    {
                        l.insert("gemv over several blocks".to_string());
                    }
                    _ => {}
                }
            }
        }
        let checked = check(&case, &|cuda| cuda)?;
        report(&case.tag, *batch, &checked);
        Ok(())
    });
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
    let launched = launched.into_inner().unwrap();
    for want in ["variant b8", "variant b64", "gemv over several blocks"] {
        assert!(
            launched.contains(want),
            "no fixture ran a {want}: {launched:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Tensor cores (`--precision tf32` and `tf32x3`)
// ---------------------------------------------------------------------------

/// The TF32 value the tensor core multiplies: `bits` with the 13 low bits dropped.
fn tf32_truncated(v: f32) -> f64 {
    f32::from_bits(v.to_bits() & 0xffff_e000) as f64
}

/// `cvt.rna.tf32.f32` as the PTX ISA defines it: nearest, ties away from zero.
fn tf32_rounded(v: f32) -> f32 {
    f32::from_bits((v.to_bits() + 0x1000) & 0xffff_e000)
}

#[test]
fn the_emulated_tensor_core_instructions_follow_the_ptx_isa() {
    let source = format!(
        "{}{}",
        cnnc::back::cuda::PRELUDE,
        std::fs::read_to_string("tests/emulation/selftest_tc.cu").unwrap()
    );
    let module = Module::build("selftest_tc", &source).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(23);

    // mma.m16n8k8 against a triple loop over the operands as the tensor core
    // sees them (truncated without conversion, rounded with it), plus C.
    for round in [0, 1] {
        let a: Vec<f32> = (0..128).map(|_| rng.random_range(-2.0..2.0)).collect();
        let b: Vec<f32> = (0..64).map(|_| rng.random_range(-2.0..2.0)).collect();
        let c: Vec<f32> = (0..128).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut d = c.clone();
        module
            .launch(
                "mma_tile",
                (1, 1, 1),
                (32, 1, 1),
                0,
                &[
                    Arg::In(a.as_ptr()),
                    Arg::In(b.as_ptr()),
                    Arg::Out(d.as_mut_ptr()),
                    Arg::Int(round),
                ],
            )
            .unwrap();
        let op = |v: f32| {
            if round == 1 {
                tf32_rounded(v) as f64
            } else {
                tf32_truncated(v)
            }
        };
        for m in 0..16 {
            for n in 0..8 {
                let want = c[m * 8 + n] as f64
                    + (0..8)
                        .map(|k| op(a[m * 8 + k]) * op(b[k * 8 + n]))
                        .sum::<f64>();
                let got = d[m * 8 + n] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "round {round}: D[{m}][{n}] = {got}, want {want}"
                );
            }
        }
    }
    // Rounding versus truncation: 1 + 2^-11 is half a TF32 step above 1.
    let x = 1.0f32 + 2f32.powi(-11);
    assert_eq!(tf32_rounded(x), 1.0 + 2f32.powi(-10));
    let mut a = vec![0.0f32; 128];
    let mut b = vec![0.0f32; 64];
    a[0] = x;
    b[0] = 1.0;
    for (round, want) in [(0, 1.0f32), (1, 1.0 + 2f32.powi(-10))] {
        let mut d = vec![0.0f32; 128];
        module
            .launch(
                "mma_tile",
                (1, 1, 1),
                (32, 1, 1),
                0,
                &[
                    Arg::In(a.as_ptr()),
                    Arg::In(b.as_ptr()),
                    Arg::Out(d.as_mut_ptr()),
                    Arg::Int(round),
                ],
            )
            .unwrap();
        assert_eq!(d[0], want, "round {round}");
    }

    // ldmatrix.x4 of a 16x8 float tile: lane l gets, in register i, the
    // 32-bit element (l / 4, l % 4) of matrix i (rows (i % 2)·8.., columns (i / 2)·4..).
    let x: Vec<f32> = (0..128).map(|i| i as f32).collect();
    let mut out = vec![f32::NAN; 128];
    module
        .launch(
            "ldmatrix_x4",
            (1, 1, 1),
            (32, 1, 1),
            0,
            &[Arg::In(x.as_ptr()), Arg::Out(out.as_mut_ptr())],
        )
        .unwrap();
    for lane in 0..32 {
        for i in 0..4 {
            let row = (i % 2) * 8 + lane / 4;
            let col = (i / 2) * 4 + lane % 4;
            assert_eq!(out[lane * 4 + i], x[row * 8 + col], "lane {lane} r{i}");
        }
    }

    // cp.async copies land only at the wait_group that covers their group.
    let x: Vec<f32> = (0..12).map(|i| 100.0 + i as f32).collect();
    let mut out = vec![f32::NAN; 7];
    module
        .launch(
            "cp_async_groups",
            (1, 1, 1),
            (32, 1, 1),
            0,
            &[Arg::In(x.as_ptr()), Arg::Out(out.as_mut_ptr())],
        )
        .unwrap();
    assert_eq!(out, [7.0, 100.0, 7.0, 107.0, 7.0, 0.0, 0.0]);

    sixteen_bit_tensor_core_instructions(&module, &mut rng);
}

/// The 16-bit half of the check above: `cvt.rn.{bf16,f16}x2.f32` against the
/// `half` crate's round-to-nearest-even conversions (and hand-picked ties,
/// overflows and subnormals), and `mma.m16n8k16` against a triple loop over
/// the operands as converted by `half`, decoded exactly, plus C.
fn sixteen_bit_tensor_core_instructions(module: &Module, rng: &mut rand_chacha::ChaCha8Rng) {
    use cnnc_runtime::plan::HalfFormat;
    let p = |e: i32| 2f32.powi(e);
    // Values at the edges: ties to even at 1 (bf16: step 2^-7, fp16: 2^-10),
    // the largest FP16 and the midpoint above it, FP16 subnormals and their
    // ties, FLT_MAX (bf16 rounds it up to infinity), infinities.
    let mut x: Vec<f32> = vec![
        1.0 + p(-8),
        1.0 + 3.0 * p(-8),
        1.0 + p(-11),
        1.0 + 3.0 * p(-11),
        -(1.0 + p(-8) + p(-20)),
        65504.0,
        65519.0,
        65520.0,
        -65520.0,
        1e6,
        p(-25),
        3.0 * p(-25),
        p(-24) * 1.25,
        -p(-30),
        p(-14) - p(-25),
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        f32::MIN_POSITIVE / 3.0,
    ];
    while x.len() < 256 {
        let magnitude = p(rng.random_range(-30..20));
        x.push(rng.random_range(-1.0f32..1.0) * magnitude);
    }
    for (fp16, format) in [(0, HalfFormat::Bf16), (1, HalfFormat::Fp16)] {
        let mut out = vec![f32::NAN; x.len() / 2];
        module
            .launch(
                "cvt16",
                (1, 1, 1),
                (32, 1, 1),
                0,
                &[
                    Arg::In(x.as_ptr()),
                    Arg::Out(out.as_mut_ptr()),
                    Arg::Int(out.len() as i32),
                    Arg::Int(fp16),
                ],
            )
            .unwrap();
        for (i, packed) in out.iter().enumerate() {
            let packed = packed.to_bits();
            let (lo, hi) = ((packed & 0xffff) as u16, (packed >> 16) as u16);
            assert_eq!(
                lo,
                format.bits(x[2 * i]),
                "{}: {:e}",
                format.name(),
                x[2 * i]
            );
            assert_eq!(
                hi,
                format.bits(x[2 * i + 1]),
                "{}: {:e}",
                format.name(),
                x[2 * i + 1]
            );
        }
    }
    // The hand-picked cases, by value: ties go to even, FP16 overflows at
    // the midpoint 65520, 1.25 subnormal steps round to 1.
    let value = |f: HalfFormat, v: f32| f.value(f.bits(v));
    assert_eq!(value(HalfFormat::Bf16, 1.0 + p(-8)), 1.0);
    assert_eq!(
        value(HalfFormat::Bf16, 1.0 + 3.0 * p(-8)),
        1.0 + p(-6) as f64
    );
    assert_eq!(value(HalfFormat::Fp16, 1.0 + p(-11)), 1.0);
    assert_eq!(value(HalfFormat::Fp16, 65519.0), 65504.0);
    assert_eq!(value(HalfFormat::Fp16, 65520.0), f64::INFINITY);
    assert_eq!(value(HalfFormat::Fp16, 3.0 * p(-25)), p(-23) as f64);
    assert_eq!(value(HalfFormat::Bf16, f32::MAX), f64::INFINITY);

    // mma.m16n8k16: operands spread over magnitudes so that a wrong lane,
    // half or register shows.
    for (fp16, format) in [(0, HalfFormat::Bf16), (1, HalfFormat::Fp16)] {
        let a: Vec<f32> = (0..256).map(|_| rng.random_range(-2.0..2.0)).collect();
        let b: Vec<f32> = (0..128).map(|_| rng.random_range(-2.0..2.0)).collect();
        let c: Vec<f32> = (0..128).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut d = c.clone();
        module
            .launch(
                "mma16_tile",
                (1, 1, 1),
                (32, 1, 1),
                0,
                &[
                    Arg::In(a.as_ptr()),
                    Arg::In(b.as_ptr()),
                    Arg::Out(d.as_mut_ptr()),
                    Arg::Int(fp16),
                ],
            )
            .unwrap();
        let op = |v: f32| format.value(format.bits(v));
        for m in 0..16 {
            for n in 0..8 {
                let want = c[m * 8 + n] as f64
                    + (0..16)
                        .map(|k| op(a[m * 16 + k]) * op(b[k * 8 + n]))
                        .sum::<f64>();
                // One rounding of the exact sum to f32 (the emulator's model).
                assert_eq!(d[m * 8 + n], want as f32, "{}: D[{m}][{n}]", format.name());
            }
        }
    }
}

/// A fixture with every GEMM that can on the tensor-core `tile`.
fn tensor_case<'a>(
    f: &'a Fixture,
    tile: cnnc::back::kernel_ir::TcTile,
    precision: cnnc::back::kernel_ir::Precision,
) -> Case<'a> {
    let mut case = f.case();
    case.tag = format!(
        "{}-tc{}x{}-w{}x{}-{}",
        f.name,
        tile.bm,
        tile.bn,
        tile.wm,
        tile.wn,
        precision.name()
    );
    case.precision = precision;
    case.tensor_tile = Some(tile);
    case
}

#[test]
fn every_tensor_core_tile_matches_the_evaluator() {
    // At test sizes no GEMM fills a GPU, so the compiler keeps them on CUDA
    // cores; force each tensor-core tile on the fixtures with every conv
    // variant (strides, dilation, padding modes, residual epilogues, linear
    // layers; grouped convs stay on CUDA cores), in TF32 and 3xTF32.
    let mut jobs = Vec::new();
    for name in ["resnet_tiny", "kitchen_sink", "mnist_cnn"] {
        for tile in cnnc::back::kernel_ir::TC_TILES {
            jobs.push((name, *tile, cnnc::back::kernel_ir::Precision::Tf32));
        }
        jobs.push((
            name,
            *cnnc::back::kernel_ir::TC_TILES.last().unwrap(),
            cnnc::back::kernel_ir::Precision::Tf32x3,
        ));
    }
    let failures = in_parallel(&jobs, |(name, tile, precision)| {
        let f = Fixture::load(name);
        let case = tensor_case(&f, *tile, *precision);
        let checked = check(&case, &|cuda| cuda)?;
        report(&case.tag, f.batch, &checked);
        Ok(())
    });
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn every_16_bit_tensor_core_tile_matches_the_evaluator() {
    // The bf16 and fp16 tiles (gemm_tc16) forced as above, on the smallest
    // and the largest tile (the warp tiles of the others lie between), against
    // the evaluator within the tolerances docs/testing.md derives.
    let tiles = cnnc::back::kernel_ir::TC_TILES;
    let mut jobs = Vec::new();
    for name in ["resnet_tiny", "kitchen_sink", "mnist_cnn"] {
        for precision in [
            cnnc::back::kernel_ir::Precision::Bf16,
            cnnc::back::kernel_ir::Precision::Fp16,
        ] {
            jobs.push((name, *tiles.last().unwrap(), precision));
        }
    }
    jobs.push((
        "resnet_tiny",
        tiles[0],
        cnnc::back::kernel_ir::Precision::Bf16,
    ));
    let failures = in_parallel(&jobs, |(name, tile, precision)| {
        let f = Fixture::load(name);
        let case = tensor_case(&f, *tile, *precision);
        let checked = check(&case, &|cuda| cuda)?;
        report(&case.tag, f.batch, &checked);
        Ok(())
    });
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// A bf16 or fp16 build with the schedules the compiler picks, at `batch`:
/// a layer with a 16-bit tensor-core variant (for batch 8 and up) keeps only
/// its 16-bit weights on the GPU, so its batch-1 kernel on CUDA cores
/// (`gemm` with `Weights16`) reads them too.
fn own_schedule_case(
    f: &Fixture,
    precision: cnnc::back::kernel_ir::Precision,
    batch: usize,
) -> Case<'_> {
    let mut case = f.case();
    case.tag = format!("{}-{}-b{batch}", f.name, precision.name());
    case.precision = precision;
    if batch != f.batch {
        case.batch = batch;
        case.input = batch_of(f, batch, 23);
    }
    case
}

#[test]
fn sixteen_bit_builds_match_the_evaluator_with_their_own_schedules() {
    // Batch 2 runs the batch-1 kernels (CUDA cores, 16-bit weights where
    // the layer has a 16-bit copy), batch 9 the variants for 8 and up
    // (gemm_tc16 where the compiler chose tensor cores).
    let mut jobs = Vec::new();
    for name in ["resnet_tiny", "kitchen_sink"] {
        for precision in [
            cnnc::back::kernel_ir::Precision::Bf16,
            cnnc::back::kernel_ir::Precision::Fp16,
        ] {
            jobs.push((name, precision, 2));
            jobs.push((name, precision, 9));
        }
    }
    let failures = in_parallel(&jobs, |(name, precision, batch)| {
        let f = Fixture::load(name);
        let case = own_schedule_case(&f, *precision, *batch);
        let checked = check(&case, &|cuda| cuda)?;
        report(&case.tag, *batch, &checked);
        Ok(())
    });
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
    // The cases above do run CUDA-core kernels on 16-bit weights.
    let f = Fixture::load("resnet_tiny");
    let program = cnnc::back::kernel_ir::lower_with(
        &cnnc::ir::passes::optimize(f.graph()).unwrap().0,
        &f.compilation.sources,
        cnnc::back::kernel_ir::Precision::Bf16,
    )
    .unwrap();
    assert!(program.kernels.iter().any(|k| k.half_weights().is_some()
        && matches!(&k.kind, cnnc::back::kernel_ir::KernelKind::Gemm(g)
            if matches!(g.schedule, cnnc::back::kernel_ir::Schedule::Tile { .. }))));
}

#[test]
fn a_wide_linear_layer_reads_its_16_bit_weights_in_every_form() {
    // A linear layer wide enough for tensor cores at batch 64 keeps only its
    // 16-bit weights on the GPU, so its GEMV (batch 1-7) and its CUDA-core
    // tile (8-63) read them too: all three against the evaluator, in bf16
    // and fp16.
    let source =
        "model wide {\n  input [64]\n  fc = linear(8192)\n  relu\n  head = linear(10)\n}\n";
    let compilation = compiled("wide.cnn", source);
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let weights =
        cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 4).unwrap();
    use cnnc::back::kernel_ir::{Precision, Schedule};
    let (fused, _) = cnnc::ir::passes::optimize(graph).unwrap();
    let program =
        cnnc::back::kernel_ir::lower_with(&fused, &compilation.sources, Precision::Bf16).unwrap();
    let fc = &program.kernels[0];
    assert!(fc.half_weights().is_some());
    let schedules: Vec<Schedule> = match &fc.kind {
        cnnc::back::kernel_ir::KernelKind::Gemm(g) => std::iter::once(g.schedule)
            .chain(fc.variants.iter().map(|v| v.schedule))
            .collect(),
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        schedules.as_slice(),
        [
            Schedule::Gemv(_),
            Schedule::Tile { .. },
            Schedule::Tensor { half: Some(_), .. }
        ]
    ));
    let mut jobs = Vec::new();
    for precision in [Precision::Bf16, Precision::Fp16] {
        for batch in [1, 9, 64] {
            jobs.push((precision, batch));
        }
    }
    let failures = in_parallel(&jobs, |(precision, batch)| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(29);
        let input: Vec<f32> = (0..batch * 64)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let case = Case {
            tag: format!("wide-{}-b{batch}", precision.name()),
            graph,
            sources: &compilation.sources,
            weights: &weights,
            input,
            batch: *batch,
            both_orders: false,
            tile: None,
            batch1_kernels_only: false,
            precision: *precision,
            tensor_tile: None,
        };
        let checked = check(&case, &|cuda| cuda)?;
        report(&case.tag, *batch, &checked);
        Ok(())
    });
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn sixteen_bit_weights_unpacked_out_of_order_are_reported() {
    // The 8-byte load of four 16-bit weights with its first two swapped: a
    // CUDA-core kernel of a layer with a 16-bit copy multiplies the wrong
    // weights (resnet_tiny in bf16 at batch 2: layer2.0.conv1 is the first).
    let f = Fixture::load("resnet_tiny");
    reported_at(
        &own_schedule_case(&f, cnnc::back::kernel_ir::Precision::Bf16, 2),
        "return make_float4(from16(v & 0xffffu), from16((v >> 16) & 0xffffu),",
        "return make_float4(from16((v >> 16) & 0xffffu), from16(v & 0xffffu),",
        5,
    );
}

/// Runs `case` with `right` (once in the printed CUDA) replaced by `wrong`:
/// the error must name the kernel of plan step `step` as the first wrong.
fn reported_at(case: &Case, right: &str, wrong: &str, step: usize) {
    let (_, program, _) =
        cnnc::back::plan::compile_with(case.graph, case.sources, case.precision).expect("compiles");
    let kernel = program.kernels[step].name.clone();
    match check(case, &|cuda| {
        assert_eq!(cuda.matches(right).count(), 1, "{right}");
        cuda.replace(right, wrong)
    }) {
        Ok(c) => panic!(
            "the planted bug went unnoticed (worst scaled error {:e})",
            c.worst
        ),
        Err(e) => {
            println!("the planted bug is reported as:\n{e}\n");
            assert!(
                e.contains(&format!("first wrong kernel: step {step}, `{kernel}`")),
                "{e}"
            );
        }
    }
}

/// [`planted`] with every eligible GEMM of resnet_tiny on the smallest
/// tensor-core tile in `precision`, and `right` (once in the printed CUDA)
/// replaced by `wrong`: the error must name kernel `step` as the first wrong.
fn planted_in_16_bit_tile(
    precision: cnnc::back::kernel_ir::Precision,
    right: &str,
    wrong: &str,
    step: usize,
) {
    let f = Fixture::load("resnet_tiny");
    let case = tensor_case(
        &f,
        *cnnc::back::kernel_ir::TC_TILES.last().unwrap(),
        precision,
    );
    reported_at(&case, right, wrong, step);
}

#[test]
fn swapped_k_halves_in_the_k16_b_fragment_are_reported() {
    // B's ldmatrix.x2 with its two matrices' rows swapped: register b0 gets
    // k 8-15 and b1 k 0-7, so each lane's B pairs meet the wrong A columns.
    planted_in_16_bit_tile(
        cnnc::back::kernel_ir::Precision::Bf16,
        "b16_col = ((lane / 8) % 2) * 8;",
        "b16_col = (1 - (lane / 8) % 2) * 8;",
        0,
    );
}

#[test]
fn a_staged_b_slice_stored_into_the_buffer_in_use_is_reported() {
    // The 16-bit B slice staged in registers stored into the buffer the
    // block is multiplying (t % STAGES) instead of the free one: warps still
    // reading it see the next slice, and the slice it was meant for never
    // lands. The stem (K = 27: two slices, both loaded before the loop)
    // never stages a slice in the loop; the next kernel (K = 144) is the
    // first that does.
    planted_in_16_bit_tile(
        cnnc::back::kernel_ir::Precision::Fp16,
        "if (more) put_b((t + STAGES - 1) % STAGES);",
        "if (more) put_b(t % STAGES);",
        1,
    );
}

#[test]
fn a_16_bit_tile_read_without_its_swizzle_is_reported() {
    // The A fragments (16-bit rows) read as if stored row by row: rows 4-7 of
    // every 8 get the other half of their K-slice.
    planted_in_16_bit_tile(
        cnnc::back::kernel_ir::Precision::Fp16,
        "ldmatrix(a[i], &as[swizzle16(wm0 + i * 16 + a16_row, a16_col)]);",
        "ldmatrix(a[i], &as[(wm0 + i * 16 + a16_row) * 16 + a16_col]);",
        0,
    );
}

/// [`planted`] with every eligible GEMM of resnet_tiny on the smallest
/// tensor-core tile, in TF32, and `right` (once in the printed CUDA)
/// replaced by `wrong`. Returns the error and the first tensor-core kernel.
fn planted_in_tensor_tile(right: &str, wrong: &str) -> (String, String) {
    let f = Fixture::load("resnet_tiny");
    let case = tensor_case(
        &f,
        *cnnc::back::kernel_ir::TC_TILES.last().unwrap(),
        cnnc::back::kernel_ir::Precision::Tf32,
    );
    let first = resnet_tiny_program().kernels[0].name.clone();
    match check(&case, &|cuda| {
        assert_eq!(cuda.matches(right).count(), 1, "{right}");
        cuda.replace(right, wrong)
    }) {
        Ok(c) => panic!(
            "the planted bug went unnoticed (worst scaled error {:e})",
            c.worst
        ),
        Err(e) => {
            println!("the planted bug is reported as:\n{e}\n");
            (e, first)
        }
    }
}

#[test]
fn a_swapped_lane_mapping_in_a_fragment_load_is_reported() {
    // ldmatrix addresses for A with matrices 1 and 2 swapped: a1 gets rows
    // 0-7 at k 4-7 and a2 rows 8-15 at k 0-3, which the mma reads as the
    // other way round.
    let (error, first) = planted_in_tensor_tile(
        "const int a_row = lane % 16, a_col = (lane / 16) * 4;",
        "const int a_row = lane % 8 + (lane / 16) * 8, a_col = ((lane / 8) % 2) * 4;",
    );
    assert!(
        error.contains(&format!("first wrong kernel: step 0, `{first}`")),
        "{error}"
    );
}

#[test]
fn a_missing_cp_async_wait_is_reported() {
    // Without the wait, a slice is multiplied before its copies landed: the
    // emulator's copies land only at a wait, so the kernel reads NaN.
    let (error, first) = planted_in_tensor_tile(
        "    cp_async_wait<STAGES - 2>();  // this thread's copies of slice t have landed\n",
        "",
    );
    assert!(
        error.contains(&format!("first wrong kernel: step 0, `{first}`"))
            && error.contains("emulated NaN"),
        "{error}"
    );
}

#[test]
fn an_unswizzled_read_of_a_swizzled_buffer_is_reported() {
    // The A fragments read as if the shared tile were stored row by row.
    let (error, first) = planted_in_tensor_tile(
        "ldmatrix(a[i], &as[swizzle(wm0 + i * 16 + a_row, kk + a_col)]);",
        "ldmatrix(a[i], &as[(wm0 + i * 16 + a_row) * 16 + kk + a_col]);",
    );
    assert!(
        error.contains(&format!("first wrong kernel: step 0, `{first}`")),
        "{error}"
    );
}

// ---------------------------------------------------------------------------
// Depthwise convolutions (their own kernel, not a grouped GEMM)
// ---------------------------------------------------------------------------

/// Depthwise convolutions of every shape the kernel handles: 3×3, 5×5 and
/// 7×7 filters, stride 1 and 2, dilation 2, odd map sizes (7×9, 37×41),
/// padding wider than the filter's half and unequal padding, 37 channels
/// (not a multiple of the channels a block takes), with and without bias,
/// with folded batch norms, relu6 and silu, residual adds in the epilogue,
/// a depthwise conv written into its slice of a concat, and maps wide and
/// tall enough for several tiles per map.
const DEPTHWISE: &str = "
model depthwise {
  input [37, 7, 9]
  a = conv(37, k=3, p=1, groups=37)                     # 3×3, bias
  relu6
  b = residual { conv = conv(37, k=5, p=2, groups=37, bias=false) bn = batchnorm }
  c = conv(37, k=7, p=(3, 4), groups=37)                # 7×7, unequal padding: [37, 7, 11]
  silu
  d = conv(37, k=3, s=2, p=4, d=2, groups=37)           # dilation 2, wide padding: [37, 6, 8]
  e = conv(37, k=5, s=2, p=2, groups=37, bias=false)    # [37, 3, 4]
  e_bn = batchnorm
  relu6
  f = residual { conv = conv(37, k=7, p=3, groups=37) silu }   # 7×7 on a 3×4 map
  cat = concat {
    g = conv(37, k=3, p=1, groups=37)                   # into channels 0..37 of 42
    h = conv(5, k=1)
  }
  i = conv(42, k=3, p=2, d=2, groups=42)
  global_avgpool
  flatten
  fc = linear(6)
}

model depthwise_large {
  input [5, 37, 41]
  a = conv(5, k=3, p=1, groups=5)                       # 2×2 tiles of 32×32
  relu6
  b = conv(5, k=3, s=2, p=1, groups=5, bias=false)      # [5, 19, 21]
  b_bn = batchnorm
  silu
  c = residual { conv = conv(5, k=7, p=6, d=2, groups=5) }   # dilation 2, 7×7
  d = conv(5, k=5, s=2, p=3, groups=5)                  # [5, 11, 12]
  global_avgpool
  flatten
  fc = linear(4)
}
";

/// The depthwise test models, compiled, with random weights and batch-norm statistics.
fn depthwise_models() -> (cnnc::Compilation, Vec<cnnc_runtime::weights::WeightFile>) {
    let compilation = compiled("depthwise.cnn", DEPTHWISE);
    let weights = compilation
        .models
        .iter()
        .map(|m| {
            let graph = m.graph.as_ref().unwrap();
            let mut w =
                cnnc::ir::weights::init(graph, cnnc::ir::weights::InitScheme::Pytorch, 3).unwrap();
            randomize_batchnorm(&mut w, 5);
            w
        })
        .collect();
    (compilation, weights)
}

#[test]
fn depthwise_kernels_match_the_evaluator() {
    use cnnc::back::kernel_ir::KernelKind;
    let (compilation, weights) = depthwise_models();
    // What the models exercise: every conv above is a depthwise kernel, some
    // blocks take several channels (37 not a multiple of them), some maps
    // several tiles along each axis, one kernel writes a concat's slice.
    let (mut several, mut partial, mut rows, mut columns, mut slice) =
        (false, false, false, false, false);
    let mut count = 0;
    for m in &compilation.models {
        let graph = m.graph.as_ref().unwrap();
        let (_, program, _) = cnnc::back::plan::compile(graph, &compilation.sources).unwrap();
        for k in &program.kernels {
            if let KernelKind::Depthwise(d) = &k.kind {
                count += 1;
                several |= d.tile.ch > 1;
                partial |= d.channels % d.tile.ch as i64 != 0;
                rows |= k.grid.y > 1;
                columns |= k.grid.z > 1;
                slice |= k.output.channels_total != d.channels;
            }
        }
    }
    assert_eq!(count, 12, "every depthwise conv on the depthwise kernel");
    assert!(several && partial && rows && columns && slice);
    let jobs: Vec<(usize, usize)> = (0..compilation.models.len())
        .flat_map(|m| [(m, 1), (m, 3)])
        .collect();
    let failures = in_parallel(&jobs, |&(m, batch)| {
        let graph = compilation.models[m].graph.as_ref().unwrap();
        let per = graph.input_shape().numel() as usize;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21 + batch as u64);
        let case = Case {
            tag: format!("{}-b{batch}", graph.name),
            graph,
            sources: &compilation.sources,
            weights: &weights[m],
            input: (0..batch * per)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect(),
            batch,
            both_orders: true,
            tile: None,
            batch1_kernels_only: false,
            precision: cnnc::back::kernel_ir::Precision::Fp32,
            tensor_tile: None,
        };
        let checked = check(&case, &|cuda| cuda)?;
        report(&case.tag, batch, &checked);
        Ok(())
    });
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn a_depthwise_halo_off_by_one_is_reported() {
    // The staged input tile starts one column too far right: every output
    // reads its neighbour's inputs.
    let (compilation, weights) = depthwise_models();
    let graph = compilation.models[0].graph.as_ref().unwrap();
    let per = graph.input_shape().numel() as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(23);
    let case = Case {
        tag: "depthwise".into(),
        graph,
        sources: &compilation.sources,
        weights: &weights[0],
        input: (0..2 * per).map(|_| rng.random_range(-2.0..2.0)).collect(),
        batch: 2,
        both_orders: false,
        tile: None,
        batch1_kernels_only: false,
        precision: cnnc::back::kernel_ir::Precision::Fp32,
        tensor_tile: None,
    };
    let right = "const int iy0 = oy0 * D::SH - D::PT, ix0 = ox0 * D::SW - D::PL;";
    let wrong = "const int iy0 = oy0 * D::SH - D::PT, ix0 = ox0 * D::SW - D::PL + 1;";
    let error = match check(&case, &|cuda| {
        assert_eq!(cuda.matches(right).count(), 1);
        cuda.replace(right, wrong)
    }) {
        Ok(c) => panic!(
            "the planted bug went unnoticed (worst scaled error {:e})",
            c.worst
        ),
        Err(e) => e,
    };
    println!("the planted bug is reported as:\n{error}\n");
    let (_, program, _) = cnnc::back::plan::compile(graph, &compilation.sources).unwrap();
    let first = &program.kernels[0];
    assert!(matches!(
        first.kind,
        cnnc::back::kernel_ir::KernelKind::Depthwise(_)
    ));
    assert!(
        error.contains(&format!("first wrong kernel: step 0, `{}`", first.name)),
        "{error}"
    );
}
