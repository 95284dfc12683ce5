//! The kernel IR: one kernel per fused node, with its launch configuration,
//! tile sizes and tensor placements as data. Backends print it; they decide nothing.
//!
//! Tensors are NCHW. A tensor reference names the node that owns the memory
//! (views resolved) and, for a concat written in place, the channel slice:
//! element (n, c, p) of a reference lives at `((n·total + offset + c)·P + p)`
//! of its owner's buffer, P = H·W.
//!
//! Convolutions and linear layers are implicit GEMMs: per group, M = output
//! channels, K = input channels·KH·KW, N = batch·OH·OW. Each thread block
//! computes a BM×BN tile of the output through shared-memory tiles of depth
//! BK, and each thread a TM×TN block of registers. Tile sizes come from
//! [`choose_tile`], a small cost model documented there. Linear layers at
//! small batches are matrix-vector products instead ([`Gemv`]).
//!
//! The batch size is a run-time argument, but the best schedule depends on
//! it, so a GEMM kernel comes in variants, one per batch bucket
//! ([`BATCH_BUCKETS`]); the driver launches the variant for the batch it runs.

use crate::front::source::SourceMap;
use crate::ir::{Activation, Epilogue, Graph, NodeId, Op, PaddingMode, Prologue, Shape};
use std::fmt::Write;

/// Streaming multiprocessors on the smallest GPU we tune for (A100: 108; H100: 132).
pub const TARGET_SMS: u64 = 108;
/// Batch buckets: a GEMM kernel gets a variant for each bucket whose schedule
/// differs from the previous bucket's, tuned at the bucket's smallest batch
/// (so it launches enough blocks for every batch in the bucket). Batch 1 to 7
/// use the first, 8 to 63 the second, 64 and more the last.
pub const BATCH_BUCKETS: &[u64] = &[1, 8, 64];

/// A linear layer runs as a [`Gemv`] for batches up to this many images.
pub const GEMV_MAX_IMAGES: u32 = 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorRef {
    /// The node whose buffer holds the values (the graph input is node 0).
    pub owner: NodeId,
    pub channel_offset: i64,
    pub channels_total: i64,
    pub shape: Shape,
}

impl TensorRef {
    /// Pixels per channel (H·W; 1 for flat vectors).
    pub fn pixels(&self) -> i64 {
        match self.shape {
            Shape::Chw(_, h, w) => h * w,
            Shape::Flat(_) => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmTile {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
}

impl GemmTile {
    pub fn threads(&self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    /// Resident blocks per SM the kernel asks ptxas to allow for (its
    /// `__launch_bounds__`): two, which caps registers at 128 per thread and
    /// keeps 16 warps on an SM, for tiles of up to 32 accumulators per thread;
    /// one for the 8×8 tile, whose 64 accumulators plus addressing need about
    /// 160 registers (at 128 ptxas spills), and whose 8 warps each have 64
    /// independent FMAs per shared-memory step to hide latency with.
    pub fn min_blocks_per_sm(&self) -> u32 {
        if self.tm * self.tn > 32 {
            1
        } else {
            2
        }
    }
}

/// How a GEMM kernel is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Shared-memory tiles, double-buffered (the loads of the next K-slice are
    /// in flight while the current one is multiplied; one barrier per slice).
    /// `vec_a`: each thread reads 4 consecutive weights with one 16-byte load;
    /// set only when K and BK are multiples of 4, which makes every such load
    /// aligned (rows start at multiples of K floats, slices at multiples of BK).
    /// `split` > 1 splits K (split-K): `split` blocks per output tile each sum
    /// an equal run of whole BK-slices and write their partial sums to a
    /// workspace; the last of them to finish adds all partials in split order
    /// (so the result does not depend on which finishes last) and runs the
    /// epilogue. It gives a small GEMM with a long K enough blocks to fill the
    /// GPU and shortens each block's serial loop over K.
    Tile {
        tile: GemmTile,
        vec_a: bool,
        split: u32,
    },
    /// A linear layer at a small batch, memory-bound on its weights.
    Gemv(Gemv),
    /// Tensor cores (`--precision tf32` or `tf32x3`): warp tiles of
    /// `mma.sync.m16n8k8` on TF32 operands with FP32 accumulation, operands
    /// copied to swizzled shared memory by a `cp.async` pipeline and read with
    /// `ldmatrix` (see [`TcTile`]). `x3`: each operand split into big + small
    /// TF32 parts, three MMAs per product (FP32-level accuracy). `vec_a`: the
    /// weights are copied 16 bytes at a time (K a multiple of 4). K is never
    /// split: a GEMM too small to fill the GPU stays on CUDA cores.
    /// `half` (`--precision bf16` or `fp16`): `mma.sync.m16n8k16` on 16-bit
    /// operands instead, the weights read from their 16-bit copy
    /// ([`cnnc_runtime::plan::Prepared::WithHalf`], rows padded to 8, so always
    /// 16-byte copies), the input 16-bit as every activation of such a build
    /// is, both operands' slices kept in 16 bits in shared memory.
    Tensor {
        tile: TcTile,
        x3: bool,
        vec_a: bool,
        half: Option<HalfFormat>,
    },
}

impl Schedule {
    /// The tensor-core schedule on `tile` for a GEMM with `k` terms per
    /// output in `precision`.
    pub fn tensor(tile: TcTile, precision: Precision, k: i64) -> Schedule {
        let half = precision.half_format();
        Schedule::Tensor {
            tile,
            x3: precision == Precision::Tf32x3,
            vec_a: half.is_some() || k % 4 == 0,
            half,
        }
    }

    /// The tile schedule for a GEMM with `k` terms per output, with the weight
    /// loads vectorised where [`Schedule::Tile`] allows, K not split.
    pub fn tiled(tile: GemmTile, k: i64) -> Schedule {
        Schedule::Tile {
            tile,
            vec_a: k % 4 == 0 && tile.bk.is_multiple_of(4),
            split: 1,
        }
    }

    /// [`Schedule::tiled`] with K split `split` ways, the count made exact:
    /// each split gets `ceil(slices / split)` whole BK-slices, so the count
    /// becomes `ceil(slices / per_split)`, which leaves no split empty.
    pub fn tiled_split(tile: GemmTile, k: i64, split: u32) -> Schedule {
        let slices = (k.max(1) as u64).div_ceil(tile.bk as u64);
        let per = slices.div_ceil(split.max(1) as u64);
        match Schedule::tiled(tile, k) {
            Schedule::Tile { tile, vec_a, .. } => Schedule::Tile {
                tile,
                vec_a,
                split: slices.div_ceil(per) as u32,
            },
            other => other,
        }
    }

    /// How many ways K is split (1 for a GEMV, a tensor-core tile or an unsplit tile).
    pub fn split(&self) -> u32 {
        match self {
            Schedule::Tile { split, .. } => *split,
            Schedule::Gemv(_) | Schedule::Tensor { .. } => 1,
        }
    }

    /// Floats of partial sums each block writes to the workspace (0 unless K is split).
    pub fn partial_floats(&self) -> u64 {
        match self {
            Schedule::Tile { tile, split, .. } if *split > 1 => (tile.bm * tile.bn) as u64,
            _ => 0,
        }
    }

    pub fn threads(&self) -> u32 {
        match self {
            Schedule::Tile { tile, .. } => tile.threads(),
            Schedule::Gemv(v) => v.warps * 32,
            Schedule::Tensor { tile, .. } => tile.threads(),
        }
    }
}

/// The arithmetic a build asks for: defined with the plan, which carries it
/// to the built binary.
pub use cnnc_runtime::plan::{HalfFormat, Precision};

/// A tensor-core tile: a BM×BN output tile per block, computed by
/// (BM/WM)×(BN/WN) warps, each a WM×WN tile of 16×8 MMA tiles, with K-slices
/// of [`TC_BK`] floats in a `stages`-deep `cp.async` pipeline. Shared memory is
/// (BM + BN)·16·4 bytes per stage; every tile stays within the 48 KiB a
/// kernel gets without opting in to more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcTile {
    pub bm: u32,
    pub bn: u32,
    pub wm: u32,
    pub wn: u32,
    pub stages: u32,
}

/// The K-slice of every tensor-core tile: 16 floats, two `m16n8k8` steps,
/// a 64-byte shared-memory row (the swizzle in the device library assumes it).
pub const TC_BK: u32 = 16;

impl TcTile {
    pub fn threads(&self) -> u32 {
        32 * (self.bm / self.wm) * (self.bn / self.wn)
    }
    /// Bytes of shared memory (all stages of both operands).
    pub fn shared_bytes(&self) -> u32 {
        self.shared_bytes_for(false)
    }
    /// ... in 16 bits (`half`: `gemm_tc16` keeps both operands' slices in
    /// 16 bits, 2 bytes an element).
    pub fn shared_bytes_for(&self, half: bool) -> u32 {
        (self.bm + self.bn) * if half { 2 } else { 4 } * TC_BK * self.stages
    }
    /// Resident blocks per SM the kernel asks ptxas to allow for: each warp
    /// keeps WM·WN/32 accumulators plus its A and B fragments in registers.
    pub fn min_blocks_per_sm(&self) -> u32 {
        if self.wm * self.wn >= 64 * 32 {
            1
        } else {
            2
        }
    }
}

/// Tensor-core tile candidates, largest first (the cost model is
/// [`choose_tile`]'s: the largest that wastes at most a quarter of its work
/// on padding and still launches two blocks per SM). 128×128 with 64×32 warp
/// tiles is the usual shape of a fast Ampere GEMM: each warp reads 4 A and 4
/// B fragments per 8-deep step for 16 MMAs.
pub const TC_TILES: &[TcTile] = &[
    TcTile {
        bm: 128,
        bn: 128,
        wm: 64,
        wn: 32,
        stages: 3,
    },
    TcTile {
        bm: 128,
        bn: 64,
        wm: 32,
        wn: 32,
        stages: 3,
    },
    TcTile {
        bm: 64,
        bn: 64,
        wm: 32,
        wn: 32,
        stages: 3,
    },
    TcTile {
        bm: 32,
        bn: 32,
        wm: 16,
        wn: 16,
        stages: 3,
    },
];

/// The tensor-core tile for an M×N GEMM (per group, `groups` of them), or
/// why it stays on CUDA cores.
pub fn choose_tc_tile(m: u64, n: u64, groups: u64) -> Result<TcTile, &'static str> {
    if groups > 1 {
        // Depthwise and grouped convolutions have a small K per group and few
        // channels per group: a 16-row MMA tile would be mostly padding.
        return Err("grouped convolution: MMA tiles would be mostly padding");
    }
    let blocks = |t: &TcTile| m.div_ceil(t.bm as u64) * n.div_ceil(t.bn as u64);
    let waste = |t: &TcTile| {
        let padded = m.div_ceil(t.bm as u64) * t.bm as u64 * n.div_ceil(t.bn as u64) * t.bn as u64;
        padded as f64 / (m * n).max(1) as f64 - 1.0
    };
    TC_TILES
        .iter()
        .find(|t| waste(t) <= 0.25 && blocks(t) >= 2 * TARGET_SMS)
        .copied()
        .ok_or("every tensor-core tile launches under 2 blocks per SM or pads over a quarter of its work; smaller CUDA-core tiles (split-K where needed) fill the GPU")
}

/// A matrix-vector product for a linear layer at a small batch: each warp owns
/// `rows` output features for every image (at most `images` of them); the
/// block stages `chunk` inputs of each image in shared memory, then each lane
/// streams the warp's weight rows, 4 consecutive weights per load when `vec4`
/// (K a multiple of 4, so every row starts 16-byte aligned), a warp reading
/// 512 contiguous bytes per row and step; partial sums are reduced with warp
/// shuffles, and lane 0 applies bias and epilogue. Every weight is read once
/// per launch, which is what bounds this layer's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemv {
    pub warps: u32,
    pub rows: u32,
    pub images: u32,
    pub chunk: u32,
    pub vec4: bool,
}

