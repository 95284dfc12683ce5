//! The CUDA executor: runs a plan's kernels on an NVIDIA GPU through the
//! driver API (cudarc, loaded at run time, so binaries start without CUDA).
//!
//! Weights are uploaded once (already prepared: batch norms folded; a layer
//! with a 16-bit copy as that copy alone, [`Plan::device_weights`]); the
//! activation arena is allocated once for the largest batch, 4 bytes an
//! activation, or 2 in a bf16 or fp16 build, whose kernels store activations
//! in 16 bits (the input is rounded to 16 bits here before it is copied in,
//! the output widened to f32 after it is copied out); the forward pass
//! for a batch size is captured once as a CUDA graph and replayed. Any CUDA
//! error ends the run with a message naming the kernel and its layers; a
//! sticky error is not retried.

use crate::plan::{KernelArg, Plan, Precision};
use crate::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg,
};
use std::sync::Arc;

/// The cubins of one architecture.
#[derive(Clone, Copy, Debug)]
pub struct ArchImages {
    /// Compute capability major·10 + minor, e.g. 80, 90.
    pub arch: u32,
    pub cubins: &'static [&'static [u8]],
    /// For each compile unit (a distinct kernel, numbered as in
    /// [`KernelImages::symbols`]), the index of the cubin that holds it.
    pub units: &'static [u32],
}

/// Compiled kernels shipped in a binary.
#[derive(Clone, Copy, Debug)]
pub struct KernelImages {
    pub cubins: &'static [ArchImages],
    /// For each kernel name the plan launches: its compile unit and the
    /// kernel's name in the unit's cubin.
    pub symbols: &'static [(&'static str, u32, &'static str)],
    /// The CUDA C source, compiled with NVRTC when no cubin fits the GPU;
    /// its kernels have the plan's names.
    pub source: &'static str,
}

/// Whether a CUDA driver and at least one device are present.
pub fn probe() -> Result<()> {
    // SAFETY: only checks whether the driver library can be loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error(
            "no CUDA driver found (libcuda.so could not be loaded)".to_string(),
        ));
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err(Error("the CUDA driver reports no GPU".to_string())),
        Err(e) => Err(Error(format!("the CUDA driver failed to start: {e}"))),
    }
}

/// Activations as the arena holds them: each f32 as its two 16-bit halves
/// (low first), or rounded to the build's 16-bit format (nearest, ties to
/// even, as the kernels round). An FP16 input value that would round to
/// infinity is an error naming it, never a silent infinity.
pub fn to_words(precision: Precision, values: &[f32]) -> Result<Vec<u16>> {
    match precision.half_format() {
        None => Ok(values
            .iter()
            .flat_map(|v| {
                let b = v.to_bits();
                [b as u16, (b >> 16) as u16]
            })
            .collect()),
        Some(format) => values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let bits = format.bits(v);
                if format.value(bits).is_infinite() && v.is_finite() {
                    return Err(Error(format!(
                        "input value {v} (element {i}) is beyond {}'s range (largest finite 65504); build with --precision bf16 or tf32 for such inputs",
                        format.name()
                    )));
                }
                Ok(bits)
            })
            .collect(),
    }
}

/// f32 values as the 16-bit words they occupy in memory: what [`to_words`]
/// returns for an f32 build, without copying.
fn f32_words(values: &[f32]) -> &[u16] {
    const _: () = assert!(
        cfg!(target_endian = "little"),
        "words are little-endian halves"
    );
    // SAFETY: u16 has no invalid bit patterns and an alignment (2) that
    // divides f32's (4); the slice covers exactly the same bytes.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u16>(), values.len() * 2) }
}

/// The inverse of [`to_words`]: the arena's words as f32 values (exact).
pub fn from_words(precision: Precision, words: &[u16]) -> Vec<f32> {
    match precision.half_format() {
        None => words
            .chunks_exact(2)
            .map(|w| f32::from_bits(w[0] as u32 | (w[1] as u32) << 16))
            .collect(),
        Some(format) => words.iter().map(|&b| format.value(b) as f32).collect(),
    }
}

