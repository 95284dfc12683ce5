//! What each compiled kernel costs the GPU's multiprocessors: registers,
//! shared memory and local memory as ptxas reports them (`-Xptxas -v`, read
//! from every nvcc run of `cnnc build`), the occupancy that follows on the
//! A100 (sm_80) and the H100/H200 (sm_90), and how many waves of blocks a
//! launch makes. `cnnc build` writes the table to `kernels/resources.txt`
//! beside the cubins; with the roofline (`cnnc emit --stage roofline`) it
//! is the evidence of speed that needs no GPU.
//!
//! The occupancy is the CUDA occupancy calculator's (`cuda_occupancy.h`):
//! registers are allocated per warp in units of 256 within each of the four
//! sub-partitions of an SM; shared memory per block is the static size plus
//! 1 KiB the runtime reserves, in units of 128 bytes, against the largest
//! carve-out; at most 32 blocks and 64 warps per SM. Our kernels use static
//! shared memory only, so ptxas's figure is the whole of it.

use crate::back::kernel_ir::{Grid, KernelProgram};
use std::collections::BTreeMap;
use std::fmt::Write;

/// One function's figures from `ptxas -v`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtxasFunction {
    pub name: String,
    /// `Some(80)` for an entry function ptxas compiled for sm_80; `None`
    /// for a device function it reports properties of.
    pub arch: Option<u32>,
    /// `None` when ptxas printed no `Used … registers` line for it.
    pub registers: Option<u32>,
    pub barriers: u32,
    /// Static shared memory, bytes.
    pub smem: u64,
    /// Local memory: the stack frame and the spills, bytes.
    pub stack: u64,
    pub spill_stores: u64,
    pub spill_loads: u64,
}

/// The number just before `what` in `line` (`…, 3072 bytes smem` → 3072).
fn number_before(line: &str, what: &str) -> Option<u64> {
    let at = line.find(what)?;
    line[..at]
        .split([' ', ','])
        .rfind(|w| !w.is_empty())?
        .parse()
        .ok()
}

/// Reads a `ptxas -v` log (nvcc's standard error): each function once, in
/// order of first mention. A log of several architectures keeps one entry
/// per function and architecture.
pub fn parse_ptxas(log: &str) -> Vec<PtxasFunction> {
    let mut functions: Vec<PtxasFunction> = Vec::new();
    // The function the next `Used …` line belongs to.
    let mut current: Option<usize> = None;
    let mut lines = log.lines();
    let find = |functions: &mut Vec<PtxasFunction>, name: &str, arch: Option<u32>| -> usize {
        match functions
            .iter()
            .position(|f| f.name == name && (f.arch == arch || f.arch.is_none()))
        {
            Some(i) => {
                if arch.is_some() {
                    functions[i].arch = arch;
                }
                i
            }
            None => {
                functions.push(PtxasFunction {
                    name: name.to_string(),
                    arch,
                    ..PtxasFunction::default()
                });
                functions.len() - 1
            }
        }
    };
    while let Some(line) = lines.next() {
        if line.contains("Compiling entry function") {
            // `ptxas info    : Compiling entry function 'k00_conv' for 'sm_80'`
            let quoted: Vec<&str> = line.split('\'').skip(1).step_by(2).collect();
            if let [name, arch] = quoted[..] {
                let arch = arch.strip_prefix("sm_").and_then(|a| a.parse().ok());
                current = Some(find(&mut functions, name, arch));
            }
        } else if let Some(name) = line.split("Function properties for ").nth(1) {
            let name = name.trim();
            let i = match current {
                Some(i) if functions[i].name == name => i,
                // A device function's properties: not an entry.
                _ => find(&mut functions, name, None),
            };
            let props = lines.next().unwrap_or("");
            let f = &mut functions[i];
            f.stack = number_before(props, "bytes stack frame").unwrap_or(0);
            f.spill_stores = number_before(props, "bytes spill stores").unwrap_or(0);
            f.spill_loads = number_before(props, "bytes spill loads").unwrap_or(0);
        } else if line.contains("Used ") && line.contains(" registers") {
            if let Some(i) = current {
                let f = &mut functions[i];
                f.registers = number_before(line, "registers").map(|r| r as u32);
                f.barriers = number_before(line, "barriers").unwrap_or(0) as u32;
                f.smem = number_before(line, "bytes smem").unwrap_or(0);
            }
        } else if line.contains("Compile time") {
            current = None;
        }
    }
    functions
}

