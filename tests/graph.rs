//! `cnnc graph`: the picture is a real picture (rendered to pixels with
//! resvg: its size, ink, one filled box per expected layer or block, text
//! inside the boxes), repeated blocks collapse, fused groups match the fusion
//! report, and the output is deterministic and snapshot-tested.

use cnnc::ir::Graph;
use cnnc::tools::draw::{self, Fate, Format, Kind, Options};
use std::collections::BTreeMap;
use std::path::Path;

fn model(path: &str) -> Graph {
    let compilation = cnnc::compile_file(Path::new(path), &BTreeMap::new()).expect("readable");
    assert!(
        !compilation.has_errors(),
        "{path}:\n{}",
        compilation.render_diagnostics()
    );
    compilation.models[0].graph.clone().expect("graph")
}

const COLLAPSED: Options = Options {
    fused: false,
    expand: false,
};

/// Fonts for resvg: the system's (DejaVu Sans on Debian, which the SVG names first).
fn fonts() -> std::sync::Arc<resvg::usvg::fontdb::Database> {
    let mut db = resvg::usvg::fontdb::Database::new();
    db.load_system_fonts();
    assert!(
        !db.is_empty(),
        "no system fonts found; install fonts-dejavu-core to render text"
    );
    std::sync::Arc::new(db)
}

struct Picture {
    tree: resvg::usvg::Tree,
    pixmap: resvg::tiny_skia::Pixmap,
}

fn rasterize(svg: &str) -> Picture {
    let options = resvg::usvg::Options {
        fontdb: fonts(),
        ..Default::default()
    };
    let tree = resvg::usvg::Tree::from_str(svg, &options).expect("valid SVG");
    let size = tree.size().to_int_size();
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).expect("non-empty size");
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    Picture { tree, pixmap }
}

