//! The language forms added for torchvision's modern CNNs (issue #19) reach
//! torchvision's `state_dict` keys. Each test writes a miniature of a
//! torchvision module in `.cnn` and compares its keys with the ones the
//! torchvision source names (the module attribute paths quoted in each test).

use std::collections::BTreeMap;

/// The `state_dict` keys of the only model in `source`, in order; panics with
/// the rendered diagnostics when it does not check.
fn keys(source: &str) -> Vec<String> {
    let compilation = cnnc::compile_source("test.cnn", source, &BTreeMap::new());
    let graphs = compilation
        .graphs()
        .unwrap_or_else(|| panic!("does not check:\n{}", compilation.render_diagnostics()));
    graphs[0].params.iter().map(|p| p.key.clone()).collect()
}

/// The rendered diagnostics of a source that must fail to check.
fn errors(source: &str) -> String {
    let compilation = cnnc::compile_source("test.cnn", source, &BTreeMap::new());
    assert!(
        compilation.has_errors(),
        "checks, but should not:\n{source}"
    );
    compilation.render_diagnostics()
}

#[test]
fn a_quoted_keyword_names_efficientnets_block() {
    // torchvision's MBConv keeps its layers in `self.block`, an nn.Sequential
    // of Conv2dNormActivation (themselves nn.Sequential): features.1.0.block.0.0.weight.
    let keys = keys(
        r#"
        block conv_norm_act(c, k = 1, g = 1) {
          seq { conv(c, k=k, p=(k - 1) / 2, g=g, bias=false) batchnorm silu }
        }
        model m {
          input [8, 16, 16]
          features = seq {
            conv_norm_act(8, k=3)
            seq { residual { "block" = seq { conv_norm_act(8, k=3, g=8) conv_norm_act(8) } } }
          }
        }
        "#,
    );
    assert!(
        keys.contains(&"features.1.0.block.0.0.weight".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"features.1.0.block.1.1.running_var".to_string()),
        "{keys:?}"
    );
}

#[test]
fn a_quoted_name_holds_a_dash_as_regnets_blocks_do() {
    // RegNet's AnyStage: self.add_module(f"block{stage_index}-{i}", block),
    // giving trunk_output.block1.block1-0.proj.0.weight.
    let keys = keys(
        r#"
        model m {
          input [8, 16, 16]
          trunk_output = seq { block1 = seq { "block1-0" = seq { proj = seq { conv(8, k=1, bias=false) } } } }
        }
        "#,
    );
    assert_eq!(keys, ["trunk_output.block1.block1-0.proj.0.weight"]);
}

#[test]
fn a_quoted_name_that_is_an_identifier_is_that_identifier() {
    let quoted = keys("model m {\n input [3, 8, 8]\n \"conv1\" = conv(4, k=1)\n}\n");
    let bare = keys("model m {\n input [3, 8, 8]\n conv1 = conv(4, k=1)\n}\n");
    assert_eq!(quoted, bare);
}

#[test]
fn a_quoted_shortcut_name_is_its_sequential() {
    let keys = keys(
        r#"
        model m {
          input [4, 8, 8]
          residual { conv1 = conv(8, k=1) } shortcut "short-cut" { conv(8, k=1) }
        }
        "#,
    );
    assert_eq!(
        keys,
        [
            "conv1.weight",
            "conv1.bias",
            "short-cut.0.weight",
            "short-cut.0.bias"
        ]
    );
}