/// The limits of one kind of SM that decide occupancy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sm {
    pub arch: u32,
    pub gpu: &'static str,
    pub sms: u32,
    pub max_warps: u32,
    pub max_blocks: u32,
    pub registers: u32,
    pub sub_partitions: u32,
    /// Registers are allocated per warp in multiples of this.
    pub register_unit: u32,
    /// Shared memory per SM at the largest carve-out, bytes.
    pub smem: u64,
    /// Reserved by the CUDA runtime in every block, bytes.
    pub smem_reserved: u64,
    pub smem_unit: u64,
}

/// A100 (compute capability 8.0): 108 SMs, 164 KiB shared memory per SM.
pub const SM80: Sm = Sm {
    arch: 80,
    gpu: "A100",
    sms: 108,
    max_warps: 64,
    max_blocks: 32,
    registers: 65536,
    sub_partitions: 4,
    register_unit: 256,
    smem: 164 * 1024,
    smem_reserved: 1024,
    smem_unit: 128,
};

/// H100 SXM and H200 (compute capability 9.0): 132 SMs, 228 KiB.
pub const SM90: Sm = Sm {
    arch: 90,
    gpu: "H100 SXM/H200",
    sms: 132,
    max_warps: 64,
    max_blocks: 32,
    registers: 65536,
    sub_partitions: 4,
    register_unit: 256,
    smem: 228 * 1024,
    smem_reserved: 1024,
    smem_unit: 128,
};

/// What stops more blocks from being resident on an SM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Warps,
    Blocks,
    Registers,
    SharedMemory,
}

impl Limit {
    pub fn name(self) -> &'static str {
        match self {
            Limit::Warps => "warps",
            Limit::Blocks => "blocks",
            Limit::Registers => "registers",
            Limit::SharedMemory => "shared memory",
        }
    }
}

/// Resident blocks per SM of a kernel launched with `threads` per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub blocks: u32,
    /// Resident warps per SM (`blocks` × warps per block).
    pub warps: u32,
    pub limit: Limit,
}

impl Occupancy {
    /// Resident warps as a share of the SM's maximum.
    pub fn fraction(&self, sm: &Sm) -> f64 {
        self.warps as f64 / sm.max_warps as f64
    }
}

/// The occupancy calculator's answer for a kernel of `registers` per thread
/// and `smem` bytes of shared memory per block, launched with `threads`.
pub fn occupancy(sm: &Sm, threads: u32, registers: u32, smem: u64) -> Occupancy {
    let warps_per_block = threads.div_ceil(32).max(1);
    let by_warps = sm.max_warps / warps_per_block;
    let by_blocks = sm.max_blocks;
    let per_warp = (registers * 32).div_ceil(sm.register_unit) * sm.register_unit;
    let by_registers = match (sm.registers / sm.sub_partitions).checked_div(per_warp) {
        Some(per_partition) => per_partition * sm.sub_partitions / warps_per_block,
        None => u32::MAX,
    };
    let per_block = (smem + sm.smem_reserved).div_ceil(sm.smem_unit) * sm.smem_unit;
    let by_smem = (sm.smem / per_block).min(u32::MAX as u64) as u32;
    // Ties name the first in this order, as the calculator's flags would.
    let limits = [
        (by_warps, Limit::Warps),
        (by_registers, Limit::Registers),
        (by_smem, Limit::SharedMemory),
        (by_blocks, Limit::Blocks),
    ];
    let (blocks, limit) = limits
        .into_iter()
        .min_by_key(|(n, _)| *n)
        .expect("four limits");
    Occupancy {
        blocks,
        warps: blocks * warps_per_block,
        limit,
    }
}

/// One launched function of a model: a kernel, or a GEMM's variant for
/// larger batches, with the batches it serves.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    /// The plan's name (`k07_conv_layer1_0_conv1`, `…_b64`).
    pub name: String,
    /// Its name in the cubin.
    pub symbol: String,
    pub threads: u32,
    pub grid: Grid,
    /// The smallest batch it serves, and the first it no longer serves.
    pub batches: (u64, Option<u64>),
}

impl Launch {
    fn blocks(&self, batch: u64) -> u64 {
        self.grid.x(batch) * self.grid.y.max(1) * self.grid.z.max(1)
    }

    fn serves(&self, batch: u64) -> bool {
        batch >= self.batches.0 && self.batches.1.is_none_or(|end| batch < end)
    }
}