fn hex(colour: &str) -> [u8; 3] {
    let v = u32::from_str_radix(colour.trim_start_matches('#'), 16).expect("hex colour");
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

/// Connected regions (4-neighbour) of at least `min` pixels whose colour is one of `colours`.
fn regions(p: &resvg::tiny_skia::Pixmap, colours: &[[u8; 3]], min: usize) -> usize {
    let (w, h) = (p.width() as usize, p.height() as usize);
    let data = p.data();
    let is = |i: usize| {
        let px = &data[i * 4..i * 4 + 4];
        px[3] == 255 && colours.iter().any(|c| c[..] == px[..3])
    };
    let mut seen = vec![false; w * h];
    let mut count = 0;
    for start in 0..w * h {
        if seen[start] || !is(start) {
            continue;
        }
        let mut stack = vec![start];
        seen[start] = true;
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = (i % w, i / w);
            let mut visit = |j: usize| {
                if !seen[j] && is(j) {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        if size >= min {
            count += 1;
        }
    }
    count
}

fn box_fills() -> Vec<[u8; 3]> {
    use Kind::*;
    [
        Input, Conv, Linear, Pool, Norm, Activation, Merge, Reshape, Dropout, Repeated,
    ]
    .iter()
    .map(|k| hex(k.colours().0))
    .collect()
}

/// A rectangle: x0, y0, x1, y1.
type Rect = (f32, f32, f32, f32);

/// Bounding boxes (x0, y0, x1, y1) of the box `id`'s rectangle and of its texts.
fn box_and_texts(tree: &resvg::usvg::Tree, id: &str) -> (Rect, Vec<Rect>) {
    use resvg::usvg::Node;
    let group = match tree.node_by_id(id) {
        Some(Node::Group(g)) => g,
        _ => panic!("no group `{id}` in the SVG"),
    };
    let mut rect = None;
    let mut texts = Vec::new();
    for child in group.children() {
        let b = child.abs_bounding_box();
        let r = (b.left(), b.top(), b.right(), b.bottom());
        match child {
            Node::Path(_) => rect = Some(r), // the last path drawn is the box itself
            Node::Text(_) => texts.push(r),
            _ => {}
        }
    }
    (rect.expect("box rectangle"), texts)
}

/// What the picture of `graph` must show, checked on the pixels: returns the box count.
fn check_picture(name: &str, graph: &Graph, options: Options, expected_boxes: usize) {
    let view = draw::view(graph, options).expect("view");
    assert_eq!(
        view.boxes.len(),
        expected_boxes,
        "{name}: boxes in the view"
    );
    let svg = draw::svg(&view);
    let pic = rasterize(&svg);
    let (w, h) = (pic.pixmap.width(), pic.pixmap.height());
    assert!(w >= 200 && h >= 200, "{name}: {w}×{h} is too small");
    assert!(w <= 6000, "{name}: {w} px wide is too wide to read");
    // Ink: neither blank nor a solid block.
    let data = pic.pixmap.data();
    let ink = data
        .chunks(4)
        .filter(|p| p[0] < 250 || p[1] < 250 || p[2] < 250)
        .count() as f64
        / (w * h) as f64;
    assert!(ink > 0.02 && ink < 0.9, "{name}: {:.1}% ink", ink * 100.0);
    // One filled region per box, counted on the pixels.
    let filled = regions(&pic.pixmap, &box_fills(), 400);
    assert_eq!(filled, expected_boxes, "{name}: filled boxes in the pixels");
    // Every box has its text, inside it; boxes do not overlap.
    let mut rects = Vec::new();
    for (i, b) in view.boxes.iter().enumerate() {
        let (r, texts) = box_and_texts(&pic.tree, &format!("box{i}"));
        let lines = 1 + usize::from(!b.title.is_empty()) + usize::from(b.inner.is_some()) + 1;
        assert_eq!(texts.len(), lines, "{name}: box {i} ({}) text lines", b.op);
        for t in &texts {
            assert!(
                t.0 >= r.0 + 2.0 && t.2 <= r.2 - 2.0 && t.1 >= r.1 && t.3 <= r.3,
                "{name}: text of box {i} ({}) at {t:?} spills out of {r:?}",
                b.op
            );
            assert!(t.2 - t.0 > 5.0, "{name}: box {i} has an empty text");
        }
        rects.push(r);
    }
    for i in 0..rects.len() {
        for j in i + 1..rects.len() {
            let (a, b) = (rects[i], rects[j]);
            let apart = a.2 <= b.0 || b.2 <= a.0 || a.3 <= b.1 || b.3 <= a.1;
            assert!(apart, "{name}: boxes {i} and {j} overlap: {a:?} {b:?}");
        }
    }
    // Dark text pixels exist (the fonts rendered).
    let dark = data
        .chunks(4)
        .filter(|p| p[0] < 60 && p[1] < 60 && p[2] < 60)
        .count();
    assert!(
        dark > 50 * expected_boxes,
        "{name}: only {dark} dark pixels"
    );
}

/// Nodes of `graph` whose outermost block instance's path is in `paths`.
fn in_instances(graph: &Graph, paths: &[&str]) -> usize {
    graph
        .nodes
        .iter()
        .filter(|n| {
            n.blocks
                .first()
                .is_some_and(|b| paths.contains(&b.path.as_str()))
        })
        .count()
}

#[test]
fn mnist_cnn_picture() {
    let g = model("models/mnist_cnn.cnn");
    // No blocks: one box per layer and one for the input.
    check_picture("mnist_cnn", &g, COLLAPSED, 13);
}

#[test]
fn resnet18_picture() {
    let g = model("models/resnet18.cnn");
    assert_eq!(g.nodes.len(), 70);
    // layer1 = basic(64) * 2: both instances are identical, one `× 2` box.
    let layer1 = in_instances(&g, &["layer1.0", "layer1.1"]);
    assert_eq!(layer1, 14);
    check_picture("resnet18", &g, COLLAPSED, 70 - layer1 + 1);
    // Fused: the same boxes, shaded.
    check_picture(
        "resnet18 fused",
        &g,
        Options {
            fused: true,
            expand: false,
        },
        70 - layer1 + 1,
    );
}

#[test]
fn googlenet_picture() {
    let g = model("models/googlenet.cnn");
    // The inception modules all differ: nothing collapses.
    check_picture("googlenet", &g, COLLAPSED, g.nodes.len());
}

#[test]
fn resnet152_collapses_repeated_bottlenecks() {
    let g = model("models/resnet152.cnn");
    let runs = draw::repeated_runs(&g);
    let summary: Vec<(String, usize, String, String)> = runs
        .iter()
        .map(|r| {
            (
                r.block.clone(),
                r.count,
                r.paths.0.clone(),
                r.paths.1.clone(),
            )
        })
        .collect();
    let expect =
        |b: &str, n: usize, a: &str, z: &str| (b.to_string(), n, a.to_string(), z.to_string());
    assert_eq!(
        summary,
        vec![
            expect("bottleneck", 2, "layer1.1", "layer1.2"),
            expect("bottleneck", 7, "layer2.1", "layer2.7"),
            expect("bottleneck", 35, "layer3.1", "layer3.35"),
            expect("bottleneck", 2, "layer4.1", "layer4.2"),
        ]
    );
    // Every stage's first block has a downsample shortcut, so it stands alone.
    let mut repeated: Vec<String> = Vec::new();
    for (stage, n) in [(1, 2), (2, 7), (3, 35), (4, 2)] {
        for i in 1..=n {
            repeated.push(format!("layer{stage}.{i}"));
        }
    }
    let repeated: Vec<&str> = repeated.iter().map(String::as_str).collect();
    let hidden = in_instances(&g, &repeated);
    assert_eq!(
        hidden,
        46 * 10,
        "46 bottlenecks without downsample, 10 nodes each"
    );
    check_picture("resnet152", &g, COLLAPSED, g.nodes.len() - hidden + 4);
    let view = draw::view(&g, COLLAPSED).unwrap();
    let layer3 = view
        .boxes
        .iter()
        .find(|b| b.title == "layer3.1 … layer3.35")
        .expect("layer3 box");
    assert_eq!(layer3.op, "bottleneck × 35");
    // torchvision: each of these bottlenecks has 1,117,184 parameters.
    assert_eq!(
        layer3.detail,
        "[1024, 14, 14] · 35 × 1,117,184 = 39,101,440 params"
    );
    // --expand draws every layer.
    let expanded = draw::view(
        &g,
        Options {
            fused: false,
            expand: true,
        },
    )
    .unwrap();
    assert_eq!(expanded.boxes.len(), g.nodes.len());
}

#[test]
fn skip_edges_are_the_shortcuts_of_residual_adds() {
    let g = model("models/resnet18.cnn");
    let view = draw::view(
        &g,
        Options {
            fused: false,
            expand: true,
        },
    )
    .unwrap();
    let skips: Vec<(String, String)> = view
        .edges
        .iter()
        .filter(|e| e.skip)
        .map(|e| {
            (
                view.boxes[e.from].title.clone(),
                view.boxes[e.to].title.clone(),
            )
        })
        .collect();
    // 8 basic blocks: 5 identity shortcuts (from the block input, a relu or the
    // stem's maxpool) and 3 projections (from the downsample batch norm).
    assert_eq!(skips.len(), 8, "{skips:?}");
    assert_eq!(skips[0], ("maxpool".to_string(), "layer1.0".to_string()));
    assert_eq!(
        skips[2],
        ("layer2.0.downsample.1".to_string(), "layer2.0".to_string())
    );
    // googlenet has concats, no residual adds: no skip edges, 4 edges into each concat.
    let g = model("models/googlenet.cnn");
    let view = draw::view(&g, COLLAPSED).unwrap();
    assert!(view.edges.iter().all(|e| !e.skip));
    for (i, b) in view.boxes.iter().enumerate() {
        if b.op == "concat" {
            assert_eq!(view.edges.iter().filter(|e| e.to == i).count(), 4);
        }
    }
}

#[test]
fn fused_groups_match_the_fusion_report() {
    // `cnnc emit --stage fused models/mnist_cnn.cnn`: 12 layers → 8 nodes, 7 kernels.
    let g = model("models/mnist_cnn.cnn");
    let (fates, kernels) = draw::fates(&g).unwrap();
    assert_eq!(kernels, 7);
    let name = |i: usize| g.nodes[i].name.clone();
    let kernel_of = |n: &str| {
        let i = (0..g.nodes.len()).find(|&i| name(i) == n).unwrap();
        fates[i]
    };
    // conv + relu share a kernel; the maxpool has its own; flatten is a view.
    assert_eq!(fates[2], kernel_of("layer.0")); // the relu after layer.0
    assert_ne!(kernel_of("layer.4"), kernel_of("layer.2"));
    let flatten = (0..g.nodes.len())
        .find(|&i| g.nodes[i].op == cnnc::ir::Op::Flatten)
        .unwrap();
    assert_eq!(fates[flatten], Fate::View);
    let view = draw::view(
        &g,
        Options {
            fused: true,
            expand: false,
        },
    )
    .unwrap();
    assert!(
        view.header.ends_with("fused: 12 layers → 7 kernels"),
        "{}",
        view.header
    );
    // Shaded groups: conv+relu ×3, linear+relu: 4 groups of two.
    assert_eq!(view.groups.len(), 4);
    assert!(view.groups.iter().all(|g| g.len() == 2));
    // resnet18: every conv is fused with its batch norm; googlenet's dropout is dropped.
    let g = model("models/resnet18.cnn");
    let (fates, _) = draw::fates(&g).unwrap();
    for (i, n) in g.nodes.iter().enumerate() {
        if matches!(n.op, cnnc::ir::Op::BatchNorm { .. }) {
            assert_eq!(fates[i], fates[n.inputs[0]], "{} not with its conv", n.name);
        }
    }
    let g = model("models/googlenet.cnn");
    let (fates, _) = draw::fates(&g).unwrap();
    let dropout = g.nodes.iter().position(|n| n.name == "dropout").unwrap();
    assert_eq!(fates[dropout], Fate::Dropped);
}

#[test]
fn snapshots() {
    let mnist = model("models/mnist_cnn.cnn");
    insta::assert_snapshot!(
        "mnist_cnn_svg",
        draw::render(&mnist, COLLAPSED, Format::Svg).unwrap()
    );
    insta::assert_snapshot!(
        "mnist_cnn_dot",
        draw::render(&mnist, COLLAPSED, Format::Dot).unwrap()
    );
    insta::assert_snapshot!(
        "mnist_cnn_fused_dot",
        draw::render(
            &mnist,
            Options {
                fused: true,
                expand: false
            },
            Format::Dot
        )
        .unwrap()
    );
    let resnet18 = model("models/resnet18.cnn");
    insta::assert_snapshot!(
        "resnet18_dot",
        draw::render(&resnet18, COLLAPSED, Format::Dot).unwrap()
    );
    let googlenet = model("models/googlenet.cnn");
    insta::assert_snapshot!(
        "googlenet_dot",
        draw::render(&googlenet, COLLAPSED, Format::Dot).unwrap()
    );
}

use crate::common::run_cnnc as cnnc;

#[test]
fn cli_is_deterministic_and_writes_atomically() {
    // Two processes, same bytes; -o writes what standard output shows.
    let a = cnnc(&["graph", "models/googlenet.cnn", "--fused"]);
    let b = cnnc(&["graph", "models/googlenet.cnn", "--fused"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    assert!(a.stdout.starts_with(b"<svg "));
    let dir = std::env::temp_dir().join(format!("cnnc-graph-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("googlenet.svg");
    let c = cnnc(&[
        "graph",
        "models/googlenet.cnn",
        "--fused",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(c.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), a.stdout);
    // Nothing but the output is left in the directory (no temporary file).
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let dot = cnnc(&[
        "graph",
        "models/resnet18.cnn",
        "--format",
        "dot",
        "--set",
        "num_classes=10",
    ]);
    assert!(dot.status.success());
    let text = String::from_utf8(dot.stdout).unwrap();
    assert!(text.starts_with("digraph \"resnet18\""));
    assert!(text.contains("linear 512→10"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_errors() {
    // A bad format, a missing file: usage errors (2). A model with errors: 1.
    let r = cnnc(&["graph", "models/mnist_cnn.cnn", "--format", "png"]);
    assert_eq!(r.status.code(), Some(2));
    let r = cnnc(&["graph", "models/no_such_model.cnn"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("no such file"));
    let dir = std::env::temp_dir().join(format!("cnnc-graph-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.cnn");
    std::fs::write(&bad, "model m {\n  input [1, 8, 8]\n  conv(4, k=11)\n}\n").unwrap();
    let r = cnnc(&["graph", bad.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("bad.cnn:3"));
    // An output in a missing directory is refused before anything is drawn.
    let r = cnnc(&[
        "graph",
        "models/mnist_cnn.cnn",
        "-o",
        dir.join("missing/out.svg").to_str().unwrap(),
    ]);
    assert_ne!(r.status.code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes PNGs of a few models for people to look at:
/// `CNNC_GRAPH_PNG=/tmp/graphs cargo test --test it graph::pngs -- --ignored`.
#[test]
#[ignore]
fn pngs() {
    let dir = std::env::var("CNNC_GRAPH_PNG").unwrap_or_else(|_| "/tmp/cnnc-graphs".into());
    std::fs::create_dir_all(&dir).unwrap();
    for (name, fused, expand) in [
        ("mnist_cnn", false, false),
        ("resnet18", false, false),
        ("resnet18", true, true),
        ("googlenet", false, false),
        ("googlenet", true, false),
        ("resnet152", false, false),
        ("resnet50", false, false),
        ("vgg16", false, false),
        ("shufflenet_v2_x1_0", false, false),
        ("convnext_tiny", false, false),
    ] {
        let g = model(&format!("models/{name}.cnn"));
        let svg = draw::render(&g, Options { fused, expand }, Format::Svg).unwrap();
        let pic = rasterize(&svg);
        let suffix = match (fused, expand) {
            (true, true) => "-fused-expanded",
            (true, false) => "-fused",
            (false, true) => "-expanded",
            _ => "",
        };
        std::fs::write(format!("{dir}/{name}{suffix}.svg"), &svg).unwrap();
        let img = image::RgbaImage::from_raw(
            pic.pixmap.width(),
            pic.pixmap.height(),
            pic.pixmap.data().to_vec(),
        )
        .unwrap();
        img.save(format!("{dir}/{name}{suffix}.png")).unwrap();
    }
}

/// Centre x of each box in the laid-out picture.
fn centres(view: &draw::View) -> Vec<f64> {
    let p = draw::place(view).expect("layout");
    p.boxes.iter().map(|&(x, _, w, _)| x + w / 2.0).collect()
}

#[test]
fn resnet18_keeps_its_main_path_in_one_column() {
    let g = model("models/resnet18.cnn");
    for options in [
        COLLAPSED,
        Options {
            fused: false,
            expand: true,
        },
    ] {
        let view = draw::view(&g, options).unwrap();
        let x = centres(&view);
        // The main path: the input, every residual add, and the output.
        let mut main = vec![0, view.boxes.len() - 1];
        main.extend((0..view.boxes.len()).filter(|&b| view.boxes[b].op.starts_with("add")));
        assert!(main.len() > 4, "{main:?}");
        for &b in &main {
            assert!(
                (x[b] - x[0]).abs() < 0.5,
                "expand {}: box {b} ({}) at x {} drifts from the input's {}",
                options.expand,
                view.boxes[b].op,
                x[b],
                x[0]
            );
        }
        // No staircase: the picture is not much wider than its widest box.
        let p = draw::place(&view).unwrap();
        let widest = p.boxes.iter().map(|b| b.2).fold(0.0, f64::max);
        let left = p.boxes.iter().map(|b| b.0).fold(f64::MAX, f64::min);
        let right = p.boxes.iter().map(|b| b.0 + b.2).fold(f64::MIN, f64::max);
        assert!(
            right - left < 3.0 * widest,
            "{} wide, boxes up to {widest}",
            right - left
        );
    }
}

#[test]
fn googlenet_draws_concat_branches_in_source_order_centred() {
    let g = model("models/googlenet.cnn");
    let view = draw::view(&g, COLLAPSED).unwrap();
    let x = centres(&view);
    let mut concats = 0;
    for (j, b) in view.boxes.iter().enumerate() {
        if b.op != "concat" {
            continue;
        }
        concats += 1;
        // The boxes feeding the concat, in the order it reads them (torch.cat's).
        let feeds: Vec<f64> = view
            .edges
            .iter()
            .filter(|e| e.to == j)
            .map(|e| x[e.from])
            .collect();
        assert_eq!(feeds.len(), 4, "{}", b.title);
        assert!(
            feeds.windows(2).all(|w| w[0] < w[1]),
            "{}: branches at {feeds:?}, not left to right in source order",
            b.title
        );
        // Centred under the fork, above the concat.
        let mid = (feeds[0] + feeds[3]) / 2.0;
        assert!(
            (mid - x[j]).abs() < 60.0,
            "{}: branches centred at {mid}, concat at {}",
            b.title,
            x[j]
        );
    }
    assert_eq!(concats, 9);
    // The modules stack in one column.
    let first = view.boxes.iter().position(|b| b.op == "concat").unwrap();
    for (j, b) in view.boxes.iter().enumerate() {
        if b.op == "concat" {
            assert!((x[j] - x[first]).abs() < 0.5, "{} at {}", b.title, x[j]);
        }
    }
}