pub struct CudaExecutor {
    plan: Plan,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Per step: the batch-1 kernel, then its variants, in plan order.
    functions: Vec<Vec<CudaFunction>>,
    params: Vec<CudaSlice<f32>>,
    /// The activations, as 16-bit words: an f32 activation is two of them
    /// (little-endian), a 16-bit one one ([`Precision::activation_bytes`]).
    arena: CudaSlice<u16>,
    /// Split-K partial sums and tile counters (zeroed once; every split-K
    /// kernel leaves its counters at zero again).
    workspace: CudaSlice<f32>,
    counters: CudaSlice<u32>,
    max_batch: usize,
    graph: Option<(usize, CudaGraph)>,
    pub device_name: String,
    pub kernels_from: String,
}

fn cuda_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error(format!("{what}: {e}"))
}

impl CudaExecutor {
    pub fn new(
        plan: &Plan,
        prepared: &[Vec<f32>],
        images: &KernelImages,
        max_batch: usize,
    ) -> Result<CudaExecutor> {
        probe()?;
        let ctx = CudaContext::new(0).map_err(cuda_err("cannot open GPU 0"))?;
        // We order all work on one stream and synchronise explicitly; cudarc's
        // per-buffer events would otherwise be waited on inside graph capture.
        // SAFETY: no other stream touches these buffers.
        unsafe { ctx.disable_event_tracking() };
        let device_name = ctx.name().unwrap_or_else(|_| "GPU 0".to_string());
        let (major, minor) = ctx
            .compute_capability()
            .map_err(cuda_err("cannot query the GPU"))?;
        let cc = (major * 10 + minor) as u32;
        // A cubin runs on GPUs of the same major version and an equal or higher minor one.
        let cubin = images
            .cubins
            .iter()
            .filter(|a| a.arch / 10 == cc / 10 && a.arch <= cc)
            .max_by_key(|a| a.arch);
        // The modules, and where each of the plan's kernels is: through the
        // symbol table in the cubins, or under its own name in NVRTC's module.
        let (modules, symbols, kernels_from) = match cubin {
            Some(a) => {
                let mut modules = Vec::with_capacity(a.cubins.len());
                for (i, bytes) in a.cubins.iter().enumerate() {
                    let ptx = cudarc::nvrtc::Ptx::from_binary(bytes.to_vec());
                    modules.push(ctx.load_module(ptx).map_err(|e| {
                        Error(format!("cannot load cubin {i} of sm_{}: {e}", a.arch))
                    })?);
                }
                let mut symbols = std::collections::HashMap::new();
                for (name, unit, symbol) in images.symbols {
                    let module = a.units.get(*unit as usize).ok_or_else(|| {
                        Error(format!("kernel `{name}`: no cubin holds unit {unit}"))
                    })?;
                    symbols.insert(*name, (*module as usize, *symbol));
                }
                let from = format!("cubins sm_{} ({} files)", a.arch, modules.len());
                (modules, Some(symbols), from)
            }
            None => {
                let opts = cudarc::nvrtc::CompileOptions {
                    arch: None,
                    ..Default::default()
                };
                let ptx = cudarc::nvrtc::compile_ptx_with_opts(images.source, opts)
                    .map_err(|e| Error(format!("no cubin for compute capability {major}.{minor}, and NVRTC failed to compile the kernels: {e}")))?;
                let module = ctx
                    .load_module(ptx)
                    .map_err(cuda_err("cannot load the kernels"))?;
                (vec![module], None, format!("NVRTC (no cubin for sm_{cc})"))
            }
        };
        // Every kernel a step may launch (its batch-size variants too), by name.
        let mut functions = Vec::new();
        for step in &plan.steps {
            let mut variants = Vec::new();
            for name in step.kernels() {
                let (unit, symbol) = match &symbols {
                    Some(table) => *table.get(name).ok_or_else(|| {
                        Error(format!(
                            "kernel `{name}` is not in the binary's symbol table"
                        ))
                    })?,
                    None => (0, name),
                };
                let module = modules
                    .get(unit)
                    .ok_or_else(|| Error(format!("kernel `{name}`: cubin {unit} is missing")))?;
                variants.push(module.load_function(symbol).map_err(|e| {
                    Error(format!(
                        "kernel `{name}` (`{symbol}`) is missing from its module: {e}"
                    ))
                })?);
            }
            functions.push(variants);
        }
        // Graph capture is not allowed on the legacy default stream.
        let stream = ctx
            .new_stream()
            .map_err(cuda_err("cannot create a CUDA stream"))?;
        let mut params = Vec::new();
        for (i, values) in plan.device_weights(prepared)?.into_iter().enumerate() {
            let slice = stream.clone_htod(values).map_err(|e| {
                Error(format!(
                    "cannot upload weight tensor {i} ({} bytes): {e}",
                    values.len() * 4
                ))
            })?;
            params.push(slice);
        }
        let words = plan
            .arena_per_image
            .checked_mul(max_batch)
            .and_then(|n| n.checked_mul(plan.precision.activation_bytes() / 2))
            .ok_or_else(|| Error("arena size overflows".to_string()))?;
        let arena = stream.alloc_zeros::<u16>(words.max(1)).map_err(|e| {
            Error(format!(
                "out of memory: the activation arena for batch {max_batch} needs {} bytes: {e}",
                words * 2
            ))
        })?;
        let need = plan.workspace(max_batch);
        let workspace = stream.alloc_zeros::<f32>(need.floats.max(1)).map_err(|e| {
            Error(format!(
                "out of memory: the split-K workspace for batch {max_batch} needs {} bytes: {e}",
                need.floats * 4
            ))
        })?;
        let counters = stream
            .alloc_zeros::<u32>(need.counters.max(1))
            .map_err(|e| {
                Error(format!(
                    "out of memory: the split-K tile counters need {} bytes: {e}",
                    need.counters * 4
                ))
            })?;
        Ok(CudaExecutor {
            plan: plan.clone(),
            ctx,
            stream,
            functions,
            params,
            arena,
            workspace,
            counters,
            max_batch,
            graph: None,
            device_name,
            kernels_from,
        })
    }

