//! The CPU emulation harness: runs the CUDA kernels cnnc generates, as
//! printed, on a machine without a GPU.
//!
//! A generated `.cu` file is compiled as C++20 together with
//! `cuda_emulation.h` (CUDA's built-ins, barriers, shared memory, warp
//! intrinsics) into a shared library, loaded with `libloading`, and driven
//! step by step through the execution plan exactly as the CUDA driver
//! (`runtime/src/cuda.rs`) drives it: same arena, same base pointers, same
//! argument order, same grid and block sizes. See docs/testing.md.
//!
//! Beyond what the driver does, the harness is strict where strictness is
//! cheap: the arena starts as NaN, each kernel's output place is poisoned with
//! NaN before it runs (an element it fails to write shows up as NaN), after
//! each launch every arena element outside the kernel's output place must be
//! unchanged (guard zones around the arena included), shared memory starts
//! each block as NaN, and [`check`] can run a second time with threads
//! scheduled in the reverse order, which must give the same bits.

#![allow(dead_code)]

use cnnc::back::kernel_ir::KernelProgram;
use cnnc::ir::weights::BoundWeights;
use cnnc::ir::Graph;
use cnnc_runtime::cuda::{from_words, to_words};
use cnnc_runtime::plan::{KernelArg, Place, Plan, Precision, Step};
use std::collections::hash_map::DefaultHasher;
use std::ffi::{c_char, c_void, CStr};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tolerance of every comparison: |a − b| ≤ 1e-4 · max(1, |b|).
pub const TOLERANCE: f64 = 1e-4;

/// Floats of NaN before and after the arena; a write there is an out-of-bounds write.
const GUARD: usize = 4096;
/// The NaN the arena is filled with (a quiet NaN with a recognisable payload).
const POISON: u32 = 0x7fc0_dead;
/// ... in a bf16 or fp16 arena: a NaN in both formats.
const POISON16: u16 = 0x7fde;

/// One parameter of a kernel as printed: `const float* __restrict__ x`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub ty: String,
    pub name: String,
}

/// A `__global__` function found in the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelDecl {
    pub name: String,
    pub params: Vec<Param>,
    /// The first argument of `__launch_bounds__`, if any.
    pub launch_bounds: Option<u32>,
}

/// The kernels of a `.cu` file, in source order, with their parameters.
pub fn kernels_in(source: &str) -> Result<Vec<KernelDecl>, String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("__global__") {
        let after = &rest[at + "__global__".len()..];
        let open = after
            .find('(')
            .ok_or("`__global__` without a parameter list")?;
        let mut head = after[..open].trim().to_string();
        let mut tail = &after[open..];
        let mut launch_bounds = None;
        if head.ends_with("__launch_bounds__") {
            // `void __launch_bounds__(256) name(`: skip the bounds' parentheses.
            let close = tail.find(')').ok_or("unclosed `__launch_bounds__(`")?;
            let bounds = tail[1..close].split(',').next().unwrap_or("").trim();
            launch_bounds = Some(
                bounds
                    .parse::<u32>()
                    .map_err(|_| format!("`__launch_bounds__({bounds})` is not a number"))?,
            );
            let next = tail[close + 1..]
                .find('(')
                .ok_or("kernel without a parameter list")?;
            head = tail[close + 1..close + 1 + next].trim().to_string();
            tail = &tail[close + 1 + next..];
        }
        let name = head
            .split_whitespace()
            .last()
            .ok_or("kernel without a name")?
            .to_string();
        let close = tail.find(')').ok_or("unclosed parameter list")?;
        let params = tail[1..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty() && *p != "void")
            .map(|p| {
                let split = p
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map(|i| i + 1)
                    .unwrap_or(0);
                Param {
                    ty: p[..split]
                        .trim()
                        .replace("__restrict__", "")
                        .trim()
                        .to_string(),
                    name: p[split..].to_string(),
                }
            })
            .collect();
        out.push(KernelDecl {
            name,
            params,
            launch_bounds,
        });
        rest = &tail[close..];
    }
    Ok(out)
}

/// Rewrites the two `__shared__` forms the emulation header cannot express
/// as macros (scanning past comments and literals):
///
/// * `extern __shared__ T name[];` (dynamic shared memory) becomes a pointer
///   to the block's dynamic shared memory;
/// * after `__shared__ T name[...];` inside a function, a call that poisons
///   the array (NaN bytes) when the first thread of each block reaches it, so
///   a read before any write, or a race the scheduling order would otherwise
///   hide behind the previous block's values, shows.
pub fn rewrite_shared(source: &str) -> String {
    let bytes = source.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = String::with_capacity(source.len() + 256);
    // Open braces: true for a function or statement body, false for a namespace or `extern "C"`.
    let mut braces: Vec<bool> = Vec::new();
    // The last tokens (text, start), comments skipped.
    let mut tokens: Vec<(&str, usize)> = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let rest = &source[i..];
        let c = bytes[i];
        if rest.starts_with("//") || c == b'#' {
            // A comment or a preprocessor line.
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |e| e + 2);
        } else if c == b'"' || c == b'\'' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != c {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            j = (j + 1).min(bytes.len());
            tokens.push((&source[i..j], i));
            i = j;
        } else if word(c) {
            let mut j = i;
            while j < bytes.len() && word(bytes[j]) {
                j += 1;
            }
            let ident = &source[i..j];
            if ident == "__shared__" {
                let Some(end) = source[j..].find(';').map(|e| j + e) else {
                    break;
                };
                let decl = source[j..end].trim();
                if let Some(&("extern", start)) = tokens.last() {
                    out.push_str(&source[copied..start]);
                    let (ty, name) = split_declaration(decl.trim_end_matches("[]").trim());
                    out.push_str(&format!(
                        "{ty}* const {name} = static_cast<{ty}*>(::cnnc_emu::dynamic_shared())"
                    ));
                    copied = end;
                } else if braces.iter().any(|&code| code) {
                    let (_, name) = split_declaration(decl.split('[').next().unwrap_or(decl));
                    out.push_str(&source[copied..=end]);
                    out.push_str(&format!(
                        " ::cnnc_emu::shared_declared(&{name}, sizeof({name}));"
                    ));
                    copied = end + 1;
                }
                tokens.clear();
                i = end + 1;
                continue;
            }
            tokens.push((ident, i));
            i = j;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else {
            if c == b'{' {
                let t: Vec<&str> = tokens.iter().rev().take(2).map(|t| t.0).collect();
                let scope = matches!(
                    t.as_slice(),
                    ["namespace", ..] | [_, "namespace"] | ["\"C\"", "extern"]
                );
                braces.push(!scope);
            } else if c == b'}' {
                braces.pop();
            }
            let n = rest.chars().next().map_or(1, char::len_utf8);
            tokens.push((&source[i..i + n], i));
            i += n;
        }
        if tokens.len() > 8 {
            tokens.drain(..4);
        }
    }
    out.push_str(&source[copied.min(source.len())..]);
    out
}