/// Every function `program` launches, named by `symbols` (the plan's name
/// → its cubin symbol; a name missing there keeps the plan's name).
pub fn launches(program: &KernelProgram, symbols: &BTreeMap<String, String>) -> Vec<Launch> {
    let symbol = |name: &str| {
        symbols
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_string())
    };
    let mut out = Vec::new();
    for k in &program.kernels {
        let first_variant = k.variants.first().map(|v| v.min_batch);
        out.push(Launch {
            name: k.name.clone(),
            symbol: symbol(&k.name),
            threads: k.block,
            grid: k.grid,
            batches: (1, first_variant),
        });
        for (i, v) in k.variants.iter().enumerate() {
            out.push(Launch {
                name: v.name.clone(),
                symbol: symbol(&v.name),
                threads: v.block,
                grid: v.grid,
                batches: (v.min_batch, k.variants.get(i + 1).map(|n| n.min_batch)),
            });
        }
    }
    out
}

/// ptxas's figures for `l` on `sm`, if it reported its registers.
fn figures<'a>(
    l: &Launch,
    functions: &'a [PtxasFunction],
    sm: &Sm,
) -> Option<(&'a PtxasFunction, u32)> {
    let f = functions
        .iter()
        .find(|f| f.name == l.symbol && f.arch == Some(sm.arch))?;
    Some((f, f.registers?))
}

/// The launches whose kernel cannot be resident on an SM of `sm`'s kind
/// (the GPU would refuse them): what the build stops on. A launch ptxas
/// did not report (an nvcc wrapper that hides its output) is no problem;
/// the table says so.
pub fn problems(launches: &[Launch], functions: &[PtxasFunction], sm: &Sm) -> Vec<String> {
    let mut out = Vec::new();
    for l in launches {
        let Some((f, registers)) = figures(l, functions, sm) else {
            continue;
        };
        let o = occupancy(sm, l.threads, registers, f.smem);
        if o.blocks == 0 {
            out.push(format!(
                "{} (`{}`) cannot run on sm_{}: {} threads of {registers} registers and {} B of shared memory per block do not fit one SM (limited by {})",
                l.name,
                l.symbol,
                sm.arch,
                l.threads,
                f.smem,
                o.limit.name()
            ));
        }
    }
    out
}

/// The table `cnnc build` writes to `kernels/resources.txt`: for each SM
/// kind in `sms`, a row per launched function with its figures from
/// `functions` (ptxas's, of every architecture), then each function's static instruction mix where `mixes`
/// (architecture and cubin symbol → [`mix_line`]) has it.
pub fn render(
    model: &str,
    precision: &str,
    launches: &[Launch],
    sms: &[Sm],
    functions: &[PtxasFunction],
    mixes: &BTreeMap<(u32, String), String>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kernel resources of {model} ({precision}), {} launched functions, from ptxas -v",
        launches.len()
    );
    let _ = writeln!(
        out,
        "occupancy: resident warps per SM of 64, as the CUDA occupancy calculator counts them (registers per warp in units of 256 over 4 sub-partitions; shared memory + 1 KiB reserved per block, in units of 128 B, at the largest carve-out; at most 32 blocks)"
    );
    let _ = writeln!(
        out,
        "waves: blocks of the launch / (resident blocks per SM × SMs), at the first batch a function serves and at batch 64; below 1 part of the GPU idles, and a fraction above 1 is a partial last wave"
    );
    for sm in sms {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "sm_{} ({}: {} SMs, {} KiB shared memory, {} registers per SM)",
            sm.arch,
            sm.gpu,
            sm.sms,
            sm.smem / 1024,
            sm.registers
        );
        let _ = writeln!(
            out,
            "{:<44} {:>8} {:>7} {:>5} {:>8} {:>9} {:>8} {:>6} {:>14} {:>9} {:>9}",
            "function",
            "batches",
            "threads",
            "regs",
            "smem B",
            "local B",
            "blocks",
            "occ",
            "limited by",
            "waves",
            "waves 64"
        );
        for l in launches {
            let batches = match l.batches {
                (lo, None) => format!("{lo}+"),
                (lo, Some(end)) if end == lo + 1 => format!("{lo}"),
                (lo, Some(end)) => format!("{lo}-{}", end - 1),
            };
            let Some((f, registers)) = figures(l, functions, sm) else {
                let _ = writeln!(
                    out,
                    "{:<44} {:>8} {:>7}  (not reported by ptxas)",
                    l.name, batches, l.threads
                );
                continue;
            };
            let o = occupancy(sm, l.threads, registers, f.smem);
            let resident = (o.blocks as u64 * sm.sms as u64).max(1);
            let waves = |batch: u64| l.blocks(batch) as f64 / resident as f64;
            let at64 = if l.serves(64) {
                format!("{:.2}", waves(64))
            } else {
                "-".to_string()
            };
            let _ = writeln!(
                out,
                "{:<44} {:>8} {:>7} {:>5} {:>8} {:>9} {:>8} {:>5.0}% {:>14} {:>9.2} {:>9}",
                l.name,
                batches,
                l.threads,
                registers,
                f.smem,
                f.stack + f.spill_stores + f.spill_loads,
                o.blocks,
                100.0 * o.fraction(sm),
                o.limit.name(),
                waves(l.batches.0),
                at64
            );
        }
        let with_mix: Vec<(&Launch, &String)> = launches
            .iter()
            .filter_map(|l| mixes.get(&(sm.arch, l.symbol.clone())).map(|m| (l, m)))
            .collect();
        if !with_mix.is_empty() {
            let _ = writeln!(
                out,
                "\nsm_{} instruction mix (static counts from cuobjdump -sass: the code, its loops unrolled, not what runs)",
                sm.arch
            );
            for (l, mix) in with_mix {
                let _ = writeln!(out, "{:<44} {mix}", l.name);
            }
        }
    }
    out
}

