//! `cnnc graph`: a picture of the model, top to bottom, as SVG or DOT.
//!
//! ```text
//!  checked graph ──view──▶ boxes + edges ──layout (layout-rs)──▶ positions ──▶ SVG
//!  (fused graph, for --fused)            └────────────────────────────────────▶ DOT
//! ```
//!
//! [`view`] turns the checked graph into what is drawn: one box per layer
//! (IR node), except that a run of two or more consecutive, identical
//! instances of one block (`bottleneck(256) * 35`) becomes one box labelled
//! `× N` unless `expand` is set. With `fused`, the passes of `passes.rs` run
//! and each box knows the kernel it belongs to. [`svg`] lays the boxes out
//! with the Sugiyama layout of the `layout-rs` crate (ranks, crossing
//! reduction, Brandes–Köpf placement, long edges routed through dummy
//! nodes) and writes the SVG itself; [`dot`] writes Graphviz input. Both are
//! deterministic: the same model gives the same bytes.

use crate::ir::{Activation, Graph, NodeId, Op, Shape};
use crate::tools::summary::grouped;
use layout::core::base::Orientation;
use layout::core::format::{ClipHandle, RenderBackend};
use layout::core::geometry::Point;
use layout::core::style::StyleAttr;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;
use std::collections::BTreeMap;
use std::fmt::Write;

/// What to draw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Shade the layers that the fusion passes merge into one kernel.
    pub fused: bool,
    /// Draw every instance of a repeated block instead of one `× N` box.
    pub expand: bool,
}

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Svg,
    Dot,
}

/// What kind of layer a box is; picks its colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Input,
    Conv,
    Linear,
    Pool,
    Norm,
    Activation,
    Merge,
    Reshape,
    Dropout,
    Repeated,
}

impl Kind {
    fn of(op: &Op) -> Kind {
        match op {
            Op::Input => Kind::Input,
            Op::Conv2d { .. } => Kind::Conv,
            Op::Linear { .. } => Kind::Linear,
            Op::MaxPool2d { .. }
            | Op::AvgPool2d { .. }
            | Op::AdaptiveAvgPool2d { .. }
            | Op::AdaptiveMaxPool2d { .. } => Kind::Pool,
            Op::BatchNorm { .. }
            | Op::LocalResponseNorm { .. }
            | Op::LayerNorm { .. }
            | Op::LayerNormStats { .. }
            | Op::Scale { .. } => Kind::Norm,
            Op::Activation(_) | Op::Softmax | Op::LogSoftmax => Kind::Activation,
            Op::Add | Op::Concat | Op::Mul => Kind::Merge,
            Op::Flatten | Op::Identity | Op::ChannelShuffle { .. } | Op::ChannelSlice { .. } => {
                Kind::Reshape
            }
            Op::Dropout { .. } | Op::Dropout2d { .. } | Op::StochasticDepth { .. } => Kind::Dropout,
        }
    }

    /// Fill and border colours.
    pub fn colours(self) -> (&'static str, &'static str) {
        match self {
            Kind::Input => ("#eeeeee", "#333333"),
            Kind::Conv => ("#dceaf7", "#4a7fb5"),
            Kind::Linear => ("#d9ecec", "#3f8f8f"),
            Kind::Pool => ("#dff0d8", "#5c9a4c"),
            Kind::Norm => ("#ece4f5", "#8068a8"),
            Kind::Activation => ("#fde8d4", "#c9823f"),
            Kind::Merge => ("#f2f2f2", "#777777"),
            Kind::Reshape => ("#f7f7f7", "#999999"),
            Kind::Dropout => ("#f7f7f7", "#aaaaaa"),
            Kind::Repeated => ("#fff3c4", "#b8952b"),
        }
    }
}

/// How the fused graph treats a layer (only with `--fused`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Computed by kernel `k` (numbered in execution order).
    Kernel(usize),
    /// A view of memory other layers write (flatten, concat in place): no kernel.
    View,
    /// Removed for inference (dropout, identity).
    Dropped,
}

/// One box of the picture.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewBox {
    /// The IR nodes it stands for, in order.
    pub nodes: Vec<NodeId>,
    /// The module path (`layer1.0.conv1`), or the range of a repeated block; may be empty.
    pub title: String,
    /// The op with its key arguments (`conv 3×3 /2, 64`), or `bottleneck × 35`.
    pub op: String,
    /// For a repeated block: its layers, in short.
    pub inner: Option<String>,
    /// The output shape and parameter count.
    pub detail: String,
    pub kind: Kind,
    /// How many block instances a repeated box stands for.
    pub repeat: Option<usize>,
    /// With `--fused`: what becomes of the layer (`None` for a repeated box).
    pub fate: Option<Fate>,
}

impl ViewBox {
    fn lines(&self) -> Vec<(&str, Font)> {
        let mut out = Vec::new();
        if !self.title.is_empty() {
            out.push((self.title.as_str(), Font::Title));
        }
        out.push((self.op.as_str(), Font::Op));
        if let Some(inner) = &self.inner {
            out.push((inner.as_str(), Font::Detail));
        }
        out.push((self.detail.as_str(), Font::Detail));
        out
    }
}

/// An arrow between two boxes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewEdge {
    pub from: usize,
    pub to: usize,
    /// The shortcut input of a residual add (drawn dashed, in another colour).
    pub skip: bool,
}

/// The model as drawn: boxes in execution order, and arrows.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub model: String,
    /// `input [3, 224, 224] → [1000], 11,689,512 params`, and the kernel count when fused.
    pub header: String,
    pub boxes: Vec<ViewBox>,
    pub edges: Vec<ViewEdge>,
    /// With `--fused`: kernels of two or more boxes, as box indices (what is shaded).
    pub groups: Vec<Vec<usize>>,
    pub fused: bool,
}

