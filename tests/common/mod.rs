//! Helpers shared by the integration tests: the `cnnc` binary, fixtures,
//! small zoo models, random weights.

#![allow(dead_code)] // not every helper is used by every configuration

use cnnc_runtime::weights::{Data, WeightFile};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

/// The `cnnc` binary under test, with colour off (the command's output is
/// compared as text).
pub fn cnnc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cnnc"));
    c.env("NO_COLOR", "1");
    c
}

/// Runs the `cnnc` binary with `args` and waits for it.
pub fn run_cnnc(args: &[&str]) -> Output {
    cnnc().args(args).output().expect("run cnnc")
}

/// Random batch-norm statistics (and 1-D weights and biases), so that folding
/// and the batch-norm kernels are exercised with non-trivial values.
pub fn randomize_batchnorm(file: &mut WeightFile, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (key, t) in file.tensors.iter_mut() {
        if let Data::F32(v) = &mut t.data {
            if key.ends_with("running_var") {
                v.iter_mut().for_each(|x| *x = rng.random_range(0.5..1.5));
            } else if key.ends_with("running_mean") || (t.shape.len() == 1 && key.ends_with("bias"))
            {
                v.iter_mut().for_each(|x| *x = rng.random_range(-0.2..0.2));
            } else if t.shape.len() == 1 && key.ends_with("weight") {
                v.iter_mut().for_each(|x| *x = rng.random_range(0.5..1.5));
            }
        }
    }
}

/// Random per-channel factors in `scale` parameters ([C, 1, 1] tensors named
/// `layer_scale`), so a backend that mixes channels up shows it.
pub fn randomize_scales(file: &mut WeightFile, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (key, t) in file.tensors.iter_mut() {
        if let Data::F32(v) = &mut t.data {
            if key.ends_with("layer_scale") {
                v.iter_mut().for_each(|x| *x = rng.random_range(-1.5..1.5));
            }
        }
    }
}

/// `--set` values, as `cnnc::compile_file_at` takes them.
pub type Settings = BTreeMap<String, cnnc::front::check::Value>;

/// A zoo model's small form: `cnnc::compile_file_at(path, &settings, input_hw)`.
pub struct SmallModel {
    pub settings: Settings,
    pub input_hw: Option<(i64, i64)>,
    pub size: i64,
}

/// How to check a zoo model small: a model that declares a `size`
/// parameter (the chapter's models, whose pools are sized from it) gets
/// `--set size=N` with the first of `sizes` it accepts; any other model gets
/// its input height and width replaced by the first size it checks at.
pub fn small_model(path: &Path, sizes: &[i64]) -> Option<SmallModel> {
    if cnnc::declared_parameters(path).is_some_and(|p| p.iter().any(|n| n == "size")) {
        return sizes.iter().copied().find_map(|s| {
            let settings = cnnc::parse_settings(&[format!("size={s}")]).ok()?;
            let c = cnnc::compile_file_at(path, &settings, None).ok()?;
            (!c.has_errors()).then_some(SmallModel {
                settings,
                input_hw: None,
                size: s,
            })
        });
    }
    small_size(path, sizes).map(|s| SmallModel {
        settings: BTreeMap::new(),
        input_hw: Some((s, s)),
        size: s,
    })
}

/// The first of `sizes` at which a model checks with that input height and width.
pub fn small_size(path: &Path, sizes: &[i64]) -> Option<i64> {
    sizes.iter().copied().find(|&s| {
        cnnc::compile_file_at(path, &BTreeMap::new(), Some((s, s))).is_ok_and(|c| !c.has_errors())
    })
}

/// A float32 `.npy` file: shape and values.
pub fn npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec::<f32>().unwrap())
}

/// Every form of `gate`: squeeze-and-excitation with a [C, 1, 1] factor
/// (EfficientNet's SiLU and sigmoid, MobileNet v3's ReLU and hardsigmoid), a
/// [C, H, W] attention map, and a gate that writes into a concat's slice;
/// and a stochastic depth, which inference drops.
pub const GATES: &str = "
model gates {
  input [8, 9, 7]
  stem = conv(8, k=3, p=1)
  relu
  se = gate {
    avgpool = adaptive_avgpool(1)
    fc1 = conv(2, k=1)
    activation = silu
    fc2 = conv(8, k=1)
    scale_activation = sigmoid
  }
  attention = gate { map = conv(8, k=3, p=1) hardsigmoid }
  stochastic_depth(0.2)                  # the identity at inference
  cat = concat {
    left = conv(4, k=1)
    right = gate {
      avgpool = adaptive_avgpool(1)
      fc1 = conv(4, k=1)
      relu
      fc2 = conv(8, k=1)
      hardsigmoid
    }
  }
  # Gates whose map only a convolution reads: the multiply moves into that
  # convolution (a grouped 3x3 one with a residual add, a 1x1 one), but not
  # into a depthwise one.
  stage = residual {
    se = gate { avgpool = adaptive_avgpool(1) fc1 = conv(3, k=1) relu fc2 = conv(12, k=1) sigmoid }
    project = conv(12, k=3, p=1, groups=2)
  }
  se_dw = gate { avgpool = adaptive_avgpool(1) fc = conv(12, k=1) hardsigmoid }
  dw = conv(12, k=3, p=1, groups=12)
  se_head = gate { avgpool = adaptive_avgpool(1) fc = conv(12, k=1) sigmoid }
  head = conv(6, k=1)
  global_avgpool
  flatten
  fc = linear(5)
}
";