#[test]
fn a_reserved_word_as_a_name_shows_the_quoted_form() {
    let rendered = errors("model m {\n  input [3, 8, 8]\n  block = seq { conv(4, k=1) }\n}\n");
    assert!(rendered.contains("found keyword `block`"), "{rendered}");
    assert!(rendered.contains(r#"`"block" = ...`"#), "{rendered}");
}

#[test]
fn a_dot_in_a_quoted_name_is_refused() {
    let rendered = errors("model m {\n  input [3, 8, 8]\n  \"a.b\" = conv(4, k=1)\n}\n");
    assert!(rendered.contains("a name cannot contain `.`"), "{rendered}");
}

/// torchvision's BasicConv2d, as models/googlenet.cnn writes it.
const BASIC_CONV: &str = "
block basic_conv(c, k, p = 0) {
  conv = conv(c, k=k, p=p, bias=false)
  bn = batchnorm(eps=0.001)
  relu
}
";

#[test]
fn an_unnamed_group_branch_names_inception_v3s_attributes() {
    // torchvision's InceptionA: self.branch5x5_1 and self.branch5x5_2 are
    // attributes of the module, run one after the other in one branch:
    // Mixed_5b.branch5x5_1.conv.weight, Mixed_5b.branch5x5_2.conv.weight.
    let source = format!(
        "{BASIC_CONV}
        block inception_a(pool_features) {{
          concat {{
            branch1x1 = basic_conv(8, k=1)
            {{ branch5x5_1 = basic_conv(6, k=1)  branch5x5_2 = basic_conv(8, k=5, p=2) }}
            {{ avgpool(3, s=1, p=1)  branch_pool = basic_conv(pool_features, k=1) }}
          }}
        }}
        model m {{
          input [4, 9, 9]
          Mixed_5b = inception_a(4)
        }}"
    );
    let convs: Vec<String> = keys(&source)
        .into_iter()
        .filter(|k| k.ends_with("conv.weight"))
        .collect();
    assert_eq!(
        convs,
        [
            "Mixed_5b.branch1x1.conv.weight",
            "Mixed_5b.branch5x5_1.conv.weight",
            "Mixed_5b.branch5x5_2.conv.weight",
            "Mixed_5b.branch_pool.conv.weight",
        ]
    );
}

#[test]
fn concat_branches_are_numbered_as_a_module_list_and_groups_take_no_position() {
    // `self.cat = nn.ModuleList([conv, conv])` joined with torch.cat: cat.0, cat.1.
    // The group between them adds neither a name nor a number.
    let keys = keys(
        "model m {
          input [4, 8, 8]
          cat = concat { conv(4, k=1)  { extra = conv(2, k=1) }  maxpool(3, s=1, p=1)  last = conv(4, k=1)  conv(2, k=1) }
        }",
    );
    let weights: Vec<&str> = keys
        .iter()
        .filter(|k| k.ends_with("weight"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        weights,
        [
            "cat.0.weight",
            "cat.extra.weight",
            "cat.last.weight",
            "cat.3.weight"
        ]
    );
}

#[test]
fn an_unnamed_layer_with_weights_in_a_group_is_an_error() {
    let rendered = errors(&format!(
        "{BASIC_CONV}
        model m {{
          input [4, 8, 8]
          mixed = concat {{ {{ conv(4, k=1) relu }} }}
        }}"
    ));
    assert!(
        rendered.contains("`conv` has weights, so it needs a name here"),
        "{rendered}"
    );
}

#[test]
fn a_named_group_is_a_module_with_attributes() {
    let keys = keys(
        "model m {
          input [4, 8, 8]
          stem = { conv = conv(8, k=1) relu bn = batchnorm }
          body = seq { { a = conv(8, k=1) } }
        }",
    );
    assert!(
        keys.starts_with(&[
            "stem.conv.weight".to_string(),
            "stem.conv.bias".to_string(),
            "stem.bn.weight".to_string()
        ]),
        "{keys:?}"
    );
    assert!(keys.contains(&"body.0.a.weight".to_string()), "{keys:?}");
}

#[test]
fn a_name_template_numbers_densenets_layers_from_one() {
    // torchvision's _DenseBlock: self.add_module("denselayer%d" % (i + 1), layer),
    // giving features.denseblock1.denselayer1.norm1.weight … denselayer6.
    let keys = keys(
        r#"
        block dense_layer(growth) {
          concat { identity { norm1 = batchnorm relu conv1 = conv(growth, k=1, bias=false) } }
        }
        block dense_block(n, growth) {
          "denselayer{i + 1}" = dense_layer(growth) * n
        }
        model m {
          input [4, 8, 8]
          features = seq { conv0 = conv(4, k=1) denseblock1 = dense_block(6, 2) }
        }
        "#,
    );
    let convs: Vec<&str> = keys
        .iter()
        .filter(|k| k.ends_with("conv1.weight"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        convs,
        (1..=6)
            .map(|n| format!("features.denseblock1.denselayer{n}.conv1.weight"))
            .collect::<Vec<_>>()
    );
    assert!(keys.contains(&"features.denseblock1.denselayer1.norm1.weight".to_string()));
}

#[test]
fn a_name_template_uses_parameters_as_regnets_stages_do() {
    // RegNet: f"block{stage_index}-{i}", 0-based copies.
    let keys = keys(
        r#"
        block any_stage(depth, stage) { "block{stage}-{i}" = conv(4, k=1, bias=false) * depth }
        model m {
          input [4, 8, 8]
          trunk_output = seq { block2 = any_stage(3, 2) }
        }
        "#,
    );
    assert_eq!(
        keys,
        [
            "trunk_output.block2.block2-0.weight",
            "trunk_output.block2.block2-1.weight",
            "trunk_output.block2.block2-2.weight"
        ]
    );
}

#[test]
fn a_name_template_in_a_seq_still_takes_positions() {
    let keys = keys(
        r#"model m {
          input [4, 8, 8]
          s = seq { relu "c{i}" = conv(4, k=1) * 2 conv(4, k=1) }
        }"#,
    );
    let weights: Vec<&str> = keys
        .iter()
        .filter(|k| k.ends_with("weight"))
        .map(String::as_str)
        .collect();
    assert_eq!(weights, ["s.c0.weight", "s.c1.weight", "s.3.weight"]);
}

/// The parameter count of the only model in `source`.
fn params(source: &str) -> i64 {
    let compilation = cnnc::compile_source("test.cnn", source, &BTreeMap::new());
    let graphs = compilation
        .graphs()
        .unwrap_or_else(|| panic!("does not check:\n{}", compilation.render_diagnostics()));
    graphs[0].params.iter().map(|p| p.numel()).sum()
}

#[test]
fn residual_when_adds_the_input_only_when_the_condition_holds() {
    // MobileNet v2's InvertedResidual: x + conv(x) if use_res_connect else conv(x).
    let source = |c: i64, stride: i64| {
        format!(
            "block inverted(c, stride = 1) {{
               residual when stride == 1 and in_channels == c {{
                 conv = seq {{ conv(c, k=3, s=stride, p=1, bias=false) batchnorm }}
               }}
             }}
             model m {{
               input [4, 8, 8]
               b = inverted({c}, stride={stride})
             }}"
        )
    };
    let ops = |c: i64, stride: i64| -> Vec<String> {
        let compilation = cnnc::compile_source("test.cnn", &source(c, stride), &BTreeMap::new());
        let graphs = compilation
            .graphs()
            .unwrap_or_else(|| panic!("{}", compilation.render_diagnostics()));
        graphs[0]
            .nodes
            .iter()
            .map(|n| format!("{:?}", n.op))
            .collect()
    };
    assert!(ops(4, 1).iter().any(|op| op == "Add"), "{:?}", ops(4, 1));
    assert!(!ops(4, 2).iter().any(|op| op == "Add"), "{:?}", ops(4, 2));
    assert!(!ops(8, 1).iter().any(|op| op == "Add"), "{:?}", ops(8, 1));
    // The keys do not depend on the condition.
    assert_eq!(keys(&source(4, 1)), keys(&source(4, 2)));
    assert_eq!(params(&source(4, 1)), params(&source(4, 2)));
}

