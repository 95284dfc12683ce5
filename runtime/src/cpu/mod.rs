//! The CPU executor: runs an execution [`Plan`] on the host, step by step, in
//! one activation arena allocated when the executor is made.
//!
//! Each step computes the same function as the CUDA kernel it stands for
//! (`compiler/src/back/cuda.rs`, `PRELUDE`), with the same placements: element
//! (n, c, p) of a [`Place`] lives at `place.index(batch, n, c, p)`, so channel
//! slices (a concat written in place) and buffer reuse behave exactly as on
//! the GPU. Convolutions and linear layers are GEMMs through the `gemm`
//! crate, cut into cache-sized tasks with their epilogue fused ([`conv`]);
//! activations are vectorised ([`act`]). Everything else is plain loops over
//! output planes, run in parallel with rayon when a step is large enough.
//!
//! Nothing is allocated per inference except by rayon and `gemm` internally.
//! Run it on a rayon worker thread (a pool built with `use_current_thread`,
//! as built binaries do) to avoid a cross-thread hand-off per parallel step.

mod conv;

pub use cnnc_kernels::{act::apply_slice, copy_short};
use cnnc_kernels::{depthwise, direct, taps, winograd};

use crate::plan::{Epi, Place, Plan, Step, StepOp};
use crate::{Error, Result};
use rayon::prelude::*;
use std::marker::PhantomData;
use std::sync::Mutex;

/// One thread's scratch for the GEMM steps.
#[derive(Default)]
struct Scratch {
    /// im2col: one task's B matrix, `[K][columns]`.
    col: Vec<f32>,
    /// One task's product when it cannot go straight into the output place.
    product: Vec<f32>,
    /// Direct convolutions: one padded input image, one pixel-major output.
    padded: Vec<f32>,
    pm: Vec<f32>,
    /// Winograd's transformed tiles (sized for the largest such step).
    wino: winograd::Scratch,
    /// Depthwise convolutions: one input plane, padded and split by stride
    /// ([`depthwise::split_phases`]).
    phases: Vec<f32>,
}

/// Which kernel the CPU executor runs a step on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuPath {
    /// A convolution or linear layer as im2col + GEMM ([`conv`]).
    Gemm,
    /// A convolution on the direct (and, for whole images, Winograd) kernels.
    Direct,
    /// A depthwise convolution on [`depthwise`].
    Depthwise,
    /// Any other step: its own loop.
    Other,
}

