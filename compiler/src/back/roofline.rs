//! A roofline bound for every kernel, from the kernel IR alone: the work
//! (floating-point operations) and the least memory traffic a kernel must
//! do, and the time neither the GPU's arithmetic nor its memory can beat.
//! `cnnc emit --stage roofline` prints it; it is evidence of speed that
//! needs no GPU, and a yardstick for the times a GPU run measures (a kernel
//! far above its bound is badly scheduled, not slow by nature).
//!
//! The model: a kernel's time is at least max(FLOPs / peak of the unit it
//! runs on, bytes / memory bandwidth). FLOPs count a multiply-add as 2 and
//! cover only the products of convolutions and linear layers (everything
//! else is counted as one operation per output, which never decides a
//! bound). Bytes are the compulsory traffic: every input, weight and output
//! element once (f32, or 16 bits for the weights of a BF16/FP16 tensor-core
//! kernel), assuming perfect reuse in caches and shared memory. Not modelled:
//! launch gaps (with the CUDA graph a few µs per kernel, which dominate
//! small kernels at batch 1), tail effects of partial waves, split-K's
//! workspace traffic, and L2 reuse across kernels. So the bound is optimistic
//! by design.

use crate::back::kernel_ir::{Gemm, Kernel, KernelKind, KernelProgram, Schedule};
use crate::ir::Shape;
use std::fmt::Write;

/// The peak rates of a GPU (dense, from NVIDIA's data sheets), in units per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gpu {
    pub name: &'static str,
    /// FP32 FMA on CUDA cores, FLOP/s.
    pub fp32: f64,
    /// TF32 tensor cores, FLOP/s (dense).
    pub tf32: f64,
    /// BF16/FP16 tensor cores with FP32 accumulation, FLOP/s (dense).
    pub half: f64,
    /// HBM bandwidth, bytes/s.
    pub bandwidth: f64,
}

/// H100 SXM5 80 GB: 67 TFLOP/s FP32, 494.7 TF32, 989.4 BF16/FP16 (dense), 3.35 TB/s HBM3.
pub const H100_SXM: Gpu = Gpu {
    name: "H100 SXM",
    fp32: 67.0e12,
    tf32: 494.7e12,
    half: 989.4e12,
    bandwidth: 3.35e12,
};

/// H200 SXM 141 GB: the H100's arithmetic, 4.8 TB/s HBM3e.
pub const H200: Gpu = Gpu {
    name: "H200",
    fp32: 67.0e12,
    tf32: 494.7e12,
    half: 989.4e12,
    bandwidth: 4.8e12,
};

/// Which unit a kernel's arithmetic runs on at some batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    CudaCores,
    Tf32,
    /// 3xTF32: three tensor-core products per multiply.
    Tf32x3,
    Half,
}

impl Unit {
    /// Peak FLOP/s of the unit (3xTF32 does three products per useful one).
    pub fn peak(self, gpu: &Gpu) -> f64 {
        match self {
            Unit::CudaCores => gpu.fp32,
            Unit::Tf32 => gpu.tf32,
            Unit::Tf32x3 => gpu.tf32 / 3.0,
            Unit::Half => gpu.half,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Unit::CudaCores => "fp32",
            Unit::Tf32 => "tf32 mma",
            Unit::Tf32x3 => "3xtf32 mma",
            Unit::Half => "16-bit mma",
        }
    }
}

/// A kernel's work and compulsory traffic at one batch size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cost {
    pub flops: f64,
    pub bytes: f64,
    pub unit: Unit,
}

impl Cost {
    /// The roofline bound in seconds, and whether memory (rather than arithmetic) sets it.
    pub fn bound(&self, gpu: &Gpu) -> (f64, bool) {
        let compute = self.flops / self.unit.peak(gpu);
        let memory = self.bytes / gpu.bandwidth;
        (compute.max(memory), memory >= compute)
    }
}

fn numel(shape: Shape) -> f64 {
    shape.numel() as f64
}

/// The schedule a GEMM kernel launches at `batch` (the last variant whose
/// `min_batch` it reaches, else the batch-1 schedule).
fn schedule_at(k: &Kernel, g: &Gemm, batch: u64) -> Schedule {
    k.variants
        .iter()
        .rev()
        .find(|v| v.min_batch <= batch)
        .map_or(g.schedule, |v| v.schedule)
}

