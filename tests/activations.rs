//! The table of activations (`cnnc_kernels::activation`) holds every backend to one f64 formula: the evaluator, the trainer's f32 forward and derivative, the CPU executor's scalar and vectorised forms, and the CUDA device library run through the emulation header, NaN and ±∞ included.

use crate::harness::{Arg, Module};
use cnnc::ir::{Activation, F64};
use cnnc_kernels::act::apply_slice;
use cnnc_kernels::activation::{Kind, TABLE};

/// Every activation of the IR, with parameters away from their defaults.
fn activations() -> Vec<Activation> {
    vec![
        Activation::Relu,
        Activation::Relu6,
        Activation::LeakyRelu(F64(0.1)),
        Activation::LeakyRelu(F64(-1.5)),
        Activation::Elu(F64(1.0)),
        Activation::Elu(F64(0.3)),
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Silu,
        Activation::Gelu {
            tanh_approximation: false,
        },
        Activation::Gelu {
            tanh_approximation: true,
        },
        Activation::Hardsigmoid,
        Activation::Hardswish,
    ]
}

/// A grid over [−20, 20] (through every kink), small and huge values, ±∞ and NaN.
fn inputs() -> Vec<f32> {
    let mut v: Vec<f32> = (-8000..=8000).map(|i| i as f32 * 2.5e-3).collect();
    for e in -30..=30 {
        let m = 10f32.powi(e);
        v.extend([m, -m, 1.7 * m, -3.1 * m]);
    }
    v.extend([
        -3.0,
        3.0,
        6.0,
        -0.0,
        0.625,
        -87.0,
        88.0,
        -88.5,
        88.5,
        -89.0,
        89.0,
        -100.0,
        100.0,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    v
}

/// `got` agrees with `want`: NaN where it is NaN, the same infinity, else
/// |got − want| ≤ tol · max(1, |want|).
fn agrees(got: f64, want: f64, tol: f64) -> bool {
    // Past f32's range the f32 forms rightly give ∞.
    let want = if want.abs() > f32::MAX as f64 {
        want as f32 as f64
    } else {
        want
    };
    if want.is_nan() {
        return got.is_nan();
    }
    if want.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= tol * want.abs().max(1.0)
}

/// Checks one form of every activation against the f64 formula; returns the failures.
fn hold(form: &str, tol: f64, f: &dyn Fn(Activation, &[f32]) -> Vec<f32>) -> Vec<String> {
    let xs = inputs();
    let mut failures = Vec::new();
    for a in activations() {
        let got = f(a, &xs);
        assert_eq!(got.len(), xs.len());
        let bad: Vec<String> = xs
            .iter()
            .zip(&got)
            .filter_map(|(&x, &g)| {
                // The parameter as the f32 backends see it.
                let (kind, p) = a.kind();
                let want = kind.forward(p as f32 as f64, x as f64);
                (!agrees(g as f64, want, tol)).then(|| format!("f({x:e}) = {g:e}, want {want:e}"))
            })
            .take(3)
            .collect();
        if !bad.is_empty() {
            failures.push(format!("{form}: {a:?}: {}", bad.join("; ")));
        }
    }
    failures
}

#[test]
fn every_form_matches_the_f64_formula() {
    let mut failures = Vec::new();
    // The evaluator is the f64 formula itself, reached through the IR's mapping.
    for a in activations() {
        let (kind, p) = a.kind();
        for x in inputs() {
            let (got, want) = (
                cnnc::tools::eval::activate(a, x as f64),
                kind.forward(p, x as f64),
            );
            if !(got == want || got.is_nan() && want.is_nan()) {
                failures.push(format!("evaluator: {a:?} at {x:e}: {got:e} vs {want:e}"));
            }
        }
    }
    failures.extend(hold("trainer f32", 1e-6, &|a, xs| {
        xs.iter()
            .map(|&x| cnnc::tools::train::kernels::activate(a, x))
            .collect()
    }));
    failures.extend(hold("runtime f32 (Act::apply)", 1e-6, &|a, xs| {
        let act = cnnc::back::plan::act(a);
        xs.iter().map(|&x| act.apply(x)).collect()
    }));
    failures.extend(hold("CPU vectorised (apply_slice)", 1e-6, &|a, xs| {
        let mut v = xs.to_vec();
        apply_slice(cnnc::back::plan::act(a), &mut v);
        v
    }));
    failures.extend(hold("CUDA (emulated)", 1e-6, &|a, xs| cuda(a, xs)));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The device library compiled once with the emulation header, with one
/// kernel per activation that runs the CUDA printer's call of it.
fn cuda_module() -> &'static Module {
    static MODULE: std::sync::OnceLock<Module> = std::sync::OnceLock::new();
    MODULE.get_or_init(|| {
        let mut source = cnnc::back::cuda::PRELUDE.to_string();
        for (i, a) in activations().into_iter().enumerate() {
            let call = cnnc::back::cuda::activation(a, "x[i]");
            source.push_str(&format!(
                "\n__global__ void act{i}(const float* __restrict__ x, float* __restrict__ y, int n) {{\n  \
                 const int i = blockIdx.x * blockDim.x + threadIdx.x;\n  if (i < n) y[i] = {call};\n}}\n"
            ));
        }
        Module::build("activations", &source).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Runs activation `a` of the device library on `xs`, emulated.
fn cuda(a: Activation, xs: &[f32]) -> Vec<f32> {
    let i = activations()
        .iter()
        .position(|&b| b == a)
        .expect("a listed activation");
    let mut y = vec![0f32; xs.len()];
    let blocks = xs.len().div_ceil(256) as u32;
    cuda_module()
        .launch(
            &format!("act{i}"),
            (blocks, 1, 1),
            (256, 1, 1),
            0,
            &[
                Arg::In(xs.as_ptr()),
                Arg::Out(y.as_mut_ptr()),
                Arg::Int(xs.len() as i32),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    y
}

/// The derivative: in f64 against central differences of the f64 formula
/// away from kinks, and the trainer's f32 derivative against the f64 one
/// everywhere (NaN and ±∞ included).
#[test]
fn derivatives_match_finite_differences() {
    let kinks = [0.0, -3.0, 3.0, 6.0];
    let mut failures = Vec::new();
    for a in activations() {
        let (kind, p) = a.kind();
        for x in (-2000..=2000).map(|i| i as f64 * 5e-3 + 1.3e-4) {
            let h = 1e-5;
            if kinks.iter().any(|k| (x - k).abs() < 2.0 * h) {
                continue;
            }
            let fd = (kind.forward(p, x + h) - kind.forward(p, x - h)) / (2.0 * h);
            let d = kind.derivative(p, x);
            if !agrees(d, fd, 1e-6) {
                failures.push(format!(
                    "{a:?} at {x}: derivative {d:e}, differences {fd:e}"
                ));
            }
        }
        for x in inputs() {
            let got = cnnc::tools::train::kernels::activation_grad(a, x) as f64;
            let want = kind.derivative(p as f32 as f64, x as f64);
            if !agrees(got, want, 1e-6) {
                failures.push(format!(
                    "{a:?}: f32 derivative at {x:e}: {got:e} vs {want:e}"
                ));
            }
        }
    }
    failures.truncate(20);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The device library holds each row's CUDA text verbatim, and the table
/// names every activation the checker accepts.
#[test]
fn the_device_library_and_the_checker_follow_the_table() {
    for e in TABLE {
        assert!(
            cnnc::back::cuda::PRELUDE.contains(e.cuda),
            "cuda_prelude.cuh lacks {:?}'s definition:\n{}",
            e.kind,
            e.cuda
        );
        let text = format!("model m {{ input [2, 4, 4] {} }}", e.name);
        let c = cnnc::compile_source("m.cnn", &text, &Default::default());
        assert!(!c.has_errors(), "`{}` does not check", e.name);
    }
    for a in activations() {
        assert_eq!(a.name(), a.kind().0.entry().name);
    }
    assert_eq!(Kind::Gelu.entry().name, Kind::GeluTanh.entry().name);
}
