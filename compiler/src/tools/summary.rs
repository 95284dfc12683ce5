//! Per-layer summaries of a checked graph: a table like torchinfo's, and JSON.

use crate::ir::{Graph, Shape};
use serde::Serialize;
use std::fmt::Write;

/// One row of a summary.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub op: String,
    pub output: Vec<i64>,
    pub params: i64,
    pub macs: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub model: String,
    pub input: Vec<i64>,
    pub output: Vec<i64>,
    pub total_params: i64,
    pub total_macs: i64,
    pub layers: Vec<Row>,
}

pub fn rows(graph: &Graph) -> Vec<Row> {
    graph
        .nodes
        .iter()
        .enumerate()
        .skip(1)
        .map(|(id, node)| Row {
            name: node.name.clone(),
            op: graph.describe_node(id),
            output: node.shape.dims(),
            params: graph.node_params(id),
            macs: node.op.macs(&node.shape),
        })
        .collect()
}

pub fn summary(graph: &Graph) -> Summary {
    Summary {
        model: graph.name.clone(),
        input: graph.input_shape().dims(),
        output: graph.output_shape().dims(),
        total_params: graph.total_params(),
        total_macs: graph.total_macs(),
        layers: rows(graph),
    }
}

/// Thousands separators: 25557032 → "25,557,032".
pub fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Bytes in binary units with one decimal: "3.1 MiB".
pub fn bytes(n: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

/// `bytes(n * batch)`, also where the product does not fit in an `i64`.
fn scaled_bytes(n: i64, batch: i64) -> String {
    match n.checked_mul(batch) {
        Some(total) => bytes(total),
        None => format!("{:.1} TiB", n as f64 * batch as f64 / 1024f64.powi(4)),
    }
}

/// A size for `--memory-budget`: a byte count, optionally with a unit
/// (`KB`/`MB`/`GB` decimal, `KiB`/`MiB`/`GiB` binary; case-insensitive).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use B, KB, MB, GB, KiB, MiB or GiB"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("`{text}` is not a size (e.g. 512MiB, 2GB, 1000000)"))
}

/// The activation memory a built binary allocates for `graph` at `batch` (its
/// planned arena; the unfused peak when the passes do not apply), checked
/// against `limit` bytes with overflow-checked arithmetic.
pub fn check_memory_budget(graph: &Graph, limit: u64, batch: i64) -> Result<(), String> {
    const F32: i64 = 4;
    let (elements, what) = match crate::ir::passes::optimize(graph) {
        Ok((fused, _)) => {
            let refs = crate::back::kernel_ir::placements(&fused);
            (
                crate::back::memory::plan(&fused, &refs).arena as i64,
                "planned arena",
            )
        }
        Err(_) => (graph.peak_live_elements(), "peak of live outputs"),
    };
    let need = elements
        .checked_mul(F32)
        .and_then(|b| b.checked_mul(batch))
        .and_then(|b| u64::try_from(b).ok());
    match need {
        Some(need) if need <= limit => Ok(()),
        _ => Err(format!(
            "model `{}` needs {} of activations at batch {batch} ({what}), over the --memory-budget of {}",
            graph.name,
            scaled_bytes(elements.saturating_mul(F32), batch),
            bytes(i64::try_from(limit).unwrap_or(i64::MAX))
        )),
    }
}

/// MACs as "4.09 GMACs" (decimal units, as papers quote them).
pub fn macs(n: i64) -> String {
    let v = n as f64;
    if v >= 1e9 {
        format!("{:.2} GMACs", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} MMACs", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2} KMACs", v / 1e3)
    } else {
        format!("{n} MACs")
    }
}