/// Work and compulsory traffic of kernel `k` at `batch` images, its
/// activations `act` bytes each (4, or 2 in a bf16 or fp16 build:
/// [`Precision::activation_bytes`](crate::back::kernel_ir::Precision::activation_bytes)).
pub fn cost(k: &Kernel, batch: u64, act: f64) -> Cost {
    let b = batch as f64;
    let out = numel(k.output.shape) * b;
    // Every activation operand read once (the gate factor of a gated GEMM is
    // a few floats per image and counted too), the output written once.
    let activations: f64 = k.inputs.iter().map(|t| numel(t.shape) * b).sum::<f64>() + out;
    match &k.kind {
        KernelKind::Gemm(g) => {
            let unit = match schedule_at(k, g, batch) {
                Schedule::Tensor { half: Some(_), .. } => Unit::Half,
                Schedule::Tensor { x3: true, .. } => Unit::Tf32x3,
                Schedule::Tensor { .. } => Unit::Tf32,
                Schedule::Tile { .. } | Schedule::Gemv(_) => Unit::CudaCores,
            };
            // Every kernel of a layer with a 16-bit copy reads only that.
            let weight_bytes = if k.half_weights().is_some() { 2.0 } else { 4.0 };
            let n = (g.pixels() as u64 * batch) as f64;
            let (m, kk, groups) = (g.m() as f64, g.k() as f64, g.groups as f64);
            let weights = m * kk * groups;
            let bias = if g.bias { m * groups } else { 0.0 };
            Cost {
                flops: 2.0 * m * kk * n * groups,
                bytes: weights * weight_bytes + bias * 4.0 + activations * act,
                unit,
            }
        }
        KernelKind::Depthwise(d) => {
            let taps = (d.kernel.0 * d.kernel.1) as f64;
            let weights = d.channels as f64 * (taps + if d.bias { 1.0 } else { 0.0 });
            Cost {
                flops: 2.0 * out * taps,
                bytes: weights * 4.0 + activations * act,
                unit: Unit::CudaCores,
            }
        }
        _ => {
            // Per-channel parameters (affine, layer norm) are a few floats.
            let params = match k.output.shape {
                Shape::Chw(c, _, _) | Shape::Flat(c) => 2.0 * c as f64,
            };
            let params = if k.params.is_empty() { 0.0 } else { params };
            Cost {
                flops: out,
                bytes: activations * act + params * 4.0,
                unit: Unit::CudaCores,
            }
        }
    }
}