/// Picks the GEMV shape for an M×K linear layer: 8 warps, two rows per warp
/// when that still gives two blocks per SM (more rows per warp: more loads in
/// flight per lane), input chunks of up to 512 floats per image (14 KiB of
/// shared memory at 7 images).
pub fn choose_gemv(m: u64, k: u64) -> Gemv {
    let warps = 8;
    let rows = if m.div_ceil(2 * warps as u64) >= 2 * TARGET_SMS {
        2
    } else {
        1
    };
    Gemv {
        warps,
        rows,
        images: GEMV_MAX_IMAGES,
        chunk: k.next_multiple_of(128).min(512) as u32,
        vec4: k.is_multiple_of(4),
    }
}

/// Tile candidates, largest first. All use 256 threads or fewer and at most
/// 64 accumulators per thread; [`GemmTile::min_blocks_per_sm`] sets the
/// register budget (`tests/codegen.rs` has ptxas check for spills). The
/// largest, 128×128 with 8×8 per thread, is the classic shape of a fast FP32
/// GEMM on CUDA cores: 4 FMAs per value read from shared memory (8×4: 2.7,
/// 4×4: 2); in its main loop 77% of the SASS instructions are FFMAs (sm_90,
/// ResNet-50's last 1×1 conv at batch 64; the 8×4 tile on layer3's convs:
/// 64–72%).
pub const TILES: &[GemmTile] = &[
    GemmTile {
        bm: 128,
        bn: 128,
        bk: 8,
        tm: 8,
        tn: 8,
    },
    GemmTile {
        bm: 128,
        bn: 64,
        bk: 8,
        tm: 8,
        tn: 4,
    },
    GemmTile {
        bm: 64,
        bn: 64,
        bk: 8,
        tm: 4,
        tn: 4,
    },
    GemmTile {
        bm: 64,
        bn: 32,
        bk: 8,
        tm: 4,
        tn: 2,
    },
    GemmTile {
        bm: 32,
        bn: 32,
        bk: 8,
        tm: 2,
        tn: 2,
    },
    GemmTile {
        bm: 16,
        bn: 32,
        bk: 16,
        tm: 1,
        tn: 2,
    },
];

/// Picks a tile for an M×N×K GEMM (per group, `groups` of them).
///
/// The rule: take the largest tile that (1) wastes at most a quarter of its
/// work on padding past M and N, and (2) still launches at least two blocks
/// per SM at the tuning batch; if none does, take the one with the most
/// blocks (smallest). Big tiles reuse each loaded value more; enough blocks
/// keep every SM busy. It is deliberately simple: a 1×1 conv on 7×7 maps
/// (N = 49) gets small tiles, a 3×3 conv on 224×224 maps gets the largest.
pub fn choose_tile(m: u64, n: u64, groups: u64) -> GemmTile {
    let blocks = |t: &GemmTile| m.div_ceil(t.bm as u64) * n.div_ceil(t.bn as u64) * groups;
    let waste = |t: &GemmTile| {
        let padded = m.div_ceil(t.bm as u64) * t.bm as u64 * n.div_ceil(t.bn as u64) * t.bn as u64;
        padded as f64 / (m * n).max(1) as f64 - 1.0
    };
    TILES
        .iter()
        .find(|t| waste(t) <= 0.25 && blocks(t) >= 2 * TARGET_SMS)
        .or_else(|| TILES.last())
        .copied()
        .unwrap_or(TILES[0])
}

/// Each split of K keeps at least this many BK-slices, so the partial sums'
/// round trip through memory stays small next to the block's own work.
pub const MIN_SLICES_PER_SPLIT: u64 = 4;
/// At most this many splits.
pub const MAX_SPLIT: u64 = 16;
/// Splitting stops at this many blocks in all: about one wave of resident
/// blocks on the target GPU (a block of the small tiles uses few registers,
/// so four fit on an SM); more would queue behind the first wave.
pub const MAX_SPLIT_BLOCKS: u64 = 4 * TARGET_SMS;

/// How many ways to split K for a GEMM that launches `blocks` blocks with
/// `tile` and has `k` terms per output. A GEMM that launches two blocks per
/// SM already fills the GPU and is not split. Below that its time is the
/// length of each block's serial walk over K (a global-load latency per
/// slice), so K is split as far as allowed: splits of at least
/// [`MIN_SLICES_PER_SPLIT`] slices, at most [`MAX_SPLIT`] of them, at most
/// [`MAX_SPLIT_BLOCKS`] blocks. (The count is made exact by
/// [`Schedule::tiled_split`].) At batch 1 this is most of a ResNet's later
/// layers (7×7 and 14×14 maps, K up to 4608) and the small nets' convolutions.
pub fn choose_split(tile: &GemmTile, blocks: u64, k: u64) -> u32 {
    let blocks = blocks.max(1);
    if blocks >= 2 * TARGET_SMS {
        return 1;
    }
    let slices = k.div_ceil(tile.bk as u64);
    (slices / MIN_SLICES_PER_SPLIT)
        .min(MAX_SPLIT_BLOCKS / blocks)
        .clamp(1, MAX_SPLIT) as u32
}