pub struct CpuExecutor {
    plan: Plan,
    prepared: Vec<Vec<f32>>,
    /// The activations: `plan.arena_per_image · max_batch` floats.
    arena: Vec<f32>,
    /// Per thread of the pool: GEMM scratch, sized for the largest task.
    scratch: Vec<Mutex<Scratch>>,
    /// The model's output for the last batch, contiguous NCHW.
    output: Vec<f32>,
    max_batch: usize,
    /// Per step: the weights tap-major (and for Winograd) where the step
    /// runs on the direct kernels ([`direct`], [`winograd`]).
    direct_w: Vec<Option<conv::DirectWeights>>,
    /// Per step: the plane geometry where the step runs on [`depthwise`].
    depthwise: Vec<Option<depthwise::Geometry>>,
    /// For each step, the step of the plan it was given that it belongs to
    /// (a gated or normalising convolution is two steps here:
    /// [`split_gated_steps`]).
    origin: Vec<usize>,
    /// With profiling on: milliseconds spent in each step of the plan it
    /// was given, summed over runs.
    step_ms: Option<Vec<f64>>,
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
        // The CPU computes in FP32 whatever the plan's precision: a weight
        // with a 16-bit copy for the GPU's tensor cores keeps only its f32 part.
        let mut prepared = prepared;
        for step in &plan.steps {
            if let (StepOp::Gemm(g), Some(&i)) = (&step.op, step.params.first()) {
                if let (Some(crate::plan::Prepared::WithHalf { .. }), Some(t)) =
                    (plan.prepared.get(i), prepared.get_mut(i))
                {
                    t.truncate(g.weight_len());
                    t.shrink_to_fit();
                }
            }
        }
        let given = plan.steps.len();
        let (plan, origin) = split_gated_steps(plan)?;
        debug_assert_eq!(origin.last().map_or(0, |o| o + 1), given);
        let arena_len = plan.arena_per_image.checked_mul(max_batch).ok_or_else(|| {
            Error(format!(
                "a batch of {max_batch} images does not fit in memory"
            ))
        })?;
        check_place(&plan, &plan.input, "the model input")?;
        check_place(&plan, &plan.output, "the model output")?;
        let threads = rayon::current_num_threads().max(1);
        let (mut col_len, mut product_len) = (0usize, 0usize);
        let (mut padded_len, mut pm_len) = (0usize, 0usize);
        let (mut direct_w, mut depthwise) = (Vec::new(), Vec::new());
        let mut winograd_steps = Vec::new();
        let mut phases_len = 0;
        for step in &plan.steps {
            check_step(&plan, step, &prepared)
                .map_err(|e| Error(format!("step `{}`: {e}", step.kernel)))?;
            let dw = match &step.op {
                StepOp::Gemm(g) => conv::depthwise_fits(g, &step.inputs[0], &step.output),
                _ => None,
            };
            if let Some(d) = &dw {
                phases_len = phases_len.max(d.scratch_len());
            }
            depthwise.push(dw);
            let direct = match &step.op {
                StepOp::Gemm(g)
                    if dw.is_none() && conv::direct_fits(g, &step.inputs[0], &step.output) =>
                {
                    Some(g)
                }
                _ => None,
            };
            direct_w.push(direct.map(|g| {
                let (a, b) = conv::direct_scratch_len(g, &step.inputs[0], &step.output);
                padded_len = padded_len.max(a);
                pm_len = pm_len.max(b);
                let w = &prepared[step.params[0]];
                let (x, y) = (&step.inputs[0], &step.output);
                let winograd = conv::winograd_fits(g, x, y).then(|| {
                    winograd_steps.push(winograd::Geometry::from(&conv::direct_geometry(g, x, y)));
                    winograd::transform_weights(w, g.out_channels, g.in_channels)
                });
                conv::DirectWeights {
                    taps: direct::tap_major(w, g.out_channels, g.k_total()),
                    winograd,
                }
            }));
            if let (StepOp::Gemm(g), None, None) = (&step.op, direct, dw) {
                // Tasks only grow with the batch and shrink with more threads.
                for b in [1, max_batch] {
                    let tiling = conv::tiling(g, &step.output, b, 1);
                    let (c, p) = conv::scratch_len(g, &step.inputs[0], &step.output, &tiling);
                    col_len = col_len.max(c);
                    product_len = product_len.max(p);
                }
            }
        }
        let scratch = (0..threads)
            .map(|_| {
                let mut wino = winograd::Scratch::default();
                for g in &winograd_steps {
                    wino.reserve(g);
                }
                Mutex::new(Scratch {
                    col: vec![0.0; col_len],
                    product: vec![0.0; product_len],
                    padded: vec![0.0; padded_len],
                    pm: vec![0.0; pm_len],
                    wino,
                    phases: vec![0.0; phases_len],
                })
            })
            .collect();
        Ok(CpuExecutor {
            arena: vec![0.0; arena_len],
            scratch,
            output: vec![0.0; max_batch * plan.output.numel()],
            plan,
            prepared,
            max_batch,
            direct_w,
            depthwise,
            origin,
            step_ms: None,
        })
    }

    /// The kernel step `i` runs on (at a batch whose tasks are whole images).
    pub fn step_path(&self, i: usize) -> CpuPath {
        match self.plan.steps.get(i).map(|s| &s.op) {
            _ if self.depthwise.get(i).is_some_and(Option::is_some) => CpuPath::Depthwise,
            _ if self.direct_w.get(i).is_some_and(Option::is_some) => CpuPath::Direct,
            Some(StepOp::Gemm(_)) => CpuPath::Gemm,
            _ => CpuPath::Other,
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Starts (from zero) or stops timing each step of every run.
    pub fn profile_steps(&mut self, on: bool) {
        let given = self.origin.last().map_or(0, |o| o + 1);
        self.step_ms = on.then(|| vec![0.0; given]);
    }

    /// Milliseconds spent in each step of the plan the executor was made
    /// from (not of [`CpuExecutor::plan`], which may have more) since
    /// profiling started, summed over runs.
    pub fn step_ms(&self) -> Option<&[f64]> {
        self.step_ms.as_deref()
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
            scratch,
            output,
            direct_w,
            depthwise,
            step_ms,
            origin,
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
        for (i, step) in plan.steps.iter().enumerate() {
            let start = step_ms.is_some().then(std::time::Instant::now);
            let path = match (&depthwise[i], &direct_w[i]) {
                (Some(d), _) => Path::Depthwise(d),
                (None, Some(w)) => Path::Direct(w),
                (None, None) => Path::Plain,
            };
            run_step(step, prepared, path, shared, scratch);
            if let (Some(ms), Some(start)) = (step_ms.as_mut(), start) {
                ms[origin[i]] += start.elapsed().as_secs_f64() * 1e3;
            }
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

/// The CPU's convolution kernels have no input prologue: a GEMM step that
/// scales its input by a gate's factor (`input_scale`) or normalises it by
/// a layer norm's statistics (`input_norm`) runs here as the multiply or
/// the normalisation, into a region added after the arena, then the plain
/// convolution reading that region. The GPU kernel does both in one pass.
/// Also returns, for each step, the index of the given step it came from.
fn split_gated_steps(mut plan: Plan) -> Result<(Plan, Vec<usize>)> {
    let gated = |s: &Step| matches!(s.op, StepOp::Gemm(g) if g.input_scale || g.input_norm);
    let Some(region) = plan
        .steps
        .iter()
        .filter(|s| gated(s))
        .map(|s| s.inputs[0].numel())
        .max()
    else {
        let origin = (0..plan.steps.len()).collect();
        return Ok((plan, origin));
    };
    let offset = plan.arena_per_image;
    plan.arena_per_image += region;
    let mut steps = Vec::with_capacity(plan.steps.len() + 1);
    let mut origin = Vec::with_capacity(plan.steps.len() + 1);
    for (given, mut step) in std::mem::take(&mut plan.steps).into_iter().enumerate() {
        let StepOp::Gemm(g) = &mut step.op else {
            steps.push(step);
            origin.push(given);
            continue;
        };
        if !g.input_scale && !g.input_norm {
            steps.push(step);
            origin.push(given);
            continue;
        }
        if step.inputs.len() < 2 || (g.input_scale && g.input_norm) {
            return Err(Error(format!(
                "step `{}`: scales or normalises its input but has no factor or statistics input",
                step.kernel
            )));
        }
        let (op, suffix) = if g.input_norm {
            (StepOp::Normalize, "norm")
        } else {
            (StepOp::Mul, "gate")
        };
        g.input_scale = false;
        g.input_norm = false;
        let factor = step.inputs.pop().expect("two inputs");
        let x = step.inputs[0];
        let gated_x = Place {
            offset,
            channel_offset: 0,
            channels_total: x.c,
            ..x
        };
        steps.push(Step {
            kernel: format!("{}_{suffix}", step.kernel),
            op,
            inputs: vec![x, factor],
            output: gated_x,
            epilogue: Vec::new(),
            params: Vec::new(),
            variants: Vec::new(),
            split_k: 1,
            partial_floats: 0,
            ..step.clone()
        });
        step.inputs[0] = gated_x;
        steps.push(step);
        origin.extend([given, given]);
    }
    plan.steps = steps;
    Ok((plan, origin))
}

fn check_step(plan: &Plan, step: &Step, prepared: &[Vec<f32>]) -> std::result::Result<(), String> {
    let inputs_needed = match step.op {
        StepOp::Add | StepOp::Mul | StepOp::Normalize => 2,
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
            param(0, g.weight_len(), "weight")?;
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
        StepOp::Mul => {
            let f = &step.inputs[1];
            if !same_shape(x, y) || f.c != y.c || !((f.h, f.w) == (1, 1) || same_shape(f, y)) {
                return Err("multiplies by a factor of the wrong shape".into());
            }
        }
        StepOp::LayerNorm { .. } => {
            if !same_shape(x, y) {
                return Err("changes the shape of a layer norm".into());
            }
            param(0, y.c, "weight")?;
            param(1, y.c, "bias")?;
        }
        StepOp::LayerNormStats { .. } => {
            if (y.c, y.h, y.w) != (2, x.h, x.w) {
                return Err("its statistics are not a [2, H, W] map of its input's pixels".into());
            }
        }
        StepOp::Normalize => {
            let s = &step.inputs[1];
            if !same_shape(x, y) || (s.c, s.h, s.w) != (2, x.h, x.w) {
                return Err("normalises by statistics of another shape".into());
            }
        }
        StepOp::ChannelShuffle { groups } => {
            let groups = *groups;
            if !same_shape(x, y) || groups == 0 || y.c % groups != 0 {
                return Err(format!("shuffles {} channels in {groups} groups", y.c));
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

    /// Arena index of plane (n, c) of `place`; panics if the plane is outside the arena.
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

    /// `len` values from arena index `start`, to read.
    ///
    /// # Safety
    /// Nothing writes them during this step.
    unsafe fn span(&self, start: usize, len: usize) -> &'a [f32] {
        assert!(start + len <= self.len, "span outside the arena");
        std::slice::from_raw_parts(self.ptr.add(start), len)
    }

    /// `len` values from arena index `start`, to write.
    ///
    /// # Safety
    /// They belong to the step's output and no other task holds them.
    #[allow(clippy::mut_from_ref)]
    unsafe fn span_mut(&self, start: usize, len: usize) -> &'a mut [f32] {
        assert!(start + len <= self.len, "span outside the arena");
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
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

/// Elementwise steps smaller than this run on the calling thread.
const SERIAL_ELEMENTS: usize = 32 * 1024;

/// Runs `f(n, c)` for every (image, channel) plane of an output, in parallel.
/// Runs `f` on each of `pixels` (image, pixel) positions, each task writing
/// every one of its `channels` output channels; small steps stay on the
/// calling thread.
fn for_each_pixel(pixels: usize, channels: usize, f: impl Fn(usize) + Sync + Send) {
    if pixels * channels < SERIAL_ELEMENTS {
        (0..pixels).for_each(f);
    } else {
        (0..pixels)
            .into_par_iter()
            .with_min_len((4096 / channels.max(1)).max(1))
            .for_each(f);
    }
}

fn for_each_plane(
    batch: usize,
    channels: usize,
    plane_len: usize,
    f: impl Fn(usize, usize) + Sync + Send,
) {
    // Small planes (a linear layer's 1×1) are grouped so a task has some work;
    // small steps stay on the calling thread.
    let total = batch * channels;
    if total * plane_len < SERIAL_ELEMENTS || rayon::current_num_threads() == 1 {
        (0..total).for_each(|i| f(i / channels, i % channels));
        return;
    }
    let min_len = (4096 / plane_len.max(1)).max(1);
    (0..total)
        .into_par_iter()
        .with_min_len(min_len)
        .for_each(|i| f(i / channels, i % channels));
}

// ---------------------------------------------------------------------------
// The steps, one function per CUDA kernel template.
// ---------------------------------------------------------------------------

/// How a convolution step runs, chosen in [`CpuExecutor::new`].
enum Path<'a> {
    /// On the direct kernels, with the weights prepared for them.
    Direct(&'a conv::DirectWeights),
    /// On the depthwise kernel, planes of this geometry.
    Depthwise(&'a depthwise::Geometry),
    /// As a GEMM (or, for other steps, their own loop).
    Plain,
}

/// One step, on the kernel `path` says.
fn run_step(
    step: &Step,
    prepared: &[Vec<f32>],
    path: Path,
    arena: Arena,
    scratch: &[Mutex<Scratch>],
) {
    let param = |i: usize| prepared[step.params[i]].as_slice();
    let (x, y) = (&step.inputs[0], &step.output);
    let b = arena.batch;
    match step.op {
        StepOp::Gemm(g) => {
            let bias = g.bias.then(|| param(1));
            match path {
                Path::Direct(w) => conv::direct_conv(&g, step, w, bias, arena, scratch),
                Path::Depthwise(d) => conv::depthwise_conv(d, step, param(0), bias, arena, scratch),
                Path::Plain => conv::conv(&g, step, param(0), bias, arena, scratch),
            }
        }
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
                affine(out, arena.plane(x, n, c), scale[c], shift[c]);
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
            let pixel = |i: usize| {
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
            };
            for_each_pixel(b * hw, y.c, pixel);
        }
        StepOp::Act(a) => for_each_plane(b, y.c, y.h * y.w, |n, c| {
            // SAFETY: each task owns output plane (n, c).
            let out = unsafe { arena.plane_mut(y, n, c) };
            out.copy_from_slice(arena.plane(x, n, c));
            apply_slice(a, out);
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
        StepOp::Mul => {
            let f = &step.inputs[1];
            for_each_plane(b, y.c, y.h * y.w, |n, c| {
                // SAFETY: each task owns output plane (n, c).
                let out = unsafe { arena.plane_mut(y, n, c) };
                let factor = arena.plane(f, n, c);
                if let [s] = factor {
                    for (o, &u) in out.iter_mut().zip(arena.plane(x, n, c)) {
                        *o = u * s;
                    }
                } else {
                    for ((o, &u), &s) in out.iter_mut().zip(arena.plane(x, n, c)).zip(factor) {
                        *o = u * s;
                    }
                }
            })
        }
        StepOp::Copy => for_each_plane(b, y.c, y.h * y.w, |n, c| {
            // SAFETY: each task owns output plane (n, c).
            unsafe { arena.plane_mut(y, n, c) }.copy_from_slice(arena.plane(x, n, c));
        }),
        StepOp::ChannelShuffle { groups } => {
            let per = y.c / groups;
            for_each_plane(b, y.c, y.h * y.w, |n, c| {
                // Output channel j·groups + i reads input channel i·per + j.
                let (i, j) = (c % groups, c / groups);
                // SAFETY: each task owns output plane (n, c).
                unsafe { arena.plane_mut(y, n, c) }.copy_from_slice(arena.plane(x, n, i * per + j));
            })
        }
        StepOp::LayerNorm { eps } => {
            // One task per image and tile of `LN_TILE` pixels; per pixel
            // the arithmetic is the CUDA kernel's, in its order.
            let (weight, bias) = (param(0), param(1));
            let hw = y.h * y.w;
            let tiles = hw.div_ceil(LN_TILE);
            let tile = |i: usize| {
                let (n, p0) = (i / tiles, (i % tiles) * LN_TILE);
                let len = LN_TILE.min(hw - p0);
                let (mut mean, mut inv) = ([0f32; LN_TILE], [0f32; LN_TILE]);
                let (mean, inv) = (&mut mean[..len], &mut inv[..len]);
                let row = |c: usize| &arena.plane(x, n, c)[p0..p0 + len];
                layer_norm_stats(x.c, row, eps, mean, inv);
                for c in 0..x.c {
                    let (w, b) = (weight[c], bias[c]);
                    // SAFETY: each task owns its pixels of image n in every output channel.
                    let out = &mut unsafe { arena.plane_mut(y, n, c) }[p0..p0 + len];
                    for (((o, v), m), s) in
                        out.iter_mut().zip(row(c)).zip(mean.iter()).zip(inv.iter())
                    {
                        *o = (v - m) * s * w + b;
                    }
                }
            };
            for_each_pixel(b * tiles, y.c * LN_TILE, tile);
        }
        StepOp::LayerNormStats { eps } => {
            // The layer norm's first half, on its tiles: mean and inverse
            // deviation into planes 0 and 1 of the output.
            let hw = x.h * x.w;
            let tiles = hw.div_ceil(LN_TILE);
            let tile = |i: usize| {
                let (n, p0) = (i / tiles, (i % tiles) * LN_TILE);
                let len = LN_TILE.min(hw - p0);
                // SAFETY: each task owns its pixels of image n in both output planes.
                let mean = &mut unsafe { arena.plane_mut(y, n, 0) }[p0..p0 + len];
                let inv = &mut unsafe { arena.plane_mut(y, n, 1) }[p0..p0 + len];
                let row = |c: usize| &arena.plane(x, n, c)[p0..p0 + len];
                layer_norm_stats(x.c, row, eps, mean, inv);
            };
            for_each_pixel(b * tiles, x.c * LN_TILE, tile);
        }
        StepOp::Normalize => {
            let s = &step.inputs[1];
            for_each_plane(b, y.c, y.h * y.w, |n, c| {
                let (mean, inv) = (arena.plane(s, n, 0), arena.plane(s, n, 1));
                // SAFETY: each task owns output plane (n, c).
                let out = unsafe { arena.plane_mut(y, n, c) };
                for (((o, v), m), r) in out.iter_mut().zip(arena.plane(x, n, c)).zip(mean).zip(inv)
                {
                    *o = (v - m) * r;
                }
            });
        }
    }
}

/// Pixels per task of the layer norm kernels: channel rows of this many
/// pixels are read whole (the pixel loops vectorise; a loop over channels
/// per pixel reads with a stride of a plane and was 12% of ConvNeXt-Tiny's
/// CPU time).
const LN_TILE: usize = 256;

/// The statistics of a tile of pixels over `channels` channel rows
/// (`row(c)`), into `mean` and `inv`: the mean, then 1/√(mean squared
/// deviation + eps), in f32, in the CUDA kernels' order.
fn layer_norm_stats<'r>(
    channels: usize,
    row: impl Fn(usize) -> &'r [f32],
    eps: f32,
    mean: &mut [f32],
    inv: &mut [f32],
) {
    let count = channels as f32;
    mean.fill(0.0);
    inv.fill(0.0);
    for c in 0..channels {
        for (m, v) in mean.iter_mut().zip(row(c)) {
            *m += v;
        }
    }
    for m in mean.iter_mut() {
        *m /= count;
    }
    for c in 0..channels {
        for ((s, m), v) in inv.iter_mut().zip(mean.iter()).zip(row(c)) {
            *s += (v - m) * (v - m);
        }
    }
    for s in inv.iter_mut() {
        *s = 1.0 / (*s / count + eps).sqrt();
    }
}

/// `out[i] = x[i]·scale + shift` in one rounding (`mul_add`, as the CUDA
/// kernel's `fmaf`), in a function compiled with FMA where the CPU has it:
/// in baseline x86-64 code `mul_add` is a call to libm's `fmaf` per
/// element, which was a fifth of DenseNet-121's CPU time (its batch norms
/// before each convolution run as channel affines).
fn affine(out: &mut [f32], x: &[f32], scale: f32, shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has FMA and AVX2 (just checked).
        unsafe { affine_fma(out, x, scale, shift) };
        return;
    }
    affine_any(out, x, scale, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
unsafe fn affine_fma(out: &mut [f32], x: &[f32], scale: f32, shift: f32) {
    affine_any(out, x, scale, shift)
}

#[inline(always)]
fn affine_any(out: &mut [f32], x: &[f32], scale: f32, shift: f32) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = v.mul_add(scale, shift);
    }
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
    let inside = |o: usize, s: usize, k: usize, d: usize, i: usize| (o - 1) * s + (k - 1) * d < i;
    if (ph, pw) == (0, 0) && inside(oh, sh, kh, dh, ih) && inside(ow, sw, kw, dw, iw) {
        // No padding, and no window past the input (ceil mode may make one).
        pool_unpadded(map, iw, out, (oh, ow), max, (kh, kw), (sh, sw), (dh, dw));
        return;
    }
    let (ih, iw, ph, pw) = (ih as isize, iw as isize, ph as isize, pw as isize);
    for oy in 0..oh {
        for ox in 0..ow {
            let (oy_s, ox_s) = ((oy * sh) as isize, (ox * sw) as isize);
            let r = if max {
                // Padding never wins: PyTorch pads with −∞; NaN propagates.
                let mut r = f32::NEG_INFINITY;
                let (ky0, ky1) = taps(oy_s - ph, kh, dh, ih);
                let (kx0, kx1) = taps(ox_s - pw, kw, dw, iw);
                for ky in ky0..ky1 {
                    let row = (oy_s - ph + (ky * dh) as isize) * iw;
                    for kx in kx0..kx1 {
                        let v = map[(row + ox_s - pw + (kx * dw) as isize) as usize];
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

/// `pool` without padding: no bounds to check; 2×2 windows of stride 2 (the
/// common case) read two input rows at once.
#[allow(clippy::too_many_arguments)]
fn pool_unpadded(
    map: &[f32],
    iw: usize,
    out: &mut [f32],
    (oh, ow): (usize, usize),
    max: bool,
    (kh, kw): (usize, usize),
    (sh, sw): (usize, usize),
    (dh, dw): (usize, usize),
) {
    // PyTorch's max: NaN wins, and the first value seeds the window.
    let pick = |r: f32, v: f32| if v > r || v.is_nan() { v } else { r };
    if (kh, kw, sh, sw, dh, dw) == (2, 2, 2, 2, 1, 1) {
        for oy in 0..oh {
            let r0 = &map[2 * oy * iw..][..2 * ow];
            let r1 = &map[(2 * oy + 1) * iw..][..2 * ow];
            let o = &mut out[oy * ow..][..ow];
            for (ox, o) in o.iter_mut().enumerate() {
                let (a, b, c, d) = (r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]);
                *o = if max {
                    pick(pick(pick(a, b), c), d)
                } else {
                    (a + b + c + d) / 4.0
                };
            }
        }
        return;
    }
    let area = (kh * kw) as f32;
    for oy in 0..oh {
        for ox in 0..ow {
            let base = oy * sh * iw + ox * sw;
            let mut r = if max { f32::NEG_INFINITY } else { 0.0 };
            for ky in 0..kh {
                let row = &map[base + ky * dh * iw..];
                for kx in 0..kw {
                    let v = row[kx * dw];
                    r = if max { pick(r, v) } else { r + v };
                }
            }
            out[oy * ow + ox] = if max { r } else { r / area };
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
