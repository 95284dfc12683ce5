//! Convolutions and linear layers (`cnnc::Conv` + `cnnc::gemm`) as GEMMs:
//! per group, `Y[M][N] = W[M][K] · B[K][N]`, then bias and the fused
//! epilogue.
//!
//! The work of one step is cut into tasks, each small enough that its B matrix
//! stays in the L2 cache, and each task gathers B, multiplies and applies the
//! epilogue while the data is hot:
//!
//! - a task is a range of output pixels of one image (large maps), or a run of
//!   whole images (small maps, so the GEMM still has some columns);
//! - with at least as many tasks as threads, tasks run in parallel, each with
//!   a single-threaded GEMM and its own scratch; with fewer (batch 1 on the
//!   deep layers), tasks run one after another and the GEMM itself is split
//!   over the threads; tiny steps run on the calling thread;
//! - B is not gathered at all where it already lies in the arena: 1×1
//!   convolutions with stride 1 and no padding read the input planes, and
//!   linear layers read the batch's feature vectors, with strides;
//! - the GEMM writes into the output place directly when one image's pixels
//!   (or a batch of 1×1 outputs) are contiguous there; otherwise into scratch,
//!   and the epilogue moves it.
//!
//! im2col works a row (input channel, kernel tap) at a time: the valid output
//! x range of a tap is computed once, edges are zeroed and the interior copied
//! with `copy_from_slice` (stride 1) or a strided loop. Padding modes other
//! than zeros go through `source_index` per element.

use super::{Arena, Scratch};
use crate::plan::{Epi, Gemm, Place, Step};
use cnnc_kernels::act::apply_slice;
use cnnc_kernels::{copy_short, depthwise, direct, winograd};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::Mutex;

/// Floats of one task's im2col matrix: 1 MiB, the L2 of one core on the
/// machines we measure.
pub(super) const COL_BUDGET: usize = 1 << 18;
/// A GEMM over small maps takes whole images until it has this many columns.
const COLS_TARGET: usize = 256;
/// Pixel ranges are not cut below this many columns to make parallel tasks.
const MIN_TILE: usize = 64;
/// Steps under this many multiply-adds run on the calling thread.
const SERIAL_MACS: usize = 150_000;

/// How a step at a given batch is cut into tasks.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tiling {
    /// Images per task (> 1 only for small maps; then a task takes whole images).
    pub images: usize,
    /// Output pixels per task (the whole map when `images` > 1).
    pub pixels: usize,
    /// Tasks per image (1 when `images` > 1).
    pub per_image: usize,
    pub tasks: usize,
}

/// A 1×1 convolution with stride 1 and no padding: B is the input planes.
fn pointwise(g: &Gemm) -> bool {
    !g.global_pool && g.kernel == (1, 1) && g.stride == (1, 1) && g.pad == (0, 0)
}

/// A kernel that covers the whole unpadded input (a linear layer, or a conv
/// to a 1×1 map): B's column for an image is that image's input, as stored.
fn full_window(g: &Gemm, x: &Place) -> bool {
    !g.global_pool && g.kernel == (x.h, x.w) && g.pad == (0, 0) && g.dilation == (1, 1)
}

/// Where B can be read in place, (row stride, column stride between images).
fn direct_b(g: &Gemm, x: &Place, images: usize) -> Option<(usize, usize)> {
    let hw = x.h * x.w;
    if full_window(g, x) {
        Some((1, x.channels_total * hw))
    } else if pointwise(g) && images == 1 {
        Some((hw, 1))
    } else {
        None
    }
}

pub(super) fn tiling(g: &Gemm, y: &Place, batch: usize, threads: usize) -> Tiling {
    let p = y.h * y.w;
    let k = g.k_total();
    let threads = threads.max(1);
    if p < COLS_TARGET {
        // Small maps: whole images per task, enough of them for COLS_TARGET
        // columns, but leave every thread a task and keep B within budget.
        let images = COLS_TARGET
            .div_ceil(p)
            .min(batch.div_ceil(threads))
            .min((COL_BUDGET / (k * p)).max(1))
            .max(1);
        return Tiling {
            images,
            pixels: p,
            per_image: 1,
            tasks: batch.div_ceil(images),
        };
    }
    // Large maps: ranges of whole output rows.
    let (oh, ow) = (y.h, y.w);
    let budget_rows = (COL_BUDGET / (k * ow)).max(1);
    let mut per_image = oh.div_ceil(budget_rows);
    if batch * per_image < threads {
        let split = threads.div_ceil(batch).min((p / MIN_TILE).max(1));
        per_image = per_image.max(split).min(oh);
    }
    let rows = oh.div_ceil(per_image);
    let pixels = rows * ow;
    let per_image = oh.div_ceil(rows);
    Tiling {
        images: 1,
        pixels,
        per_image,
        tasks: batch * per_image,
    }
}