#[derive(Clone, Debug, PartialEq)]
pub struct Gemm {
    pub in_channels: i64,
    pub in_h: i64,
    pub in_w: i64,
    pub out_channels: i64,
    pub out_h: i64,
    pub out_w: i64,
    pub kernel: (i64, i64),
    pub stride: (i64, i64),
    /// Top and left padding (bottom and right follow from the output size).
    pub pad: (i64, i64),
    pub dilation: (i64, i64),
    pub groups: i64,
    pub padding_mode: PaddingMode,
    /// The input is averaged over its H×W maps before the GEMM (linear only).
    pub global_pool: bool,
    /// Each input channel is multiplied by a per-(image, channel) factor as
    /// it is read (a gate's multiply, the kernel's last input).
    pub input_scale: bool,
    /// Each input pixel is normalised as it is read, (x − mean)·inv with
    /// the pixel's statistics from the kernel's last input (a layer norm's
    /// [`KernelKind::LayerNormStats`]; its weight and bias are folded into
    /// this GEMM's). Only on unpadded, ungrouped convolutions.
    pub input_norm: bool,
    pub bias: bool,
    /// Whether this is a linear layer (a GEMV candidate at small batches).
    pub linear: bool,
    /// The schedule of the batch-1 kernel (variants carry their own).
    pub schedule: Schedule,
}

impl Gemm {
    pub fn m(&self) -> i64 {
        self.out_channels / self.groups
    }
    pub fn k(&self) -> i64 {
        if self.global_pool {
            self.in_channels
        } else {
            self.in_channels / self.groups * self.kernel.0 * self.kernel.1
        }
    }
    pub fn pixels(&self) -> i64 {
        self.out_h * self.out_w
    }

    /// Threads per block and grid of a schedule for this GEMM.
    pub fn launch(&self, schedule: &Schedule) -> (u32, Grid) {
        let m = self.m() as u64;
        match schedule {
            Schedule::Tile { tile, split, .. } => (
                tile.threads(),
                Grid {
                    per_image: self.pixels() as u64,
                    per_block: tile.bn as u64,
                    y: m.div_ceil(tile.bm as u64),
                    // Group g, split s is block z = s·groups + g.
                    z: self.groups as u64 * *split as u64,
                },
            ),
            Schedule::Gemv(v) => (
                v.warps * 32,
                Grid {
                    per_image: 1,
                    per_block: v.images as u64,
                    y: m.div_ceil((v.warps * v.rows) as u64),
                    z: 1,
                },
            ),
            Schedule::Tensor { tile, .. } => (
                tile.threads(),
                Grid {
                    per_image: self.pixels() as u64,
                    per_block: tile.bn as u64,
                    y: m.div_ceil(tile.bm as u64),
                    z: self.groups as u64,
                },
            ),
        }
    }

    /// The schedule for batches from `batch` up to (not including) `next`:
    /// a GEMV for a linear layer when every batch of the bucket fits one,
    /// else the tile [`choose_tile`] picks for N at `batch`, with K split as
    /// [`choose_split`] says.
    pub fn schedule_for(&self, batch: u64, next: Option<u64>, precision: Precision) -> Schedule {
        let fits = next.is_some_and(|n| n - 1 <= GEMV_MAX_IMAGES as u64);
        if self.linear && fits {
            return Schedule::Gemv(choose_gemv(self.m() as u64, self.k() as u64));
        }
        let (m, n, groups) = (
            self.m() as u64,
            self.pixels() as u64 * batch,
            self.groups as u64,
        );
        if precision.tensor_cores() {
            if let Ok(tile) = self.tensor_core_tile(n) {
                return Schedule::tensor(tile, precision, self.k());
            }
        }
        let tile = choose_tile(m, n, groups);
        let blocks = m.div_ceil(tile.bm as u64) * n.div_ceil(tile.bn as u64) * groups;
        let split = choose_split(&tile, blocks, self.k() as u64);
        Schedule::tiled_split(tile, self.k(), split)
    }
}

impl Gemm {
    /// The tensor-core tile for this GEMM at N = `n` columns, or why it stays
    /// on CUDA cores (the kernel report prints the reason).
    pub fn tensor_core_tile(&self, n: u64) -> Result<TcTile, &'static str> {
        if self.global_pool {
            // The pooled operand is an average computed while loading, which a
            // cp.async copy cannot do.
            return Err("global-pool prologue: the pooled operand is computed, not copied");
        }

        choose_tc_tile(self.m() as u64, n, self.groups as u64)
    }
}

/// The tile of a depthwise convolution kernel ([`Depthwise`]): each block
/// computes a `th`×`tw` tile of the output maps of `ch` consecutive channels
/// of one image, each thread `tx` adjacent outputs of one row of one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DwTile {
    pub ch: u32,
    pub th: u32,
    pub tw: u32,
    pub tx: u32,
}

/// The most shared memory a depthwise block stages (the 48 KiB a kernel
/// gets without opting in to more).
pub const DW_MAX_SHARED: u64 = 48 * 1024;
/// Threads per depthwise block: at most this many...
pub const DW_MAX_THREADS: u32 = 256;
/// ...and, where the channels allow, at least this many (small maps).
pub const DW_MIN_THREADS: u32 = 64;

impl DwTile {
    /// Threads per block: `tw/tx` per output row, `th` rows, `ch` channels.
    pub fn threads(&self) -> u32 {
        self.ch * self.th * (self.tw / self.tx)
    }
}

/// A depthwise convolution (groups = input channels = output channels, zero
/// padding): every output channel is one input channel convolved with its
/// own KH×KW filter, K = KH·KW terms per output (9, 25 or 49), too few for a
/// GEMM tile (and tensor cores, which need 8 per step and a real M).
///
/// Schedule ([`DwTile`], chosen by [`choose_depthwise`]): block
/// (x, y, z) = (image·⌈C/ch⌉ + channel group, tile row, tile column) computes
/// a th×tw output tile of `ch` channels. The block first stages each
/// channel's input tile with its halo, ((th−1)·SH + (KH−1)·DH + 1) ×
/// ((tw−1)·SW + (KW−1)·DW + 1) floats with zeros for the padding, in shared
/// memory, consecutive threads reading consecutive columns of a row
/// (coalesced along W), each row padded to a pitch of 1 mod 4 floats so
/// that the rows a warp reads at once start in different banks; one
/// barrier. Each thread then reads its channel's KH·KW weights (the same
/// for every thread of the channel: broadcast loads) into registers, and
/// computes `tx` adjacent outputs of one row:
/// for each filter row it reads the (tx−1)·SW + (KW−1)·DW + 1 inputs its
/// outputs need from shared memory into registers once and does KW·tx FMAs
/// on them; bias and the epilogue (activations, a residual add) are applied
/// in registers before the only write. The schedule does not depend on the
/// batch (the grid's x grows with it), so there are no batch-bucket variants.
#[derive(Clone, Debug, PartialEq)]
pub struct Depthwise {
    pub channels: i64,
    pub in_h: i64,
    pub in_w: i64,
    pub out_h: i64,
    pub out_w: i64,
    pub kernel: (i64, i64),
    pub stride: (i64, i64),
    /// Top and left padding (bottom and right follow from the output size).
    pub pad: (i64, i64),
    pub dilation: (i64, i64),
    pub bias: bool,
    pub tile: DwTile,
}

impl Depthwise {
    /// Rows and columns of one channel's staged input tile (the output tile plus its halo).
    pub fn input_tile(&self, tile: &DwTile) -> (u64, u64) {
        // Saturating: a checked graph may have a huge stride or dilation,
        // and then the tile is refused (`choose_depthwise`), not overflowed.
        let span = |t: u32, s: i64, k: i64, d: i64| {
            (t as u64 - 1)
                .saturating_mul(s as u64)
                .saturating_add((k as u64 - 1).saturating_mul(d as u64))
                .saturating_add(1)
        };
        (
            span(tile.th, self.stride.0, self.kernel.0, self.dilation.0),
            span(tile.tw, self.stride.1, self.kernel.1, self.dilation.1),
        )
    }

    /// Bytes of shared memory a block of `tile` stages: each row of an
    /// input tile is padded to a pitch of 1 mod 4 floats (so the rows a warp
    /// reads at once start in different banks).
    pub fn shared_bytes(&self, tile: &DwTile) -> u64 {
        let (h, w) = self.input_tile(tile);
        let pitch = w.saturating_add((4 - w.saturating_add(3) % 4) % 4);
        (tile.ch as u64)
            .saturating_mul(h)
            .saturating_mul(pitch)
            .saturating_mul(4)
    }