/// `__align__(16) float tile` → ("float", "tile"); alignment dropped (it does
/// not belong in a pointer's type).
fn split_declaration(decl: &str) -> (String, String) {
    let mut d = decl.to_string();
    for key in ["__align__(", "alignas("] {
        while let Some(i) = d.find(key) {
            let close = d[i..].find(')').map_or(d.len(), |c| i + c + 1);
            d.replace_range(i..close, "");
        }
    }
    let d = d.trim();
    let split = d
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    (d[..split].trim().to_string(), d[split..].to_string())
}

/// The C++ compiler: `$CXX`, else g++, else clang++.
pub fn cxx() -> Result<String, String> {
    let candidates: Vec<String> = match std::env::var("CXX") {
        Ok(c) if !c.trim().is_empty() => vec![c],
        _ => vec!["g++".into(), "clang++".into()],
    };
    for c in &candidates {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(c.clone());
        }
    }
    Err(format!(
        "the CUDA emulation tests need a C++20 compiler and found none (tried {}); \
         install g++ (apt-get install g++) or clang, or point $CXX at one",
        candidates.join(", ")
    ))
}

fn header_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emulation")
}

/// The compiler flags. The library runs where it is built, so -march=native
/// is safe, and it makes `fmaf` one instruction instead of a libm call.
/// ISO C++ (not gnu++) keeps GCC from contracting a·b + c into FMAs on its own.
/// -O1, not -O2: the compile is most of the emulation's time (a zoo model
/// compiles 30–45% faster) and the emulated run is no slower at these sizes;
/// floating point is the same at any level (no fast-math, no contraction).
fn flags() -> Vec<String> {
    let mut f: Vec<String> = [
        "-std=c++20",
        "-O1",
        "-march=native",
        "-fPIC",
        "-shared",
        "-fvisibility=hidden",
        "-pthread",
        "-w",
    ]
    .map(String::from)
    .to_vec();
    if let Ok(extra) = std::env::var("CNNC_EMU_CXXFLAGS") {
        f.extend(extra.split_whitespace().map(String::from));
    }
    f
}

/// A compiled, loaded module: the generated kernels behind the emulator.
pub struct Module {
    /// Never unloaded: the module installs a crash handler that must stay mapped.
    lib: std::mem::ManuallyDrop<libloading::Library>,
    pub kernels: Vec<KernelDecl>,
    pub path: PathBuf,
}

impl Drop for Module {
    /// The library stays loaded, but the fiber stacks it pooled are freed:
    /// each takes two memory mappings per fiber, and a test binary that loads
    /// a hundred modules would otherwise run out of mappings.
    fn drop(&mut self) {
        // SAFETY: `cnnc_emu_release` is defined by CNNC_EMU_MODULE, takes no
        // arguments, and frees only runners no launch is using.
        unsafe {
            if let Ok(release) = self.lib.get::<unsafe extern "C" fn()>(b"cnnc_emu_release") {
                release();
            }
        }
    }
}

type LaunchFn =
    unsafe extern "C" fn(u32, u32, u32, u32, u32, u32, u32, *mut *mut c_void, u32, u32) -> i32;

/// The order in which the emulator runs a block's threads between barriers (and the blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Forward,
    /// A result that changes under this order depends on scheduling: a race.
    Reverse,
}
type ErrorFn = unsafe extern "C" fn() -> *const c_char;

/// One kernel argument, as the driver passes it.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// `const float*` (may be null).
    In(*const f32),
    /// `float*`.
    Out(*mut f32),
    /// `const cnnc::act*`: activations in the arena (may be null).
    ActIn(*const u8),
    /// `cnnc::act*`.
    ActOut(*mut u8),
    /// `unsigned*` (split-K tile counters).
    Counters(*mut u32),
    Int(i32),
}

