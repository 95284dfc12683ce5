//! The built-in layers as data: for each, its name and aliases, its
//! arguments with their defaults, the PyTorch classes it stands for and the
//! rule that elaborates it. The checker's dispatch, its "did you mean"
//! suggestions and the test that keeps `docs/language.md`'s layer tables in
//! step all read this table.

use super::args::{ArgDef, Kind, PairDefault};
use crate::ir::Activation;

/// How a layer is elaborated (its shape rule and node); see `Elab::layer`.
#[derive(Clone, Copy, Debug)]
pub(super) enum Rule {
    /// An activation without parameters of its own (`inplace` only).
    Activation(Activation),
    LeakyRelu,
    Elu,
    Gelu,
    Conv,
    MaxPool,
    AvgPool,
    AdaptivePool {
        max: bool,
    },
    GlobalPool {
        max: bool,
    },
    BatchNorm,
    Lrn,
    Dropout,
    Dropout2d,
    StochasticDepth,
    Flatten,
    Linear,
    Softmax {
        log: bool,
    },
    Identity,
    LayerNorm,
    Scale,
    ChannelShuffle,
}

/// A PyTorch class that users write by habit, and how the layer is written
/// here (empty when the layer's name says it all).
#[derive(Debug)]
pub(super) struct PyTorch {
    pub(super) class: &'static str,
    pub(super) usage: &'static str,
}

/// One built-in layer.
#[derive(Debug)]
pub(super) struct LayerDef {
    pub(super) name: &'static str,
    /// Other names for the same layer (`conv2d` for `conv`).
    pub(super) aliases: &'static [&'static str],
    pub(super) args: &'static [ArgDef],
    pub(super) pytorch: &'static [PyTorch],
    pub(super) rule: Rule,
}

const fn torch(class: &'static str, usage: &'static str) -> PyTorch {
    PyTorch { class, usage }
}

const fn int(default: i64, min: i64) -> Kind {
    Kind::Int { default, min }
}

const fn pair(h: i64, w: i64, min: i64) -> Kind {
    Kind::Pair {
        default: PairDefault::Fixed(h, w),
        min,
    }
}

const fn float(default: f64, min: f64, max: f64) -> Kind {
    Kind::Float { default, min, max }
}

/// Any number: no range to check.
const fn number(default: f64) -> Kind {
    float(default, f64::MIN, f64::MAX)
}

/// A number from 0 up.
const fn non_negative(default: f64) -> Kind {
    float(default, 0.0, f64::MAX)
}

/// Accepted for PyTorch familiarity; it changes nothing here.
const INPLACE: ArgDef = ArgDef::opt("inplace", &[], Kind::Bool(false));

const ACTIVATION_ARGS: &[ArgDef] = &[INPLACE];

const KERNEL_SIZE: ArgDef = ArgDef::req("kernel_size", &["k", "kernel"], pair(1, 1, 1));
const POOL_STRIDE: ArgDef = ArgDef::opt(
    "stride",
    &["s"],
    Kind::Pair {
        default: PairDefault::KernelSize,
        min: 1,
    },
);
const POOL_PADDING: ArgDef = ArgDef::opt("padding", &["p"], pair(0, 0, 0));
const CEIL_MODE: ArgDef = ArgDef::opt("ceil_mode", &["ceil"], Kind::Bool(false));

const ADAPTIVE_ARGS: &[ArgDef] = &[
    ArgDef::req("output_size", &["size"], pair(1, 1, 1)),
    ArgDef::opt("output_width", &[], Kind::Size),
];

const DROPOUT_ARGS: &[ArgDef] = &[ArgDef::opt("p", &[], float(0.5, 0.0, 1.0)), INPLACE];

const SOFTMAX_ARGS: &[ArgDef] = &[ArgDef::opt("dim", &[], int(1, i64::MIN))];

const fn activation(
    name: &'static str,
    class: &'static [PyTorch],
    activation: Activation,
) -> LayerDef {
    LayerDef {
        name,
        aliases: &[],
        args: ACTIVATION_ARGS,
        pytorch: class,
        rule: Rule::Activation(activation),
    }
}