    /// Threads per block and grid.
    pub fn launch(&self) -> (u32, Grid) {
        let t = &self.tile;
        (
            t.threads(),
            Grid {
                per_image: (self.channels as u64).div_ceil(t.ch as u64),
                per_block: 1,
                y: (self.out_h as u64).div_ceil(t.th as u64),
                z: (self.out_w as u64).div_ceil(t.tw as u64),
            },
        )
    }
}

/// The depthwise tile for `conv` (its `tile` field ignored), or `None` when
/// even the smallest tile's input does not fit in shared memory (a huge
/// dilation or stride: the convolution then stays a grouped GEMM).
///
/// The rule: 4 outputs per thread along a row; the tile as wide as the
/// output row rounded up to 4, 8, 16 or 32 columns (wider rows take several
/// tiles), and as many rows as the map has, up to 256 threads per block.
/// While the staged input exceeds 48 KiB the tile loses half its rows, then
/// half its columns; while the grid has fewer than two blocks per SM at
/// batch 1 it loses half its rows as long as a block keeps 64 threads (a
/// 28×28 map of 144 channels: 28×32 tiles give 144 blocks, 14×32 tiles
/// 288). Small maps (a 7×7 map is 14 threads) put several channels in a
/// block, enough for at least 64 threads, more up to 256 while the grid
/// keeps two blocks per SM at batch 1.
pub fn choose_depthwise(conv: &Depthwise) -> Option<DwTile> {
    let tx = 4u32;
    let ow = conv.out_w.max(1) as u64;
    let oh = conv.out_h.max(1) as u64;
    let mut tw = if ow <= 4 {
        4
    } else if ow <= 8 {
        8
    } else if ow <= 16 {
        16
    } else {
        32
    };
    let mut th = oh.min((DW_MAX_THREADS / (tw / tx)) as u64) as u32;
    let fits = |t: &DwTile| conv.shared_bytes(t) <= DW_MAX_SHARED;
    loop {
        let t = DwTile { ch: 1, th, tw, tx };
        if fits(&t) {
            break;
        }
        if th > 1 {
            th = th.div_ceil(2);
        } else if tw > tx {
            tw /= 2;
        } else {
            return None;
        }
    }
    let channels = conv.channels.max(1) as u64;
    let tiles = |th: u32| {
        oh.div_ceil(th as u64)
            .saturating_mul(ow.div_ceil(tw as u64))
    };
    // Too few blocks for the GPU: shorter tiles, while a block keeps DW_MIN_THREADS.
    while channels.saturating_mul(tiles(th)) < 2 * TARGET_SMS
        && th.div_ceil(2) * (tw / tx) >= DW_MIN_THREADS
    {
        th = th.div_ceil(2);
    }
    let plane = th * (tw / tx);
    let tiles = tiles(th);
    let most = channels.min(DW_MAX_THREADS as u64) as u32;
    let mut ch = DW_MIN_THREADS.div_ceil(plane).min(most).max(1);
    while ch < most {
        let next = DwTile {
            ch: ch + 1,
            th,
            tw,
            tx,
        };
        let blocks = channels.div_ceil(next.ch as u64).saturating_mul(tiles);
        if next.threads() > DW_MAX_THREADS || blocks < 2 * TARGET_SMS || !fits(&next) {
            break;
        }
        ch += 1;
    }
    while ch > 1 && !fits(&DwTile { ch, th, tw, tx }) {
        ch -= 1;
    }
    Some(DwTile { ch, th, tw, tx })
}

/// A kernel tuned for batches from `min_batch` on (see [`BATCH_BUCKETS`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub min_batch: u64,
    /// The kernel's name plus `_b<min_batch>`.
    pub name: String,
    pub schedule: Schedule,
    pub block: u32,
    pub grid: Grid,
}

/// The batch-1 schedule of a GEMM kernel named `name`, and its variants for
/// the later buckets whose schedule differs from the bucket before.
pub fn bucket_schedules(gemm: &Gemm, name: &str, precision: Precision) -> (Schedule, Vec<Variant>) {
    let first = gemm.schedule_for(BATCH_BUCKETS[0], BATCH_BUCKETS.get(1).copied(), precision);
    let mut previous = first;
    let mut variants: Vec<Variant> = Vec::new();
    for (i, &batch) in BATCH_BUCKETS.iter().enumerate().skip(1) {
        let schedule = gemm.schedule_for(batch, BATCH_BUCKETS.get(i + 1).copied(), precision);
        if schedule == previous {
            continue;
        }
        previous = schedule;
        let (block, grid) = gemm.launch(&schedule);
        variants.push(Variant {
            min_batch: batch,
            name: format!("{name}_b{batch}"),
            schedule,
            block,
            grid,
        });
    }
    (first, variants)
}

#[derive(Clone, Debug, PartialEq)]
pub enum KernelKind {
    Gemm(Gemm),
    /// A depthwise convolution on its own kernel (not a grouped GEMM).
    Depthwise(Depthwise),
    /// Max or average pooling, one thread per output.
    Pool {
        op: Op,
    },
    AdaptivePool {
        max: bool,
        output: (i64, i64),
    },
    /// y = x·scale[c] + shift[c] (a batch norm that could not be folded; scale and shift prepared at load).
    ChannelAffine,
    Lrn {
        size: i64,
        alpha: f64,
        beta: f64,
        k: f64,
    },
    /// Over dimension 1; one thread per (image, pixel).
    Softmax {
        log: bool,
    },
    Activation(Activation),
    Add,
    /// x times a factor of [C, 1, 1] (broadcast) or x's shape: a `gate`.
    Mul,
    /// Copies one input into its channel slice of the output (a concat that
    /// is not in place), or a channel slice of its input into the output (a
    /// `split`'s chunk).
    CopySlice,
    /// Layer norm over channels, one thread per (image, pixel); params weight, bias.
    LayerNorm {
        eps: f64,
    },
    /// A layer norm's statistics for the convolution that normalises its
    /// input as it reads it ([`Gemm::input_norm`]): per (image, pixel), the
    /// mean over channels and 1/√(var + eps), written as a [2, H, W] map;
    /// one thread per (image, pixel), as [`KernelKind::LayerNorm`].
    LayerNormStats {
        eps: f64,
    },
    /// Output channel j·groups + i is input channel i·(C / groups) + j.
    ChannelShuffle {
        groups: i64,
    },
}

/// How many blocks along x: `ceil(batch·per_image / per_block)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub per_image: u64,
    pub per_block: u64,
    pub y: u64,
    pub z: u64,
}

impl Grid {
    pub fn x(&self, batch: u64) -> u64 {
        (batch * self.per_image).div_ceil(self.per_block).max(1)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub index: usize,
    /// A C identifier: `k07_conv_layer1_0_conv1`.
    pub name: String,
    pub node: NodeId,
    /// The layers this kernel computes, with their `.cnn` locations, for comments.
    pub layers: Vec<String>,
    pub kind: KernelKind,
    /// Main input first, then residual operands (for the epilogue) in order.
    pub inputs: Vec<TensorRef>,
    pub output: TensorRef,
    /// Epilogue steps; `AddInput(k)` reads `inputs[k]`.
    pub epilogue: Vec<Epilogue>,
    /// Parameter tensors it reads, by `state_dict` key (prepared: batch norm folded).
    pub params: Vec<String>,
    pub block: u32,
    pub grid: Grid,
    /// GEMM kernels tuned for larger batches (the fields above serve batch 1
    /// up to the first variant's `min_batch`), by increasing `min_batch`.
    pub variants: Vec<Variant>,
}

impl Kernel {
    /// The 16-bit format of a GEMM's weights on the GPU: some batch size
    /// runs it on 16-bit tensor cores (`--precision bf16` or `fp16`), so the
    /// runtime prepares a 16-bit copy of its weights
    /// ([`cnnc_runtime::plan::Prepared::WithHalf`]), uploads only that copy,
    /// and every kernel of the layer, on CUDA cores too, reads it.
    pub fn half_weights(&self) -> Option<HalfFormat> {
        match &self.kind {
            KernelKind::Gemm(g) => std::iter::once(&g.schedule)
                .chain(self.variants.iter().map(|v| &v.schedule))
                .find_map(|s| match s {
                    Schedule::Tensor { half, .. } => *half,
                    _ => None,
                }),
            _ => None,
        }
    }
}

/// Every kernel of a model, in launch order.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelProgram {
    pub model: String,
    pub source: String,
    pub input: TensorRef,
    pub output: TensorRef,
    pub kernels: Vec<Kernel>,
    /// What the GEMMs compute in (the other kernels are FP32).
    pub precision: Precision,
}