impl Module {
    /// Compiles `source` (a generated `.cu`) with the emulation header and loads it.
    /// Libraries are cached under the test target directory by content hash.
    pub fn build(tag: &str, source: &str) -> Result<Module, String> {
        let kernels = kernels_in(source)?;
        if kernels.is_empty() {
            return Err(format!("{tag}: the source has no __global__ kernel"));
        }
        let mut unit = String::from("#include \"cuda_emulation.h\"\n#line 1 \"generated.cu\"\n");
        // nvcc's `#pragma unroll` is GCC's `#pragma GCC unroll` (clang reads both);
        // unrolled, the register tiles stay in registers as on the GPU.
        unit.push_str(
            &rewrite_shared(source).replace("#pragma unroll\n", "#pragma GCC unroll 64\n"),
        );
        unit.push_str("\n// Emulation launchers, one per kernel.\nCNNC_EMU_MODULE\n");
        for k in &kernels {
            unit.push_str(&format!("CNNC_EMU_EXPORT({})\n", k.name));
        }
        let compiler = cxx()?;
        let header = std::fs::read_to_string(header_dir().join("cuda_emulation.h"))
            .map_err(|e| format!("cannot read the emulation header: {e}"))?;
        let mut h = DefaultHasher::new();
        (&unit, &header, &compiler, flags()).hash(&mut h);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emulation");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let safe: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let stem = format!("{safe}-{:016x}", h.finish());
        let cpp = dir.join(format!("{stem}.cpp"));
        let so = dir.join(format!("{stem}.so"));
        if !so.exists() {
            std::fs::write(&cpp, &unit).map_err(|e| e.to_string())?;
            // Unique per process and thread, renamed into place once complete.
            let tmp = dir.join(format!(
                "{stem}.{}.{:?}.tmp.so",
                std::process::id(),
                std::thread::current().id()
            ));
            let output = Command::new(&compiler)
                .args(flags())
                .arg("-I")
                .arg(header_dir())
                .arg("-o")
                .arg(&tmp)
                .arg(&cpp)
                .output()
                .map_err(|e| format!("cannot run {compiler}: {e}"))?;
            if !output.status.success() {
                let err = String::from_utf8_lossy(&output.stderr);
                let head: Vec<&str> = err.lines().take(40).collect();
                return Err(format!(
                    "{tag}: {compiler} failed to compile the generated CUDA with the emulation header ({}):\n{}",
                    cpp.display(),
                    head.join("\n")
                ));
            }
            std::fs::rename(&tmp, &so).map_err(|e| e.to_string())?;
        }
        // SAFETY: the library is ours, built just now from the emulation header;
        // its initialisers only set up inline variables.
        let lib = unsafe { libloading::Library::new(&so) }
            .map_err(|e| format!("cannot load {}: {e}", so.display()))?;
        Ok(Module {
            lib: std::mem::ManuallyDrop::new(lib),
            kernels,
            path: so,
        })
    }

    pub fn kernel(&self, name: &str) -> Option<&KernelDecl> {
        self.kernels.iter().find(|k| k.name == name)
    }

    /// Launches `kernel` on a grid, with arguments checked against its printed signature.
    pub fn launch(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        dynamic_shared: u32,
        args: &[Arg],
    ) -> Result<(), String> {
        self.launch_in(Order::Forward, kernel, grid, block, dynamic_shared, args)
    }

    /// [`Module::launch`] with the threads scheduled in `order`.
    pub fn launch_in(
        &self,
        order: Order,
        kernel: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        dynamic_shared: u32,
        args: &[Arg],
    ) -> Result<(), String> {
        let decl = self
            .kernel(kernel)
            .ok_or_else(|| format!("kernel `{kernel}` is not in the generated source"))?;
        if decl.params.len() != args.len() {
            return Err(format!(
                "kernel `{kernel}` takes {} arguments ({}); the driver passes {}",
                decl.params.len(),
                signature(decl),
                args.len()
            ));
        }
        for (i, (p, a)) in decl.params.iter().zip(args).enumerate() {
            let want = match a {
                Arg::In(_) => "const float*",
                Arg::Out(_) => "float*",
                Arg::ActIn(_) => "const cnnc::act*",
                Arg::ActOut(_) => "cnnc::act*",
                Arg::Counters(_) => "unsigned*",
                Arg::Int(_) => "int",
            };
            if p.ty.replace(' ', "") != want.replace(' ', "") {
                return Err(format!(
                    "kernel `{kernel}`: argument {i} (`{}`) is `{}`; the driver passes a `{want}`",
                    p.name, p.ty
                ));
            }
        }
        if let Some(bound) = decl.launch_bounds {
            let threads = block.0 * block.1 * block.2;
            if threads > bound {
                return Err(format!(
                    "kernel `{kernel}` is declared __launch_bounds__({bound}) but launched with {threads} threads per block (the launch fails on a GPU)"
                ));
            }
        }
        // cuLaunchKernel's convention: an array of pointers to each argument's value.
        let mut values: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::In(p) => p as u64,
                Arg::Out(p) => p as u64,
                Arg::ActIn(p) => p as u64,
                Arg::ActOut(p) => p as u64,
                Arg::Counters(p) => p as u64,
                Arg::Int(v) => v as u32 as u64,
            })
            .collect();
        let mut pointers: Vec<*mut c_void> = values
            .iter_mut()
            .map(|v| v as *mut u64 as *mut c_void)
            .collect();
        let symbol = format!("cnnc_emu_launch_{kernel}");
        // SAFETY: the launcher is generated by CNNC_EMU_EXPORT with this
        // signature; each argument's type was checked against the kernel's
        // printed parameters above; the launcher reads an `int` from the first
        // 4 bytes of its u64 slot, its low half on a little-endian target
        // (asserted below); the pointers stay valid for the call.
        unsafe {
            let launch: libloading::Symbol<LaunchFn> = self
                .lib
                .get(symbol.as_bytes())
                .map_err(|e| format!("missing launcher `{symbol}`: {e}"))?;
            let error: libloading::Symbol<ErrorFn> = self
                .lib
                .get(b"cnnc_emu_last_error")
                .map_err(|e| format!("missing cnnc_emu_last_error: {e}"))?;
            let rc = launch(
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                dynamic_shared,
                pointers.as_mut_ptr(),
                pointers.len() as u32,
                (order == Order::Reverse) as u32,
            );
            if rc != 0 {
                return Err(CStr::from_ptr(error()).to_string_lossy().into_owned());
            }
        }
        Ok(())
    }
}