#[test]
fn a_parameter_names_the_layer_a_block_uses() {
    let source = |act: &str| {
        format!(
            "block conv_norm_act(c, act = relu) {{
               conv = conv(c, k=1)
               act
             }}
             model m {{
               input [4, 8, 8]
               a = conv_norm_act(4{act})
             }}"
        )
    };
    let last_op = |act: &str| -> String {
        let compilation = cnnc::compile_source("test.cnn", &source(act), &BTreeMap::new());
        let graphs = compilation
            .graphs()
            .unwrap_or_else(|| panic!("{}", compilation.render_diagnostics()));
        let last = graphs[0].nodes.last().expect("nodes");
        format!("{:?}", last.op)
    };
    assert!(last_op("").contains("Relu"), "{}", last_op(""));
    assert!(last_op(", act=hardswish").contains("Hardswish"));
    assert!(last_op(", act=identity").contains("Identity"));
    let rendered = errors(&source(", act=hardswsh"));
    assert!(
        rendered.contains("unknown layer or block `hardswsh`"),
        "{rendered}"
    );
    assert!(rendered.contains("did you mean `hardswish`?"), "{rendered}");
}

#[test]
fn expect_changes_nothing_when_it_holds() {
    let with = "model m {\n  input [3, 8, 8]\n  c = conv(4, k=3, p=1) expect [4, 8, 8]\n  flatten expect [_]\n  fc = linear(2) expect [2]\n}\n";
    let without =
        "model m {\n  input [3, 8, 8]\n  c = conv(4, k=3, p=1)\n  flatten\n  fc = linear(2)\n}\n";
    assert_eq!(keys(with), keys(without));
    assert_eq!(params(with), params(without));
    // `expect` stays usable as a name.
    let named = keys("model m {\n  input [3, 8, 8]\n  expect = conv(4, k=1) expect [4, 8, 8]\n}\n");
    assert_eq!(named, ["expect.weight", "expect.bias"]);
}