impl KernelProgram {
    /// One line for the build log and `cnnc summary`: the precision and how
    /// many GEMM kernels use tensor cores for some batch size (each kernel
    /// has variants for batch buckets; any on tensor cores counts).
    pub fn precision_line(&self) -> String {
        let gemms: Vec<&Gemm> = self
            .kernels
            .iter()
            .filter_map(|k| match &k.kind {
                KernelKind::Gemm(g) => Some(g),
                _ => None,
            })
            .collect();
        let depthwise = self
            .kernels
            .iter()
            .filter(|k| matches!(k.kind, KernelKind::Depthwise(_)))
            .count();
        let depthwise = match depthwise {
            0 => String::new(),
            1 => "; 1 depthwise convolution on its own FP32 kernel".to_string(),
            n => format!("; {n} depthwise convolutions on their own FP32 kernel"),
        };
        if !self.precision.tensor_cores() {
            return format!(
                "{}: all {} GEMMs in FP32 on CUDA cores{depthwise}",
                self.precision.name(),
                gemms.len()
            );
        }
        let on_tc = self
            .kernels
            .iter()
            .filter(|k| match &k.kind {
                KernelKind::Gemm(g) => {
                    matches!(g.schedule, Schedule::Tensor { .. })
                        || k.variants
                            .iter()
                            .any(|v| matches!(v.schedule, Schedule::Tensor { .. }))
                }
                _ => false,
            })
            .count();
        format!(
            "{}: {on_tc} of {} GEMMs on tensor cores at some batch size{depthwise} (`cnnc emit --stage kernels` says which and why)",
            self.precision.name(),
            gemms.len()
        )
    }
}

/// Where each node's values live, with views resolved to their owners.
pub fn placements(g: &Graph) -> Vec<TensorRef> {
    let mut refs: Vec<TensorRef> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(id, n)| TensorRef {
            owner: id,
            channel_offset: 0,
            channels_total: n.shape.channels(),
            shape: n.shape,
        })
        .collect();
    // Concats in place: each branch writes a slice of the concat's buffer.
    // (The pass never puts a view inside an in-place concat, so no nesting.)
    for (id, node) in g.nodes.iter().enumerate() {
        if node.op == Op::Concat && node.fusion.view {
            let mut offset = 0;
            for &i in &node.inputs {
                let outer = refs[id];
                refs[i] = TensorRef {
                    owner: outer.owner,
                    channel_offset: outer.channel_offset + offset,
                    channels_total: outer.channels_total,
                    shape: g.nodes[i].shape,
                };
                offset += g.nodes[i].shape.channels();
            }
        }
    }
    // Flatten views share their input's memory (a contiguous NCHW map is already flat).
    for (id, node) in g.nodes.iter().enumerate() {
        if node.op == Op::Flatten && node.fusion.view {
            let input = refs[node.inputs[0]];
            refs[id] = TensorRef {
                shape: node.shape,
                channels_total: node.shape.channels(),
                ..input
            };
        }
    }
    refs
}

/// A C identifier from a user-chosen layer name: letters, digits and `_` only.
pub fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(48)
        .collect();
    while s.contains("__") {
        s = s.replace("__", "_");
    }
    s.trim_matches('_').to_string()
}

fn chw(shape: Shape) -> (i64, i64, i64) {
    match shape {
        Shape::Chw(c, h, w) => (c, h, w),
        Shape::Flat(f) => (f, 1, 1),
    }
}

/// Lowers a fused graph to kernels, in strict FP32.
pub fn lower(g: &Graph, sources: &SourceMap) -> Result<KernelProgram, String> {
    lower_with(g, sources, Precision::Fp32)
}

/// Lowers a fused graph to kernels whose GEMMs compute in `precision`.
pub fn lower_with(
    g: &Graph,
    sources: &SourceMap,
    precision: Precision,
) -> Result<KernelProgram, String> {
    let refs = placements(g);
    let mut kernels = Vec::new();
    for (id, node) in g.nodes.iter().enumerate().skip(1) {
        if node.fusion.view {
            continue;
        }
        let output = refs[id];
        let inputs: Vec<TensorRef> = node.inputs.iter().map(|&i| refs[i]).collect();
        let (_, oh, ow) = chw(node.shape);
        let one_per_output = |count: u64| Grid {
            per_image: count,
            per_block: 256,
            y: 1,
            z: 1,
        };
        let mut params = Vec::new();
        let (mut kind, mut block, mut grid) = match &node.op {
            Op::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                dilation,
                groups,
                bias,
                padding_mode,
            } => {
                let (_, ih, iw) = chw(inputs[0].shape);
                // A folded batch norm or layer norm leaves a bias.
                let has_bias = *bias
                    || node.fusion.folded_batchnorm.is_some()
                    || node.fusion.folded_layernorm.is_some();
                params.push(format!("{}.weight", node.name));
                if has_bias {
                    params.push(format!("{}.bias", node.name));
                }
                if *groups == *in_channels
                    && *groups == *out_channels
                    && *padding_mode == PaddingMode::Zeros
                    && node.fusion.prologue.is_none()
                {
                    let mut dw = Depthwise {
                        channels: *out_channels,
                        in_h: ih,
                        in_w: iw,
                        out_h: oh,
                        out_w: ow,
                        kernel: *kernel,
                        stride: *stride,
                        pad: (padding.top, padding.left),
                        dilation: *dilation,
                        bias: has_bias,
                        tile: DwTile {
                            ch: 1,
                            th: 1,
                            tw: 4,
                            tx: 4,
                        },
                    };
                    if let Some(tile) = choose_depthwise(&dw) {
                        dw.tile = tile;
                        let (block, grid) = dw.launch();
                        (KernelKind::Depthwise(dw), block, grid)
                    } else {
                        (
                            KernelKind::Gemm(conv_gemm(node, ih, iw, oh, ow, has_bias)?),
                            0,
                            one_per_output(1),
                        )
                    }
                } else {
                    (
                        KernelKind::Gemm(conv_gemm(node, ih, iw, oh, ow, has_bias)?),
                        0,
                        one_per_output(1),
                    )
                }
            }
            Op::Linear {
                in_features,
                out_features,
                bias,
            } => {
                let global_pool = node.fusion.prologue == Some(Prologue::GlobalAvgPool);
                let (_, ih, iw) = chw(inputs[0].shape);
                let has_bias = *bias || node.fusion.folded_batchnorm.is_some();
                params.push(format!("{}.weight", node.name));
                if has_bias {
                    params.push(format!("{}.bias", node.name));
                }
                let gemm = Gemm {
                    in_channels: *in_features,
                    in_h: if global_pool { ih } else { 1 },
                    in_w: if global_pool { iw } else { 1 },
                    out_channels: *out_features,
                    out_h: 1,
                    out_w: 1,
                    kernel: (1, 1),
                    stride: (1, 1),
                    pad: (0, 0),
                    dilation: (1, 1),
                    groups: 1,
                    padding_mode: PaddingMode::Zeros,
                    global_pool,
                    input_scale: false,
                    input_norm: false,
                    bias: has_bias,
                    linear: true,
                    schedule: Schedule::tiled(TILES[0], 1),
                };
                (KernelKind::Gemm(gemm), 0, one_per_output(1))
            }
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } => (
                KernelKind::Pool {
                    op: node.op.clone(),
                },
                256,
                one_per_output(node.shape.numel() as u64),
            ),
            Op::AdaptiveAvgPool2d { output } | Op::AdaptiveMaxPool2d { output } => (
                KernelKind::AdaptivePool {
                    max: matches!(node.op, Op::AdaptiveMaxPool2d { .. }),
                    output: *output,
                },
                256,
                one_per_output(node.shape.numel() as u64),
            ),
            Op::BatchNorm { .. } => {
                // Prepared at load into scale (".weight") and shift (".bias").
                params.push(format!("{}.weight", node.name));
                params.push(format!("{}.bias", node.name));
                (
                    KernelKind::ChannelAffine,
                    256,
                    one_per_output(node.shape.numel() as u64),
                )
            }
            Op::LocalResponseNorm {
                size,
                alpha,
                beta,
                k,
            } => (
                KernelKind::Lrn {
                    size: *size,
                    alpha: alpha.0,
                    beta: beta.0,
                    k: k.0,
                },
                256,
                one_per_output(node.shape.numel() as u64),
            ),
            Op::Softmax | Op::LogSoftmax => (
                KernelKind::Softmax {
                    log: node.op == Op::LogSoftmax,
                },
                256,
                one_per_output((oh * ow) as u64),
            ),
            Op::Activation(a) => (
                KernelKind::Activation(*a),
                256,
                one_per_output(node.shape.numel() as u64),
            ),
            Op::Add => (
                KernelKind::Add,
                256,
                one_per_output(node.shape.numel() as u64),
            ),
            Op::Mul => (
                KernelKind::Mul,
                256,
                one_per_output(node.shape.numel() as u64),
            ),
            Op::Scale { .. } => {
                // y = x·s[c] + 0: the channel-affine kernel, its scale the
                // bare parameter and its shift prepared as zeros.
                params.push(node.name.clone());
                (
                    KernelKind::ChannelAffine,
                    256,
                    one_per_output(node.shape.numel() as u64),
                )
            }
            Op::LayerNorm { eps, .. } => {
                params.push(format!("{}.weight", node.name));
                params.push(format!("{}.bias", node.name));
                (
                    KernelKind::LayerNorm { eps: eps.0 },
                    256,
                    one_per_output((oh * ow) as u64),
                )
            }
            Op::LayerNormStats { eps } => (
                KernelKind::LayerNormStats { eps: eps.0 },
                256,
                one_per_output((oh * ow) as u64),
            ),
            Op::ChannelShuffle { groups } => (
                KernelKind::ChannelShuffle { groups: *groups },
                256,
                one_per_output(node.shape.numel() as u64),
            ),
            Op::ChannelSlice { offset, .. } => {
                // A copy from the chunk's channels of the input.
                let from = TensorRef {
                    channel_offset: inputs[0].channel_offset + offset,
                    shape: node.shape,
                    ..inputs[0]
                };
                let index = kernels.len();
                kernels.push(Kernel {
                    index,
                    name: format!("k{index:02}_chunk_{}", *offset),
                    node: id,
                    layers: describe_layers(g, id, sources),
                    kind: KernelKind::CopySlice,
                    inputs: vec![from],
                    output,
                    epilogue: Vec::new(),
                    params: Vec::new(),
                    block: 256,
                    grid: one_per_output(node.shape.numel() as u64),
                    variants: Vec::new(),
                });
                continue;
            }
            Op::Concat => {
                // Not in place: one copy kernel per input, each into its slice.
                let mut offset = 0;
                for (k, &i) in node.inputs.iter().enumerate() {
                    let part = refs[i];
                    let slice = TensorRef {
                        channel_offset: output.channel_offset + offset,
                        shape: part.shape,
                        ..output
                    };
                    offset += part.shape.channels();
                    let index = kernels.len();
                    kernels.push(Kernel {
                        index,
                        name: format!("k{index:02}_concat_{}_{k}", sanitize(&node.name))
                            .replace("__", "_"),
                        node: id,
                        layers: describe_layers(g, id, sources),
                        kind: KernelKind::CopySlice,
                        inputs: vec![part],
                        output: slice,
                        epilogue: Vec::new(),
                        params: Vec::new(),
                        block: 256,
                        grid: one_per_output(part.shape.numel() as u64),
                        variants: Vec::new(),
                    });
                }
                continue;
            }
            Op::Dropout { .. }
            | Op::Dropout2d { .. }
            | Op::StochasticDepth { .. }
            | Op::Identity
            | Op::Flatten => {
                return Err(format!(
                    "node {id} ({}) should have been removed by the passes",
                    node.op.name()
                ));
            }
            Op::Input => continue,
        };
        let index = kernels.len();
        let label = if node.name.is_empty() {
            String::new()
        } else {
            format!("_{}", sanitize(&node.name))
        };
        let name = format!("k{index:02}_{}{label}", node.op.name());
        let mut variants = Vec::new();
        if let KernelKind::Gemm(gemm) = &mut kind {
            let (first, later) = bucket_schedules(gemm, &name, precision);
            gemm.schedule = first;
            (block, grid) = gemm.launch(&first);
            variants = later;
        }
        kernels.push(Kernel {
            index,
            name,
            node: id,
            layers: describe_layers(g, id, sources),
            kind,
            inputs,
            output,
            epilogue: node.fusion.epilogue.clone(),
            params,
            block,
            grid,
            variants,
        });
    }
    Ok(KernelProgram {
        model: g.name.clone(),
        source: g
            .nodes
            .first()
            .map(|n| sources.name(n.span.file).to_string())
            .unwrap_or_default(),
        input: refs[0],
        output: refs[g.output],
        kernels,
        precision,
    })
}