/// Builds the view of a checked graph.
pub fn view(graph: &Graph, options: Options) -> Result<View, String> {
    let (fates, kernels) = if options.fused {
        let (f, k) = fates(graph)?;
        (Some(f), k)
    } else {
        (None, 0)
    };
    let runs = if options.expand {
        Vec::new()
    } else {
        repeated_runs(graph)
    };
    // Which box each node is drawn in.
    let mut box_of: Vec<usize> = vec![usize::MAX; graph.nodes.len()];
    let mut boxes: Vec<ViewBox> = Vec::new();
    let mut run_at: BTreeMap<NodeId, &Run> = BTreeMap::new();
    for run in &runs {
        run_at.insert(run.first, run);
    }
    let mut id = 0;
    while id < graph.nodes.len() {
        if let Some(run) = run_at.get(&id) {
            let b = boxes.len();
            box_of[run.first..=run.last].fill(b);
            boxes.push(repeated_box(graph, run));
            id = run.last + 1;
            continue;
        }
        let node = &graph.nodes[id];
        box_of[id] = boxes.len();
        let params = graph.node_params(id);
        let mut detail = node.shape.to_string();
        if params > 0 {
            detail += &format!(" · {} params", grouped(params));
        }
        boxes.push(ViewBox {
            nodes: vec![id],
            title: node.name.clone(),
            op: match node.op {
                Op::Conv2d { out_channels, .. } if graph.is_pixel_linear(id) => {
                    format!("linear per pixel, {out_channels}")
                }
                _ => label(&node.op),
            },
            inner: None,
            detail,
            kind: Kind::of(&node.op),
            repeat: None,
            fate: fates.as_ref().map(|f| f[id]),
        });
        id += 1;
    }
    // Arrows between boxes, once each, in order; a residual add's second input is the skip.
    let mut edges: Vec<ViewEdge> = Vec::new();
    for (id, node) in graph.nodes.iter().enumerate() {
        for (k, &input) in node.inputs.iter().enumerate() {
            let (from, to) = (box_of[input], box_of[id]);
            if from == to {
                continue;
            }
            // A gate's factor is drawn as a plain branch into its `gate ⊗` box.
            let skip = node.op == Op::Add && k > 0;
            match edges.iter_mut().find(|e| e.from == from && e.to == to) {
                Some(e) => e.skip &= skip,
                None => edges.push(ViewEdge { from, to, skip }),
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (b, bx) in boxes.iter().enumerate() {
        if let Some(Fate::Kernel(k)) = bx.fate {
            groups.entry(k).or_default().push(b);
        }
    }
    let groups: Vec<Vec<usize>> = groups.into_values().filter(|g| g.len() > 1).collect();
    let mut header = format!(
        "input {} → {} · {} params",
        graph.input_shape(),
        graph.output_shape(),
        grouped(graph.total_params())
    );
    if fates.is_some() {
        header += &format!(
            " · fused: {} layers → {} kernels",
            graph.nodes.len() - 1,
            kernels
        );
    }
    Ok(View {
        model: graph.name.clone(),
        header,
        boxes,
        edges,
        groups,
        fused: options.fused,
    })
}

/// The picture of a model in the given format.
pub fn render(graph: &Graph, options: Options, format: Format) -> Result<String, String> {
    let v = view(graph, options)?;
    Ok(match format {
        Format::Svg => svg(&v),
        Format::Dot => dot(&v),
    })
}

// ---------------------------------------------------------------------------
// Labels
// ---------------------------------------------------------------------------

fn window(k: (i64, i64)) -> String {
    format!("{}×{}", k.0, k.1)
}

fn stride(s: (i64, i64)) -> String {
    match s {
        (1, 1) => String::new(),
        (a, b) if a == b => format!(" /{a}"),
        (a, b) => format!(" /({a}, {b})"),
    }
}

/// The op as papers write it: `conv 3×3 /2, 64`, `maxpool 3×3 /2`, `linear 512→1000`.
pub fn label(op: &Op) -> String {
    match op {
        Op::Input => "input".to_string(),
        Op::Conv2d {
            out_channels,
            kernel,
            stride: s,
            dilation,
            groups,
            ..
        } => {
            let mut t = format!("conv {}{}, {out_channels}", window(*kernel), stride(*s));
            if *dilation != (1, 1) {
                t += &format!(" dil {}", window(*dilation));
            }
            if *groups != 1 {
                t += &format!(" groups {groups}");
            }
            t
        }
        Op::MaxPool2d {
            kernel, stride: s, ..
        } => format!("maxpool {}{}", window(*kernel), stride(*s)),
        Op::AvgPool2d {
            kernel, stride: s, ..
        } => format!("avgpool {}{}", window(*kernel), stride(*s)),
        Op::AdaptiveAvgPool2d { output } => format!("adaptive avgpool → {}", window(*output)),
        Op::AdaptiveMaxPool2d { output } => format!("adaptive maxpool → {}", window(*output)),
        Op::BatchNorm { .. } => "batchnorm".to_string(),
        Op::LocalResponseNorm { size, .. } => format!("lrn {size}"),
        Op::Dropout { p } => format!("dropout {p}"),
        Op::Dropout2d { p } => format!("dropout2d {p}"),
        Op::StochasticDepth { p, .. } => format!("stochastic_depth {p}"),
        Op::Linear {
            in_features,
            out_features,
            ..
        } => format!("linear {in_features}→{out_features}"),
        Op::Activation(Activation::LeakyRelu(s)) => format!("leaky_relu {s}"),
        Op::Add => "add ⊕".to_string(),
        Op::Mul => "gate ⊗".to_string(),
        Op::Concat => "concat".to_string(),
        other => other.name().to_string(),
    }
}

/// A conv or linear layer in a repeated block's one-line summary.
fn short(op: &Op) -> Option<String> {
    match op {
        Op::Conv2d {
            out_channels,
            kernel,
            stride: s,
            ..
        } => Some(format!("{}{}, {out_channels}", window(*kernel), stride(*s))),
        Op::Linear { out_features, .. } => Some(format!("fc {out_features}")),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Repeated blocks
// ---------------------------------------------------------------------------

/// Consecutive identical instances of one block: nodes `first..=last`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub block: String,
    /// Module paths of the first and the last instance.
    pub paths: (String, String),
    pub count: usize,
    pub first: NodeId,
    pub last: NodeId,
}

#[derive(Clone, Debug)]
struct Instance {
    block: String,
    path: String,
    depth: usize,
    /// The enclosing instance's id.
    parent: Option<usize>,
    first: NodeId,
    last: NodeId,
}

/// What an instance computes: each node's op, shape and inputs.
type Signature = Vec<(Op, Shape, Vec<Ref>)>;

/// A node's input, seen from inside an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ref {
    Inside(usize),
    Outside(usize),
}

/// The runs of two or more consecutive instances of one block that compute
/// the same ops on the same shapes, each fed only by the one before it;
/// outer blocks before inner ones, never overlapping.
pub fn repeated_runs(graph: &Graph) -> Vec<Run> {
    let mut instances: BTreeMap<usize, Instance> = BTreeMap::new();
    for (id, node) in graph.nodes.iter().enumerate() {
        for (depth, b) in node.blocks.iter().enumerate() {
            let entry = instances.entry(b.id).or_insert_with(|| Instance {
                block: b.block.clone(),
                path: b.path.clone(),
                depth,
                parent: depth.checked_sub(1).map(|d| node.blocks[d].id),
                first: id,
                last: id,
            });
            entry.last = id;
        }
    }
    // Nodes of an instance must be contiguous, read from outside only at its last node.
    let mut readers: Vec<Vec<NodeId>> = vec![Vec::new(); graph.nodes.len()];
    for (id, node) in graph.nodes.iter().enumerate() {
        for &i in &node.inputs {
            readers[i].push(id);
        }
    }
    let mut list: Vec<Instance> = instances.into_values().collect();
    list.sort_by_key(|i| (i.first, i.depth));
    let well_formed = |inst: &Instance, inst_id: Option<usize>| -> bool {
        (inst.first..=inst.last).all(|n| {
            let inside = inst_id.is_none_or(|id| graph.nodes[n].blocks.iter().any(|b| b.id == id));
            let read_outside = readers[n].iter().any(|&r| r > inst.last);
            inside && (n == inst.last || !read_outside)
        }) && !(inst.first..inst.last).contains(&graph.output)
    };
    let signature = |inst: &Instance| -> (Signature, Vec<NodeId>) {
        let mut outside: Vec<NodeId> = Vec::new();
        let sig = (inst.first..=inst.last)
            .map(|n| {
                let node = &graph.nodes[n];
                let refs = node
                    .inputs
                    .iter()
                    .map(|&i| {
                        if i >= inst.first {
                            Ref::Inside(i - inst.first)
                        } else {
                            let k = outside.iter().position(|&o| o == i).unwrap_or_else(|| {
                                outside.push(i);
                                outside.len() - 1
                            });
                            Ref::Outside(k)
                        }
                    })
                    .collect();
                (node.op.clone(), node.shape, refs)
            })
            .collect();
        (sig, outside)
    };
    // Ids of the instances, in list order.
    let mut ids: Vec<usize> = Vec::new();
    for inst in &list {
        let id = graph
            .nodes
            .get(inst.first)
            .and_then(|n| n.blocks.get(inst.depth))
            .map(|b| b.id)
            .unwrap_or(usize::MAX);
        ids.push(id);
    }
    let mut candidates: Vec<(usize, Run)> = Vec::new();
    let mut i = 0;
    while i < list.len() {
        let a = &list[i];
        if !well_formed(a, Some(ids[i])) {
            i += 1;
            continue;
        }
        let (sig_a, out_a) = signature(a);
        let mut j = i + 1;
        let mut prev = a;
        while j < list.len() {
            let b = &list[j];
            if b.depth != a.depth
                || b.parent != a.parent
                || b.block != a.block
                || b.first != prev.last + 1
                || !well_formed(b, Some(ids[j]))
            {
                break;
            }
            let (sig_b, out_b) = signature(b);
            if sig_b != sig_a || out_b != [prev.last] || out_a.len() != 1 {
                break;
            }
            prev = b;
            j += 1;
        }
        if j - i >= 2 {
            candidates.push((
                a.depth,
                Run {
                    block: a.block.clone(),
                    paths: (a.path.clone(), prev.path.clone()),
                    count: j - i,
                    first: a.first,
                    last: prev.last,
                },
            ));
            i = j;
        } else {
            i += 1;
        }
    }
    // Outer runs win; a run inside a chosen one is dropped.
    candidates.sort_by_key(|(depth, run)| (*depth, run.first));
    let mut chosen: Vec<Run> = Vec::new();
    for (_, run) in candidates {
        if chosen
            .iter()
            .all(|c| run.last < c.first || run.first > c.last)
        {
            chosen.push(run);
        }
    }
    chosen.sort_by_key(|r| r.first);
    chosen
}

fn repeated_box(graph: &Graph, run: &Run) -> ViewBox {
    let nodes: Vec<NodeId> = (run.first..=run.last).collect();
    let per = nodes.len() / run.count;
    let one = &nodes[..per];
    let mut parts: Vec<String> = one
        .iter()
        .filter_map(|&n| short(&graph.nodes[n].op))
        .collect();
    if parts.len() > 4 {
        let more = parts.len() - 3;
        parts.truncate(3);
        parts.push(format!("+{more} more"));
    }
    let mut inner = parts.join(" → ");
    if one.iter().any(|&n| graph.nodes[n].op == Op::Add) {
        inner += " ⊕ skip";
    }
    if one.iter().any(|&n| graph.nodes[n].op == Op::Mul) {
        inner += " ⊗ gate";
    }
    if one.iter().any(|&n| graph.nodes[n].op == Op::Concat) {
        inner += " ‖ concat";
    }
    let params: i64 = one.iter().map(|&n| graph.node_params(n)).sum();
    let shape = graph.nodes[run.last].shape;
    let detail = if params > 0 {
        format!(
            "{shape} · {} × {} = {} params",
            run.count,
            grouped(params),
            grouped(params * run.count as i64)
        )
    } else {
        shape.to_string()
    };
    let title = match (run.paths.0.as_str(), run.paths.1.as_str()) {
        ("", _) | (_, "") => String::new(),
        (a, b) => format!("{a} … {b}"),
    };
    ViewBox {
        nodes,
        title,
        op: format!("{} × {}", run.block, run.count),
        inner: Some(inner.trim().to_string()),
        detail,
        kind: Kind::Repeated,
        repeat: Some(run.count),
        fate: None,
    }
}

// ---------------------------------------------------------------------------
// Fusion
// ---------------------------------------------------------------------------

/// What the fusion passes make of each node of `graph`, and how many kernels
/// run (counted as `cnnc emit --stage fused` counts them: a concat that is
/// not in place copies each input with a kernel of its own). The passes run
/// on a copy whose nodes are named by their index, so the layers each fused
/// node carries name the original nodes exactly.
pub fn fates(graph: &Graph) -> Result<(Vec<Fate>, usize), String> {
    let mut tagged = graph.clone();
    for (id, node) in tagged.nodes.iter_mut().enumerate() {
        node.name = format!("#{id}");
    }
    let (fused, _) = crate::ir::passes::optimize(&tagged)?;
    let index = |name: &str| -> Result<NodeId, String> {
        name.strip_prefix('#')
            .and_then(|n| n.parse::<NodeId>().ok())
            .filter(|&n| n < graph.nodes.len())
            .ok_or_else(|| {
                format!("internal error: the fused graph names an unknown layer `{name}`")
            })
    };
    let mut fate = vec![Fate::Dropped; graph.nodes.len()];
    let mut kernel = 0;
    let mut kernels = 0;
    for node in &fused.nodes {
        let own = index(&node.name)?;
        let f = if node.op == Op::Input || node.fusion.view {
            Fate::View
        } else {
            kernels += if node.op == Op::Concat {
                node.inputs.len()
            } else {
                1
            };
            kernel += 1;
            Fate::Kernel(kernel - 1)
        };
        fate[own] = f;
        for m in &node.fusion.merged {
            fate[index(&m.name)?] = f;
        }
        if let Some(bn) = &node.fusion.folded_batchnorm {
            fate[index(&bn.name)?] = f;
        }
    }
    Ok((fate, kernels))
}

// ---------------------------------------------------------------------------
// Text metrics
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Font {
    Title,
    Op,
    Detail,
}

impl Font {
    fn size(self) -> f64 {
        match self {
            Font::Title => 10.0,
            Font::Op => 13.0,
            Font::Detail => 11.0,
        }
    }
    fn bold(self) -> bool {
        self == Font::Op
    }
    fn line_height(self) -> f64 {
        self.size() + 4.0
    }
}

const FONT_FAMILY: &str = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif";

/// Advance width of a character in DejaVu Sans, in ems (a slight
/// overestimate elsewhere: Verdana is as wide, Helvetica narrower).
fn advance(c: char) -> f64 {
    match c {
        '0'..='9' => 0.637,
        ' ' => 0.32,
        'f' | 't' => 0.392,
        'i' | 'j' | 'l' => 0.278,
        'r' => 0.411,
        'm' => 0.974,
        'w' => 0.818,
        's' => 0.521,
        'c' | 'z' => 0.55,
        'k' | 'v' | 'x' | 'y' => 0.592,
        'a'..='z' => 0.635,
        'I' | 'J' => 0.30,
        'M' | 'W' => 0.99,
        'A'..='Z' => 0.72,
        '.' | ',' | ':' | ';' | '·' | '\'' => 0.32,
        '[' | ']' | '(' | ')' | '/' | '|' => 0.39,
        '_' | '-' => 0.5,
        '×' | '→' | '+' | '=' | '⊕' | '‖' | '<' | '>' => 0.838,
        '…' => 1.0,
        _ => 0.8,
    }
}

fn text_width(text: &str, font: Font) -> f64 {
    let w: f64 = text.chars().map(advance).sum::<f64>() * font.size();
    if font.bold() {
        w * 1.12
    } else {
        w
    }
}

const PAD_X: f64 = 12.0;
const PAD_Y: f64 = 7.0;
const MIN_WIDTH: f64 = 96.0;

fn box_size(b: &ViewBox) -> (f64, f64) {
    let lines = b.lines();
    let w = lines
        .iter()
        .map(|(t, f)| text_width(t, *f))
        .fold(0.0, f64::max);
    let h: f64 = lines.iter().map(|(_, f)| f.line_height()).sum();
    (
        (w + 2.0 * PAD_X).max(MIN_WIDTH).ceil(),
        (h + 2.0 * PAD_Y).ceil(),
    )
}

// ---------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------

/// Where everything goes: box rectangles (x, y, w, h) and edge paths in the
/// layout's cubic Bézier form.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    pub boxes: Vec<(f64, f64, f64, f64)>,
    pub edges: Vec<Vec<(Point, Point)>>,
}

/// Records what the layout draws, by the `properties` tag of each shape.
#[derive(Default)]
struct Capture {
    rects: BTreeMap<usize, (Point, Point)>,
    arrows: BTreeMap<usize, Vec<(Point, Point)>>,
}

impl RenderBackend for Capture {
    fn draw_rect(
        &mut self,
        xy: Point,
        size: Point,
        _look: &StyleAttr,
        properties: Option<String>,
        _clip: Option<ClipHandle>,
    ) {
        if let Some(i) = properties
            .as_deref()
            .and_then(|p| p.strip_prefix('b'))
            .and_then(|p| p.parse().ok())
        {
            self.rects.insert(i, (xy, size));
        }
    }
    fn draw_line(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}
    fn draw_circle(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}
    fn draw_text(&mut self, _: Point, _: &str, _: &StyleAttr) {}
    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        _dashed: bool,
        _head: (bool, bool),
        _look: &StyleAttr,
        properties: Option<String>,
        _text: &str,
    ) {
        if let Some(i) = properties
            .as_deref()
            .and_then(|p| p.strip_prefix('e'))
            .and_then(|p| p.parse().ok())
        {
            self.arrows.insert(i, path.to_vec());
        }
    }
    fn create_clip(&mut self, _: Point, _: Point, _: usize) -> ClipHandle {
        0
    }
}

/// Lays the view out top to bottom: by its nesting of forks and joins when
/// it has one (every CNN in the zoo does), otherwise with layout-rs.
pub fn place(view: &View) -> Result<Placement, String> {
    match Nested::new(view).and_then(|n| n.place()) {
        Some(p) => Ok(p),
        None => place_sugiyama(view),
    }
}

/// Horizontal space between side-by-side branches.
const BRANCH_GAP: f64 = 28.0;
/// How far right of a region a bypass edge (a residual's identity shortcut) runs.
const LANE_GAP: f64 = 18.0;

/// A laid-out piece of the graph, relative to its own centre line (x = 0)
/// and top (y = 0).
#[derive(Default)]
struct Piece {
    /// (box, centre x, top y).
    boxes: Vec<(usize, f64, f64)>,
    /// (edge, lane x): edges drawn down a vertical lane right of the region
    /// they skip over.
    bypasses: Vec<(usize, f64)>,
    left: f64,
    right: f64,
    height: f64,
}

impl Piece {
    fn shifted(mut self, dx: f64, dy: f64) -> Piece {
        for b in &mut self.boxes {
            b.1 += dx;
            b.2 += dy;
        }
        for e in &mut self.bypasses {
            e.1 += dx;
        }
        self
    }
}

/// The fork–join structure of a view: a box with several successors opens
/// branches that meet again at its nearest post-dominator. Branches are drawn
/// side by side in the order the join reads them (a concat's order, which
/// is `torch.cat`'s), centred under the fork; at a residual add, the main
/// path (its first input) stays in the fork's column and shortcuts go right.
struct Nested<'a> {
    view: &'a View,
    succ: Vec<Vec<(usize, usize)>>,
    preds: Vec<Vec<usize>>,
    /// Nearest post-dominator of each box (the sink has none).
    ipdom: Vec<Option<usize>>,
    sizes: Vec<(f64, f64)>,
}

