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