fn shape_text(dims: &[i64]) -> String {
    format!(
        "[{}]",
        dims.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The one-line verdict of `cnnc check`.
pub fn check_line(graph: &Graph) -> String {
    format!(
        "ok: {} {} -> {}, {} params, {}",
        graph.name,
        compact(&graph.input_shape()),
        compact(&graph.output_shape()),
        grouped(graph.total_params()),
        macs(graph.total_macs())
    )
}

fn compact(shape: &Shape) -> String {
    format!(
        "[{}]",
        shape
            .dims()
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// The table printed by `cnnc summary`. Activation memory is for `batch` images in f32.
pub fn table(graph: &Graph, sources: &crate::front::source::SourceMap, batch: i64) -> String {
    table_for(
        graph,
        sources,
        batch,
        crate::back::kernel_ir::Precision::default(),
    )
}

/// [`table`] for a GPU build in `precision` (`cnnc summary --precision`):
/// its arithmetic, and in a bf16 or fp16 build the GPU's arena of 16-bit
/// activations beside the CPU's f32 one.
pub fn table_for(
    graph: &Graph,
    sources: &crate::front::source::SourceMap,
    batch: i64,
    precision: crate::back::kernel_ir::Precision,
) -> String {
    const F32: i64 = 4;
    let rows = rows(graph);
    let mut name_w = "layer".len();
    let mut op_w = "op".len();
    let mut shape_w = "output".len();
    let shapes: Vec<String> = rows.iter().map(|r| shape_text(&r.output)).collect();
    for (r, s) in rows.iter().zip(&shapes) {
        name_w = name_w.max(display_name(r).chars().count());
        op_w = op_w.max(r.op.chars().count());
        shape_w = shape_w.max(s.chars().count());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "model {}: input {} (batch {batch})",
        graph.name,
        graph.input_shape()
    );
    let header = format!(
        "{:<name_w$}  {:<op_w$}  {:<shape_w$}  {:>12}  {:>15}  {:>10}",
        "layer", "op", "output", "params", "MACs", "activation"
    );
    let rule = "─".repeat(header.chars().count());
    let _ = writeln!(out, "{header}\n{rule}");
    for (r, s) in rows.iter().zip(&shapes) {
        let elements: i64 = r.output.iter().product();
        let _ = writeln!(
            out,
            "{:<name_w$}  {:<op_w$}  {:<shape_w$}  {:>12}  {:>15}  {:>10}",
            display_name(r),
            r.op,
            s,
            if r.params == 0 {
                "-".to_string()
            } else {
                grouped(r.params)
            },
            if r.macs == 0 {
                "-".to_string()
            } else {
                grouped(r.macs)
            },
            scaled_bytes(elements * F32, batch),
        );
    }
    let unused: Vec<_> = graph.params.iter().filter(|p| p.node.is_none()).collect();
    if !unused.is_empty() {
        let count: i64 = unused
            .iter()
            .filter(|p| p.kind.is_parameter())
            .map(|p| p.numel())
            .sum();
        let _ = writeln!(out, "{rule}");
        let _ = writeln!(
            out,
            "unused layers (in the state_dict, not in forward): {} params",
            grouped(count)
        );
        for p in unused {
            let _ = writeln!(out, "  {} {}", p.key, shape_text(&p.shape));
        }
    }
    let naive: i64 = graph.nodes.iter().map(|n| n.shape.numel()).sum();
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(out, "total params:       {}", grouped(graph.total_params()));
    let _ = writeln!(
        out,
        "total MACs:         {} ({})",
        grouped(graph.total_macs()),
        macs(graph.total_macs())
    );
    let _ = writeln!(out, "output:             {}", graph.output_shape());
    let _ = writeln!(
        out,
        "parameter memory:   {}",
        bytes(graph.total_params() * F32)
    );
    let _ = writeln!(
        out,
        "activations, sum:   {}",
        scaled_bytes(naive * F32, batch)
    );
    let _ = writeln!(
        out,
        "activations, peak:  {} (outputs freed after their last use)",
        scaled_bytes(graph.peak_live_elements() * F32, batch)
    );
    // What a built binary allocates: one arena for the fused graph, buffers
    // reused by liveness (see memory.rs).
    if let Ok((fused, _)) = crate::ir::passes::optimize(graph) {
        let refs = crate::back::kernel_ir::placements(&fused);
        let plan = crate::back::memory::plan(&fused, &refs);
        let _ = writeln!(
            out,
            "activations, planned arena: {} (fused graph, buffers reused; {} without reuse)",
            scaled_bytes(plan.arena as i64 * F32, batch),
            scaled_bytes(plan.naive as i64 * F32, batch)
        );
        if let Some(h) = precision.half_format() {
            let _ = writeln!(
                out,
                "  on the GPU in {}: {} (16-bit activations; the CPU path keeps f32)",
                h.name(),
                scaled_bytes(
                    plan.arena as i64 * precision.activation_bytes() as i64,
                    batch
                )
            );
        }
        // What `cnnc build --precision` compiles (tf32 by default).
        if let Ok(program) = crate::back::kernel_ir::lower_with(&fused, sources, precision) {
            let _ = writeln!(out, "GPU arithmetic:     {}", program.precision_line());
        }
        let peak = graph.peak_live_elements();
        let arena = plan.arena as i64;
        if arena > peak {
            let live = crate::back::memory::live_peak(&plan) as i64;
            let mut why = Vec::new();
            if live > peak {
                why.push(format!(
                    "{} because buffers live longer in the fused graph (a buffer that a concat or view shares is live from its first writer to its last reader)",
                    scaled_bytes((live - peak) * F32, batch)
                ));
            }
            if arena > live.max(peak) {
                why.push(format!(
                    "{} because each buffer keeps one offset for its whole life and a freed gap is not always large enough for the next buffer",
                    scaled_bytes((arena - live.max(peak)) * F32, batch)
                ));
            }
            let _ = writeln!(
                out,
                "note: the planned arena is {} above the peak: {}",
                scaled_bytes((arena - peak) * F32, batch),
                why.join("; ")
            );
        }
    }
    out
}

fn display_name(r: &Row) -> String {
    if r.name.is_empty() {
        "·".to_string()
    } else {
        r.name.clone()
    }
}