/// Every built-in layer.
pub(super) const LAYER_TABLE: &[LayerDef] = &[
    LayerDef {
        name: "conv",
        aliases: &["conv2d"],
        args: &[
            ArgDef::req("out_channels", &["out"], int(1, 1)),
            KERNEL_SIZE,
            ArgDef::opt("stride", &["s"], pair(1, 1, 1)),
            ArgDef::opt("padding", &["p"], Kind::Padding),
            ArgDef::opt("dilation", &["d"], pair(1, 1, 1)),
            ArgDef::opt("groups", &["g"], int(1, 1)),
            ArgDef::opt("bias", &[], Kind::Bool(true)),
            ArgDef::opt(
                "padding_mode",
                &["mode"],
                Kind::Choice {
                    default: "zeros",
                    choices: &["zeros", "reflect", "replicate", "circular"],
                },
            ),
            ArgDef::opt("in_channels", &["in"], Kind::Size),
        ],
        pytorch: &[torch(
            "Conv2d",
            "`conv(out_channels, k = ...)`, the input channels are inferred",
        )],
        rule: Rule::Conv,
    },
    LayerDef {
        name: "maxpool",
        aliases: &[],
        args: &[
            KERNEL_SIZE,
            POOL_STRIDE,
            POOL_PADDING,
            ArgDef::opt("dilation", &["d"], pair(1, 1, 1)),
            CEIL_MODE,
        ],
        pytorch: &[torch("MaxPool2d", "`maxpool(k, s = ...)`")],
        rule: Rule::MaxPool,
    },
    LayerDef {
        name: "avgpool",
        aliases: &[],
        args: &[
            KERNEL_SIZE,
            POOL_STRIDE,
            POOL_PADDING,
            CEIL_MODE,
            ArgDef::opt("count_include_pad", &[], Kind::Bool(true)),
        ],
        pytorch: &[torch("AvgPool2d", "`avgpool(k, s = ...)`")],
        rule: Rule::AvgPool,
    },
    LayerDef {
        name: "adaptive_avgpool",
        aliases: &[],
        args: ADAPTIVE_ARGS,
        pytorch: &[torch("AdaptiveAvgPool2d", "`adaptive_avgpool(size)`")],
        rule: Rule::AdaptivePool { max: false },
    },
    LayerDef {
        name: "adaptive_maxpool",
        aliases: &[],
        args: ADAPTIVE_ARGS,
        pytorch: &[torch("AdaptiveMaxPool2d", "`adaptive_maxpool(size)`")],
        rule: Rule::AdaptivePool { max: true },
    },
    LayerDef {
        name: "global_avgpool",
        aliases: &[],
        args: &[],
        pytorch: &[],
        rule: Rule::GlobalPool { max: false },
    },
    LayerDef {
        name: "global_maxpool",
        aliases: &[],
        args: &[],
        pytorch: &[],
        rule: Rule::GlobalPool { max: true },
    },
    LayerDef {
        name: "batchnorm",
        aliases: &[],
        args: &[
            ArgDef::opt("num_features", &["features"], Kind::Size),
            ArgDef::opt("eps", &[], float(1e-5, 0.0, 1.0)),
            ArgDef::opt("momentum", &[], float(0.1, 0.0, 1.0)),
        ],
        pytorch: &[torch(
            "BatchNorm2d",
            "`batchnorm`, the feature count is inferred",
        )],
        rule: Rule::BatchNorm,
    },
    LayerDef {
        name: "lrn",
        aliases: &["local_response_norm"],
        args: &[
            ArgDef::req("size", &[], int(1, 1)),
            ArgDef::opt("alpha", &[], non_negative(1e-4)),
            ArgDef::opt("beta", &[], non_negative(0.75)),
            ArgDef::opt("k", &[], non_negative(1.0)),
        ],
        pytorch: &[torch("LocalResponseNorm", "`lrn(size)`")],
        rule: Rule::Lrn,
    },
    LayerDef {
        name: "dropout",
        aliases: &[],
        args: DROPOUT_ARGS,
        pytorch: &[torch("Dropout", "`dropout(p)`")],
        rule: Rule::Dropout,
    },
    LayerDef {
        name: "dropout2d",
        aliases: &[],
        args: DROPOUT_ARGS,
        pytorch: &[torch("Dropout2d", "`dropout2d(p)`")],
        rule: Rule::Dropout2d,
    },
    LayerDef {
        name: "stochastic_depth",
        aliases: &[],
        args: &[
            ArgDef::req("p", &[], float(0.0, 0.0, 1.0)),
            ArgDef::opt(
                "mode",
                &[],
                Kind::Choice {
                    default: "row",
                    choices: &["row", "batch"],
                },
            ),
        ],
        pytorch: &[torch(
            "StochasticDepth",
            "`stochastic_depth(p, mode = row)`",
        )],
        rule: Rule::StochasticDepth,
    },
    LayerDef {
        name: "flatten",
        aliases: &[],
        args: &[],
        pytorch: &[torch("Flatten", "")],
        rule: Rule::Flatten,
    },
    LayerDef {
        name: "linear",
        aliases: &[],
        args: &[
            ArgDef::req("out_features", &["out"], int(1, 1)),
            ArgDef::opt("bias", &[], Kind::Bool(true)),
            ArgDef::opt("in_features", &["in"], Kind::Size),
            ArgDef::opt("per_pixel", &[], Kind::Bool(false)),
        ],
        pytorch: &[torch(
            "Linear",
            "`linear(out_features)`, the input features are inferred",
        )],
        rule: Rule::Linear,
    },
    LayerDef {
        name: "softmax",
        aliases: &[],
        args: SOFTMAX_ARGS,
        pytorch: &[torch("Softmax", "")],
        rule: Rule::Softmax { log: false },
    },
    LayerDef {
        name: "log_softmax",
        aliases: &[],
        args: SOFTMAX_ARGS,
        pytorch: &[torch("LogSoftmax", "")],
        rule: Rule::Softmax { log: true },
    },
    activation("relu", &[torch("ReLU", "")], Activation::Relu),
    activation("relu6", &[torch("ReLU6", "")], Activation::Relu6),
    LayerDef {
        name: "leaky_relu",
        aliases: &[],
        args: &[
            ArgDef::opt("negative_slope", &["slope"], number(0.01)),
            INPLACE,
        ],
        pytorch: &[torch("LeakyReLU", "`leaky_relu(slope)`")],
        rule: Rule::LeakyRelu,
    },
    LayerDef {
        name: "elu",
        aliases: &[],
        args: &[ArgDef::opt("alpha", &[], number(1.0)), INPLACE],
        pytorch: &[torch("ELU", "")],
        rule: Rule::Elu,
    },
    activation("tanh", &[torch("Tanh", "")], Activation::Tanh),
    activation("sigmoid", &[torch("Sigmoid", "")], Activation::Sigmoid),
    activation("silu", &[torch("SiLU", "")], Activation::Silu),
    LayerDef {
        name: "gelu",
        aliases: &[],
        args: &[ArgDef::opt(
            "approximate",
            &[],
            Kind::Choice {
                default: "none",
                choices: &["none", "tanh"],
            },
        )],
        pytorch: &[torch("GELU", "")],
        rule: Rule::Gelu,
    },
    activation(
        "hardsigmoid",
        &[torch("Hardsigmoid", "")],
        Activation::Hardsigmoid,
    ),
    activation(
        "hardswish",
        &[torch("Hardswish", "")],
        Activation::Hardswish,
    ),
    LayerDef {
        name: "identity",
        aliases: &[],
        args: &[],
        pytorch: &[torch("Identity", "")],
        rule: Rule::Identity,
    },
    LayerDef {
        name: "layer_norm",
        aliases: &[],
        args: &[ArgDef::opt("eps", &[], float(1e-5, 0.0, 1.0))],
        pytorch: &[
            torch(
                "LayerNorm",
                "`layer_norm(eps = ...)`, over the channels at each pixel",
            ),
            torch(
                "LayerNorm2d",
                "`layer_norm(eps = ...)`, over the channels at each pixel",
            ),
        ],
        rule: Rule::LayerNorm,
    },
    LayerDef {
        name: "scale",
        aliases: &[],
        args: &[ArgDef::opt("init", &[], number(1.0))],
        pytorch: &[],
        rule: Rule::Scale,
    },
    LayerDef {
        name: "channel_shuffle",
        aliases: &[],
        args: &[ArgDef::req("groups", &["g"], int(1, 1))],
        pytorch: &[torch("ChannelShuffle", "`channel_shuffle(groups)`")],
        rule: Rule::ChannelShuffle,
    },
];