const _: () = assert!(
    cfg!(target_endian = "little"),
    "the harness packs ints as little-endian"
);

fn signature(k: &KernelDecl) -> String {
    k.params
        .iter()
        .map(|p| format!("{} {}", p.ty, p.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one emulated forward pass produced.
pub struct Run {
    /// The model's output, read from the output place as the driver reads it.
    pub output: Vec<f32>,
    /// Each step's output place right after it ran, in (image, channel, pixel) order.
    pub steps: Vec<Vec<f32>>,
}

/// Where element (n, c, p) of a place lives in an arena for `batch` images.
fn index(place: &Place, batch: usize, n: usize, c: usize, p: usize) -> usize {
    place.index(batch, n, c, p)
}

/// Whether arena index `i` (relative to the arena start) is an element of `place`.
fn in_place(place: &Place, batch: usize, i: usize) -> bool {
    let base = place.offset * batch;
    let hw = place.h * place.w;
    if i < base || i >= base + batch * place.channels_total * hw {
        return false;
    }
    let channel = (i - base) / hw % place.channels_total;
    channel >= place.channel_offset && channel < place.channel_offset + place.c
}

/// A place's values, from an arena of 16-bit words (`wpe` words an
/// activation) as the driver reads them ([`from_words`]).
fn read_place(
    arena: &[u16],
    wpe: usize,
    precision: Precision,
    place: &Place,
    batch: usize,
) -> Vec<f32> {
    let hw = place.h * place.w;
    let mut out = Vec::with_capacity(batch * place.numel());
    for n in 0..batch {
        let s = index(place, batch, n, 0, 0);
        out.extend(from_words(
            precision,
            &arena[s * wpe..(s + place.c * hw) * wpe],
        ));
    }
    out
}

/// Where one kernel argument comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `arena + offset` (floats, already multiplied by the batch size).
    Arena(usize),
    /// A prepared weight tensor.
    Param(usize),
    /// A null pointer (no bias, no residual).
    Null,
    /// The batch size, an `int`.
    Batch,
    /// The split-K workspace (partial sums) and its tile counters.
    Workspace,
    Counters,
}

/// The arguments the CUDA driver passes for a step, from the list both use
/// (`Step::kernel_args`), with whether each is written. Every activation
/// pointer is `arena + place.offset·batch`.
pub fn driver_args(step: &Step, batch: usize) -> Vec<(Source, bool)> {
    step.kernel_args()
        .iter()
        .map(|arg| match *arg {
            KernelArg::Input(i) => (
                step.inputs
                    .get(i)
                    .map_or(Source::Null, |p| Source::Arena(p.offset * batch)),
                false,
            ),
            KernelArg::Param(k) => (
                step.params
                    .get(k)
                    .map_or(Source::Null, |&i| Source::Param(i)),
                false,
            ),
            KernelArg::Factor => (
                step.inputs
                    .last()
                    .map_or(Source::Null, |p| Source::Arena(p.offset * batch)),
                false,
            ),
            KernelArg::Output => (Source::Arena(step.output.offset * batch), true),
            KernelArg::Batch => (Source::Batch, false),
            KernelArg::Workspace => (Source::Workspace, true),
            KernelArg::Counters => (Source::Counters, true),
        })
        .collect()
}

/// The memory a launch writes besides the arena: the split-K workspace and its counters.
pub struct Scratch {
    pub workspace: *mut f32,
    pub counters: *mut u32,
}

/// [`driver_args`] as values for an emulated launch; activations are
/// `bytes` bytes each in the arena.
pub fn step_args(
    step: &Step,
    arena: *mut u8,
    bytes: usize,
    scratch: &Scratch,
    prepared: &[Vec<f32>],
    batch: usize,
) -> Vec<Arg> {
    driver_args(step, batch)
        .into_iter()
        .zip(step.kernel_args())
        .map(|((source, written), kind)| {
            let activation = matches!(
                kind,
                KernelArg::Input(_) | KernelArg::Factor | KernelArg::Output
            );
            // SAFETY (pointer arithmetic only): the plan sizes the arena as
            // arena_per_image·batch activations, and every offset·batch lies inside it.
            let pointer = match source {
                Source::Arena(offset) => unsafe { arena.add(offset * bytes) },
                Source::Param(i) => prepared[i].as_ptr() as *mut u8,
                Source::Null => std::ptr::null_mut(),
                Source::Batch => return Arg::Int(batch as i32),
                Source::Workspace => scratch.workspace as *mut u8,
                Source::Counters => return Arg::Counters(scratch.counters),
            };
            match (activation, written) {
                (true, true) => Arg::ActOut(pointer),
                (true, false) => Arg::ActIn(pointer),
                (false, true) => Arg::Out(pointer as *mut f32),
                (false, false) => Arg::In(pointer as *const f32),
            }
        })
        .collect()
}

/// Runs every step of the plan through the emulated kernels, as the driver would.
pub fn run_plan(
    module: &Module,
    order: Order,
    plan: &Plan,
    prepared: &[Vec<f32>],
    input: &[f32],
    batch: usize,
) -> Result<Run, String> {
    let per = plan.input.numel();
    if input.len() != batch * per {
        return Err(format!(
            "input has {} values; {batch} images need {}",
            input.len(),
            batch * per
        ));
    }
    for step in &plan.steps {
        for kernel in step.kernels() {
            if module.kernel(kernel).is_none() {
                return Err(format!(
                    "the plan launches `{kernel}`, which the generated source does not define"
                ));
            }
        }
    }
    // The weights as the driver uploads them (a layer with a 16-bit copy as
    // that copy alone), each starting 16-byte aligned as each GPU allocation
    // does; the float4 and 8-byte loads rely on it.
    // (glibc's malloc aligns to 16; checked, not assumed).
    let device: Vec<Vec<f32>> = plan
        .device_weights(prepared)
        .map_err(|e| e.0)?
        .into_iter()
        .map(<[f32]>::to_vec)
        .collect();
    if let Some(i) = device
        .iter()
        .position(|p| !(p.as_ptr() as usize).is_multiple_of(16))
    {
        return Err(format!(
            "the copy of weight tensor {i} is not 16-byte aligned"
        ));
    }
    let prepared: &[Vec<f32>] = &device;
    let size = plan.arena_per_image * batch;
    // The arena as 16-bit words, as the driver allocates it: an activation
    // is `wpe` words (2 for f32, 1 in a bf16 or fp16 build).
    let precision = plan.precision;
    let bytes = precision.activation_bytes();
    let wpe = bytes / 2;
    let poison: Vec<u16> = if wpe == 2 {
        vec![POISON as u16, (POISON >> 16) as u16]
    } else {
        vec![POISON16]
    };
    let mut memory: Vec<u16> = poison
        .iter()
        .copied()
        .cycle()
        .take((GUARD + size.max(1) + GUARD) * wpe)
        .collect();
    // The split-K workspace, sized as the driver sizes it (here for exactly
    // this batch), between guard zones; poisoned before every launch, so a
    // partial sum read before it was written shows as NaN. Counters start at
    // zero, and every launch must leave them (and their guards) at zero.
    let need = plan.workspace(batch);
    let mut workspace = vec![f32::from_bits(POISON); GUARD + need.floats.max(1) + GUARD];
    let mut counters = vec![0u32; GUARD + need.counters.max(1) + GUARD];
    // The driver copies the input, converted as it converts it, to the start of its place.
    let words = to_words(precision, input).map_err(|e| e.0)?;
    let start = (GUARD + plan.input.offset * batch) * wpe;
    memory[start..start + words.len()].copy_from_slice(&words);
    let mut steps = Vec::with_capacity(plan.steps.len());
    for (i, step) in plan.steps.iter().enumerate() {
        // The kernel the driver picks for this batch size.
        let launch = step.launch(batch);
        let name = || {
            format!(
                "step {i}, kernel `{}` ({})",
                launch.kernel,
                step.layers.join("; ")
            )
        };
        // Poison the output place (where it does not overlap an input): an element
        // the kernel does not write reads back as NaN.
        for a in 0..size {
            if in_place(&step.output, batch, a)
                && !step.inputs.iter().any(|p| in_place(p, batch, a))
            {
                let at = (GUARD + a) * wpe;
                memory[at..at + wpe].copy_from_slice(&poison);
            }
        }
        let before = memory.clone();
        let arena = memory[GUARD * wpe..].as_mut_ptr() as *mut u8;
        workspace.fill(f32::from_bits(POISON));
        let scratch = Scratch {
            workspace: workspace[GUARD..].as_mut_ptr(),
            counters: counters[GUARD..].as_mut_ptr(),
        };
        let args = step_args(step, arena, bytes, &scratch, prepared, batch);
        let grid = launch.grid;
        let t = std::time::Instant::now();
        module
            .launch_in(order, launch.kernel, grid, (launch.block, 1, 1), 0, &args)
            .map_err(|e| format!("{}: {e}", name()))?;
        if std::env::var_os("CNNC_EMU_PROFILE").is_some() {
            eprintln!(
                "{:>8.3}s  grid {grid:?} block {}  {}",
                t.elapsed().as_secs_f64(),
                launch.block,
                launch.kernel
            );
        }
        // Nothing outside the output place may change, guard zones included.
        for (w, (a, b)) in memory.iter().zip(&before).enumerate() {
            if a == b {
                continue;
            }
            let j = w / wpe;
            let inside = j >= GUARD && j < GUARD + size && in_place(&step.output, batch, j - GUARD);
            if !inside {
                let at = if j < GUARD {
                    format!("{} activations before the arena", GUARD - j)
                } else if j >= GUARD + size {
                    format!("{} activations past the end of the arena", j - GUARD - size)
                } else {
                    format!("arena element {}", j - GUARD)
                };
                let value = |m: &[u16]| from_words(precision, &m[j * wpe..(j + 1) * wpe])[0];
                return Err(format!(
                    "{}: wrote outside its output place (first at {at}: {} -> {})",
                    name(),
                    value(&before),
                    value(&memory)
                ));
            }
        }
        let guards = |len: usize| (0..GUARD).chain(GUARD + len.max(1)..GUARD + len.max(1) + GUARD);
        if let Some(j) = guards(need.floats).find(|&j| workspace[j].to_bits() != POISON) {
            return Err(format!(
                "{}: wrote outside the split-K workspace ({} floats; at guard index {j})",
                name(),
                need.floats
            ));
        }
        if let Some(j) = counters.iter().position(|&c| c != 0) {
            return Err(format!(
                "{}: left split-K counter {} at {} (every launch must leave them at zero)",
                name(),
                j as i64 - GUARD as i64,
                counters[j]
            ));
        }
        steps.push(read_place(
            &memory[GUARD * wpe..],
            wpe,
            precision,
            &step.output,
            batch,
        ));
    }
    let output = read_place(&memory[GUARD * wpe..], wpe, precision, &plan.output, batch);
    Ok(Run { output, steps })
}

/// The first element where `got` and `want` differ beyond the tolerance.
pub struct Mismatch {
    pub index: usize,
    pub got: f32,
    pub want: f64,
    /// How many elements differ, and the worst scaled error.
    pub wrong: usize,
    pub worst: f64,
}

/// Scaled error of one element; NaN and infinities on one side only count as wrong.
pub fn scaled_error(got: f64, want: f64) -> f64 {
    if got == want {
        return 0.0;
    }
    let e = (got - want).abs() / want.abs().max(1.0);
    if e.is_nan() {
        f64::INFINITY
    } else {
        e
    }
}

pub fn compare(got: &[f32], want: &[f64]) -> (f64, Option<Mismatch>) {
    compare_within(got, want, TOLERANCE)
}

/// The tolerance of a comparison with the reference evaluator when the GEMMs
/// compute in `precision` (derived in docs/testing.md, "Tensor cores").
pub fn tolerance(precision: cnnc::back::kernel_ir::Precision) -> f64 {
    match precision {
        cnnc::back::kernel_ir::Precision::Tf32 => TF32_TOLERANCE,
        cnnc::back::kernel_ir::Precision::Bf16 => BF16_TOLERANCE,
        cnnc::back::kernel_ir::Precision::Fp16 => FP16_TOLERANCE,
        _ => TOLERANCE,
    }
}

/// The tolerance for `--precision tf32`: 8 · 2u, u = 2^-11 the unit roundoff
/// of TF32 (see docs/testing.md).
pub const TF32_TOLERANCE: f64 = 8.0 * 2.0 / 2048.0;

/// The tolerance for `--precision bf16`: 8 · 2u with u = 2^-8, BF16's unit
/// roundoff (both operands of every product rounded once; docs/testing.md).
pub const BF16_TOLERANCE: f64 = 8.0 * 2.0 / 256.0;
/// The tolerance for `--precision fp16`: 8 · 2u with u = 2^-11 (FP16 keeps
/// TF32's 10 mantissa bits, so the same bound as tf32).
pub const FP16_TOLERANCE: f64 = 8.0 * 2.0 / 2048.0;

/// [`compare`] with tolerance `tolerance`.
pub fn compare_within(got: &[f32], want: &[f64], tolerance: f64) -> (f64, Option<Mismatch>) {
    let mut worst = 0f64;
    let mut first = None;
    let mut wrong = 0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = scaled_error(g as f64, w);
        worst = worst.max(e);
        if e > tolerance {
            wrong += 1;
            first.get_or_insert((i, g, w));
        }
    }
    if got.len() != want.len() {
        wrong += 1;
        worst = f64::INFINITY;
        first.get_or_insert((got.len().min(want.len()), f32::NAN, f64::NAN));
    }
    let mismatch = first.map(|(index, got, want)| Mismatch {
        index,
        got,
        want,
        wrong,
        worst,
    });
    (worst, mismatch)
}

/// "image 1, channel 3, pixel 17 (y 0, x 17)" for element `i` of an n×C×H×W tensor.
pub fn element(i: usize, c: usize, h: usize, w: usize) -> String {
    let hw = h * w;
    let (n, rest) = (i / (c * hw), i % (c * hw));
    let (ch, p) = (rest / hw, rest % hw);
    if hw == 1 {
        format!("image {n}, feature {ch}")
    } else {
        format!(
            "image {n}, channel {ch}, pixel {p} (y {}, x {})",
            p / w,
            p % w
        )
    }
}

/// The fused graph cut after `node`, with `node` as its output.
fn cut(graph: &Graph, node: usize) -> Graph {
    let mut g = graph.clone();
    g.nodes.truncate(node + 1);
    g.output = node;
    g
}

/// Compares each step's output with the reference evaluator's value of the
/// node the kernel computes (on the fused graph, with folded weights), in
/// launch order; describes the first kernel that differs.
pub fn first_wrong_kernel(
    fused: &Graph,
    weights: &BoundWeights,
    program: &KernelProgram,
    plan: &Plan,
    run: &Run,
    input: &[f32],
    batch: usize,
) -> Option<String> {
    let refs = cnnc::back::kernel_ir::placements(fused);
    for (i, (step, kernel)) in plan.steps.iter().zip(&program.kernels).enumerate() {
        let value =
            match cnnc::tools::eval::evaluate(&cut(fused, kernel.node), weights, batch, input) {
                Ok(v) => v,
                Err(e) => {
                    return Some(format!("the evaluator failed on node {}: {e}", kernel.node))
                }
            };
        let (nc, _, _) = match value.shape {
            cnnc::ir::Shape::Chw(c, h, w) => (c as usize, h as usize, w as usize),
            cnnc::ir::Shape::Flat(f) => (f as usize, 1, 1),
        };
        // A copy into a concat's slice compares with that slice of the concat.
        let first_channel = step.output.channel_offset - refs[kernel.node].channel_offset as usize;
        let hw = step.output.h * step.output.w;
        let mut want = Vec::with_capacity(batch * step.output.numel());
        for n in 0..batch {
            let s = (n * nc + first_channel) * hw;
            want.extend_from_slice(&value.data[s..s + step.output.c * hw]);
        }
        let (_, mismatch) = compare_within(&run.steps[i], &want, tolerance(program.precision));
        if let Some(m) = mismatch {
            return Some(format!(
                "first wrong kernel: step {i}, `{}` ({}): first wrong element {}: emulated {}, reference {} ({} of {} elements wrong, worst scaled error {:.3e})",
                step.launch(batch).kernel,
                step.layers.join("; "),
                element(m.index, step.output.c, step.output.h, step.output.w),
                m.got,
                m.want as f32,
                m.wrong,
                want.len(),
                m.worst
            ));
        }
    }
    None
}

/// Everything needed to check one model.
pub struct Case<'a> {
    pub tag: String,
    /// The checked (unfused) graph: the reference.
    pub graph: &'a Graph,
    pub sources: &'a cnnc::front::source::SourceMap,
    pub weights: &'a cnnc_runtime::weights::WeightFile,
    pub input: Vec<f32>,
    pub batch: usize,
    /// Also run with threads and blocks in reverse order; every step must give the same bits.
    pub both_orders: bool,
    /// Every GEMM uses this tile, with K split this many ways (made exact
    /// as the compiler makes it), instead of the schedule the compiler chose,
    /// at every batch size.
    pub tile: Option<(cnnc::back::kernel_ir::GemmTile, u32)>,
    /// Drop the batch-size variants: every batch runs the batch-1 kernels
    /// (a GEMV then covers more images than one block holds).
    pub batch1_kernels_only: bool,
    /// What the GEMMs compute in (the tolerance follows from it).
    pub precision: cnnc::back::kernel_ir::Precision,
    /// Every GEMM that can run on tensor cores uses this tile, at every batch
    /// size (with the precision's TF32 or 3xTF32 products).
    pub tensor_tile: Option<cnnc::back::kernel_ir::TcTile>,
}

