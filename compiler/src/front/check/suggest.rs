//! "Did you mean" suggestions: layer names, PyTorch names, and edit distance.

pub(super) const LAYERS: &[&str] = &[
    "conv",
    "conv2d",
    "maxpool",
    "avgpool",
    "adaptive_avgpool",
    "adaptive_maxpool",
    "global_avgpool",
    "global_maxpool",
    "batchnorm",
    "lrn",
    "local_response_norm",
    "dropout",
    "dropout2d",
    "stochastic_depth",
    "flatten",
    "linear",
    "softmax",
    "log_softmax",
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "tanh",
    "sigmoid",
    "silu",
    "gelu",
    "hardsigmoid",
    "hardswish",
    "identity",
    "layer_norm",
    "scale",
    "channel_shuffle",
];

/// PyTorch module names users write by habit: the layer, and how to call it.
pub(super) const PYTORCH_NAMES: &[(&str, &str, &str)] = &[
    (
        "Conv2d",
        "conv",
        "`conv(out_channels, k = ...)`, the input channels are inferred",
    ),
    (
        "BatchNorm2d",
        "batchnorm",
        "`batchnorm`, the feature count is inferred",
    ),
    (
        "Linear",
        "linear",
        "`linear(out_features)`, the input features are inferred",
    ),
    ("MaxPool2d", "maxpool", "`maxpool(k, s = ...)`"),
    ("AvgPool2d", "avgpool", "`avgpool(k, s = ...)`"),
    (
        "AdaptiveAvgPool2d",
        "adaptive_avgpool",
        "`adaptive_avgpool(size)`",
    ),
    (
        "AdaptiveMaxPool2d",
        "adaptive_maxpool",
        "`adaptive_maxpool(size)`",
    ),
    ("LocalResponseNorm", "lrn", "`lrn(size)`"),
    ("Dropout", "dropout", "`dropout(p)`"),
    ("Dropout2d", "dropout2d", "`dropout2d(p)`"),
    (
        "StochasticDepth",
        "stochastic_depth",
        "`stochastic_depth(p, mode = row)`",
    ),
    ("Flatten", "flatten", ""),
    ("Sequential", "seq", "`seq { ... }`"),
    ("Identity", "identity", ""),
    (
        "LayerNorm",
        "layer_norm",
        "`layer_norm(eps = ...)`, over the channels at each pixel",
    ),
    (
        "LayerNorm2d",
        "layer_norm",
        "`layer_norm(eps = ...)`, over the channels at each pixel",
    ),
    (
        "ChannelShuffle",
        "channel_shuffle",
        "`channel_shuffle(groups)`",
    ),
    ("ReLU", "relu", ""),
    ("ReLU6", "relu6", ""),
    ("LeakyReLU", "leaky_relu", "`leaky_relu(slope)`"),
    ("ELU", "elu", ""),
    ("GELU", "gelu", ""),
    ("SiLU", "silu", ""),
    ("Tanh", "tanh", ""),
    ("Sigmoid", "sigmoid", ""),
    ("Hardsigmoid", "hardsigmoid", ""),
    ("Hardswish", "hardswish", ""),
    ("Softmax", "softmax", ""),
    ("LogSoftmax", "log_softmax", ""),
];

/// The candidate closest to `name` by edit distance, if it is close enough to be a typo.
pub fn closest<'c>(name: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= limit && *c != name)
        .min()
        .map(|(_, c)| c)
}

/// Edit distance counting an insertion, a deletion, a substitution or a swap
/// of two neighbouring characters (`bais` for `bias`) as one edit.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows of the table: distances from a[..i-2], a[..i-1] and a[..i] to every b[..j].
    let mut before: Vec<usize> = (0..=b.len()).collect();
    let mut prev: Vec<usize> = before.clone();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            cur[j] = best;
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}
