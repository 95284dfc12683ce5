//! The CPU executor: runs an execution [`Plan`] on the host, step by step, in
//! one activation arena allocated when the executor is made.
//!
//! Each step computes the same function as the CUDA kernel it stands for
//! (`compiler/src/cuda.rs`, `PRELUDE`), with the same placements: element
//! (n, c, p) of a [`Place`] lives at `place.index(batch, n, c, p)`, so channel
//! slices (a concat written in place) and buffer reuse behave exactly as on
//! the GPU. Convolutions and linear layers gather their input into a scratch
//! matrix (im2col) and multiply it with the `gemm` crate; the bias and the
//! epilogue then run in one pass over each output plane. Everything else is
//! plain loops over output planes, run in parallel with rayon.
//!
//! Nothing is allocated per inference except by rayon and `gemm` internally.

use crate::plan::{Epi, Gemm, Place, Plan, Step, StepOp};
use crate::{Error, Result};
use rayon::prelude::*;
use std::marker::PhantomData;

pub struct CpuExecutor {
    plan: Plan,
    prepared: Vec<Vec<f32>>,
    /// The activations: `plan.arena_per_image · max_batch` floats.
    arena: Vec<f32>,
    /// im2col scratch, the GEMM's B matrix `[IC·KH·KW][batch·OH·OW]`, sized for the largest step.
    col: Vec<f32>,
    /// The GEMM's result before bias and epilogue, `[OC][batch·OH·OW]`.
    product: Vec<f32>,
    /// The model's output for the last batch, contiguous NCHW.
    output: Vec<f32>,
    max_batch: usize,
}