/// Gives every GEMM kernel `tile` with K split `split` ways at every batch
/// size, with the block and grid that go with it (as `kernels::lower`
/// computes them), to run schedules the model's sizes would not pick.
pub fn retile(program: &mut KernelProgram, tile: cnnc::back::kernel_ir::GemmTile, split: u32) {
    for k in &mut program.kernels {
        if let cnnc::back::kernel_ir::KernelKind::Gemm(g) = &mut k.kind {
            g.schedule = cnnc::back::kernel_ir::Schedule::tiled_split(tile, g.k(), split);
            (k.block, k.grid) = g.launch(&g.schedule);
            k.variants.clear();
        }
    }
}

/// Gives every GEMM that can run on tensor cores (no global-pool prologue,
/// one group) the tensor-core `tile` at every batch size.
pub fn retile_tensor(program: &mut KernelProgram, tile: cnnc::back::kernel_ir::TcTile) {
    let precision = program.precision;
    for k in &mut program.kernels {
        if let cnnc::back::kernel_ir::KernelKind::Gemm(g) = &mut k.kind {
            if g.global_pool || g.groups > 1 {
                continue;
            }
            g.schedule = cnnc::back::kernel_ir::Schedule::tensor(tile, precision, g.k());
            (k.block, k.grid) = g.launch(&g.schedule);
            k.variants.clear();
        }
    }
}