impl<'a> Nested<'a> {
    fn new(view: &'a View) -> Option<Nested<'a>> {
        let n = view.boxes.len();
        if n == 0 {
            return None;
        }
        let mut succ = vec![Vec::new(); n];
        let mut preds = vec![Vec::new(); n];
        for (i, e) in view.edges.iter().enumerate() {
            // Boxes are in topological order; anything else is not laid out here.
            if e.from >= e.to || e.to >= n {
                return None;
            }
            succ[e.from].push((e.to, i));
            preds[e.to].push(e.from);
        }
        // One source (box 0) and one sink (the last box).
        if (1..n).any(|i| preds[i].is_empty()) || (0..n - 1).any(|i| succ[i].is_empty()) {
            return None;
        }
        // Post-dominator sets, in reverse topological order, as sorted lists.
        let mut pdom: Vec<Vec<usize>> = vec![Vec::new(); n];
        pdom[n - 1] = vec![n - 1];
        for v in (0..n - 1).rev() {
            let mut common: Option<Vec<usize>> = None;
            for &(s, _) in &succ[v] {
                common = Some(match common {
                    None => pdom[s].clone(),
                    Some(c) => c.into_iter().filter(|x| pdom[s].contains(x)).collect(),
                });
            }
            let mut set = common.unwrap_or_default();
            set.insert(0, v);
            pdom[v] = set;
        }
        let ipdom = pdom.iter().map(|set| set.get(1).copied()).collect();
        Some(Nested {
            view,
            succ,
            preds,
            ipdom,
            sizes: view.boxes.iter().map(box_size).collect(),
        })
    }

    /// Boxes from `start` up to (not including) `stop`, or to the sink.
    fn chain(&self, start: usize, stop: Option<usize>, placed: &mut [bool]) -> Option<Piece> {
        let mut piece = Piece::default();
        let mut cur = start;
        loop {
            if std::mem::replace(&mut placed[cur], true) {
                return None;
            }
            let (w, h) = self.sizes[cur];
            piece.boxes.push((cur, 0.0, piece.height));
            piece.left = piece.left.max(w / 2.0);
            piece.right = piece.right.max(w / 2.0);
            piece.height += h + ROW_GAP;
            let next = match self.succ[cur].as_slice() {
                [] => return (stop.is_none()).then_some(piece),
                [(s, _)] => *s,
                many => {
                    let join = self.ipdom[cur]?;
                    self.fork(&mut piece, cur, many, join, placed)?;
                    join
                }
            };
            if Some(next) == stop {
                return Some(piece);
            }
            cur = next;
        }
    }

    /// Lays out the branches from a fork to `join` below `piece`.
    fn fork(
        &self,
        piece: &mut Piece,
        fork: usize,
        succ: &[(usize, usize)],
        join: usize,
        placed: &mut [bool],
    ) -> Option<()> {
        let mut branches = Vec::new();
        let mut bypasses = Vec::new();
        for &(s, edge) in succ {
            if s == join {
                bypasses.push(edge);
                continue;
            }
            let branch = self.chain(s, Some(join), placed)?;
            // Which input of the join this branch feeds: its last box.
            let last = branch.boxes.last().map(|b| b.0)?;
            let slot = self.preds[join].iter().position(|&p| p == last)?;
            branches.push((slot, branch));
        }
        branches.sort_by_key(|b| b.0);
        let residual = self.view.boxes[join].op.starts_with("add");
        let mut region = Piece::default();
        let total: f64 = branches.iter().map(|(_, b)| b.left + b.right).sum::<f64>()
            + BRANCH_GAP * branches.len().saturating_sub(1) as f64;
        let mut x = -total / 2.0;
        for (i, (slot, b)) in branches.into_iter().enumerate() {
            // At an add, the main path (input 0) keeps the fork's column and
            // the shortcuts go to its right.
            let centre = if residual && slot == 0 && i == 0 {
                0.0
            } else if residual {
                region.right + BRANCH_GAP + b.left
            } else {
                x + b.left
            };
            x += b.left + b.right + BRANCH_GAP;
            region.left = region.left.max(b.left - centre);
            region.right = region.right.max(b.right + centre);
            region.height = region.height.max(b.height);
            let b = b.shifted(centre, 0.0);
            region.boxes.extend(b.boxes);
            region.bypasses.extend(b.bypasses);
        }
        let lane = region.right.max(self.sizes[fork].0 / 2.0) + LANE_GAP;
        for edge in bypasses {
            region.bypasses.push((edge, lane));
        }
        if !region.bypasses.is_empty() {
            region.right = region.right.max(lane);
        }
        let region = region.shifted(0.0, piece.height);
        piece.left = piece.left.max(region.left);
        piece.right = piece.right.max(region.right);
        piece.height += region.height;
        piece.boxes.extend(region.boxes);
        piece.bypasses.extend(region.bypasses);
        Some(())
    }

    fn place(&self) -> Option<Placement> {
        let n = self.view.boxes.len();
        let mut placed = vec![false; n];
        let piece = self.chain(0, None, &mut placed)?;
        if placed.iter().any(|p| !p) {
            return None;
        }
        let mut boxes = vec![(0.0, 0.0, 0.0, 0.0); n];
        for &(i, cx, y) in &piece.boxes {
            let (w, h) = self.sizes[i];
            boxes[i] = (cx - w / 2.0, y, w, h);
        }
        let lanes: BTreeMap<usize, f64> = piece.bypasses.iter().copied().collect();
        let edges = self
            .view
            .edges
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let (fx, fy, fw, fh) = boxes[e.from];
                let (tx, ty, tw, th) = boxes[e.to];
                match lanes.get(&i) {
                    // Out of the right side, down the lane, into the right side.
                    Some(&lane) => {
                        let p0 = Point::new(fx + fw, fy + fh / 2.0);
                        let p3 = Point::new(tx + tw, ty + th / 2.0);
                        let p1 = Point::new(lane, p0.y + 12.0);
                        let p2 = Point::new(lane, p3.y - 12.0);
                        vec![
                            (p0, Point::new(lane, p0.y)),
                            (Point::new(lane, p0.y), p1),
                            (p2, p2),
                            (Point::new(lane, p3.y), p3),
                        ]
                    }
                    // Bottom centre to top centre, an S-curve when they differ in x.
                    None => {
                        let p0 = Point::new(fx + fw / 2.0, fy + fh);
                        let p3 = Point::new(tx + tw / 2.0, ty);
                        let mid = (p3.y - p0.y) / 2.0;
                        if p3.y - p0.y > 2.0 * ROW_GAP && p0.x != p3.x {
                            // A short branch ending far above its join: down its own
                            // column first, then into the join, rather than across
                            // the boxes of the branches beside it.
                            let h = ROW_GAP / 2.0;
                            let q = Point::new(p0.x, p3.y - ROW_GAP);
                            vec![
                                (p0, p0),
                                (Point::new(p0.x, q.y - h), q),
                                (Point::new(p3.x, p3.y - h), p3),
                            ]
                        } else {
                            vec![
                                (p0, Point::new(p0.x, p0.y + mid)),
                                (Point::new(p3.x, p3.y - mid), p3),
                            ]
                        }
                    }
                }
            })
            .collect();
        Some(Placement { boxes, edges })
    }
}