impl CpuExecutor {
    /// Checks the plan against the prepared tensors and allocates everything a
    /// batch of up to `max_batch` images needs.
    pub fn new(plan: Plan, prepared: Vec<Vec<f32>>, max_batch: usize) -> Result<CpuExecutor> {
        if max_batch == 0 {
            return Err(Error(
                "the CPU executor needs a batch size of at least 1".into(),
            ));
        }
        if prepared.len() != plan.prepared.len() {
            return Err(Error(format!(
                "the plan of `{}` reads {} prepared tensors, {} were given",
                plan.model,
                plan.prepared.len(),
                prepared.len()
            )));
        }
        let arena_len = plan.arena_per_image.checked_mul(max_batch).ok_or_else(|| {
            Error(format!(
                "a batch of {max_batch} images does not fit in memory"
            ))
        })?;
        check_place(&plan, &plan.input, "the model input")?;
        check_place(&plan, &plan.output, "the model output")?;
        let (mut col_len, mut product_len) = (0usize, 0usize);
        for step in &plan.steps {
            check_step(&plan, step, &prepared)
                .map_err(|e| Error(format!("step `{}`: {e}", step.kernel)))?;
            if let StepOp::Gemm(g) = &step.op {
                let n = max_batch * step.output.h * step.output.w;
                col_len = col_len.max(gemm_k_total(g) * n);
                product_len = product_len.max(g.out_channels * n);
            }
        }
        Ok(CpuExecutor {
            arena: vec![0.0; arena_len],
            col: vec![0.0; col_len],
            product: vec![0.0; product_len],
            output: vec![0.0; max_batch * plan.output.numel()],
            plan,
            prepared,
            max_batch,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Runs the model on `batch` images (NCHW f32); returns their outputs, NCHW
    /// (`batch` × the per-image output shape), valid until the next run.
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<&[f32]> {
        if batch == 0 || batch > self.max_batch {
            return Err(Error(format!(
                "batch {batch} is outside 1..={} (the executor was made for at most {} image{})",
                self.max_batch,
                self.max_batch,
                if self.max_batch == 1 { "" } else { "s" }
            )));
        }
        let CpuExecutor {
            plan,
            prepared,
            arena,
            col,
            product,
            output,
            ..
        } = self;
        let per = plan.input.numel();
        if input.len() != batch * per {
            return Err(Error(format!(
                "input has {} values; {batch} images of {} need {}",
                input.len(),
                crate::shape_text(&plan.input_shape),
                batch * per
            )));
        }
        let arena = &mut arena[..batch * plan.arena_per_image];
        // The input place may in principle be a channel slice: copy plane by plane.
        let x = plan.input;
        let hw = x.h * x.w;
        for n in 0..batch {
            for c in 0..x.c {
                let at = x.index(batch, n, c, 0);
                arena[at..at + hw].copy_from_slice(&input[(n * x.c + c) * hw..][..hw]);
            }
        }
        let shared = Arena::new(arena, batch);
        for step in &plan.steps {
            run_step(step, prepared, shared, col, product);
        }
        let y = plan.output;
        let hw = y.h * y.w;
        let output = &mut output[..batch * y.numel()];
        for n in 0..batch {
            for c in 0..y.c {
                output[(n * y.c + c) * hw..][..hw].copy_from_slice(shared.plane(&y, n, c));
            }
        }
        Ok(output)
    }
}

// ---------------------------------------------------------------------------
// Checks made once, in `new`. They are what makes the arena sharing in
// `run_step` sound: every place lies inside the arena, and no step writes an
// element it also reads.
// ---------------------------------------------------------------------------

fn check_place(plan: &Plan, p: &Place, what: &str) -> Result<()> {
    if p.numel() == 0 {
        return Err(Error(format!("{what} is empty ({}×{}×{})", p.c, p.h, p.w)));
    }
    let buffer = p
        .channels_total
        .checked_mul(p.h * p.w)
        .and_then(|s| s.checked_add(p.offset));
    if p.channel_offset + p.c > p.channels_total
        || buffer.is_none_or(|end| end > plan.arena_per_image)
    {
        return Err(Error(format!(
            "{what} is placed outside the arena (offset {}, channels {}+{} of {}, {}×{}; arena {} floats per image)",
            p.offset, p.channel_offset, p.c, p.channels_total, p.h, p.w, plan.arena_per_image
        )));
    }
    Ok(())
}

/// Whether two places can share an element, at any batch size: their buffers
/// (`[offset, offset + channels_total·H·W)` per image) overlap, and they are
/// not disjoint channel slices of the same buffer.
fn may_overlap(a: &Place, b: &Place) -> bool {
    let (a_end, b_end) = (
        a.offset + a.channels_total * a.h * a.w,
        b.offset + b.channels_total * b.h * b.w,
    );
    if a.offset >= b_end || b.offset >= a_end {
        return false;
    }
    let same_buffer =
        a.offset == b.offset && a.channels_total == b.channels_total && a.h * a.w == b.h * b.w;
    let disjoint_slices =
        a.channel_offset + a.c <= b.channel_offset || b.channel_offset + b.c <= a.channel_offset;
    !(same_buffer && disjoint_slices)
}

fn same_shape(a: &Place, b: &Place) -> bool {
    (a.c, a.h, a.w) == (b.c, b.h, b.w)
}

/// K of one group's GEMM, summed over groups: the rows of the im2col matrix.
fn gemm_k_total(g: &Gemm) -> usize {
    if g.global_pool {
        g.in_channels
    } else {
        g.in_channels * g.kernel.0 * g.kernel.1
    }
}

fn check_step(plan: &Plan, step: &Step, prepared: &[Vec<f32>]) -> std::result::Result<(), String> {
    let inputs_needed = match step.op {
        StepOp::Add => 2,
        _ => 1,
    };
    if step.inputs.len() < inputs_needed {
        return Err(format!(
            "has {} inputs, needs {inputs_needed}",
            step.inputs.len()
        ));
    }
    check_place(plan, &step.output, "its output").map_err(|e| e.0)?;
    for (k, x) in step.inputs.iter().enumerate() {
        check_place(plan, x, &format!("its input {k}")).map_err(|e| e.0)?;
        if may_overlap(&step.output, x) {
            return Err(format!("its output overlaps its input {k} in the arena"));
        }
    }
    let param = |i: usize, len: usize, what: &str| -> std::result::Result<(), String> {
        let index = *step.params.get(i).ok_or_else(|| format!("has no {what}"))?;
        let t = prepared
            .get(index)
            .ok_or_else(|| format!("its {what} is not a prepared tensor"))?;
        if t.len() != len {
            return Err(format!("its {what} has {} values, expected {len}", t.len()));
        }
        Ok(())
    };
    let (x, y) = (&step.inputs[0], &step.output);
    match &step.op {
        StepOp::Gemm(g) => {
            if g.groups == 0 || g.in_channels % g.groups != 0 || g.out_channels % g.groups != 0 {
                return Err(format!(
                    "{} groups do not divide {} → {} channels",
                    g.groups, g.in_channels, g.out_channels
                ));
            }
            if x.c != g.in_channels || y.c != g.out_channels {
                return Err(format!(
                    "places hold {} → {} channels, the GEMM {} → {}",
                    x.c, y.c, g.in_channels, g.out_channels
                ));
            }
            if g.padding_mode > 3 || (g.global_pool && (y.h, y.w) != (1, 1)) {
                return Err(
                    "has an unknown padding mode or a pooled output that is not 1×1".into(),
                );
            }
            param(0, g.out_channels * (gemm_k_total(g) / g.groups), "weight")?;
            if g.bias {
                param(1, g.out_channels, "bias")?;
            }
            for e in &step.epilogue {
                if let Epi::AddInput(k) = *e {
                    let r = step
                        .inputs
                        .get(k)
                        .ok_or_else(|| format!("its epilogue adds missing input {k}"))?;
                    if !same_shape(r, y) {
                        return Err(format!("its epilogue adds input {k} of another shape"));
                    }
                }
            }
        }
        _ if !step.epilogue.is_empty() => {
            // The CUDA printer gives only GEMM kernels an epilogue.
            return Err("only convolutions and linear layers have an epilogue".into());
        }
        StepOp::Pool { .. } | StepOp::AdaptivePool { .. } => {
            if x.c != y.c {
                return Err(format!("pools {} channels into {}", x.c, y.c));
            }
        }
        StepOp::ChannelAffine => {
            param(0, y.c, "scale")?;
            param(1, y.c, "shift")?;
        }
        StepOp::Add => {
            if !same_shape(x, y) || !same_shape(&step.inputs[1], y) {
                return Err("adds tensors of different shapes".into());
            }
        }
        StepOp::Lrn { size: 0, .. } => return Err("has an LRN size of 0".into()),
        StepOp::Lrn { .. } | StepOp::Softmax { .. } | StepOp::Act(_) | StepOp::Copy => {
            if !same_shape(x, y) {
                return Err("changes the shape of an elementwise op".into());
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The arena as the parallel tasks of one step see it.
// ---------------------------------------------------------------------------

/// A view of the arena for one batch that the tasks of a step share: they read
/// the step's inputs and each writes its own output planes (or elements).
///
/// Soundness rests on the checks in [`CpuExecutor::new`]: every place lies
/// inside the arena (and [`Arena::plane`] asserts it again), and no step's
/// output shares an element with any of its inputs, so a write never aliases
/// a read; each output plane or element is handed to exactly one task.
#[derive(Clone, Copy)]
struct Arena<'a> {
    ptr: *mut f32,
    len: usize,
    batch: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: see the type's documentation; tasks never touch the same element
// with a write and another access.
unsafe impl Send for Arena<'_> {}
unsafe impl Sync for Arena<'_> {}

impl<'a> Arena<'a> {
    fn new(arena: &'a mut [f32], batch: usize) -> Arena<'a> {
        Arena {
            ptr: arena.as_mut_ptr(),
            len: arena.len(),
            batch,
            _borrow: PhantomData,
        }
    }

    fn start(&self, place: &Place, n: usize, c: usize) -> usize {
        let hw = place.h * place.w;
        let start = place.index(self.batch, n, c, 0);
        assert!(
            n < self.batch && c < place.c && start + hw <= self.len,
            "plane outside the arena"
        );
        start
    }

    /// Channel `c` of image `n` of `place`: its H·W values, to read.
    fn plane(&self, place: &Place, n: usize, c: usize) -> &'a [f32] {
        let start = self.start(place, n, c);
        // SAFETY: in bounds (asserted); nothing writes it during this step.
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), place.h * place.w) }
    }

    /// Channel `c` of image `n` of `place`, to write.
    ///
    /// # Safety
    /// `place` is the step's output and no other task holds this plane.
    #[allow(clippy::mut_from_ref)]
    unsafe fn plane_mut(&self, place: &Place, n: usize, c: usize) -> &'a mut [f32] {
        let start = self.start(place, n, c);
        std::slice::from_raw_parts_mut(self.ptr.add(start), place.h * place.w)
    }

    /// Writes element (n, c, p) of `place`.
    ///
    /// # Safety
    /// `place` is the step's output and no other task writes this element or holds its plane.
    unsafe fn set(&self, place: &Place, n: usize, c: usize, p: usize, v: f32) {
        let start = self.start(place, n, c);
        assert!(p < place.h * place.w);
        self.ptr.add(start + p).write(v);
    }
}

/// Runs `f(n, c)` for every (image, channel) plane of an output, in parallel.
fn for_each_plane(
    batch: usize,
    channels: usize,
    plane_len: usize,
    f: impl Fn(usize, usize) + Sync + Send,
) {
    // Small planes (a linear layer's 1×1) are grouped so a task has some work.
    let min_len = (4096 / plane_len.max(1)).max(1);
    (0..batch * channels)
        .into_par_iter()
        .with_min_len(min_len)
        .for_each(|i| f(i / channels, i % channels));
}

// ---------------------------------------------------------------------------
// The steps, one function per CUDA kernel template.
// ---------------------------------------------------------------------------

fn run_step(
    step: &Step,
    prepared: &[Vec<f32>],
    arena: Arena,
    col: &mut [f32],
    product: &mut [f32],
) {
    let param = |i: usize| prepared[step.params[i]].as_slice();
    let (x, y) = (&step.inputs[0], &step.output);
    let b = arena.batch;
    match step.op {
        StepOp::Gemm(g) => conv(
            &g,
            step,
            param(0),
            g.bias.then(|| param(1)),
            arena,
            col,
            product,
        ),
        StepOp::Pool {
            max,
            kernel,
            stride,
            pad,
            dilation,
            count_include_pad,
        } => {
            for_each_plane(b, y.c, y.h * y.w, |n, c| {
                // SAFETY: each task owns output plane (n, c).
                let out = unsafe { arena.plane_mut(y, n, c) };
                pool(
                    arena.plane(x, n, c),
                    (x.h, x.w),
                    out,
                    (y.h, y.w),
                    max,
                    kernel,
                    stride,
                    pad,
                    dilation,
                    count_include_pad,
                );
            })
        }
        StepOp::AdaptivePool { max } => for_each_plane(b, y.c, y.h * y.w, |n, c| {
            // SAFETY: each task owns output plane (n, c).
            let out = unsafe { arena.plane_mut(y, n, c) };
            adaptive_pool(arena.plane(x, n, c), (x.h, x.w), out, (y.h, y.w), max);
        }),
        StepOp::ChannelAffine => {
            let (scale, shift) = (param(0), param(1));
            for_each_plane(b, y.c, y.h * y.w, |n, c| {
                // SAFETY: each task owns output plane (n, c).
                let out = unsafe { arena.plane_mut(y, n, c) };
                for (o, v) in out.iter_mut().zip(arena.plane(x, n, c)) {
                    *o = v.mul_add(scale[c], shift[c]);
                }
            })
        }
        StepOp::Lrn {
            size,
            alpha,
            beta,
            k,
        } => for_each_plane(b, y.c, y.h * y.w, |n, c| {
            // As PyTorch: b_c = a_c / (k + α/n · Σ a_j²)^β, j in [c − n/2, c + (n − 1)/2] ∩ channels.
            let lo = c.saturating_sub(size / 2);
            let hi = (c + (size - 1) / 2).min(x.c - 1);
            // SAFETY: each task owns output plane (n, c).
            let out = unsafe { arena.plane_mut(y, n, c) };
            // Σ a_j², accumulated in `out` over j in order (as the kernel's loop).
            out.fill(0.0);
            for j in lo..=hi {
                for (s, &v) in out.iter_mut().zip(arena.plane(x, n, j)) {
                    *s += v * v;
                }
            }
            for (o, &v) in out.iter_mut().zip(arena.plane(x, n, c)) {
                *o = v / (k + alpha * *o / size as f32).powf(beta);
            }
        }),
        StepOp::Softmax { log } => {
            // One task per (image, pixel), over channels, as the CUDA kernel.
            let hw = y.h * y.w;
            (0..b * hw)
                .into_par_iter()
                .with_min_len((4096 / y.c.max(1)).max(1))
                .for_each(|i| {
                    let (n, p) = (i / hw, i % hw);
                    let at = |c: usize| arena.plane(x, n, c)[p];
                    let m = (0..x.c).map(at).fold(f32::NEG_INFINITY, f32::max);
                    let s: f32 = (0..x.c).map(|c| (at(c) - m).exp()).sum();
                    let log_s = s.ln();
                    for c in 0..x.c {
                        let shifted = at(c) - m;
                        let v = if log {
                            shifted - log_s
                        } else {
                            shifted.exp() / s
                        };
                        // SAFETY: each task owns pixel p of image n in every output channel.
                        unsafe { arena.set(y, n, c, p, v) };
                    }
                });
        }
        StepOp::Act(a) => for_each_plane(b, y.c, y.h * y.w, |n, c| {
            // SAFETY: each task owns output plane (n, c).
            let out = unsafe { arena.plane_mut(y, n, c) };
            for (o, &v) in out.iter_mut().zip(arena.plane(x, n, c)) {
                *o = a.apply(v);
            }
        }),
        StepOp::Add => {
            let x2 = &step.inputs[1];
            for_each_plane(b, y.c, y.h * y.w, |n, c| {
                // SAFETY: each task owns output plane (n, c).
                let out = unsafe { arena.plane_mut(y, n, c) };
                for ((o, &u), &v) in out
                    .iter_mut()
                    .zip(arena.plane(x, n, c))
                    .zip(arena.plane(x2, n, c))
                {
                    *o = u + v;
                }
            })
        }
        StepOp::Copy => for_each_plane(b, y.c, y.h * y.w, |n, c| {
            // SAFETY: each task owns output plane (n, c).
            unsafe { arena.plane_mut(y, n, c) }.copy_from_slice(arena.plane(x, n, c));
        }),
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

/// A convolution or linear layer (`cnnc::Conv` + `cnnc::gemm`): per group,
/// `product[M][N] = W[M][K] · B[K][N]` with N = batch·OH·OW and B gathered by
/// im2col; then bias and epilogue into the output place.
fn conv(
    g: &Gemm,
    step: &Step,
    w: &[f32],
    bias: Option<&[f32]>,
    arena: Arena,
    col: &mut [f32],
    product: &mut [f32],
) {
    let (x, y) = (&step.inputs[0], &step.output);
    let batch = arena.batch;
    let pixels = y.h * y.w;
    let n_total = batch * pixels;
    let k_group = gemm_k_total(g) / g.groups;
    let m_group = g.out_channels / g.groups;
    let col = &mut col[..gemm_k_total(g) * n_total];
    let product = &mut product[..g.out_channels * n_total];

    // B[k][n·P + p]. Row k = ic·KH·KW + tap for every group, since the input
    // channels of group g are g·ICG .. (g + 1)·ICG (`Conv::load_b`).
    col.par_chunks_mut(n_total)
        .enumerate()
        .for_each(|(row, b_row)| {
            if g.global_pool {
                // The mean of input map `row` (adaptive_avgpool(1) fused in).
                let inv = 1.0 / (x.h * x.w) as f32;
                for (n, b) in b_row.iter_mut().enumerate() {
                    *b = arena.plane(x, n, row).iter().sum::<f32>() * inv;
                }
                return;
            }
            let (kh, kw) = g.kernel;
            let (ic, tap) = (row / (kh * kw), row % (kh * kw));
            let (ky, kx) = ((tap / kw) as isize, (tap % kw) as isize);
            let (ih, iw) = (x.h as isize, x.w as isize);
            for n in 0..batch {
                let map = arena.plane(x, n, ic);
                let b_image = &mut b_row[n * pixels..(n + 1) * pixels];
                for oy in 0..y.h {
                    let iy = source_index(
                        g.padding_mode,
                        (oy * g.stride.0) as isize - g.pad.0 as isize + ky * g.dilation.0 as isize,
                        ih,
                    );
                    for ox in 0..y.w {
                        let ix = source_index(
                            g.padding_mode,
                            (ox * g.stride.1) as isize - g.pad.1 as isize
                                + kx * g.dilation.1 as isize,
                            iw,
                        );
                        b_image[oy * y.w + ox] = match (iy, ix) {
                            (Some(iy), Some(ix)) => map[iy * x.w + ix],
                            _ => 0.0,
                        };
                    }
                }
            }
        });

    // The GEMMs go through the `gemm` crate (sarah-ek): well kept, SIMD kernels
    // picked at run time (AVX2/FMA, AVX-512, NEON), any strides, and it splits
    // one large product over rayon's pool, the same pool the rest of this
    // executor uses (matrixmultiply threads through its own pool instead).
    // One group: let gemm parallelise it. Many (depthwise): a group per task.
    let gemm_group = |w: &[f32], b: &[f32], out: &mut [f32], parallelism| {
        assert!(
            w.len() == m_group * k_group
                && b.len() == k_group * n_total
                && out.len() == m_group * n_total
        );
        // SAFETY: row-major [M][K]·[K][N] → [M][N]; the lengths were just checked.
        unsafe {
            gemm::gemm(
                m_group,
                n_total,
                k_group,
                out.as_mut_ptr(),
                1,
                n_total as isize,
                false,
                w.as_ptr(),
                1,
                k_group as isize,
                b.as_ptr(),
                1,
                n_total as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    if g.groups == 1 {
        gemm_group(w, col, product, gemm::Parallelism::Rayon(0));
    } else {
        product
            .par_chunks_mut(m_group * n_total)
            .zip(col.par_chunks(k_group * n_total))
            .zip(w.par_chunks(m_group * k_group))
            .for_each(|((out, b), w)| gemm_group(w, b, out, gemm::Parallelism::None));
    }

    // The epilogue, per output plane: bias first, then each step in order
    // (`Epi::apply(acc + b, image, oc, p, r0)`).
    let product = &*product;
    for_each_plane(batch, y.c, pixels, |n, oc| {
        let acc = &product[oc * n_total + n * pixels..][..pixels];
        let bias = bias.map_or(0.0, |b| b[oc]);
        // SAFETY: each task owns output plane (n, oc).
        let out = unsafe { arena.plane_mut(y, n, oc) };
        for (o, &a) in out.iter_mut().zip(acc) {
            *o = a + bias;
        }
        for e in &step.epilogue {
            match *e {
                Epi::Act(act) => out.iter_mut().for_each(|v| *v = act.apply(*v)),
                Epi::AddInput(k) => {
                    for (o, &r) in out.iter_mut().zip(arena.plane(&step.inputs[k], n, oc)) {
                        *o += r;
                    }
                }
            }
        }
    });
}

/// Max or average pooling of one plane, as PyTorch's MaxPool2d / AvgPool2d (`cnnc::pool`).
#[allow(clippy::too_many_arguments)]
fn pool(
    map: &[f32],
    (ih, iw): (usize, usize),
    out: &mut [f32],
    (oh, ow): (usize, usize),
    max: bool,
    (kh, kw): (usize, usize),
    (sh, sw): (usize, usize),
    (ph, pw): (usize, usize),
    (dh, dw): (usize, usize),
    count_include_pad: bool,
) {
    let (ih, iw, ph, pw) = (ih as isize, iw as isize, ph as isize, pw as isize);
    for oy in 0..oh {
        for ox in 0..ow {
            let (oy_s, ox_s) = ((oy * sh) as isize, (ox * sw) as isize);
            let r = if max {
                // Padding never wins: PyTorch pads with −∞; NaN propagates.
                let mut r = f32::NEG_INFINITY;
                for ky in 0..kh {
                    let iy = oy_s - ph + (ky * dh) as isize;
                    if iy < 0 || iy >= ih {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix = ox_s - pw + (kx * dw) as isize;
                        if ix < 0 || ix >= iw {
                            continue;
                        }
                        let v = map[(iy * iw + ix) as usize];
                        if v > r || v.is_nan() {
                            r = v;
                        }
                    }
                }
                r
            } else {
                // The window clipped to the padded input for the divisor, to the input for the sum.
                let (mut y0, mut x0) = (oy_s - ph, ox_s - pw);
                let (mut y1, mut x1) = (
                    (y0 + kh as isize).min(ih + ph),
                    (x0 + kw as isize).min(iw + pw),
                );
                let padded_area = (y1 - y0) * (x1 - x0);
                (y0, x0, y1, x1) = (y0.max(0), x0.max(0), y1.min(ih), x1.min(iw));
                let mut s = 0.0f32;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        s += map[(iy * iw + ix) as usize];
                    }
                }
                s / (if count_include_pad {
                    padded_area
                } else {
                    (y1 - y0) * (x1 - x0)
                }) as f32
            };
            out[oy * ow + ox] = r;
        }
    }
}

/// Adaptive pooling of one plane: window [floor(i·I/O), ceil((i+1)·I/O)) (`cnnc::adaptive_pool`).
fn adaptive_pool(
    map: &[f32],
    (ih, iw): (usize, usize),
    out: &mut [f32],
    (oh, ow): (usize, usize),
    max: bool,
) {
    for oy in 0..oh {
        let (y0, y1) = (oy * ih / oh, ((oy + 1) * ih).div_ceil(oh));
        for ox in 0..ow {
            let (x0, x1) = (ox * iw / ow, ((ox + 1) * iw).div_ceil(ow));
            let mut r = if max { f32::NEG_INFINITY } else { 0.0 };
            for iy in y0..y1 {
                for &v in &map[iy * iw + x0..iy * iw + x1] {
                    if max {
                        if v > r || v.is_nan() {
                            r = v;
                        }
                    } else {
                        r += v;
                    }
                }
            }
            if !max {
                r /= ((y1 - y0) * (x1 - x0)) as f32;
            }
            out[oy * ow + ox] = r;
        }
    }
}
