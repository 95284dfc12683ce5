//! `cnnc build`: a standalone binary for one model. It writes a Rust crate
//! whose driver (the execution plan as Rust data, and the kernel images) is
//! generated with `quote!` and pretty-printed, compiles the kernels to cubins
//! for sm_80 and sm_90 when nvcc is available (otherwise the CUDA source is
//! embedded and compiled on first run with NVRTC), builds the crate with
//! cargo, and moves the binary into place only when everything succeeded.

use cnnc_runtime::plan::{
    Act, Ending, Epi, Place, Plan, Prepared, StateEntry, Step, StepOp, Variant,
};
use proc_macro2::{Literal, TokenStream};
use quote::quote;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Architectures we ship cubins for (A100, H100/H200).
pub const ARCHS: &[u32] = &[80, 90];

fn string(s: &str) -> TokenStream {
    let lit = Literal::string(s);
    quote!(#lit.to_string())
}

fn usize_lit(v: usize) -> Literal {
    Literal::usize_unsuffixed(v)
}

fn pair(p: (usize, usize)) -> TokenStream {
    let (a, b) = (usize_lit(p.0), usize_lit(p.1));
    quote!((#a, #b))
}

fn place(p: &Place) -> TokenStream {
    let (o, co, ct, c, h, w) = (
        usize_lit(p.offset),
        usize_lit(p.channel_offset),
        usize_lit(p.channels_total),
        usize_lit(p.c),
        usize_lit(p.h),
        usize_lit(p.w),
    );
    quote!(Place { offset: #o, channel_offset: #co, channels_total: #ct, c: #c, h: #h, w: #w })
}

fn act(a: &Act) -> TokenStream {
    match a {
        Act::Relu => quote!(Act::Relu),
        Act::Relu6 => quote!(Act::Relu6),
        Act::LeakyRelu(s) => {
            let s = Literal::f32_suffixed(*s);
            quote!(Act::LeakyRelu(#s))
        }
        Act::Elu(a) => {
            let a = Literal::f32_suffixed(*a);
            quote!(Act::Elu(#a))
        }
        Act::Tanh => quote!(Act::Tanh),
        Act::Sigmoid => quote!(Act::Sigmoid),
        Act::Silu => quote!(Act::Silu),
        Act::Gelu => quote!(Act::Gelu),
        Act::GeluTanh => quote!(Act::GeluTanh),
        Act::Hardsigmoid => quote!(Act::Hardsigmoid),
        Act::Hardswish => quote!(Act::Hardswish),
    }
}

fn op(o: &StepOp) -> TokenStream {
    match o {
        StepOp::Gemm(g) => {
            let (ic, oc, groups) = (
                usize_lit(g.in_channels),
                usize_lit(g.out_channels),
                usize_lit(g.groups),
            );
            let (k, s, p, d) = (
                pair(g.kernel),
                pair(g.stride),
                pair(g.pad),
                pair(g.dilation),
            );
            let mode = Literal::u8_unsuffixed(g.padding_mode);
            let (gp, bias) = (g.global_pool, g.bias);
            quote!(StepOp::Gemm(Gemm {
                in_channels: #ic, out_channels: #oc, kernel: #k, stride: #s, pad: #p, dilation: #d,
                groups: #groups, padding_mode: #mode, global_pool: #gp, bias: #bias,
            }))
        }
        StepOp::Pool {
            max,
            kernel,
            stride,
            pad,
            dilation,
            count_include_pad,
        } => {
            let (k, s, p, d) = (pair(*kernel), pair(*stride), pair(*pad), pair(*dilation));
            quote!(StepOp::Pool { max: #max, kernel: #k, stride: #s, pad: #p, dilation: #d, count_include_pad: #count_include_pad })
        }
        StepOp::AdaptivePool { max } => quote!(StepOp::AdaptivePool { max: #max }),
        StepOp::ChannelAffine => quote!(StepOp::ChannelAffine),
        StepOp::Lrn {
            size,
            alpha,
            beta,
            k,
        } => {
            let size = usize_lit(*size);
            let (a, b, k) = (
                Literal::f32_suffixed(*alpha),
                Literal::f32_suffixed(*beta),
                Literal::f32_suffixed(*k),
            );
            quote!(StepOp::Lrn { size: #size, alpha: #a, beta: #b, k: #k })
        }
        StepOp::Softmax { log } => quote!(StepOp::Softmax { log: #log }),
        StepOp::Act(a) => {
            let a = act(a);
            quote!(StepOp::Act(#a))
        }
        StepOp::Add => quote!(StepOp::Add),
        StepOp::Mul => quote!(StepOp::Mul),
        StepOp::Copy => quote!(StepOp::Copy),
    }
}

fn step(s: &Step) -> TokenStream {
    let kernel = string(&s.kernel);
    let op = op(&s.op);
    let inputs: Vec<TokenStream> = s.inputs.iter().map(place).collect();
    let output = place(&s.output);
    let epilogue: Vec<TokenStream> = s
        .epilogue
        .iter()
        .map(|e| match e {
            Epi::Act(a) => {
                let a = act(a);
                quote!(Epi::Act(#a))
            }
            Epi::AddInput(k) => {
                let k = usize_lit(*k);
                quote!(Epi::AddInput(#k))
            }
        })
        .collect();
    let params: Vec<Literal> = s.params.iter().map(|&p| usize_lit(p)).collect();
    let block = Literal::u32_unsuffixed(s.block);
    let (per_image, per_block) = (
        Literal::u64_unsuffixed(s.per_image),
        Literal::u64_unsuffixed(s.per_block),
    );
    let (gy, gz) = (
        Literal::u32_unsuffixed(s.grid_y),
        Literal::u32_unsuffixed(s.grid_z),
    );
    let layers: Vec<TokenStream> = s.layers.iter().map(|l| string(l)).collect();
    let variants: Vec<TokenStream> = s.variants.iter().map(variant).collect();
    let split_k = Literal::u32_unsuffixed(s.split_k);
    let partial_floats = Literal::u64_unsuffixed(s.partial_floats);
    quote!(Step {
        kernel: #kernel,
        op: #op,
        inputs: Vec::from([#(#inputs),*]),
        output: #output,
        epilogue: Vec::from([#(#epilogue),*]),
        params: Vec::from([#(#params),*]),
        block: #block,
        per_image: #per_image,
        per_block: #per_block,
        grid_y: #gy,
        grid_z: #gz,
        layers: Vec::from([#(#layers),*]),
        variants: Vec::from([#(#variants),*]),
        split_k: #split_k,
        partial_floats: #partial_floats,
    })
}

fn variant(v: &Variant) -> TokenStream {
    let kernel = string(&v.kernel);
    let min_batch = usize_lit(v.min_batch);
    let block = Literal::u32_unsuffixed(v.block);
    let (per_image, per_block) = (
        Literal::u64_unsuffixed(v.per_image),
        Literal::u64_unsuffixed(v.per_block),
    );
    let (gy, gz) = (
        Literal::u32_unsuffixed(v.grid_y),
        Literal::u32_unsuffixed(v.grid_z),
    );
    let split_k = Literal::u32_unsuffixed(v.split_k);
    let partial_floats = Literal::u64_unsuffixed(v.partial_floats);
    quote!(Variant {
        min_batch: #min_batch,
        kernel: #kernel,
        block: #block,
        per_image: #per_image,
        per_block: #per_block,
        grid_y: #gy,
        grid_z: #gz,
        split_k: #split_k,
        partial_floats: #partial_floats,
    })
}

fn prepared(p: &Prepared) -> TokenStream {
    match p {
        Prepared::Tensor { key } => {
            let key = string(key);
            quote!(Prepared::Tensor { key: #key })
        }
        Prepared::FoldedWeight { weight, bn, eps } => {
            let (w, b, e) = (string(weight), string(bn), Literal::f64_suffixed(*eps));
            quote!(Prepared::FoldedWeight { weight: #w, bn: #b, eps: #e })
        }
        Prepared::FoldedBias { bias, bn, eps } => {
            let bias = match bias {
                Some(b) => {
                    let b = string(b);
                    quote!(Some(#b))
                }
                None => quote!(None),
            };
            let (b, e) = (string(bn), Literal::f64_suffixed(*eps));
            quote!(Prepared::FoldedBias { bias: #bias, bn: #b, eps: #e })
        }
        Prepared::BnScale { bn, eps } => {
            let (b, e) = (string(bn), Literal::f64_suffixed(*eps));
            quote!(Prepared::BnScale { bn: #b, eps: #e })
        }
        Prepared::BnShift { bn, eps } => {
            let (b, e) = (string(bn), Literal::f64_suffixed(*eps));
            quote!(Prepared::BnShift { bn: #b, eps: #e })
        }
    }
}

fn state_entry(e: &StateEntry) -> TokenStream {
    let key = string(&e.key);
    let shape: Vec<Literal> = e.shape.iter().map(|&d| usize_lit(d)).collect();
    let integer = e.integer;
    let at = string(&e.declared_at);
    quote!(StateEntry { key: #key, shape: Vec::from([#(#shape),*]), integer: #integer, declared_at: #at })
}

/// The driver's `main.rs`, pretty-printed. `cubins` are (arch, file name) pairs in `kernels/`.
pub fn driver_source(
    plan: &Plan,
    source_file: &str,
    cubins: &[(u32, String)],
) -> Result<String, String> {
    let model = string(&plan.model);
    let usizes = |v: &[usize]| -> Vec<Literal> { v.iter().map(|&d| usize_lit(d)).collect() };
    let (input_shape, output_shape) = (usizes(&plan.input_shape), usizes(&plan.output_shape));
    let (input, output) = (place(&plan.input), place(&plan.output));
    let (arena, naive) = (
        usize_lit(plan.arena_per_image),
        usize_lit(plan.naive_per_image),
    );
    let state: Vec<TokenStream> = plan.state_dict.iter().map(state_entry).collect();
    let prep: Vec<TokenStream> = plan.prepared.iter().map(prepared).collect();
    let steps: Vec<TokenStream> = plan.steps.iter().map(step).collect();
    let ends_in = match plan.ends_in {
        Ending::Logits => quote!(Ending::Logits),
        Ending::Probabilities => quote!(Ending::Probabilities),
        Ending::LogProbabilities => quote!(Ending::LogProbabilities),
    };
    let cubin_entries: Vec<TokenStream> = cubins
        .iter()
        .map(|(arch, file)| {
            let arch = Literal::u32_unsuffixed(*arch);
            let path = Literal::string(&format!("../kernels/{file}"));
            quote!((#arch, include_bytes!(#path)))
        })
        .collect();
    let source_path = Literal::string(&format!("../kernels/{source_file}"));
    let file = quote! {
        use cnnc_runtime::cuda::KernelImages;
        use cnnc_runtime::plan::*;

        /// Kernels compiled ahead of time, by compute capability.
        static CUBINS: &[(u32, &[u8])] = &[#(#cubin_entries),*];

        /// The CUDA source, compiled with NVRTC when no cubin fits the GPU.
        static SOURCE: &str = include_str!(#source_path);

        /// Every kernel launch in order, with its buffers and weights.
        fn plan() -> Plan {
            Plan {
                model: #model,
                input_shape: Vec::from([#(#input_shape),*]),
                output_shape: Vec::from([#(#output_shape),*]),
                input: #input,
                output: #output,
                arena_per_image: #arena,
                naive_per_image: #naive,
                state_dict: Vec::from([#(#state),*]),
                prepared: Vec::from([#(#prep),*]),
                steps: Vec::from([#(#steps),*]),
                ends_in: #ends_in,
            }
        }

        fn main() -> std::process::ExitCode {
            cnnc_runtime::app::main(plan(), KernelImages { cubins: CUBINS, source: SOURCE })
        }
    };
    let parsed: syn::File =
        syn::parse2(file).map_err(|e| format!("generated driver does not parse: {e}"))?;
    Ok(format!(
        "//! Driver for model `{}`, generated by cnnc — do not edit.\n\n{}",
        plan.model.replace(['\n', '\r'], " "),
        prettyplease::unparse(&parsed)
    ))
}

/// Where nvcc is: `CNNC_NVCC`, then `PATH`, then the CUDA default location.
pub fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CNNC_NVCC") {
        return Some(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nvcc");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let default = PathBuf::from("/usr/local/cuda/bin/nvcc");
    default.is_file().then_some(default)
}

/// Compiles `cu` to a cubin for `sm_{arch}`.
pub fn nvcc_cubin(nvcc: &Path, cu: &Path, arch: u32, out: &Path) -> Result<(), String> {
    let result = Command::new(nvcc)
        .arg("-cubin")
        .arg(format!("-arch=sm_{arch}"))
        .arg("-O3")
        .arg("-o")
        .arg(out)
        .arg(cu)
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", nvcc.display()))?;
    if !result.status.success() {
        return Err(format!(
            "nvcc failed for sm_{arch}:\n{}",
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    Ok(())
}

pub struct BuildOptions {
    pub out_dir: PathBuf,
    /// The `cnnc-runtime` crate the binary links.
    pub runtime: PathBuf,
    /// The workspace lock file, to pin the binary's dependencies to ours.
    pub lockfile: Option<PathBuf>,
    pub nvcc: Option<PathBuf>,
}

/// A crate name from a model name.
pub fn crate_name(model: &str) -> String {
    let s = crate::kernels::sanitize(model).to_lowercase();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("model_{s}")
    } else {
        s
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    cnnc_runtime::output::write_atomic(path, bytes).map_err(|e| e.0)
}

/// Writes the crate, compiles kernels and builds; returns the binary's path.
pub fn build(
    plan: &Plan,
    cuda_source: &str,
    opts: &BuildOptions,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf, String> {
    let name = crate_name(&plan.model);
    let dir = &opts.out_dir;
    if dir.exists() && !dir.is_dir() {
        return Err(format!(
            "cannot build into `{}`: it is a file, not a directory",
            dir.display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    // Two builds into one directory would interleave their files; the second
    // waits for the first. The lock is released when the file is closed,
    // also when the process is killed.
    let lock_path = dir.join(".cnnc-build.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot create `{}`: {e}", lock_path.display()))?;
    let mut lock = fd_lock::RwLock::new(lock_file);
    if lock.try_write().is_err() {
        log(&format!(
            "waiting for another cnnc build into `{}` to finish",
            dir.display()
        ));
    }
    let _guard = lock
        .write()
        .map_err(|e| format!("cannot lock `{}`: {e}", lock_path.display()))?;
    for sub in ["src", "kernels"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|e| format!("cannot create `{}`: {e}", dir.join(sub).display()))?;
    }
    let source_file = "model.cu";
    let cu = dir.join("kernels").join(source_file);
    write(&cu, cuda_source.as_bytes())?;
    let mut cubins = Vec::new();
    match &opts.nvcc {
        Some(nvcc) => {
            for &arch in ARCHS {
                let file = format!("sm_{arch}.cubin");
                log(&format!(
                    "compiling kernels for sm_{arch} with {}",
                    nvcc.display()
                ));
                let tmp = dir.join("kernels").join(format!(".{file}.tmp"));
                if let Err(e) = nvcc_cubin(nvcc, &cu, arch, &tmp) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                std::fs::rename(&tmp, dir.join("kernels").join(&file))
                    .map_err(|e| format!("cannot move the cubin into place: {e}"))?;
                cubins.push((arch, file));
            }
        }
        None => {
            log("nvcc not found: the CUDA source is embedded and compiled with NVRTC on first run")
        }
    }
    let driver = driver_source(plan, source_file, &cubins)?;
    write(&dir.join("src").join("main.rs"), driver.as_bytes())?;
    let runtime = opts
        .runtime
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let manifest = format!(
        "# Generated by cnnc — do not edit.\n[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[dependencies]\ncnnc-runtime = {{ path = \"{runtime}\" }}\n\n[profile.release]\nopt-level = 3\ncodegen-units = 4\n\n[workspace]\n"
    );
    write(&dir.join("Cargo.toml"), manifest.as_bytes())?;
    if let Some(lock) = &opts.lockfile {
        if lock.is_file() && !dir.join("Cargo.lock").exists() {
            std::fs::copy(lock, dir.join("Cargo.lock"))
                .map_err(|e| format!("cannot copy the lock file: {e}"))?;
        }
    }
    log("building the driver with cargo (release)");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .arg("build")
        .arg("--release")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo failed to build the driver in `{}`",
            dir.display()
        ));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    let built = target.join("release").join(&name);
    // Replace the binary only now that everything succeeded.
    replace_binary(&built, dir, &name)
}

/// Copies the built binary next to its final place, syncs it, and renames it
/// over the previous one, so an interrupted or failed step leaves either the
/// old binary or the new one, never a partial file.
fn replace_binary(built: &Path, dir: &Path, name: &str) -> Result<PathBuf, String> {
    let final_path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<(), String> {
        std::fs::copy(built, &tmp)
            .map_err(|e| format!("cannot copy `{}`: {e}", built.display()))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("cannot write `{}`: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &final_path)
            .map_err(|e| format!("cannot move the binary into place: {e}"))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(final_path)
}