/// Lays the view out top to bottom with layout-rs.
fn place_sugiyama(view: &View) -> Result<Placement, String> {
    let mut vg = VisualGraph::new(Orientation::TopToBottom);
    // The crate re-checks acyclicity after every edge with a path search that
    // is exponential on graphs with many diamonds (googlenet: seconds). The
    // IR is acyclic by construction (`Graph::verify`: inputs come first).
    vg.dag.set_validate(false);
    let handles: Vec<_> = view
        .boxes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (w, h) = box_size(b);
            vg.add_node(Element::create_with_properties(
                ShapeKind::new_box(""),
                StyleAttr::simple(),
                Orientation::TopToBottom,
                Point::new(w, h),
                format!("b{i}"),
            ))
        })
        .collect();
    for (i, e) in view.edges.iter().enumerate() {
        vg.add_edge(
            Arrow::simple_with_properties("", format!("e{i}")),
            handles[e.from],
            handles[e.to],
        );
    }
    let mut capture = Capture::default();
    vg.do_it(false, false, false, &mut capture);
    let mut placement = Placement::default();
    for i in 0..view.boxes.len() {
        let (xy, size) = capture
            .rects
            .get(&i)
            .ok_or_else(|| format!("internal error: the layout lost box {i}"))?;
        placement.boxes.push((xy.x, xy.y, size.x, size.y));
    }
    for i in 0..view.edges.len() {
        let path = capture
            .arrows
            .get(&i)
            .ok_or_else(|| format!("internal error: the layout lost edge {i}"))?;
        placement.edges.push(path.clone());
    }
    compress_rows(&mut placement, ROW_GAP);
    Ok(placement)
}