/// Gates right after the input, each read only by a convolution (so their
/// multiplies run inside it): images with different means get clearly
/// different factors, which a kernel applying one image's factor to another
/// gets wrong by far more than rounding.
pub const GATED_CONVS: &str = "
model gated_convs {
  input [6, 5, 5]
  se = gate { avgpool = adaptive_avgpool(1) fc = conv(6, k=1) sigmoid }
  conv = conv(6, k=3, p=1, groups=2)
  stage = residual {
    se = gate { avgpool = adaptive_avgpool(1) fc = conv(6, k=1) sigmoid }
    project = conv(6, k=1)
  }
}
";

/// ShuffleNet v2's and ConvNeXt's constructs: `split` with an identity chunk
/// and a branch (and a split into three), `channel_shuffle`, `layer_norm`
/// over channels (on maps and on a flat vector), `linear(per_pixel = true)`,
/// `gelu` and a `scale` (layer_scale) inside a residual (folded into the
/// convolution before it) and one after a layer norm (a channel affine);
/// three layer norms run inside the convolution that reads them (`pre` into
/// the 1×1 `mix`, without a bias; `ln` into `pw1`, with one; `down_norm`
/// into the strided, dilated 3×3 `down`, which reads each input pixel
/// under several taps).
pub const SHUFFLE_NORM: &str = r#"
model shuffle_norm {
  input [6, 9, 7]
  stem = conv(8, k=3, p=1)
  relu
  unit = split(2) {
    identity
    branch2 = seq { conv(4, k=1, bias=false) batchnorm relu conv(4, k=3, p=1, groups=4, bias=false) batchnorm }
  }
  channel_shuffle(2)
  widen = conv(9, k=1)
  three = split(3) { identity  a = conv(5, k=1)  b = seq { conv(1, k=3, p=1) relu } }
  channel_shuffle(3)
  pre = layer_norm
  mix = conv(9, k=1, bias=false)
  norm = layer_norm(eps=1e-6)
  post_layer_scale = scale
  "block" = residual {
    dw = conv(9, k=3, p=1, groups=9)
    ln = layer_norm
    pw1 = linear(18, per_pixel=true)
    gelu
    pw2 = linear(9, per_pixel=true)
    layer_scale = scale(init=0.5)
  }
  down_norm = layer_norm
  down = conv(7, k=3, s=2, d=2)
  global_avgpool
  head_norm = layer_norm
  flatten
  fc = linear(5)
}
"#;

/// The committed PyTorch fixtures (tests/fixtures/README.md), by name: the
/// manifest's entries, which must be exactly the folders that hold a model.
pub fn fixture_names() -> Vec<String> {
    let manifest: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string("tests/fixtures/manifest.json").unwrap())
            .unwrap();
    let names: Vec<String> = manifest.into_keys().collect();
    let mut folders: Vec<String> = std::fs::read_dir("tests/fixtures")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("model.cnn").is_file())
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert_eq!(
        names, folders,
        "tests/fixtures/manifest.json lists every fixture folder"
    );
    assert!(names.len() >= 7, "the seven fixtures");
    names
}

/// One fixture, loaded: its model checked, PyTorch's weights, its input
/// batch and PyTorch's output.
pub struct Fixture {
    pub name: String,
    pub dir: std::path::PathBuf,
    pub compilation: cnnc::Compilation,
    pub weights: WeightFile,
    pub input: Vec<f32>,
    pub batch: usize,
    /// PyTorch's output: shape and values.
    pub expected: (Vec<usize>, Vec<f32>),
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let dir = Path::new("tests/fixtures").join(name);
        let compilation = cnnc::compile_file(&dir.join("model.cnn"), &BTreeMap::new()).unwrap();
        assert!(
            !compilation.has_errors(),
            "{}",
            compilation.render_diagnostics()
        );
        let graph = compilation.models[0].graph.as_ref().unwrap();
        let weights = WeightFile::load(&dir.join("weights.safetensors")).unwrap();
        let dims = graph.input_shape().dims();
        let chw = [dims[0] as usize, dims[1] as usize, dims[2] as usize];
        let input = cnnc_runtime::input::load(
            &[dir.join("input.npy")],
            chw,
            &cnnc_runtime::input::InputOptions::default(),
        )
        .unwrap();
        Fixture {
            name: name.to_string(),
            expected: npy_f32(&dir.join("expected.npy")),
            dir,
            compilation,
            weights,
            batch: input.shape[0],
            input: input.data,
        }
    }

    pub fn graph(&self) -> &cnnc::ir::Graph {
        self.compilation.models[0].graph.as_ref().unwrap()
    }
}