/// Scratch one task needs: (im2col floats, product floats).
pub(super) fn scratch_len(g: &Gemm, x: &Place, y: &Place, t: &Tiling) -> (usize, usize) {
    let p = y.h * y.w;
    let cols = t.images * t.pixels;
    let col = if direct_b(g, x, t.images).is_some() {
        0
    } else {
        g.k_total() * cols
    };
    let product = if t.images > 1 && p > 1 {
        g.out_channels * cols
    } else {
        0
    };
    (col, product)
}

/// Everything a task of one step reads.
struct Ctx<'a> {
    g: &'a Gemm,
    step: &'a Step,
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    arena: Arena<'a>,
    t: Tiling,
}

pub(super) fn conv(
    g: &Gemm,
    step: &Step,
    w: &[f32],
    bias: Option<&[f32]>,
    arena: Arena,
    scratch: &[Mutex<Scratch>],
) {
    let y = &step.output;
    let threads = rayon::current_num_threads();
    let t = tiling(g, y, arena.batch, threads);
    let ctx = Ctx {
        g,
        step,
        w,
        bias,
        arena,
        t,
    };
    let macs = arena.batch * y.h * y.w * g.out_channels * (g.k_total() / g.groups);
    let lock = |i: usize| lock_scratch(scratch, i);
    if macs < SERIAL_MACS || threads == 1 {
        let mut s = lock(rayon::current_thread_index().unwrap_or(0));
        for i in 0..t.tasks {
            task(&ctx, i, &mut s, false);
        }
    } else if t.tasks >= threads {
        // A task holds its thread's scratch and makes no rayon call, so no
        // other task can be stolen onto this thread while it holds the lock.
        (0..t.tasks).into_par_iter().for_each(|i| {
            let mut s = lock(rayon::current_thread_index().unwrap_or(0));
            task(&ctx, i, &mut s, false);
        });
    } else {
        let mut s = lock(rayon::current_thread_index().unwrap_or(0));
        for i in 0..t.tasks {
            task(&ctx, i, &mut s, true);
        }
    }
}

/// Thread `i`'s scratch (a poisoned lock is taken over: scratch holds no
/// invariant a panic could break).
fn lock_scratch(scratch: &[Mutex<Scratch>], i: usize) -> std::sync::MutexGuard<'_, Scratch> {
    scratch[i % scratch.len()]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Task `i`: gather B, multiply per group, epilogue. `parallel`: split the