/// Vertical space between rows of boxes.
const ROW_GAP: f64 = 34.0;

/// Makes every gap between rows of boxes `gap` high. The layout leaves
/// generous gaps; a monotone map of y keeps the order of everything, and
/// edges (whose points go through the same map) stay attached to their boxes.
fn compress_rows(p: &mut Placement, gap: f64) {
    let mut rows: Vec<(f64, f64)> = p.boxes.iter().map(|&(_, y, _, h)| (y, y + h)).collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut merged: Vec<(f64, f64)> = Vec::new();
    for (a, b) in rows {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    if merged.is_empty() {
        return;
    }
    // New top of each row.
    let mut tops = Vec::with_capacity(merged.len());
    let mut y = merged[0].0;
    for &(a, b) in &merged {
        tops.push(y);
        y += b - a + gap;
    }
    let map = |v: f64| -> f64 {
        for (i, &(a, b)) in merged.iter().enumerate() {
            if v <= b {
                if v >= a || i == 0 {
                    return tops[i] + (v - a);
                }
                // In the gap above row i: scale it to `gap`.
                let (pa, pb) = merged[i - 1];
                let t = (v - pb) / (a - pb);
                return tops[i - 1] + (pb - pa) + t * gap;
            }
        }
        let (a, b) = merged[merged.len() - 1];
        let last = tops[merged.len() - 1] + (b - a);
        last + (v - b).min(gap)
    };
    for r in &mut p.boxes {
        let (top, bottom) = (map(r.1), map(r.1 + r.3));
        r.1 = top;
        r.3 = bottom - top;
    }
    for path in &mut p.edges {
        for (a, b) in path.iter_mut() {
            a.y = map(a.y);
            b.y = map(b.y);
        }
    }
}

// ---------------------------------------------------------------------------
// SVG
// ---------------------------------------------------------------------------

const MARGIN: f64 = 24.0;
const HEADER: f64 = 64.0;
const SKIP_COLOUR: &str = "#d0552a";
const EDGE_COLOUR: &str = "#555555";
/// The cards stacked behind a repeated block's box.
const CARD_FILL: &str = "#f5e6a8";
/// Shades of fused kernels, used in turn.
const GROUP_SHADES: [&str; 4] = ["#f6c85f", "#9dd39b", "#f3a6a6", "#a9c7ee"];

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A number for SVG: one decimal, no `-0.0`.
fn n(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r == 0.0 {
        "0".to_string()
    } else if r.fract() == 0.0 {
        format!("{}", r as i64)
    } else {
        format!("{r:.1}")
    }
}

/// The picture as an SVG document.
pub fn svg(view: &View) -> String {
    match place(view) {
        Ok(p) => svg_placed(view, &p),
        // The layout failing is a bug; still draw something rather than nothing.
        Err(e) => format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"400\" height=\"40\"><text x=\"8\" y=\"24\">{}</text></svg>\n",
            esc(&e)
        ),
    }
}