/// One line per SM kind for the build log: the range of registers and
/// occupancy, the lowest occupancy's function, and any local memory.
pub fn summary(launches: &[Launch], sm: &Sm, functions: &[PtxasFunction]) -> String {
    let mut regs = (u32::MAX, 0);
    let mut lowest: Option<(f64, &Launch, Limit)> = None;
    let mut local = 0;
    let mut missing = 0;
    for l in launches {
        let Some((f, r)) = figures(l, functions, sm) else {
            missing += 1;
            continue;
        };
        regs = (regs.0.min(r), regs.1.max(r));
        if f.stack + f.spill_stores + f.spill_loads > 0 {
            local += 1;
        }
        let o = occupancy(sm, l.threads, r, f.smem);
        let frac = o.fraction(sm);
        if lowest.is_none_or(|(x, _, _)| frac < x) {
            lowest = Some((frac, l, o.limit));
        }
    }
    let Some((frac, l, limit)) = lowest else {
        return format!(
            "sm_{}: ptxas reported no figures (is nvcc a wrapper that hides them?)",
            sm.arch
        );
    };
    let missing = match missing {
        0 => String::new(),
        n => format!(
            "; {n} of {} functions not reported by ptxas",
            launches.len()
        ),
    };
    format!(
        "sm_{}: {}–{} registers, {}; lowest occupancy {:.0}% ({}, limited by {}){missing}",
        sm.arch,
        regs.0,
        regs.1,
        match local {
            0 => "no local memory".to_string(),
            n => format!(
                "{n} function{} with local memory",
                if n == 1 { "" } else { "s" }
            ),
        },
        100.0 * frac,
        l.name,
        limit.name()
    )
}

/// SASS instruction counts per function of a cubin, from the text of
/// `cuobjdump -sass`: function name → (mnemonic → count). A predicate
/// (`@P0 BRA`) is not part of the mnemonic.
pub fn sass_mix(sass: &str) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut mix: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in sass.lines() {
        if let Some(name) = line.trim().strip_prefix("Function : ") {
            current = Some(name.trim().to_string());
            continue;
        }
        // `        /*0070*/                   HMMA.1688.F32.TF32 R68, ... ;`
        let Some(f) = &current else { continue };
        let Some(rest) = line.trim().strip_prefix("/*") else {
            continue;
        };
        let Some((_, code)) = rest.split_once("*/") else {
            continue;
        };
        let code = code.trim_start().trim_start_matches(['@', '!']);
        let code = match code.split_once(' ') {
            Some((p, rest)) if p.starts_with('P') || p == "PT" => rest.trim_start(),
            _ => code,
        };
        let Some(mnemonic) = code.split([' ', ';']).next().filter(|m| !m.is_empty()) else {
            continue;
        };
        if mnemonic.starts_with("0x") {
            continue;
        }
        *mix.entry(f.clone())
            .or_default()
            .entry(mnemonic.to_string())
            .or_default() += 1;
    }
    mix
}