/// gather and the GEMM over the pool.
fn task(ctx: &Ctx, i: usize, s: &mut Scratch, parallel: bool) {
    let Ctx {
        g, step, arena, t, ..
    } = *ctx;
    let (x, y) = (&step.inputs[0], &step.output);
    let batch = arena.batch;
    let p = y.h * y.w;
    let (n0, images, p0, p1) = if t.images > 1 {
        let n0 = i * t.images;
        (n0, t.images.min(batch - n0), 0, p)
    } else {
        let (n, tile) = (i / t.per_image, i % t.per_image);
        (n, 1, tile * t.pixels, ((tile + 1) * t.pixels).min(p))
    };
    let cols = images * (p1 - p0);
    let k = g.k_total();
    let (kg, mg) = (k / g.groups, g.out_channels / g.groups);
    let in_hw = x.h * x.w;

    // B: (pointer, row stride, column stride).
    let (b_ptr, b_rs, b_cs): (*const f32, usize, usize) =
        if let Some((rs, cs)) = direct_b(g, x, images) {
            // A full window has one output pixel (p0 = 0); a pointwise conv
            // reads its pixel range.
            let start = arena.start(x, n0, 0) + p0;
            // SAFETY: in the arena (`start` asserts the first plane; the checks
            // in `CpuExecutor::new` place every plane of every image inside it).
            (unsafe { arena.ptr.add(start) }, rs, cs)
        } else {
            let col = &mut s.col[..k * cols];
            if g.global_pool {
                let inv = 1.0 / in_hw as f32;
                for r in 0..k {
                    for j in 0..images {
                        col[r * cols + j] = arena.plane(x, n0 + j, r).iter().sum::<f32>() * inv;
                    }
                }
            } else if parallel && k * cols >= 32 * 1024 {
                let rows_per = (4096 / cols).max(1);
                col.par_chunks_mut(rows_per * cols)
                    .enumerate()
                    .for_each(|(c, rows)| {
                        im2col(g, arena, x, y, n0, images, p0, p1, rows, c * rows_per)
                    });
            } else {
                im2col(g, arena, x, y, n0, images, p0, p1, col, 0);
            }
            (col.as_ptr(), cols, 1)
        };

    // Destination: the output place itself where possible.
    let direct_dst = images == 1 || p == 1;
    let (d_ptr, d_rs, d_cs): (*mut f32, usize, usize) = if direct_dst {
        let start = arena.start(y, n0, 0) + p0;
        let cs = if images == 1 { 1 } else { y.channels_total };
        // SAFETY: as for B; this task alone writes these columns.
        (unsafe { arena.ptr.add(start) }, p, cs)
    } else {
        (s.product[..g.out_channels * cols].as_mut_ptr(), cols, 1)
    };

    let par = if parallel {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    for grp in 0..g.groups {
        let a = &ctx.w[grp * mg * kg..][..mg * kg];
        // SAFETY: A is [mg][kg] row-major (length checked in `new`); B and the
        // destination are the strided views described above, all in bounds:
        // group `grp` reads B rows grp·kg.. and writes rows grp·mg.. of `mg`.
        unsafe {
            gemm::gemm(
                mg,
                cols,
                kg,
                d_ptr.add(grp * mg * d_rs),
                d_cs as isize,
                d_rs as isize,
                false,
                a.as_ptr(),
                1,
                kg as isize,
                b_ptr.add(grp * kg * b_rs),
                b_cs as isize,
                b_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        }
    }

    // Bias, then the epilogue in order (`Epi::apply(acc + b, image, oc, p, r0)`).
    let finish = |out: &mut [f32], n: usize, oc: usize| epilogue(step, arena, out, n, oc, p0);
    if p == 1 && direct_dst {
        // 1×1 outputs: per image, the channels are contiguous.
        for n in n0..n0 + images {
            // SAFETY: this task alone writes image n's outputs.
            let out = unsafe { arena.span_mut(arena.start(y, n, 0), y.c) };
            if let Some(b) = ctx.bias {
                out.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
            for e in &step.epilogue {
                match *e {
                    Epi::Act(act) => apply_slice(act, out),
                    Epi::AddInput(k) => {
                        let xk = &step.inputs[k];
                        // SAFETY: read-only; inputs never overlap the output.
                        let r = unsafe { arena.span(arena.start(xk, n, 0), xk.c) };
                        out.iter_mut().zip(r).for_each(|(o, r)| *o += r);
                    }
                }
            }
        }
    } else if direct_dst {
        for oc in 0..y.c {
            // SAFETY: this task alone writes pixels p0..p1 of image n0.
            let out = unsafe { arena.span_mut(arena.start(y, n0, oc) + p0, p1 - p0) };
            if let Some(b) = ctx.bias {
                let b = b[oc];
                out.iter_mut().for_each(|o| *o += b);
            }
            finish(out, n0, oc);
        }
    } else {
        let product = &s.product[..g.out_channels * cols];
        for j in 0..images {
            for oc in 0..y.c {
                let acc = &product[oc * cols + j * p..][..p];
                // SAFETY: this task alone writes image n0 + j.
                let out = unsafe { arena.span_mut(arena.start(y, n0 + j, oc), p) };
                let b = ctx.bias.map_or(0.0, |b| b[oc]);
                out.iter_mut().zip(acc).for_each(|(o, a)| *o = a + b);
                finish(out, n0 + j, oc);
            }
        }
    }
}

/// The step's epilogue, in order, on `out`: pixels `p0..` of output plane
/// (n, oc), bias already added.
fn epilogue(step: &Step, arena: Arena, out: &mut [f32], n: usize, oc: usize, p0: usize) {
    for e in &step.epilogue {
        match *e {
            Epi::Act(act) => apply_slice(act, out),
            Epi::AddInput(k) => {
                let r = &arena.plane(&step.inputs[k], n, oc)[p0..p0 + out.len()];
                out.iter_mut().zip(r).for_each(|(o, r)| *o += r);
            }
        }
    }
}

/// The direct kernels stream a 16-channel block's weights (taps × 16
/// floats) from cache for every block of pixels: up to 800 taps (51 KB) they
/// beat im2col + GEMM on small maps; beyond, the GEMM's blocking over K wins.
const DIRECT_MAX_TAPS: usize = 800;
/// ... and on maps up to 64×64 pixels: on vgg16's 224×224 maps (64
/// channels, 576 taps) the GEMM was faster (194 against 206 ms for the
/// network at batch 1), on resnet50's 56×56 ones the direct kernel (57-58
/// against 58-60 ms).
const DIRECT_MAX_PIXELS: usize = 64 * 64;

/// Whether a step runs on the direct kernels ([`super::direct`]): stride 1,
/// no dilation, one group, zero padding, output channels in multiples of
/// 16, at most [`DIRECT_MAX_TAPS`] taps and [`DIRECT_MAX_PIXELS`] output
/// pixels, a kernel larger than 1×1 that is not a full window (the GEMM
/// reads those inputs in place), and a CPU with AVX2 and FMA.
pub(super) fn direct_fits(g: &Gemm, x: &Place, y: &Place) -> bool {
    y.h * y.w <= DIRECT_MAX_PIXELS
        && !g.global_pool
        && g.groups == 1
        && g.stride == (1, 1)
        && g.dilation == (1, 1)
        && g.padding_mode == 0
        && g.out_channels.is_multiple_of(16)
        && g.k_total() <= DIRECT_MAX_TAPS
        && g.kernel != (1, 1)
        && !full_window(g, x)
        && direct::available()
}

/// A direct convolution's weights, prepared once: tap-major, and
/// transformed for Winograd where it applies ([`winograd_fits`]).
pub(super) struct DirectWeights {
    pub taps: Vec<f32>,
    pub winograd: Option<Vec<f32>>,
}

/// Whether a convolution on the direct path also runs on the Winograd
/// kernels (5×5, 16k input and output channels, AVX-512) when its tasks
/// are whole images (a batch of at least one image per thread).
pub(super) fn winograd_fits(g: &Gemm, x: &Place, y: &Place) -> bool {
    g.kernel == (5, 5)
        && winograd::available()
        && winograd::Geometry::from(&direct_geometry(g, x, y)).fits()
}

pub(super) fn direct_geometry(g: &Gemm, x: &Place, y: &Place) -> direct::Geometry {
    direct::Geometry {
        c: g.in_channels,
        hp: x.h + 2 * g.pad.0,
        wp: x.w + 2 * g.pad.1,
        oc: g.out_channels,
        oh: y.h,
        ow: y.w,
        kh: g.kernel.0,
        kw: g.kernel.1,
    }
}

/// Scratch floats of one direct task: the padded input image, the
/// pixel-major output.
pub(super) fn direct_scratch_len(g: &Gemm, x: &Place, y: &Place) -> (usize, usize) {
    let d = direct_geometry(g, x, y);
    (d.c * d.hp * d.wp, d.oh * d.ow * d.oc)
}

/// A convolution on the direct kernels: tasks are images, or bands of
/// output rows when the batch is smaller than the pool (batch 1: each
/// thread takes a band). A task copies its image into the padded scratch
/// (which also gathers a channel slice), runs the kernel for its rows, and
/// moves the pixel-major result into the output planes with the bias and
/// the epilogue. Whole-image tasks of a step with Winograd weights run
/// [`winograd::forward`] instead.
pub(super) fn direct_conv(
    g: &Gemm,
    step: &Step,
    w: &DirectWeights,
    bias: Option<&[f32]>,
    arena: Arena,
    scratch: &[Mutex<Scratch>],
) {
    let (x, y) = (&step.inputs[0], &step.output);
    let d = direct_geometry(g, x, y);
    let batch = arena.batch;
    let threads = rayon::current_num_threads().max(1);
    let bands = if batch >= threads {
        1
    } else {
        threads.div_ceil(batch).min(y.h)
    };
    let rows = y.h.div_ceil(bands);
    let bands = y.h.div_ceil(rows);
    let run = |i: usize, s: &mut Scratch| {
        let (n, band) = (i / bands, i % bands);
        let (oy0, oy1) = (band * rows, ((band + 1) * rows).min(y.h));
        let (pad_h, pad_w) = g.pad;
        let plane = d.hp * d.wp;
        let xp = &mut s.padded[..d.c * plane];
        // Only the padded rows this band reads (a band of a batch-1 image
        // reads its rows plus KH − 1): zeros outside the image, its row inside.
        for c in 0..d.c {
            let src = arena.plane(x, n, c);
            for r in oy0..oy1 + d.kh - 1 {
                let row = &mut xp[c * plane + r * d.wp..c * plane + (r + 1) * d.wp];
                match r.checked_sub(pad_h).filter(|&ry| ry < x.h) {
                    Some(ry) => {
                        row[..pad_w].fill(0.0);
                        row[pad_w..pad_w + x.w].copy_from_slice(&src[ry * x.w..(ry + 1) * x.w]);
                        row[pad_w + x.w..].fill(0.0);
                    }
                    None => row.fill(0.0),
                }
            }
        }
        let pm = &mut s.pm[..(oy1 - oy0) * d.ow * d.oc];
        match (&w.winograd, bands) {
            // Whole images only: Winograd's tiles are pairs of rows.
            (Some(u), 1) => winograd::forward(&(&d).into(), xp, u, pm, &mut s.wino),
            _ => direct::forward_rows(&d, xp, &w.taps, pm, oy0, oy1),
        }
        let (p0, len) = (oy0 * y.w, (oy1 - oy0) * y.w);
        for t0 in (0..len).step_by(64) {
            let t1 = (t0 + 64).min(len);
            for oc in 0..y.c {
                // SAFETY: this task alone writes rows oy0..oy1 of image n.
                let out = unsafe { arena.span_mut(arena.start(y, n, oc) + p0 + t0, t1 - t0) };
                let b = bias.map_or(0.0, |b| b[oc]);
                for (j, o) in out.iter_mut().enumerate() {
                    *o = pm[(t0 + j) * d.oc + oc] + b;
                }
            }
        }
        if !step.epilogue.is_empty() {
            for oc in 0..y.c {
                // SAFETY: as above.
                let out = unsafe { arena.span_mut(arena.start(y, n, oc) + p0, len) };
                epilogue(step, arena, out, n, oc, p0);
            }
        }
    };
    let lock = |i: usize| lock_scratch(scratch, i);
    let macs = batch * y.h * y.w * g.out_channels * g.k_total();
    if macs < SERIAL_MACS || threads == 1 || batch * bands == 1 {
        let mut s = lock(rayon::current_thread_index().unwrap_or(0));
        for i in 0..batch * bands {
            run(i, &mut s);
        }
    } else {
        // As in `conv`: a task holds its thread's scratch and makes no rayon call.
        (0..batch * bands).into_par_iter().for_each(|i| {
            let mut s = lock(rayon::current_thread_index().unwrap_or(0));
            run(i, &mut s);
        });
    }
}

/// A depthwise convolution's plane geometry, where the step runs on the
/// depthwise kernel ([`depthwise`]): as many groups as input and output
/// channels, zero padding, and an output the padded input covers (always,
/// for a plan the compiler made). Any kernel, stride and dilation.
pub(super) fn depthwise_fits(g: &Gemm, x: &Place, y: &Place) -> Option<depthwise::Geometry> {
    if g.global_pool
        || g.padding_mode != 0
        || g.groups != g.in_channels
        || g.groups != g.out_channels
    {
        return None;
    }
    let d = depthwise::Geometry {
        h: x.h,
        w: x.w,
        oh: y.h,
        ow: y.w,
        kernel: g.kernel,
        stride: g.stride,
        pad: g.pad,
        dilation: g.dilation,
    };
    d.valid().then_some(d)
}

/// A depthwise convolution: one task per (image, channel) plane, which
/// lays its input plane out in the thread's scratch, runs the kernel with
/// the bias, then the epilogue on the plane while it is in cache.
pub(super) fn depthwise_conv(
    d: &depthwise::Geometry,
    step: &Step,
    w: &[f32],
    bias: Option<&[f32]>,
    arena: Arena,
    scratch: &[Mutex<Scratch>],
) {
    let (x, y) = (&step.inputs[0], &step.output);
    let taps = d.kernel.0 * d.kernel.1;
    // The work of a plane is its pixels times the taps.
    super::for_each_plane(arena.batch, y.c, y.h * y.w * taps, |n, c| {
        // The task makes no rayon call while it holds its thread's scratch.
        let mut s = lock_scratch(scratch, rayon::current_thread_index().unwrap_or(0));
        let phases = &mut s.phases[..d.scratch_len()];
        depthwise::split_phases(d, arena.plane(x, n, c), phases);
        // SAFETY: each task owns output plane (n, c).
        let out = unsafe { arena.plane_mut(y, n, c) };
        let b = bias.map_or(0.0, |b| b[c]);
        depthwise::plane(d, phases, &w[c * taps..(c + 1) * taps], b, out);
        epilogue(step, arena, out, n, c, 0);
    });
}

/// Fills rows `row0..` of the column matrix (`rows`, `cols` floats each, the
/// images side by side) for output pixels `p0..p1` of images `n0..n0 + images`.
/// On x86-64 with AVX2 the same code is compiled for 32-byte moves.
#[allow(clippy::too_many_arguments)]
fn im2col(
    g: &Gemm,
    arena: Arena,
    x: &Place,
    y: &Place,
    n0: usize,
    images: usize,
    p0: usize,
    p1: usize,
    rows: &mut [f32],
    row0: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (just checked).
        unsafe { im2col_avx2(g, arena, x, y, n0, images, p0, p1, rows, row0) };
        return;
    }
    im2col_any(g, arena, x, y, n0, images, p0, p1, rows, row0)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn im2col_avx2(
    g: &Gemm,
    arena: Arena,
    x: &Place,
    y: &Place,
    n0: usize,
    images: usize,
    p0: usize,
    p1: usize,
    rows: &mut [f32],
    row0: usize,
) {
    im2col_any(g, arena, x, y, n0, images, p0, p1, rows, row0)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn im2col_any(
    g: &Gemm,
    arena: Arena,
    x: &Place,
    y: &Place,
    n0: usize,
    images: usize,
    p0: usize,
    p1: usize,
    rows: &mut [f32],
    row0: usize,
) {
    let span = p1 - p0;
    let cols = images * span;
    let (kh, kw) = g.kernel;
    for (r, row) in rows.chunks_exact_mut(cols).enumerate() {
        let r = row0 + r;
        let (ic, tap) = (r / (kh * kw), r % (kh * kw));
        let (ky, kx) = (tap / kw, tap % kw);
        for (j, dst) in row.chunks_exact_mut(span).enumerate() {
            let map = arena.plane(x, n0 + j, ic);
            if g.padding_mode == 0 {
                gather_zeros(g, map, (x.h, x.w), y.w, (ky, kx), p0, dst);
            } else {
                gather_padded(g, map, (x.h, x.w), y.w, (ky, kx), p0, dst);
            }
        }
    }
}

/// One im2col row segment with zero padding: output pixels p0..p0 + dst.len()
/// for kernel tap (ky, kx).
#[inline(always)]
fn gather_zeros(
    g: &Gemm,
    map: &[f32],
    (ih, iw): (usize, usize),
    ow: usize,
    (ky, kx): (usize, usize),
    p0: usize,
    dst: &mut [f32],
) {
    let (sh, sw) = g.stride;
    let xoff = (kx * g.dilation.1) as isize - g.pad.1 as isize;
    let yoff = (ky * g.dilation.0) as isize - g.pad.0 as isize;
    // Output x with 0 ≤ ox·sw + xoff < iw: [lo, hi).
    let lo = if xoff >= 0 {
        0
    } else {
        (-xoff as usize).div_ceil(sw)
    };
    let last = iw as isize - 1 - xoff;
    let hi = if last < 0 {
        0
    } else {
        (last as usize / sw + 1).min(ow)
    };
    let lo = lo.min(hi);
    if sw == 1 && p0.is_multiple_of(ow) && dst.len().is_multiple_of(ow) {
        // Whole rows at stride 1: the same [lo, hi) interior for each.
        let oy0 = p0 / ow;
        for (r, d) in dst.chunks_exact_mut(ow).enumerate() {
            let iy = ((oy0 + r) * sh) as isize + yoff;
            if iy < 0 || iy >= ih as isize {
                d.fill(0.0);
                continue;
            }
            if lo > 0 {
                d[..lo].fill(0.0);
            }
            if hi < ow {
                d[hi..].fill(0.0);
            }
            // No interior when the tap lies in the padding for every output
            // x (a 5×5 depthwise tap on a 1×1 map): then `s0` may be -1.
            if lo < hi {
                let s0 = (iy as usize * iw) as isize + lo as isize + xoff;
                copy_short(&mut d[lo..hi], &map[s0 as usize..][..hi - lo]);
            }
        }
        return;
    }
    let p1 = p0 + dst.len();
    let mut d = 0;
    let mut oy = p0 / ow;
    while oy * ow < p1 {
        let xa = p0.saturating_sub(oy * ow);
        let xb = (p1 - oy * ow).min(ow);
        let seg = &mut dst[d..d + (xb - xa)];
        d += xb - xa;
        let iy = (oy * sh) as isize + yoff;
        if iy < 0 || iy >= ih as isize {
            seg.fill(0.0);
        } else {
            let src = &map[iy as usize * iw..][..iw];
            let (l, h) = (lo.clamp(xa, xb), hi.clamp(xa, xb));
            if l > xa {
                seg[..l - xa].fill(0.0);
            }
            if h < xb {
                seg[h - xa..].fill(0.0);
            }
            let interior = &mut seg[l - xa..h - xa];
            if interior.is_empty() {
                // As above: the tap reads only padding, and `s0` may be -1.
            } else if sw == 1 {
                let s0 = (l as isize + xoff) as usize;
                copy_short(interior, &src[s0..s0 + (h - l)]);
            } else {
                let s0 = ((l * sw) as isize + xoff) as usize;
                for (v, s) in interior.iter_mut().zip(src[s0..].iter().step_by(sw)) {
                    *v = *s;
                }
            }
        }
        oy += 1;
    }
}

/// Padding modes: 0 zeros, 1 reflect, 2 replicate, 3 circular. The source
/// index of padded coordinate `i`, or `None` where zeros padding reads 0
/// (`cnnc::source_index`).
#[inline]
fn source_index(mode: u8, i: isize, size: isize) -> Option<usize> {
    let j = match mode {
        0 => {
            if i < 0 || i >= size {
                return None;
            }
            i
        }
        1 => {
            if size == 1 {
                0
            } else {
                let period = 2 * (size - 1);
                let m = i.rem_euclid(period);
                if m < size {
                    m
                } else {
                    period - m
                }
            }
        }
        2 => i.clamp(0, size - 1),
        _ => i.rem_euclid(size),
    };
    Some(j as usize)
}

/// One im2col row segment for reflect, replicate or circular padding.
fn gather_padded(
    g: &Gemm,
    map: &[f32],
    (ih, iw): (usize, usize),
    ow: usize,
    (ky, kx): (usize, usize),
    p0: usize,
    dst: &mut [f32],
) {
    for (d, v) in dst.iter_mut().enumerate() {
        let (oy, ox) = ((p0 + d) / ow, (p0 + d) % ow);
        let iy = source_index(
            g.padding_mode,
            (oy * g.stride.0 + ky * g.dilation.0) as isize - g.pad.0 as isize,
            ih as isize,
        );
        let ix = source_index(
            g.padding_mode,
            (ox * g.stride.1 + kx * g.dilation.1) as isize - g.pad.1 as isize,
            iw as isize,
        );
        *v = match (iy, ix) {
            (Some(iy), Some(ix)) => map[iy * iw + ix],
            _ => 0.0,
        };
    }
}