fn svg_placed(view: &View, p: &Placement) -> String {
    // Normalise: the layout's coordinates start anywhere.
    let mut min = (f64::MAX, f64::MAX);
    let mut max = (f64::MIN, f64::MIN);
    for &(x, y, w, h) in &p.boxes {
        min = (min.0.min(x), min.1.min(y));
        max = (max.0.max(x + w), max.1.max(y + h));
    }
    for path in &p.edges {
        for (a, b) in path {
            for q in [a, b] {
                min = (min.0.min(q.x), min.1.min(q.y));
                max = (max.0.max(q.x), max.1.max(q.y));
            }
        }
    }
    let legend_width =
        legend(&mut String::new(), view, 0.0, 0.0).max(text_width(&view.header, Font::Detail));
    let width = (max.0 - min.0 + 2.0 * MARGIN)
        .max(legend_width + 2.0 * MARGIN)
        .ceil();
    // Centred when the header is wider than the drawing.
    let dx = (width - (max.0 - min.0)) / 2.0 - min.0;
    let dy = MARGIN + HEADER - min.1;
    let height = (max.1 - min.1 + 2.0 * MARGIN + HEADER).ceil();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"{FONT_FAMILY}\">",
        w = n(width),
        h = n(height)
    );
    let _ = writeln!(s, "<title>{}</title>", esc(&view.model));
    s += "<defs>\n";
    for (id, colour) in [("arrow", EDGE_COLOUR), ("arrow-skip", SKIP_COLOUR)] {
        let _ = writeln!(
            s,
            "<marker id=\"{id}\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"{colour}\"/></marker>"
        );
    }
    s += "</defs>\n";
    let _ = writeln!(
        s,
        "<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"#ffffff\"/>",
        n(width),
        n(height)
    );
    // Header and legend.
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"16\" font-weight=\"bold\" fill=\"#111111\">{}</text>",
        n(MARGIN),
        n(MARGIN + 6.0),
        esc(&view.model)
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#333333\">{}</text>",
        n(MARGIN),
        n(MARGIN + 24.0),
        esc(&view.header)
    );
    let _ = legend(&mut s, view, MARGIN, MARGIN + 36.0);
    let rect = |i: usize| {
        let (x, y, w, h) = p.boxes[i];
        (x + dx, y + dy, w, h)
    };
    // Fused kernels: one shaded hull per group when it covers no other box,
    // otherwise a shaded halo around each of its boxes.
    if view.fused {
        s += "<g class=\"fused\">\n";
        for (g, members) in view.groups.iter().enumerate() {
            let shade = GROUP_SHADES[g % GROUP_SHADES.len()];
            let pad = 6.0;
            let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
            for &b in members {
                let (x, y, w, h) = rect(b);
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x + w);
                y1 = y1.max(y + h);
            }
            let covers_other = (0..view.boxes.len()).any(|b| {
                if members.contains(&b) {
                    return false;
                }
                let (x, y, w, h) = rect(b);
                x < x1 + pad && x + w > x0 - pad && y < y1 + pad && y + h > y0 - pad
            });
            if covers_other {
                for &b in members {
                    let (x, y, w, h) = rect(b);
                    let _ = writeln!(
                        s,
                        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"9\" fill=\"{shade}\" fill-opacity=\"0.75\"/>",
                        n(x - pad),
                        n(y - pad),
                        n(w + 2.0 * pad),
                        n(h + 2.0 * pad)
                    );
                }
            } else {
                let _ = writeln!(
                    s,
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"9\" fill=\"{shade}\" fill-opacity=\"0.75\"/>",
                    n(x0 - pad),
                    n(y0 - pad),
                    n(x1 - x0 + 2.0 * pad),
                    n(y1 - y0 + 2.0 * pad)
                );
            }
        }
        s += "</g>\n";
    }
    // Edges under the boxes; skip connections dashed and coloured.
    s += "<g class=\"edges\" fill=\"none\">\n";
    for (i, e) in view.edges.iter().enumerate() {
        let path = &p.edges[i];
        if path.len() < 2 {
            continue;
        }
        let pt = |q: &Point| format!("{} {}", n(q.x + dx), n(q.y + dy));
        let mut d = format!(
            "M {} C {}, {}, {}",
            pt(&path[0].0),
            pt(&path[0].1),
            pt(&path[1].0),
            pt(&path[1].1)
        );
        for seg in &path[2..] {
            let _ = write!(d, " S {}, {}", pt(&seg.0), pt(&seg.1));
        }
        let (colour, extra, marker) = if e.skip {
            (
                SKIP_COLOUR,
                " stroke-width=\"1.8\" stroke-dasharray=\"6 4\"",
                "arrow-skip",
            )
        } else {
            (EDGE_COLOUR, " stroke-width=\"1.3\"", "arrow")
        };
        let _ = writeln!(
            s,
            "<path class=\"{}\" d=\"{d}\" stroke=\"{colour}\"{extra} marker-end=\"url(#{marker})\"/>",
            if e.skip { "skip" } else { "edge" }
        );
    }
    s += "</g>\n";
    // Boxes.
    s += "<g class=\"boxes\">\n";
    for (i, b) in view.boxes.iter().enumerate() {
        let (x, y, w, h) = rect(i);
        let (fill, stroke) = b.kind.colours();
        let (dash, opacity) = match b.fate {
            Some(Fate::View) => (" stroke-dasharray=\"4 3\"", ""),
            Some(Fate::Dropped) => (" stroke-dasharray=\"2 3\"", " opacity=\"0.55\""),
            _ => ("", ""),
        };
        let _ = writeln!(s, "<g class=\"box\" id=\"box{i}\"{opacity}>");
        if b.repeat.is_some() {
            // A stack of cards: two outlines behind the box.
            for k in [2.0, 1.0] {
                let _ = writeln!(
                    s,
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"6\" fill=\"{CARD_FILL}\" stroke=\"{stroke}\" stroke-width=\"1\"/>",
                    n(x + 4.0 * k),
                    n(y + 4.0 * k),
                    n(w),
                    n(h)
                );
            }
        }
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"6\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{}\"{dash}/>",
            n(x),
            n(y),
            n(w),
            n(h),
            if b.repeat.is_some() { "1.6" } else { "1.2" }
        );
        let mut ty = y + PAD_Y;
        for (text, font) in b.lines() {
            ty += font.line_height();
            let (weight, colour) = match font {
                Font::Title => ("", "#666666"),
                Font::Op => (" font-weight=\"bold\"", "#111111"),
                Font::Detail => ("", "#333333"),
            };
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" font-size=\"{}\"{weight} fill=\"{colour}\" text-anchor=\"middle\">{}</text>",
                n(x + w / 2.0),
                n(ty - 4.0),
                n(font.size()),
                esc(text)
            );
        }
        s += "</g>\n";
    }
    s += "</g>\n</svg>\n";
    s
}