/// The implicit GEMM of convolution `node` on an IH×IW input with an OH×OW
/// output (its schedule chosen later, per batch bucket).
fn conv_gemm(
    node: &crate::ir::Node,
    ih: i64,
    iw: i64,
    oh: i64,
    ow: i64,
    bias: bool,
) -> Result<Gemm, String> {
    let Op::Conv2d {
        in_channels,
        out_channels,
        kernel,
        stride,
        padding,
        dilation,
        groups,
        padding_mode,
        ..
    } = &node.op
    else {
        return Err(format!("{} is not a convolution", node.op.name()));
    };
    Ok(Gemm {
        in_channels: *in_channels,
        in_h: ih,
        in_w: iw,
        out_channels: *out_channels,
        out_h: oh,
        out_w: ow,
        kernel: *kernel,
        stride: *stride,
        pad: (padding.top, padding.left),
        dilation: *dilation,
        groups: *groups,
        padding_mode: *padding_mode,
        global_pool: false,
        input_scale: matches!(node.fusion.prologue, Some(Prologue::ChannelScale { .. })),
        input_norm: matches!(node.fusion.prologue, Some(Prologue::Normalize { .. })),
        bias,
        linear: false,
        // Chosen per batch bucket once the kernel has its name.
        schedule: Schedule::tiled(TILES[0], 1),
    })
}

/// "conv layer1.0.conv1 — models/resnet50.cnn:14" lines: the node and everything merged into it.
fn describe_layers(g: &Graph, id: NodeId, sources: &SourceMap) -> Vec<String> {
    let node = &g.nodes[id];
    let line = |span: crate::front::source::Span| {
        let (l, _) = sources.line_col(span.file, span.start);
        format!("{}:{l}", sources.name(span.file))
    };
    let mut out = vec![format!(
        "{} {} ({})",
        node.op.describe(),
        if node.name.is_empty() {
            "·"
        } else {
            &node.name
        },
        line(node.span)
    )];
    for m in &node.fusion.merged {
        out.push(format!(
            "+ {} {} ({})",
            m.op,
            if m.name.is_empty() { "·" } else { &m.name },
            line(m.span)
        ));
    }
    out
}

/// The grid's x size, `ceil(batch·per_image / per_block)`, as a person
/// reads it: `batch·18` when blocks divide an image exactly (18 blocks per
/// image), `ceil(batch/7)` when a block takes 7 images, and otherwise the
/// division with the numbers that say where it comes from
/// (`ceil(batch·400/32)`: 400 pixels an image, 32 a block).
pub fn grid_x(per_image: u64, per_block: u64) -> String {
    let per_block = per_block.max(1);
    if per_image.is_multiple_of(per_block) {
        match per_image / per_block {
            1 => "batch".to_string(),
            q => format!("batch·{q}"),
        }
    } else if per_image == 1 {
        format!("ceil(batch/{per_block})")
    } else {
        format!("ceil(batch·{per_image}/{per_block})")
    }
}

