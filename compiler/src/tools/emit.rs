//! `cnnc emit`: each stage of the pipeline as text (AST, IR, fusion report,
//! kernel IR, CUDA, driver, plan, and the kernels' roofline bounds). Every
//! stage is deterministic.

use crate::front::source::SourceMap;
use crate::front::syntax::SourceFile;
use crate::ir::passes::PassLog;
use crate::ir::{Epilogue, Graph, Op, Prologue};
use std::fmt::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// The parsed syntax tree.
    Ast,
    /// The checked graph IR, one node per line.
    Ir,
    /// The fusion report: what each pass fused, and why the rest was not.
    Fused,
    /// The kernel IR: launch configuration, tiles and loop nest per kernel.
    Kernels,
    /// One self-contained CUDA C file.
    Cuda,
    /// The Rust driver `cnnc build` writes (src/main.rs of the generated crate).
    Driver,
    /// The execution plan the driver embeds (plan.json of the generated crate).
    Plan,
    /// Per kernel: FLOPs, compulsory bytes and the H100/H200 roofline bound
    /// at batch 1 and 64, then the totals (no GPU needed).
    Roofline,
}

/// A stage other than [`Stage::Ast`] of a checked model, as `cnnc emit`
/// prints it, with the GEMMs in `precision` (the kernels, CUDA, driver and
/// plan stages). Errors are internal ones (a pass or the lowering failed).
pub fn stage_text(
    graph: &Graph,
    sources: &SourceMap,
    stage: Stage,
    precision: crate::back::kernel_ir::Precision,
) -> Result<String, String> {
    let internal = |e: String| format!("internal error: {e}");
    if stage == Stage::Ir {
        return Ok(ir(graph, sources));
    }
    if stage == Stage::Ast {
        return Err(internal(
            "the syntax tree is printed from the file, not the graph".to_string(),
        ));
    }
    let (optimized, logs) = crate::ir::passes::optimize(graph).map_err(internal)?;
    match stage {
        Stage::Fused => Ok(fused(graph, &optimized, &logs, sources)),
        Stage::Kernels | Stage::Cuda | Stage::Roofline => {
            let program = crate::back::kernel_ir::lower_with(&optimized, sources, precision)
                .map_err(internal)?;
            match stage {
                Stage::Kernels => Ok(crate::back::kernel_ir::render(&program)),
                Stage::Roofline => Ok(crate::back::roofline::render(&program)),
                _ => crate::back::cuda::print(&program).map_err(internal),
            }
        }
        Stage::Driver | Stage::Plan => {
            let (_, program, plan) =
                crate::back::plan::compile_with(graph, sources, precision).map_err(internal)?;
            if stage == Stage::Plan {
                crate::back::build::plan_json(&plan).map_err(internal)
            } else {
                // The driver as `cnnc build` writes it when nvcc is found.
                let kernels = crate::back::build::KernelSources::new(&program).map_err(internal)?;
                let cubins = crate::back::build::cubin_files(&kernels.units);
                crate::back::build::driver_source(&plan, "model.cu", &cubins, &kernels.symbols)
                    .map_err(internal)
            }
        }
        Stage::Ast | Stage::Ir => unreachable!("handled above"),
    }
}

pub fn ast(file: &SourceFile) -> String {
    format!("{:#?}\n", file.decls)
}

fn location(sources: &SourceMap, span: crate::front::source::Span) -> String {
    let (line, col) = sources.line_col(span.file, span.start);
    format!("{}:{line}:{col}", sources.name(span.file))
}

/// The graph, one node per line: `%5 = conv 64→64 k=3 p=1 (%4) [64, 56, 56]  layer1.0.conv1  file:line:col`.
pub fn ir(graph: &Graph, sources: &SourceMap) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "model {} ({} nodes, {} state_dict entries)",
        graph.name,
        graph.nodes.len(),
        graph.params.len()
    );
    for (id, n) in graph.nodes.iter().enumerate() {
        let inputs: Vec<String> = n.inputs.iter().map(|i| format!("%{i}")).collect();
        let mut extra = String::new();
        if let Some(bn) = &n.fusion.folded_batchnorm {
            let _ = write!(extra, " +bn({})", bn.name);
        }
        if let Some(scale) = &n.fusion.folded_scale {
            let _ = write!(extra, " +scale({scale})");
        }
        match n.fusion.prologue {
            Some(Prologue::GlobalAvgPool) => extra.push_str(" <global_avgpool"),
            Some(Prologue::ChannelScale { factor }) => {
                let _ = write!(extra, " <scale(%{})", n.inputs[factor]);
            }
            Some(Prologue::Normalize { stats }) => {
                let _ = write!(
                    extra,
                    " <layer_norm(%{}, {})",
                    n.inputs[stats],
                    n.fusion.folded_layernorm.as_deref().unwrap_or("?")
                );
            }
            None => {}
        }
        for e in &n.fusion.epilogue {
            let _ = match e {
                // With its argument, if any: `+leaky_relu(0.2)`, `+gelu(tanh)`.
                Epilogue::Activation(a) => match Op::Activation(*a).describe().split_once(' ') {
                    Some((name, arg)) => write!(extra, " +{name}({arg})"),
                    None => write!(extra, " +{}", a.name()),
                },
                Epilogue::AddInput(k) => write!(extra, " +add(%{})", n.inputs[*k]),
            };
        }
        if n.fusion.view {
            extra.push_str(" (view)");
        }
        let _ = writeln!(
            out,
            "%{id} = {}{extra} ({}) {}  {}  {}",
            n.op.describe(),
            inputs.join(", "),
            n.shape,
            if n.name.is_empty() { "·" } else { &n.name },
            location(sources, n.span)
        );
    }
    let _ = writeln!(out, "output %{}", graph.output);
    out
}

/// The fusion report: the passes in order, what each did and what it left.
pub fn fused(original: &Graph, fused: &Graph, logs: &[PassLog], sources: &SourceMap) -> String {
    let mut out = String::new();
    // As `kernels::lower` makes them: a concat that is not in place copies
    // each input with a kernel of its own.
    let kernels: usize = fused
        .nodes
        .iter()
        .skip(1)
        .filter(|n| !n.fusion.view)
        .map(|n| {
            if n.op == Op::Concat {
                n.inputs.len()
            } else {
                1
            }
        })
        .sum();
    let _ = writeln!(
        out,
        "model {}: {} layers → {} nodes, {} kernels",
        fused.name,
        original.nodes.len() - 1,
        fused.nodes.len() - 1,
        kernels
    );
    for log in logs {
        let _ = writeln!(
            out,
            "\npass: {}{}",
            log.pass,
            if log.changed { "" } else { " (no change)" }
        );
        for f in &log.fused {
            let _ = writeln!(out, "  fused: {f}");
        }
        for n in &log.not_fused {
            let _ = writeln!(out, "  not fused: {n}");
        }
    }
    let _ = writeln!(out, "\nresult:");
    out.push_str(&ir(fused, sources));
    out
}