/// `cnnc::back::plan::compile_with`, step by step, with the tile overrides in between.
fn compile(case: &Case) -> Result<(Graph, KernelProgram, Plan), String> {
    let (fused, _) = cnnc::ir::passes::optimize(case.graph)?;
    let mut program = cnnc::back::kernel_ir::lower_with(&fused, case.sources, case.precision)?;
    if let Some((tile, split)) = case.tile {
        retile(&mut program, tile, split);
    }
    if let Some(tile) = case.tensor_tile {
        retile_tensor(&mut program, tile);
    }
    if case.batch1_kernels_only {
        for k in &mut program.kernels {
            k.variants.clear();
        }
    }
    let refs = cnnc::back::kernel_ir::placements(&fused);
    let memory = cnnc::back::memory::plan(&fused, &refs);
    cnnc::back::memory::verify(&memory)?;
    let plan = cnnc::back::plan::build(&fused, &program, &memory, case.sources)?;
    Ok((fused, program, plan))
}

/// What a passing check measured.
pub struct Checked {
    pub kernels: usize,
    pub worst: f64,
    pub output: Vec<f32>,
    pub compile: std::time::Duration,
    pub emulate: std::time::Duration,
    pub evaluate: std::time::Duration,
}

/// Compiles the model, runs its generated kernels emulated, and compares the
/// output with the reference evaluator on the unfused graph. On a mismatch the
/// error names the first kernel whose output differs from the evaluator's
/// value of its node. `edit` may change the printed CUDA first (to plant bugs).
pub fn check(case: &Case, edit: &dyn Fn(String) -> String) -> Result<Checked, String> {
    let tag = &case.tag;
    let (fused, program, plan) = compile(case).map_err(|e| format!("{tag}: {e}"))?;
    let cuda = edit(cnnc::back::cuda::print(&program).map_err(|e| format!("{tag}: {e}"))?);
    let t = std::time::Instant::now();
    let module = Module::build(tag, &cuda)?;
    let compile = t.elapsed();
    // Weights live in three forms (the file, the prepared f32 tensors, the
    // evaluator's f64 copy); only two at a time, for the VGGs' 130M parameters.
    let prepared =
        cnnc_runtime::prepare::prepare(&plan, case.weights).map_err(|e| format!("{tag}: {e}"))?;
    let t = std::time::Instant::now();
    let run = run_plan(
        &module,
        Order::Forward,
        &plan,
        &prepared,
        &case.input,
        case.batch,
    )
    .map_err(|e| format!("{tag}: {e}"))?;
    if case.both_orders {
        let reverse = run_plan(
            &module,
            Order::Reverse,
            &plan,
            &prepared,
            &case.input,
            case.batch,
        )
        .map_err(|e| format!("{tag} (threads in reverse order): {e}"))?;
        for (i, step) in plan.steps.iter().enumerate() {
            let (a, b) = (&run.steps[i], &reverse.steps[i]);
            if let Some(j) = (0..a.len()).find(|&j| a[j].to_bits() != b[j].to_bits()) {
                return Err(format!(
                    "{tag}: step {i}, kernel `{}` ({}) gives different results when its threads run in another order (a race: a missing __syncthreads()?): first at {}: {} in increasing order, {} in decreasing order",
                    step.launch(case.batch).kernel,
                    step.layers.join("; "),
                    element(j, step.output.c, step.output.h, step.output.w),
                    a[j],
                    b[j]
                ));
            }
        }
    }
    let emulate = t.elapsed();
    drop(prepared);
    let t = std::time::Instant::now();
    let bound = cnnc::ir::weights::bind(case.graph, case.weights, case.sources)
        .map_err(|e| format!("{tag}: {e}"))?;
    let reference = cnnc::tools::eval::evaluate(case.graph, &bound, case.batch, &case.input)
        .map_err(|e| format!("{tag}: {e}"))?;
    let evaluate = t.elapsed();
    drop(bound);
    let (worst, mismatch) = compare_within(&run.output, &reference.data, tolerance(case.precision));
    if let Some(m) = mismatch {
        let o = &plan.output;
        let mut message = format!(
            "{tag}: the emulated kernels differ from the reference evaluator: {} of {} outputs wrong, worst scaled error {:.3e}; first at {}: emulated {}, reference {}",
            m.wrong,
            reference.data.len(),
            m.worst,
            element(m.index, o.c, o.h, o.w),
            m.got,
            m.want as f32
        );
        let fused_bound = cnnc::ir::weights::bind(&fused, case.weights, case.sources)
            .map_err(|e| format!("{tag}: {e}"))?;
        let folded =
            cnnc::ir::weights::prepare(&fused, &fused_bound).map_err(|e| format!("{tag}: {e}"))?;
        match first_wrong_kernel(&fused, &folded, &program, &plan, &run, &case.input, case.batch) {
            Some(k) => message += &format!("\n{k}"),
            None => message += "\nevery kernel matches its node's value; the difference is in how the output is read",
        }
        return Err(message);
    }
    if let Some(dir) = std::env::var_os("CNNC_EMU_EXPORT") {
        export(Path::new(&dir), case, &cuda, &plan, &run, &reference.data)?;
    }
    Ok(Checked {
        kernels: plan.steps.len(),
        worst,
        output: run.output,
        compile,
        emulate,
        evaluate,
    })
}