    /// Enqueues every kernel of the forward pass for `batch` images.
    fn enqueue(&self, batch: usize) -> Result<()> {
        for i in 0..self.plan.steps.len() {
            self.enqueue_step(i, batch)?;
        }
        Ok(())
    }

    /// Enqueues step `i`'s kernel for `batch` images.
    fn enqueue_step(&self, i: usize, batch: usize) -> Result<()> {
        let (step, funcs) = (&self.plan.steps[i], &self.functions[i]);
        let (base, _sync) = self.arena.device_ptr(&self.stream);
        let bytes = self.plan.precision.activation_bytes();
        let ptr = |offset: usize| base + (offset * batch * bytes) as u64;
        let batch_arg = batch as i32;
        let workspace = self.workspace.device_ptr(&self.stream).0;
        let counters = self.counters.device_ptr(&self.stream).0;
        // The kernel tuned for this batch size (the graph is captured per batch size).
        let chosen = step.launch(batch);
        let which = step.kernels().position(|k| k == chosen.kernel).unwrap_or(0);
        let func = &funcs[which];
        let cfg = LaunchConfig {
            grid_dim: chosen.grid,
            block_dim: (chosen.block, 1, 1),
            shared_mem_bytes: 0,
        };
        // Every pointer argument's value first (the builder keeps references).
        let pointers: Vec<u64> = step
            .kernel_args()
            .iter()
            .map(|arg| match *arg {
                KernelArg::Input(i) => step.inputs.get(i).map_or(0, |p| ptr(p.offset)),
                KernelArg::Factor => step.inputs.last().map_or(0, |p| ptr(p.offset)),
                KernelArg::Param(k) => step
                    .params
                    .get(k)
                    .map_or(0, |&i| self.params[i].device_ptr(&self.stream).0),
                KernelArg::Output => ptr(step.output.offset),
                KernelArg::Workspace => workspace,
                KernelArg::Counters => counters,
                KernelArg::Batch => 0,
            })
            .collect();
        let mut launch = self.stream.launch_builder(func);
        for (arg, pointer) in step.kernel_args().iter().zip(&pointers) {
            match arg {
                KernelArg::Batch => launch.arg(&batch_arg),
                _ => launch.arg(pointer),
            };
        }
        // SAFETY: the arguments follow `Step::kernel_args`, the signature
        // cnnc's CUDA printer writes for this step kind (the emulation tests
        // check each launch's argument types against the printed source,
        // through the same list), and every pointer lies in
        // the arena, a weight buffer or the workspace, each sized by the
        // same plan for up to `max_batch` images.
        unsafe { launch.launch(cfg) }.map_err(|e| {
            Error(format!(
                "launching `{}` ({}) failed: {e}",
                chosen.kernel,
                step.layers.join("; ")
            ))
        })?;
        Ok(())
    }