/// What `cnnc emit --stage roofline` prints: per kernel its unit, work,
/// traffic and bound at batch 1 and 64 on the H200, then the totals on the
/// H100 and H200 at batch 1, 64 and 256, and the kernels with the largest
/// bounds.
pub fn render(program: &KernelProgram) -> String {
    let mut out = String::new();
    let act = program.precision.activation_bytes() as f64;
    let gpu = H200;
    let _ = writeln!(
        out,
        "roofline of {} ({}, activations {} bytes), {} kernels: max(FLOPs / peak of the unit, compulsory bytes / bandwidth) per kernel",
        program.model,
        program.precision.name(),
        act,
        program.kernels.len()
    );
    let _ = writeln!(
        out,
        "peaks (dense): FP32 {:.1} TFLOP/s, TF32 {:.1}, BF16/FP16 {:.1}; memory H100 SXM {:.2} TB/s, H200 {:.2} TB/s",
        gpu.fp32 / 1e12,
        gpu.tf32 / 1e12,
        gpu.half / 1e12,
        H100_SXM.bandwidth / 1e12,
        gpu.bandwidth / 1e12
    );
    let _ = writeln!(
        out,
        "not modelled: launch gaps (a few µs per kernel), partial waves, split-K partials, L2 reuse; the bound is optimistic"
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<44} {:>10} {:>10} {:>9} {:>9} {:>12} {:>9} {:>9} {:>12}",
        "H200, per kernel",
        "MFLOP/img",
        "unit b1",
        "MB b1",
        "µs b1",
        "unit b64",
        "MB b64",
        "µs b64",
        "b64 limit"
    );
    for k in &program.kernels {
        let c1 = cost(k, 1, act);
        let c64 = cost(k, 64, act);
        let (t1, _) = c1.bound(&gpu);
        let (t64, mem64) = c64.bound(&gpu);
        let _ = writeln!(
            out,
            "{:<44} {:>10.2} {:>10} {:>9.3} {:>9.2} {:>12} {:>9.2} {:>9.2} {:>12}",
            k.name,
            c1.flops / 1e6,
            c1.unit.name(),
            c1.bytes / 1e6,
            t1 * 1e6,
            c64.unit.name(),
            c64.bytes / 1e6,
            t64 * 1e6,
            if mem64 { "memory" } else { "arithmetic" }
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:>6} {:>12} {:>12} {:>14} {:>16}",
        "totals", "batch", "GFLOP", "MB moved", "bound ms", "µs per image"
    );
    for g in [H100_SXM, H200] {
        for batch in [1u64, 64, 256] {
            let (mut flops, mut bytes, mut time) = (0.0, 0.0, 0.0);
            for k in &program.kernels {
                let c = cost(k, batch, act);
                flops += c.flops;
                bytes += c.bytes;
                time += c.bound(&g).0;
            }
            let _ = writeln!(
                out,
                "{:<12} {:>6} {:>12.2} {:>12.1} {:>14.4} {:>16.3}",
                g.name,
                batch,
                flops / 1e9,
                bytes / 1e6,
                time * 1e3,
                time * 1e6 / batch as f64
            );
        }
    }
    let _ = writeln!(out);
    let mut slowest: Vec<(f64, &Kernel)> = program
        .kernels
        .iter()
        .map(|k| (cost(k, 64, act).bound(&gpu).0, k))
        .collect();
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.index.cmp(&b.1.index)));
    let total: f64 = slowest.iter().map(|s| s.0).sum();
    let _ = writeln!(
        out,
        "largest bounds at batch 64 on the H200 (where the time must go if every kernel ran at its bound):"
    );
    for (t, k) in slowest.iter().take(10) {
        let _ = writeln!(
            out,
            "  {:<44} {:>9.2} µs {:>5.1}%",
            k.name,
            t * 1e6,
            100.0 * t / total.max(f64::MIN_POSITIVE)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::back::kernel_ir::Precision;
    use std::collections::BTreeMap;

    fn program(src: &str, precision: Precision) -> KernelProgram {
        let c = crate::compile_source("t.cnn", src, &BTreeMap::new());
        assert!(!c.has_errors(), "{}", c.render_diagnostics());
        let graph = c.models[0].graph.as_ref().unwrap();
        let (fused, _) = crate::ir::passes::optimize(graph).unwrap();
        crate::back::kernel_ir::lower_with(&fused, &c.sources, precision).unwrap()
    }

    #[test]
    fn a_convolution_costs_what_its_shape_says() {
        // 16 -> 32 channels, 3x3, pad 1 on 8x8: 2·32·(16·9)·64 FLOP per image;
        // bytes: weights 32·144 + bias 32, input 16·64 and output 32·64 per image.
        let p = program(
            "model m { input [16, 8, 8] conv = conv(32, k=3, p=1) }",
            Precision::Fp32,
        );
        let k = &p.kernels[0];
        for batch in [1u64, 7, 64] {
            let c = cost(k, batch, 4.0);
            let b = batch as f64;
            assert_eq!(c.flops, 2.0 * 32.0 * 144.0 * 64.0 * b);
            assert_eq!(
                c.bytes,
                4.0 * (32.0 * 144.0 + 32.0 + (16.0 * 64.0 + 32.0 * 64.0) * b)
            );
            assert_eq!(c.unit, Unit::CudaCores);
            let (t, memory) = c.bound(&H200);
            let expect = (c.flops / H200.fp32).max(c.bytes / H200.bandwidth);
            assert_eq!(t, expect);
            assert_eq!(memory, c.bytes / H200.bandwidth >= c.flops / H200.fp32);
        }
    }

    #[test]
    fn tensor_core_kernels_are_bounded_by_their_unit_and_16_bit_weights_move_half_the_bytes() {
        // Large enough that the batch-64 bucket runs on tensor cores.
        let src = "model m { input [256, 28, 28] conv = conv(256, k=3, p=1) }";
        let (tf32, bf16) = (program(src, Precision::Tf32), program(src, Precision::Bf16));
        let (a, b) = (
            cost(&tf32.kernels[0], 64, 4.0),
            cost(&bf16.kernels[0], 64, 2.0),
        );
        assert_eq!((a.unit, b.unit), (Unit::Tf32, Unit::Half));
        assert_eq!(a.flops, b.flops);
        // Half the weights' bytes and half the activations' (input and output).
        let activations = 2.0 * 64.0 * 256.0 * 28.0 * 28.0;
        assert_eq!(
            a.bytes - b.bytes,
            2.0 * 256.0 * 256.0 * 9.0 + 2.0 * activations
        );
        assert!(a.bound(&H200).0 >= a.flops / H200.tf32);
        let x3 = cost(&program(src, Precision::Tf32x3).kernels[0], 64, 4.0);
        assert_eq!(x3.unit.peak(&H200), H200.tf32 / 3.0);
        // The H200 has more bandwidth than the H100, never less time bound.
        assert!(a.bound(&H200).0 <= a.bound(&H100_SXM).0);
    }

    #[test]
    fn the_report_names_every_kernel_and_the_precision() {
        let p = program(
            "model m { input [3, 32, 32] conv = conv(8, k=3, p=1) relu pool = maxpool(2) }",
            Precision::Tf32,
        );
        let text = render(&p);
        assert!(
            text.starts_with("roofline of m (tf32, activations 4 bytes), 2 kernels"),
            "{text}"
        );
        for k in &p.kernels {
            assert!(text.contains(&k.name), "{text}");
        }
        assert!(text.contains("H100 SXM") && text.contains("H200"));
    }
}