/// Writes what a GPU needs to run the same launches and compare with the
/// emulator (tests/emulation/gpu_parity.py): `DIR/<tag>/` with model.cu,
/// plan.json (launches with their argument sources, the output place),
/// input.bin and p<i>.bin (f32), step<i>.bin (each step's emulated output,
/// f32) and reference.bin (the evaluator's output, f64). Models with more than
/// 4M weights are skipped, to keep the export small.
pub fn export(
    dir: &Path,
    case: &Case,
    cuda: &str,
    plan: &Plan,
    run: &Run,
    reference: &[f64],
) -> Result<(), String> {
    let prepared = cnnc_runtime::prepare::prepare(plan, case.weights).map_err(|e| e.0)?;
    // The weights as the driver uploads them.
    let prepared = plan.device_weights(&prepared).map_err(|e| e.0)?;
    if prepared.iter().map(|p| p.len()).sum::<usize>() > 4_000_000 {
        return Ok(());
    }
    let out = dir.join(&case.tag);
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let write = |name: &str, bytes: Vec<u8>| {
        std::fs::write(out.join(name), bytes).map_err(|e| format!("{}: {e}", out.display()))
    };
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    write("model.cu", cuda.as_bytes().to_vec())?;
    // The input as the driver copies it into the arena.
    let words = to_words(plan.precision, &case.input).map_err(|e| e.0)?;
    write(
        "input.bin",
        words.iter().flat_map(|w| w.to_le_bytes()).collect(),
    )?;
    for (i, p) in prepared.iter().enumerate() {
        write(&format!("p{i}.bin"), f32s(p))?;
    }
    for (i, s) in run.steps.iter().enumerate() {
        write(&format!("step{i}.bin"), f32s(s))?;
    }
    write(
        "reference.bin",
        reference.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )?;
    let place = |p: &Place| {
        serde_json::json!({
            "offset": p.offset * case.batch, "channels_total": p.channels_total,
            "channel_offset": p.channel_offset, "c": p.c, "h": p.h, "w": p.w,
        })
    };
    let steps: Vec<serde_json::Value> = plan
        .steps
        .iter()
        .map(|step| {
            let args: Vec<serde_json::Value> = driver_args(step, case.batch)
                .into_iter()
                .map(|(source, _)| match source {
                    Source::Arena(offset) => serde_json::json!(["arena", offset]),
                    Source::Param(i) => serde_json::json!(["param", i]),
                    Source::Null => serde_json::json!(["null"]),
                    Source::Batch => serde_json::json!(["int", case.batch]),
                    Source::Workspace => serde_json::json!(["workspace"]),
                    Source::Counters => serde_json::json!(["counters"]),
                })
                .collect();
            let launch = step.launch(case.batch);
            serde_json::json!({
                "kernel": launch.kernel,
                "grid": [launch.grid.0, launch.grid.1, launch.grid.2],
                "block": launch.block,
                "args": args,
                "output": place(&step.output),
            })
        })
        .collect();
    let json = serde_json::json!({
        "model": case.tag,
        "batch": case.batch,
        "arena_floats": plan.arena_per_image * case.batch,
        "activation_bytes": plan.precision.activation_bytes(),
        "activation_format": plan.precision.half_format().map_or("f32", |h| h.name()),
        "tolerance": tolerance(case.precision),
        "workspace_floats": plan.workspace(case.batch).floats,
        "counters": plan.workspace(case.batch).counters,
        "input_offset": plan.input.offset * case.batch,
        "params": prepared.len(),
        "output": place(&plan.output),
        "steps": steps,
    });
    write(
        "plan.json",
        serde_json::to_vec_pretty(&json).map_err(|e| e.to_string())?,
    )
}