    /// Runs the model on `batch` images (NCHW f32); returns the outputs.
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        if batch == 0 || batch > self.max_batch {
            return Err(Error(format!(
                "batch {batch} is outside 1..={} (raise --batch)",
                self.max_batch
            )));
        }
        let per = self.plan.input.numel();
        if input.len() != batch * per {
            return Err(Error(format!(
                "input has {} values; {batch} images need {}",
                input.len(),
                batch * per
            )));
        }
        // f32 activations go as they are (no copy on the host); 16-bit ones
        // are rounded first.
        let rounded;
        let words: &[u16] = if self.plan.precision.half_format().is_none() {
            f32_words(input)
        } else {
            rounded = to_words(self.plan.precision, input)?;
            &rounded
        };
        let start = self.plan.input.offset * batch * self.plan.precision.activation_bytes() / 2;
        {
            let mut view = self.arena.slice_mut(start..start + words.len());
            self.stream
                .memcpy_htod(words, &mut view)
                .map_err(cuda_err("copying the input to the GPU failed"))?;
        }
        // Capture the forward pass once per batch size, then replay it.
        if self.graph.as_ref().map(|(b, _)| *b) != Some(batch) {
            self.graph = None;
            self.stream
                .begin_capture(
                    cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                )
                .map_err(cuda_err("starting graph capture failed"))?;
            let enqueued = self.enqueue(batch);
            let graph = self
                .stream
                .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
                .map_err(cuda_err("finishing graph capture failed"))?;
            enqueued?;
            let graph =
                graph.ok_or_else(|| Error("graph capture produced no graph".to_string()))?;
            self.graph = Some((batch, graph));
        }
        if let Some((_, graph)) = &self.graph {
            graph
                .launch()
                .map_err(cuda_err("running the captured forward pass failed"))?;
        }
        self.stream.synchronize().map_err(|e| {
            Error(format!(
                "a kernel failed on the GPU ({e}); the CUDA context is unusable, stopping"
            ))
        })?;
        let out = self.plan.output;
        let per_word = self.plan.precision.activation_bytes() / 2;
        let start = out.offset * batch * per_word;
        let count = batch * out.channels_total * out.h * out.w;
        let view = self.arena.slice(start..start + count * per_word);
        let full = from_words(
            self.plan.precision,
            &self
                .stream
                .clone_dtoh(&view)
                .map_err(cuda_err("copying the output from the GPU failed"))?,
        );
        // The output place may be a channel slice of a wider buffer.
        let mut result = Vec::with_capacity(batch * out.numel());
        let hw = out.h * out.w;
        for n in 0..batch {
            let s = (n * out.channels_total + out.channel_offset) * hw;
            result.extend_from_slice(&full[s..s + out.c * hw]);
        }
        Ok(result)
    }

    /// Times each step: the forward pass launched kernel by kernel (not as a
    /// graph, so each launch's own overhead is in its time), a GPU event
    /// between every two, `iters` times after one warm-up pass; returns each
    /// step's median in milliseconds.
    pub fn profile(&mut self, batch: usize, iters: usize) -> Result<Vec<f64>> {
        let input = vec![0.0f32; batch * self.plan.input.numel()];
        self.run(&input, batch)?;
        let steps = self.plan.steps.len();
        let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(iters); steps];
        // Made once: only recording and launching come between two events.
        let events = (0..=steps)
            .map(|_| {
                self.ctx
                    .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(cuda_err("event"))
            })
            .collect::<Result<Vec<_>>>()?;
        for _ in 0..iters.max(1) + 1 {
            for (i, event) in events.iter().enumerate() {
                event.record(&self.stream).map_err(cuda_err("event"))?;
                if i < steps {
                    self.enqueue_step(i, batch)?;
                }
            }
            self.stream.synchronize().map_err(|e| {
                Error(format!(
                    "a kernel failed on the GPU ({e}); the CUDA context is unusable, stopping"
                ))
            })?;
            for (i, pair) in events.windows(2).enumerate() {
                samples[i].push(pair[0].elapsed_ms(&pair[1]).map_err(cuda_err("event"))? as f64);
            }
        }
        Ok(samples
            .into_iter()
            .map(|mut v| {
                v.remove(0); // the warm-up pass
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            })
            .collect())
    }

    /// Runs the captured forward pass `iters` times back to back and returns
    /// the time per pass in milliseconds (GPU events).
    pub fn time(&mut self, batch: usize, iters: usize) -> Result<Vec<f64>> {
        let input = vec![0.0f32; batch * self.plan.input.numel()];
        self.run(&input, batch)?;
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters {
            let start = self
                .ctx
                .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda_err("event"))?;
            let end = self
                .ctx
                .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda_err("event"))?;
            start.record(&self.stream).map_err(cuda_err("event"))?;
            if let Some((_, graph)) = &self.graph {
                graph
                    .launch()
                    .map_err(cuda_err("running the captured forward pass failed"))?;
            }
            end.record(&self.stream).map_err(cuda_err("event"))?;
            end.synchronize()
                .map_err(cuda_err("a kernel failed on the GPU"))?;
            times.push(start.elapsed_ms(&end).map_err(cuda_err("event"))? as f64);
        }
        Ok(times)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_activations_travel_as_their_two_halves() {
        let values = [1.5f32, -0.0, f32::MAX, f32::MIN_POSITIVE, 3.0e-42, f32::NAN];
        for p in [Precision::Fp32, Precision::Tf32, Precision::Tf32x3] {
            let words = to_words(p, &values).unwrap();
            assert_eq!(words.len(), 2 * values.len());
            assert_eq!(words, f32_words(&values));
            assert_eq!((words[0], words[1]), (0x0000, 0x3fc0)); // 1.5 = 0x3fc00000, low half first
            let back = from_words(p, &words);
            for (a, b) in values.iter().zip(&back) {
                assert_eq!(a.to_bits(), b.to_bits());
            }
        }
    }

    #[test]
    fn sixteen_bit_activations_are_rounded_to_nearest_even() {
        // 1 + 2^-8 lies halfway between two bf16 values: ties to even, down
        // to 1; 1 + 3·2^-8 rounds up to 1 + 2^-6 (0x3f82).
        let words = to_words(
            Precision::Bf16,
            &[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.0],
        )
        .unwrap();
        assert_eq!(words, [0x3f80, 0x3f82, 0xc000]);
        assert_eq!(
            from_words(Precision::Bf16, &words),
            [1.0, 1.0 + 1.0 / 64.0, -2.0]
        );
        // FP16: 65504 is its largest value; 2^-24 its smallest subnormal.
        let words = to_words(Precision::Fp16, &[65504.0, 5.960_464_5e-8, 0.1]).unwrap();
        assert_eq!(words, [0x7bff, 0x0001, 0x2e66]);
        assert_eq!(from_words(Precision::Fp16, &words)[0], 65504.0);
        // bf16 has f32's range: a large input is fine there.
        assert!(to_words(Precision::Bf16, &[1e30]).is_ok());
    }

    #[test]
    fn an_fp16_input_beyond_its_range_is_an_error_naming_it() {
        let e = to_words(Precision::Fp16, &[1.0, 2.0, 70000.0])
            .unwrap_err()
            .0;
        assert!(e.contains("input value 70000 (element 2)"), "{e}");
        assert!(e.contains("fp16") && e.contains("65504"), "{e}");
        // An infinity that was asked for stays one.
        assert!(to_words(Precision::Fp16, &[f32::INFINITY]).is_ok());
    }
}