/// A function's static instruction mix (its main loop unrolled, not what
/// runs), grouped by what the instructions do: tensor-core MMAs, FP32 FMAs,
/// `ldmatrix`, `cp.async`, shared and global loads and stores, barriers and
/// integer arithmetic (addressing).
pub fn mix_line(counts: &BTreeMap<String, usize>) -> String {
    let count = |prefixes: &[&str]| -> usize {
        counts
            .iter()
            .filter(|(m, _)| prefixes.iter().any(|p| m.starts_with(p)))
            .map(|(_, n)| n)
            .sum()
    };
    let total: usize = counts.values().sum();
    format!(
        "{total} instructions; HMMA {}, FFMA {}, LDSM {}, LDGSTS {}, LDS {}, LDG {}, STS {}, STG {}, BAR {}, integer {}",
        count(&["HMMA"]),
        count(&["FFMA"]),
        count(&["LDSM"]),
        count(&["LDGSTS"]),
        count(&["LDS."]) + counts.get("LDS").copied().unwrap_or(0),
        count(&["LDG.E"]),
        count(&["STS"]),
        count(&["STG"]),
        count(&["BAR"]),
        count(&["IMAD", "IADD", "LOP3", "SHF", "LEA", "VIADD", "ISETP", "SEL"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'conv_1' for 'sm_90'
ptxas info    : Function properties for conv_1
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 6656 bytes smem
ptxas info    : Compile time = 28.215 ms
ptxas info    : Function properties for helper
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Compiling entry function 'pool_2' for 'sm_90'
ptxas info    : Function properties for pool_2
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, 384 bytes cmem[0]
ptxas info    : Compile time = 1.2 ms
";

    #[test]
    fn the_ptxas_reader_takes_each_functions_figures() {
        let f = parse_ptxas(LOG);
        assert_eq!(f.len(), 3, "{f:?}");
        assert_eq!(
            f[0],
            PtxasFunction {
                name: "conv_1".into(),
                arch: Some(90),
                registers: Some(64),
                barriers: 1,
                smem: 6656,
                ..PtxasFunction::default()
            }
        );
        // A device function: figures, but no architecture and no registers.
        assert_eq!(
            (f[1].name.as_str(), f[1].arch, f[1].registers),
            ("helper", None, None)
        );
        assert_eq!(
            (f[1].stack, f[1].spill_stores, f[1].spill_loads),
            (16, 8, 12)
        );
        // No barriers and no shared memory: zero, not missing.
        assert_eq!((f[2].registers, f[2].barriers, f[2].smem), (Some(12), 0, 0));
    }

    #[test]
    fn occupancy_follows_the_calculator() {
        // Worked by hand from cuda_occupancy.h's rules.
        // 256 threads, 32 registers, no shared memory: 8 warps a block, so
        // 64/8 = 8 blocks by warps; registers 1024 a warp, 16 warps per
        // sub-partition, 64 per SM, 8 blocks; shared memory 1 KiB each,
        // 228; the warps limit comes first.
        let o = occupancy(&SM90, 256, 32, 0);
        assert_eq!((o.blocks, o.warps, o.limit), (8, 64, Limit::Warps));
        // 128 registers: 4096 a warp, 4 warps per sub-partition, 16 per SM,
        // 2 blocks of 8 warps = 25 %.
        let o = occupancy(&SM90, 256, 128, 0);
        assert_eq!((o.blocks, o.warps, o.limit), (2, 16, Limit::Registers));
        assert_eq!(o.fraction(&SM90), 0.25);
        // 255 registers round to 256 a thread (8160 → 8192 a warp): 2 warps
        // per sub-partition, 8 per SM, one block of 256 threads.
        assert_eq!(occupancy(&SM90, 256, 255, 0).blocks, 1);
        // 72 registers: 2304 a warp, 7 per sub-partition (16384/2304), 28
        // per SM: three blocks of 8 warps, not 28/8 rounded up.
        let o = occupancy(&SM80, 256, 72, 0);
        assert_eq!((o.blocks, o.limit), (3, Limit::Registers));
        // Shared memory: 40 KiB + 1 KiB reserved = 41 KiB a block; 164/41 =
        // 4 on the A100, 228/41 = 5 on the H100.
        let o = occupancy(&SM80, 128, 32, 40 * 1024);
        assert_eq!((o.blocks, o.limit), (4, Limit::SharedMemory));
        assert_eq!(occupancy(&SM90, 128, 32, 40 * 1024).blocks, 5);
        // 33 bytes round up to 128 with the reserve: 1152 B a block.
        assert_eq!(occupancy(&SM90, 32, 16, 33).limit, Limit::Blocks);
        // Tiny blocks: 32 blocks of one warp is the cap.
        let o = occupancy(&SM90, 32, 16, 0);
        assert_eq!((o.blocks, o.warps, o.limit), (32, 32, Limit::Blocks));
        // Blocks that cannot be resident at all.
        let o = occupancy(&SM90, 1024, 255, 0);
        assert_eq!((o.blocks, o.limit), (0, Limit::Registers));
        assert_eq!(occupancy(&SM80, 64, 32, 200 * 1024).blocks, 0);
    }

    fn launch(name: &str, threads: u32, per_image: u64) -> Launch {
        Launch {
            name: name.into(),
            symbol: format!("sym_{name}"),
            threads,
            grid: Grid {
                per_image,
                per_block: 1,
                y: 2,
                z: 1,
            },
            batches: (1, None),
        }
    }

    #[test]
    fn the_table_gives_occupancy_and_waves_and_the_check_finds_what_cannot_launch() {
        let ok = launch("k0_conv", 256, 66);
        let heavy = launch("k1_conv", 1024, 1);
        let missing = launch("k2_pool", 64, 1);
        let fns = vec![
            PtxasFunction {
                name: "sym_k0_conv".into(),
                arch: Some(90),
                registers: Some(128),
                ..PtxasFunction::default()
            },
            PtxasFunction {
                name: "sym_k1_conv".into(),
                arch: Some(90),
                registers: Some(255),
                ..PtxasFunction::default()
            },
        ];
        let launches = [ok.clone(), heavy, missing];
        let mut mixes = BTreeMap::new();
        mixes.insert(
            (90, "sym_k0_conv".to_string()),
            "12 instructions".to_string(),
        );
        mixes.insert((80, "sym_k1_conv".to_string()), "not this arch".to_string());
        let text = render("m", "fp32", &launches, &[SM90], &fns, &mixes);
        assert!(text.contains("\nk0_conv                                      12 instructions\n"));
        assert!(!text.contains("not this arch"));
        // k0: 2 blocks per SM, 25 %; 66·2 = 132 blocks at batch 1 over
        // 2·132 resident: 0.5 waves; 64·132 blocks at batch 64: 32 waves.
        let row = text.lines().find(|l| l.starts_with("k0_conv")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "k0_conv",
                "1+",
                "256",
                "128",
                "0",
                "0",
                "2",
                "25%",
                "registers",
                "0.50",
                "32.00"
            ]
        );
        assert!(text.contains("k2_pool") && text.contains("not reported by ptxas"));
        let found = problems(&launches, &fns, &SM90);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("k1_conv (`sym_k1_conv`) cannot run on sm_90"));
        let line = summary(&launches, &SM90, &fns);
        assert_eq!(
            line,
            "sm_90: 128–255 registers, no local memory; lowest occupancy 0% (k1_conv, limited by registers); 1 of 3 functions not reported by ptxas"
        );
        // Only ptxas figures of the table's architecture count.
        assert!(problems(&launches, &fns, &SM80).is_empty());
        assert!(summary(&[ok], &SM80, &fns).contains("reported no figures"));
    }

    #[test]
    fn the_sass_reader_counts_mnemonics_per_function() {
        let sass = "
\tcode for sm_90
\t\tFunction : k00_conv
\t.headerflags\t@\"EF_CUDA_SM90\"
        /*0000*/                   LDC R1, c[0x0][0x28] ;            /* 0x00000a00ff017b82 */
                                                                     /* 0x000fe20000000800 */
        /*0010*/                   HMMA.1688.F32.TF32 R68, R8.reuse, R94, R68 ;
        /*0020*/              @!P0 BRA 0x70 ;
        /*0030*/                   HMMA.1688.F32.TF32 R64, R8, R92, R64 ;
\t\tFunction : k01_pool
        /*0000*/                   FMNMX R0, R1, R2, !PT ;
";
        let mix = sass_mix(sass);
        assert_eq!(mix["k00_conv"]["HMMA.1688.F32.TF32"], 2);
        assert_eq!(mix["k00_conv"]["LDC"], 1);
        assert_eq!(mix["k00_conv"]["BRA"], 1);
        assert_eq!(mix["k01_pool"]["FMNMX"], 1);
        assert_eq!(mix.len(), 2);
        assert_eq!(
            mix_line(&mix["k00_conv"]),
            "4 instructions; HMMA 2, FFMA 0, LDSM 0, LDGSTS 0, LDS 0, LDG 0, STS 0, STG 0, BAR 0, integer 0"
        );
    }
}