/// The `--stage kernels` listing: one block per kernel.
pub fn render(program: &KernelProgram) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "model {} ({} kernels)",
        program.model,
        program.kernels.len()
    );
    if program.precision != Precision::Fp32 {
        let _ = writeln!(out, "precision {}", program.precision.describe());
    }
    for k in &program.kernels {
        let _ = writeln!(
            out,
            "\n{}  block {} grid [{}, {}, {}]",
            k.name,
            k.block,
            grid_x(k.grid.per_image, k.grid.per_block),
            k.grid.y,
            k.grid.z
        );
        for l in &k.layers {
            let _ = writeln!(out, "  {}", clean(l));
        }
        match &k.kind {
            KernelKind::Gemm(gm) => {
                let _ = writeln!(
                    out,
                    "  implicit GEMM per group: M={} N=batch·{} K={}",
                    gm.m(),
                    gm.pixels(),
                    gm.k(),
                );
                // A prologue's operand is the kernel's last input.
                let last = k.inputs.len() - 1;
                if gm.input_norm {
                    let _ = writeln!(
                        out,
                        "  prologue: B normalised per input pixel, (x − mean)·inv from in{last} (a layer norm's statistics; its weight and bias folded into this GEMM's), as B is read on CUDA cores, in shared memory once a slice lands on tensor cores"
                    );
                } else if gm.input_scale {
                    let _ = writeln!(
                        out,
                        "  prologue: B scaled per (image, channel) by in{last} (a gate's factor), as B is read on CUDA cores, in shared memory once a slice lands on tensor cores"
                    );
                }
                // "batch 8–63" or "batch 64 and up".
                let range = |first: u64, i: usize| match k.variants.get(i) {
                    Some(next) => format!("batch {first}–{}", next.min_batch - 1),
                    None => format!("batch {first} and up"),
                };
                // A layer with only 16-bit weights on the GPU reads them 4 at
                // a time with 8-byte loads where the f32 kernels use float4.
                let describe = |s: &Schedule| {
                    let text = describe_schedule(s);
                    match k.half_weights() {
                        Some(h) => text.replace(
                            "weights by float4",
                            &format!("{} weights by 8-byte loads of 4", h.name()),
                        ),
                        None => text,
                    }
                };
                let _ = writeln!(out, "  {}: {}", range(1, 0), describe(&gm.schedule));
                let _ = writeln!(out, "    loop nest: {}", loop_nest(&gm.schedule));
                let cuda_cores = |out: &mut String, schedule: &Schedule, batch: u64| {
                    if !program.precision.tensor_cores() {
                        return;
                    }
                    let why = match schedule {
                        Schedule::Tensor { .. } => return,
                        Schedule::Gemv(_) => "a GEMV is bound by reading the weights once",
                        Schedule::Tile { .. } => gm
                            .tensor_core_tile(gm.pixels() as u64 * batch)
                            .err()
                            .unwrap_or("no tensor-core tile"),
                    };
                    let _ = writeln!(out, "    on CUDA cores in fp32: {why}");
                };
                cuda_cores(&mut out, &gm.schedule, 1);
                for (i, v) in k.variants.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "  {}: {}  block {} grid [{}, {}, {}]: {}",
                        range(v.min_batch, i + 1),
                        v.name,
                        v.block,
                        grid_x(v.grid.per_image, v.grid.per_block),
                        v.grid.y,
                        v.grid.z,
                        describe(&v.schedule)
                    );
                    let _ = writeln!(out, "    loop nest: {}", loop_nest(&v.schedule));
                    cuda_cores(&mut out, &v.schedule, v.min_batch);
                }
                if let Some(h) = k.half_weights() {
                    let _ = writeln!(
                        out,
                        "  weights: only their {} copy on the GPU, read by every batch size's kernel",
                        h.name()
                    );
                }
            }
            other => {
                let _ = writeln!(out, "  {}", describe_kind(other));
            }
        }
        for e in &k.epilogue {
            let _ = match e {
                Epilogue::Activation(a) => {
                    writeln!(out, "  epilogue: {}", Op::Activation(*a).describe())
                }
                Epilogue::AddInput(i) => writeln!(
                    out,
                    "  epilogue: add input {i} (node {})",
                    k.inputs[*i].owner
                ),
            };
        }
        let place = |r: &TensorRef| {
            format!(
                "buf{}[c {}+{} of {}] {}",
                r.owner,
                r.channel_offset,
                r.shape.channels(),
                r.channels_total,
                r.shape
            )
        };
        for (i, r) in k.inputs.iter().enumerate() {
            let _ = writeln!(out, "  in{i}:  {}", place(r));
        }
        let _ = writeln!(out, "  out:  {}", place(&k.output));
    }
    out
}

/// "tile BM=16 BN=32 BK=16 TM=1 TN=2 (256 threads), weights by float4" or the GEMV's shape.
pub fn describe_schedule(schedule: &Schedule) -> String {
    match schedule {
        Schedule::Tile {
            tile: t,
            vec_a,
            split,
        } => format!(
            "tile BM={} BN={} BK={} TM={} TN={} ({} threads){}{}",
            t.bm,
            t.bn,
            t.bk,
            t.tm,
            t.tn,
            t.threads(),
            if *vec_a { ", weights by float4" } else { "" },
            if *split > 1 {
                format!(", K split {split} ways")
            } else {
                String::new()
            }
        ),
        Schedule::Tensor {
            tile: t,
            x3,
            vec_a,
            half,
        } => format!(
            "tensor cores {}: tile BM={} BN={} BK={TC_BK}, warp tiles {}×{} of mma.m16n8k{}, {}-stage cp.async pipeline, {} B shared ({} threads){}",
            match half {
                Some(HalfFormat::Bf16) => "BF16",
                Some(HalfFormat::Fp16) => "FP16",
                None if *x3 => "3xTF32",
                None => "TF32",
            },
            t.bm,
            t.bn,
            t.wm,
            t.wn,
            if half.is_some() { 16 } else { 8 },
            t.stages,
            t.shared_bytes_for(half.is_some()),
            t.threads(),
            match (half, vec_a) {
                (Some(h), _) => format!(", {} weights by 16-byte copies", h.name()),
                (None, true) => ", weights by 16-byte copies".to_string(),
                (None, false) => String::new(),
            },
        ),
        Schedule::Gemv(v) => format!(
            "GEMV {} warps × {} rows, ≤{} images, chunks of {}{} ({} threads)",
            v.warps,
            v.rows,
            v.images,
            v.chunk,
            if v.vec4 { ", weights by float4" } else { "" },
            v.warps * 32
        ),
    }
}

fn loop_nest(schedule: &Schedule) -> String {
    match schedule {
        Schedule::Tensor {
            tile: t,
            half: Some(h),
            ..
        } => format!(
            "slices 0..{s1} of A[{bm}×{TC_BK}] ({h} weights, cp.async) and B[{TC_BK}×{bn}] ({h} activations, through registers) to swizzled shared buffers; for k0 in 0..K step {TC_BK}: wait for slice k0, copy A's slice k0+{s1} into buffer (k0/{TC_BK}+{s1}) % {s} and load B's to registers, ldmatrix A[{wm}×{TC_BK}], B[{TC_BK}×{wn}] per warp, {mi}×{ni} mma.m16n8k16, store B's slice k0+{s1}",
            s1 = t.stages - 1,
            s = t.stages,
            bm = t.bm,
            bn = t.bn,
            wm = t.wm,
            wn = t.wn,
            mi = t.wm / 16,
            ni = t.wn / 8,
            h = h.name(),
        ),
        Schedule::Tensor { tile: t, x3, .. } => format!(
            "cp.async slices 0..{s1} of A[{bm}×{TC_BK}], B[{TC_BK}×{bn}] to swizzled shared buffers; for k0 in 0..K step {TC_BK}: wait for slice k0, copy slice k0+{s1} into buffer (k0/{TC_BK}+{s1}) % {s}, for k in 0..{TC_BK} step 8: ldmatrix A[{wm}×8], B[8×{wn}] per warp, round to TF32{split}, {mi}×{ni} mma.m16n8k8{times}",
            s1 = t.stages - 1,
            s = t.stages,
            bm = t.bm,
            bn = t.bn,
            wm = t.wm,
            wn = t.wn,
            mi = t.wm / 16,
            ni = t.wn / 8,
            split = if *x3 { " big + small parts" } else { "" },
            times = if *x3 { " ×3 (small·big, big·small, big·big)" } else { "" },
        ),
        Schedule::Tile {
            tile: t, split: 1, ..
        } => format!(
            "load A[{}×{}], B[{}×{}] to registers; for k0 in 0..K step {}: store them to shared buffer k0/{} % 2, load the next slice, for k in 0..{}: acc[{}×{}] += a·b",
            t.bm, t.bk, t.bk, t.bn, t.bk, t.bk, t.bk, t.tm, t.tn
        ),
        Schedule::Tile { tile: t, split, .. } => format!(
            "block z/groups = s of {split}: load A[{}×{}], B[{}×{}] to registers; for k0 in s's slices (step {}): store them to shared buffer k0/{} % 2, load the next slice, for k in 0..{}: acc[{}×{}] += a·b; acc to workspace; the tile's last block: acc = Σ partials in split order",
            t.bm, t.bk, t.bk, t.bn, t.bk, t.bk, t.bk, t.tm, t.tn
        ),
        Schedule::Gemv(v) => format!(
            "for k0 in 0..K step {}: x[batch][{}] to shared; each warp: for k in lane·{step}..{} step {}: acc[{}][batch] += w·x; shuffle-reduce",
            v.chunk,
            v.chunk,
            v.chunk,
            32 * if v.vec4 { 4 } else { 1 },
            v.rows,
            step = if v.vec4 { 4 } else { 1 },
        ),
    }
}