/// PyTorch classes that are not layers here but structure: the keyword to write.
const STRUCTURE_PYTORCH_NAMES: &[(&str, &str, &str)] = &[("Sequential", "seq", "`seq { ... }`")];

/// The layer called `name`, by its name or an alias.
pub(super) fn find_layer(name: &str) -> Option<&'static LayerDef> {
    LAYER_TABLE
        .iter()
        .find(|l| l.name == name || l.aliases.contains(&name))
}

/// Every name a built-in layer may be called by: names and aliases.
pub(super) fn layer_names() -> impl Iterator<Item = &'static str> {
    LAYER_TABLE
        .iter()
        .flat_map(|l| std::iter::once(l.name).chain(l.aliases.iter().copied()))
}

/// For a PyTorch class name: what it is called here, and how to write it
/// (empty when the name says it all).
pub(super) fn pytorch_name(class: &str) -> Option<(&'static str, &'static str)> {
    LAYER_TABLE
        .iter()
        .find_map(|l| {
            l.pytorch
                .iter()
                .find(|t| t.class == class)
                .map(|t| (l.name, t.usage))
        })
        .or_else(|| {
            STRUCTURE_PYTORCH_NAMES
                .iter()
                .find(|(c, _, _)| *c == class)
                .map(|&(_, name, usage)| (name, usage))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashSet};

    /// The rows of the layer tables under `## Built-in layers` in
    /// docs/language.md: the names in the first column, and the second
    /// column (the arguments).
    fn documented_rows() -> Vec<(BTreeSet<String>, String)> {
        let docs = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/language.md"));
        let start = docs
            .find("\n## Built-in layers")
            .expect("docs/language.md has a section `## Built-in layers`");
        let section = &docs[start + 1..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        let backticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        section
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                let cells: Vec<&str> = line.split(" | ").collect();
                let names = backticked(cells[0].trim_start_matches("| "));
                (names.into_iter().collect(), cells[1].to_string())
            })
            .collect()
    }

    fn own_names(layer: &LayerDef) -> BTreeSet<String> {
        std::iter::once(layer.name)
            .chain(layer.aliases.iter().copied())
            .map(str::to_string)
            .collect()
    }

    /// The docs' layer reference and the table list the same layers, each
    /// with the same aliases, so neither can drift from the other.
    #[test]
    fn docs_list_every_layer_and_only_layers() {
        let documented: Vec<BTreeSet<String>> =
            documented_rows().into_iter().map(|(n, _)| n).collect();
        let defined: Vec<BTreeSet<String>> = LAYER_TABLE.iter().map(own_names).collect();
        for names in &defined {
            assert!(
                documented.contains(names),
                "layer {names:?} has no row of its own in docs/language.md's `## Built-in layers` tables"
            );
        }
        for names in &documented {
            assert!(
                defined.contains(names),
                "docs/language.md documents {names:?}, which is not a layer (with those aliases) in the layer table"
            );
        }
        assert_eq!(
            documented.len(),
            defined.len(),
            "a layer is documented twice"
        );
    }

    /// Every argument of a layer, and each of its short names, is mentioned
    /// in the layer's row of the docs (a row may say "as `other_layer`").
    #[test]
    fn docs_mention_every_argument() {
        let rows = documented_rows();
        let row_of = |name: &str| -> &str {
            let (_, args) = rows
                .iter()
                .find(|(names, _)| names.contains(name))
                .unwrap_or_else(|| panic!("no docs row for `{name}`"));
            args
        };
        for layer in LAYER_TABLE {
            let mut args = row_of(layer.name);
            if let Some(other) = args.trim().strip_prefix("as `") {
                args = row_of(other.trim_end_matches('`'));
            }
            for arg in layer.args {
                for name in std::iter::once(arg.name).chain(arg.aliases.iter().copied()) {
                    assert!(
                        args.contains(&format!("`{name}`")),
                        "docs/language.md's row for `{}` does not mention its argument `{name}`",
                        layer.name
                    );
                }
            }
        }
    }

    #[test]
    fn names_and_pytorch_classes_are_unique() {
        let mut names = HashSet::new();
        for name in layer_names() {
            assert!(names.insert(name), "`{name}` names two layers");
        }
        let mut classes = HashSet::new();
        for layer in LAYER_TABLE {
            for t in layer.pytorch {
                assert!(classes.insert(t.class), "`{}` maps to two layers", t.class);
            }
            let mut args = HashSet::new();
            for arg in layer.args {
                for name in std::iter::once(arg.name).chain(arg.aliases.iter().copied()) {
                    assert!(
                        args.insert(name),
                        "`{}` has two arguments `{name}`",
                        layer.name
                    );
                }
            }
        }
    }

    #[test]
    fn lookups_read_the_table() {
        assert_eq!(find_layer("conv2d").map(|l| l.name), Some("conv"));
        assert_eq!(
            find_layer("local_response_norm").map(|l| l.name),
            Some("lrn")
        );
        assert!(find_layer("Conv2d").is_none());
        assert_eq!(pytorch_name("ReLU"), Some(("relu", "")));
        assert_eq!(
            pytorch_name("LayerNorm2d").map(|(l, _)| l),
            Some("layer_norm")
        );
        assert_eq!(pytorch_name("Sequential").map(|(l, _)| l), Some("seq"));
        assert_eq!(layer_names().count(), 32);
    }
}