/// Draws the legend at (x, y); returns its width.
fn legend(s: &mut String, view: &View, x: f64, y: f64) -> f64 {
    // (swatch, text); a swatch is drawn at the x it is given.
    type Swatch = Box<dyn Fn(f64) -> String>;
    let line = |colour: &'static str, dash: &'static str, marker: &'static str| -> Swatch {
        Box::new(move |at: f64| {
            format!(
                "<path class=\"legend\" d=\"M {} {} L {} {}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.6\"{dash} marker-end=\"url(#{marker})\"/>",
                n(at),
                n(y),
                n(at + 20.0),
                n(y)
            )
        })
    };
    let square = |attrs: String| -> Swatch {
        Box::new(move |at: f64| {
            format!(
                "<rect class=\"legend\" x=\"{}\" y=\"{}\" width=\"20\" height=\"10\" rx=\"3\" {attrs}/>",
                n(at),
                n(y - 5.0)
            )
        })
    };
    let mut items: Vec<(Swatch, &str)> = vec![(line(EDGE_COLOUR, "", "arrow"), "data")];
    if view.edges.iter().any(|e| e.skip) {
        items.push((
            line(SKIP_COLOUR, " stroke-dasharray=\"6 4\"", "arrow-skip"),
            "skip (residual shortcut)",
        ));
    }
    if view.boxes.iter().any(|b| b.repeat.is_some()) {
        let (fill, stroke) = Kind::Repeated.colours();
        items.push((
            square(format!("fill=\"{fill}\" stroke=\"{stroke}\"")),
            "× N: repeated block (--expand draws each)",
        ));
    }
    if view.fused {
        items.push((
            square(format!(
                "fill=\"{}\" fill-opacity=\"0.75\"",
                GROUP_SHADES[0]
            )),
            "shaded: layers fused into one kernel",
        ));
        items.push((
            square("fill=\"#ffffff\" stroke=\"#777777\" stroke-dasharray=\"4 3\"".to_string()),
            "dashed: a view, no kernel",
        ));
        items.push((
            square(
                "fill=\"#ffffff\" stroke=\"#999999\" stroke-dasharray=\"2 3\" opacity=\"0.55\""
                    .to_string(),
            ),
            "faded: dropped for inference",
        ));
    }
    let mut at = x;
    for (swatch, text) in items {
        let _ = writeln!(s, "{}", swatch(at));
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#333333\">{}</text>",
            n(at + 26.0),
            n(y + 4.0),
            esc(text)
        );
        at += 26.0 + text_width(text, Font::Title) + 16.0;
    }
    at - x
}