fn describe_kind(kind: &KernelKind) -> String {
    match kind {
        KernelKind::Gemm(_) => "gemm".to_string(),
        KernelKind::Depthwise(d) => {
            let t = &d.tile;
            let (ih, iw) = d.input_tile(t);
            format!(
                "depthwise {}×{} conv, stride {}×{}, dilation {}×{}, {} channels{}: tile {} channel{} × {}×{} outputs, {} per thread along a row ({} threads); input tile {ih}×{iw} per channel in shared memory ({} B), weights in registers",
                d.kernel.0,
                d.kernel.1,
                d.stride.0,
                d.stride.1,
                d.dilation.0,
                d.dilation.1,
                d.channels,
                if d.bias { ", bias" } else { "" },
                t.ch,
                if t.ch == 1 { "" } else { "s" },
                t.th,
                t.tw,
                t.tx,
                t.threads(),
                d.shared_bytes(t)
            )
        }
        KernelKind::Pool { op } => format!("{}, one thread per output", op.describe()),
        KernelKind::AdaptivePool { max, output } => {
            format!(
                "adaptive {} pool to {}×{}, one thread per output",
                if *max { "max" } else { "average" },
                output.0,
                output.1
            )
        }
        KernelKind::ChannelAffine => {
            "per-channel scale and shift (batch norm), one thread per output".to_string()
        }
        KernelKind::Lrn { size, .. } => {
            format!("local response norm over {size} channels, one thread per output")
        }
        KernelKind::Softmax { log } => format!(
            "{} over channels, one thread per (image, pixel)",
            if *log { "log_softmax" } else { "softmax" }
        ),
        KernelKind::Activation(a) => {
            format!("{}, one thread per element", Op::Activation(*a).describe())
        }
        KernelKind::Add => "elementwise add, one thread per element".to_string(),
        KernelKind::Mul => "multiply by a gate's factor, one thread per element".to_string(),
        KernelKind::CopySlice => "copy into a channel slice, one thread per element".to_string(),
        KernelKind::LayerNorm { .. } => {
            "layer norm over channels, one thread per (image, pixel)".to_string()
        }
        KernelKind::LayerNormStats { .. } => {
            "layer norm statistics (mean, inverse deviation) for the next convolution, one thread per (image, pixel)".to_string()
        }
        KernelKind::ChannelShuffle { groups } => {
            format!("channel shuffle in {groups} groups, one thread per element")
        }
    }
}

/// Text from user files made safe for a `//` comment: no control characters,
/// no trailing backslash (which would continue the comment onto the next line).
pub fn clean(text: &str) -> String {
    let s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.trim_end_matches('\\').to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn grid_sizes_read_as_a_person_writes_them() {
        use super::grid_x;
        assert_eq!(grid_x(1, 7), "ceil(batch/7)");
        assert_eq!(grid_x(784, 256), "ceil(batch·784/256)");
        assert_eq!(grid_x(1024, 256), "batch·4");
        assert_eq!(grid_x(256, 256), "batch");
        assert_eq!(grid_x(3, 1), "batch·3");
        assert_eq!(grid_x(1, 1), "batch");
    }

    use super::*;

    /// Splits as the kernel computes them: `per` slices each, the last one short.
    fn split_ranges(k: i64, tile: &GemmTile, split: u32) -> Vec<(u64, u64)> {
        let slices = (k as u64).div_ceil(tile.bk as u64);
        let per = slices.div_ceil(split as u64);
        (0..split as u64)
            .map(|s| (s * per, ((s + 1) * per).min(slices)))
            .collect()
    }

    #[test]
    fn every_split_gets_whole_slices_and_none_is_empty() {
        for tile in TILES {
            for k in 1..600 {
                for asked in 1..=20 {
                    let Schedule::Tile { split, .. } = Schedule::tiled_split(*tile, k, asked)
                    else {
                        panic!("a tile schedule");
                    };
                    let ranges = split_ranges(k, tile, split);
                    assert!(
                        split >= 1 && split <= asked.max(1),
                        "k {k} asked {asked}: {split}"
                    );
                    assert!(
                        ranges.iter().all(|(a, b)| a < b),
                        "k {k} asked {asked}: {ranges:?}"
                    );
                    let slices = (k as u64).div_ceil(tile.bk as u64);
                    assert_eq!(ranges.last().unwrap().1, slices, "k {k} asked {asked}");
                }
            }
        }
    }

    #[test]
    fn every_depthwise_tile_fits_its_limits() {
        // Maps 1 to 120 wide, the zoo's filters and some odd ones, strides
        // 1 to 3, dilation 1 to 3, 1 to 1200 channels.
        let mut tiles = 0;
        for (k, s, d) in [
            (3, 1, 1),
            (3, 2, 1),
            (5, 2, 1),
            (7, 1, 1),
            (3, 1, 2),
            (5, 3, 3),
            (11, 2, 1),
        ] {
            for o in [1, 2, 3, 7, 9, 14, 17, 28, 33, 56, 112, 120] {
                for c in [1, 5, 37, 96, 1152] {
                    let i = (o - 1) * s + (k - 1) * d + 1 - 2 * (k / 2);
                    let mut conv = Depthwise {
                        channels: c,
                        in_h: i.max(1),
                        in_w: i.max(1),
                        out_h: o,
                        out_w: o,
                        kernel: (k, k),
                        stride: (s, s),
                        pad: (k / 2, k / 2),
                        dilation: (d, d),
                        bias: true,
                        tile: DwTile {
                            ch: 1,
                            th: 1,
                            tw: 4,
                            tx: 4,
                        },
                    };
                    let t = choose_depthwise(&conv).expect("a tile");
                    conv.tile = t;
                    let what = format!("k {k} s {s} d {d} o {o} c {c}: {t:?}");
                    assert!(t.threads() >= 1 && t.threads() <= DW_MAX_THREADS, "{what}");
                    assert!(conv.shared_bytes(&t) <= DW_MAX_SHARED, "{what}");
                    assert!(
                        t.tw.is_multiple_of(t.tx) && t.th >= 1 && t.ch >= 1,
                        "{what}"
                    );
                    assert!(t.ch as i64 <= c && t.th as i64 <= o, "{what}");
                    // Small maps: several channels make a block of at least
                    // DW_MIN_THREADS, unless one more would not fit.
                    let more = DwTile { ch: t.ch + 1, ..t };
                    if (t.ch as i64) < c && conv.shared_bytes(&more) <= DW_MAX_SHARED {
                        assert!(t.threads() >= DW_MIN_THREADS, "{what}");
                    }
                    let (_, grid) = conv.launch();
                    assert_eq!(grid.per_image, (c as u64).div_ceil(t.ch as u64));
                    tiles += 1;
                }
            }
        }
        assert_eq!(tiles, 7 * 12 * 5);
        // A dilation too large for any tile: refused, not overflowed.
        let huge = Depthwise {
            channels: 8,
            in_h: 1 << 40,
            in_w: 1 << 40,
            out_h: 2,
            out_w: 2,
            kernel: (3, 3),
            stride: (1, 1),
            pad: (0, 0),
            dilation: (1 << 39, 1 << 39),
            bias: false,
            tile: DwTile {
                ch: 1,
                th: 1,
                tw: 4,
                tx: 4,
            },
        };
        assert_eq!(choose_depthwise(&huge), None);
    }

    #[test]
    fn k_is_split_only_where_the_gpu_would_be_idle() {
        let small = TILES[TILES.len() - 1];
        // Enough blocks: no split, however long K is.
        assert_eq!(choose_split(&small, 2 * TARGET_SMS, 1 << 20), 1);
        // Few blocks, long K: split to the cap.
        assert_eq!(choose_split(&small, 8, 1 << 20), MAX_SPLIT as u32);
        // Few blocks, short K: every split keeps MIN_SLICES_PER_SPLIT slices.
        assert_eq!(choose_split(&small, 8, 16 * 7), 1);
        assert_eq!(choose_split(&small, 8, 16 * 8), 2);
        // The block cap: 64 blocks (ResNet-50 layer4's 3×3 conv at batch 1) split 6 ways.
        assert_eq!(
            choose_split(&small, 64, 4608),
            (MAX_SPLIT_BLOCKS / 64) as u32
        );
        // The schedule the compiler gives mnist_cnn's conv3 at batch 1: M = 64,
        // N = 36, K = 800 on the 16×32 tile: 8 blocks, 50 slices → 12 asked,
        // made exact as 10 splits of 5 slices.
        let gemm_split = Schedule::tiled_split(small, 800, choose_split(&small, 8, 800)).split();
        assert_eq!(gemm_split, 10);
    }
}