#[test]
fn expect_reports_the_shape_an_item_gives() {
    let rendered =
        errors("model m {\n  input [3, 56, 56]\n  conv1 = conv(64, k=3) expect [64, 56, 56]\n}\n");
    assert!(
        rendered.contains("the output is [64, 54, 54], not the expected [64, 56, 56]"),
        "{rendered}"
    );
    // Inside a concat branch too.
    let rendered = errors("model m {\n  input [3, 8, 8]\n  cat = concat { a = conv(4, k=3) expect [4, 8, 8]  b = conv(4, k=3) }\n}\n");
    assert!(rendered.contains("the output is [4, 6, 6]"), "{rendered}");
}

#[test]
fn a_split_unit_reaches_shufflenets_keys() {
    // torchvision.models.shufflenetv2.InvertedResidual(stride=1):
    // x1, x2 = x.chunk(2, dim=1); cat(x1, self.branch2(x2)); branch1 is an
    // empty nn.Sequential with no keys.
    let k = keys(
        "model m {\n  input [8, 4, 4]\n  unit = split(2) {\n    identity\n    branch2 = seq { conv(4, k=1, bias=false) batchnorm relu }\n  }\n  channel_shuffle(2)\n}\n",
    );
    assert_eq!(k[0], "unit.branch2.0.weight");
    assert_eq!(k[1], "unit.branch2.1.weight");
    assert_eq!(k.len(), 6);
}

#[test]
fn split_is_not_a_keyword() {
    // Only `split(...) {` is the form: a layer may still be named `split`.
    let k = keys("model m {\n  input [8, 4, 4]\n  split = conv(4, k=1)\n}\n");
    assert_eq!(k, ["split.weight", "split.bias"]);
}

#[test]
fn layer_scale_comes_first_in_its_module_as_in_pytorch() {
    // torchvision.models.convnext.CNBlock assigns self.block before
    // self.layer_scale, but state_dict() lists a module's own parameters
    // before its children: `layer_scale`, then `block.*`.
    let k = keys(
        "model m {\n  input [8, 4, 4]\n  b = residual {\n    \"block\" = seq { conv(8, k=3, p=1, groups=8) identity layer_norm(eps=1e-6) linear(32, per_pixel=true) gelu linear(8, per_pixel=true) identity }\n    layer_scale = scale(init=1e-6)\n  }\n}\n",
    );
    assert_eq!(
        k,
        [
            "b.layer_scale",
            "b.block.0.weight",
            "b.block.0.bias",
            "b.block.2.weight",
            "b.block.2.bias",
            "b.block.3.weight",
            "b.block.3.bias",
            "b.block.5.weight",
            "b.block.5.bias",
        ]
    );
}

#[test]
fn split_errors_say_what_is_wrong() {
    let e = errors(
        "model m {\n  input [6, 4, 4]\n  split(4) { identity identity identity identity }\n}\n",
    );
    assert!(
        e.contains("cannot cut 6 channels into 4 equal chunks"),
        "{e}"
    );
    let e =
        errors("model m {\n  input [6, 4, 4]\n  flatten\n  split(2) { identity identity }\n}\n");
    assert!(e.contains("needs feature maps"), "{e}");
    let e = errors("model m {\n  input [6, 4, 4]\n  flatten\n  s = scale\n}\n");
    assert!(e.contains("needs feature maps"), "{e}");
}