// ---------------------------------------------------------------------------
// DOT
// ---------------------------------------------------------------------------

fn dot_esc(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The picture as Graphviz input (`dot -Tsvg`), top to bottom.
pub fn dot(view: &View) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", dot_esc(&view.model));
    let _ = writeln!(
        s,
        "  graph [rankdir=TB, label=\"{}\\n{}\", labelloc=t, fontname=\"DejaVu Sans\"];",
        dot_esc(&view.model),
        dot_esc(&view.header)
    );
    s += "  node [shape=box, style=\"rounded,filled\", fontname=\"DejaVu Sans\", fontsize=11];\n";
    s += "  edge [color=\"#555555\", arrowsize=0.7];\n";
    let node_line = |s: &mut String, i: usize, b: &ViewBox, indent: &str| {
        let (fill, stroke) = b.kind.colours();
        let label: Vec<String> = b.lines().iter().map(|(t, _)| dot_esc(t)).collect();
        let mut style = "rounded,filled".to_string();
        match b.fate {
            Some(Fate::View) => style += ",dashed",
            Some(Fate::Dropped) => style += ",dotted",
            _ => {}
        }
        if b.repeat.is_some() {
            style += ",bold";
        }
        let _ = writeln!(
            s,
            "{indent}n{i} [label=\"{}\", fillcolor=\"{fill}\", color=\"{stroke}\", style=\"{style}\"];",
            label.join("\\n")
        );
    };
    let mut in_group = vec![None; view.boxes.len()];
    for (g, members) in view.groups.iter().enumerate() {
        for &b in members {
            in_group[b] = Some(g);
        }
    }
    for (i, b) in view.boxes.iter().enumerate() {
        if in_group[i].is_none() {
            node_line(&mut s, i, b, "  ");
        }
    }
    for (g, members) in view.groups.iter().enumerate() {
        let _ = writeln!(s, "  subgraph cluster_kernel{g} {{");
        let _ = writeln!(
            s,
            "    style=\"rounded,filled\"; color=\"{}\"; label=\"fused kernel\"; fontsize=9;",
            GROUP_SHADES[g % GROUP_SHADES.len()]
        );
        for &b in members {
            node_line(&mut s, b, &view.boxes[b], "    ");
        }
        s += "  }\n";
    }
    for e in &view.edges {
        if e.skip {
            let _ = writeln!(
                s,
                "  n{} -> n{} [style=dashed, color=\"{SKIP_COLOUR}\", penwidth=1.5];",
                e.from, e.to
            );
        } else {
            let _ = writeln!(s, "  n{} -> n{};", e.from, e.to);
        }
    }
    s += "}\n";
    s
}
